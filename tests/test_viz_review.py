"""pebslab.viz.review: the no-PEBS guest probe of notebook 11.

Expected values from the seed (the patch: PEBS MSRs gated only on the host,
MAX_PINNED_PAGES 17, PERF_CAPABILITIES masked to PEBS_TRAP | ARCH_REG |
PEBS_FORMAT; Eric Northup's review: gate on the guest CPUID) and FACTS b.6/b.7.
"""

from __future__ import annotations

import pytest

import pebslab as pl
from pebslab.hw import msr as M
from pebslab.viz import review


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def test_patch_exposes_pebs_to_a_guest_whose_cpuid_says_no():
    row = review.probe_guest("patch", "silvermont", ("DS", "DTES64", "PDCM"))
    assert row["cpuid"] == "0 0 0" and row["driver"] == "no PEBS"
    host = pl.get_model("silvermont").perf_capabilities
    assert row["perf_cap"] == f"{host & (M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG | M.PERF_CAP_PEBS_FORMAT):#x}"
    assert row["ds_area"] == "ok" and row["pebs_enable"] == "ok"
    assert row["pinned"] == 17                       # MAX_PINNED_PAGES: DS page + 16 buffer pages
    assert row["records"] > 0                        # the CPU writes PEBS records for it
    assert review.broken_promises(row) == {"perf_cap", "ds_area", "pebs_enable", "pinned",
                                           "records"}


@pytest.mark.parametrize("design", ["review", "fixed", "icelake"])
@pytest.mark.parametrize("hide", [("DS",), ("DTES64",), ("PDCM",), ("DS", "DTES64", "PDCM")])
def test_the_cpuid_gate_holds_for_every_missing_bit(design, hide):
    row = review.probe_guest(design, "silvermont", hide)
    assert row["ds_area"] == row["pebs_enable"] == "#GP"
    assert row["pinned"] == 0 and row["records"] == 0
    assert row["eventsel"] == "ok"                   # the plain PMU stays (a PMU without PEBS)
    assert review.broken_promises(row) == set()


def test_a_guest_without_a_pmu_loses_the_pmu_msrs_everywhere():
    for design in pl.DESIGN_NAMES:
        row = review.probe_guest(design, "silvermont", ("PMU",))
        assert row["eventsel"] == "#GP", design


def test_nothing_hidden_keeps_pebs_under_the_2014_designs():
    for row in review.gate_rows("silvermont", ()):
        if row["design"] in ("patch", "review", "fixed"):
            assert row["driver"].startswith("PEBS fmt") and row["pebs_enable"] == "ok"
            assert row["records"] > 0
        assert review.broken_promises(row) == set()


def test_gate_table_marks_only_patch_for_the_default_guest():
    text = review.gate_table()
    lines = {ln.split("  ")[0]: ln for ln in text.splitlines()[2:]}
    assert "!" in lines["WRMSR PEBS_ENABLE = 1"]
    assert lines["WRMSR PEBS_ENABLE = 1"].count("!") == 1


@pytest.mark.parametrize("kw", [{}, dict(hide_ds=False, hide_dtes64=False, hide_pdcm=False),
                                dict(hide_pmu=True), dict(cpu="icelake"),
                                dict(hide_ds=False, hide_dtes64=True, hide_pdcm=False,
                                     cpu="haswell")])
def test_gate_grid_settings(kw):
    fig = review.gate_grid(**kw)
    assert fig.axes and fig.axes[0].get_title()


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="design must be one of"):
        review.probe_guest("v2")
    with pytest.raises(ValueError, match="hide must only name"):
        review.probe_guest("patch", "silvermont", ("MMX",))
    with pytest.raises(TypeError, match="hide must be a tuple"):
        review.probe_guest("patch", "silvermont", "DS")
    with pytest.raises(TypeError, match="hide_ds must be True or False"):
        review.gate_grid(hide_ds=1)
    with pytest.raises(ValueError, match="cpu must be one of"):
        review.gate_grid(cpu="k6")


def test_explorers_run_at_their_defaults():
    for name, (fn, kw) in review.EXPLORERS.items():
        assert fn(**kw).axes, name
