"""Tests for the figures of notebooks 00 and 01: pebslab.viz.pmu, pebslab.viz.stack,
and the set-up check of notebook 00 (pebslab.setup_check).

Expected values come from FACTS.md section b (IA32_PERFEVTSELx bit layout),
from the CPU models' documented skid ASSUMPTION (pebslab.hw.models: the PMI
is taken 1..8 instructions after the overflowing one retires, and reports
the next instruction), and from the workloads themselves.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pebslab import setup_check  # noqa: E402
from pebslab.hw.models import SKID_MAX, SKID_MIN  # noqa: E402
from pebslab.viz import pmu, stack  # noqa: E402

# FACTS b.2: event 0..7, umask 8..15, USR 16, OS 17, EDGE 18, INT 20, EN 22, INV 23, CMASK 24..31
USR, OS, EDGE, INT, EN, INV = 1 << 16, 1 << 17, 1 << 18, 1 << 20, 1 << 22, 1 << 23


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --- IA32_PERFEVTSELx ---------------------------------------------------------

def test_eventsel_defaults_compose_inst_retired_with_pmi():
    d = pmu.eventsel_fields()
    assert d["value"] == 0xC0 | USR | OS | INT | EN == 0x5300C0
    assert d["event"] == "INST_RETIRED.ANY_P"
    f = {name: v for name, _lo, _w, v in d["fields"]}
    assert f["event_select"] == 0xC0 and f["usr"] == f["os"] == f["int"] == f["en"] == 1
    assert "PMI on overflow" in d["summary"]


def test_eventsel_every_field_lands_on_its_bits():
    d = pmu.eventsel_fields(event_select=0x3C, umask=0x01, usr=False, os=True, edge=True,
                            int_=False, en=False, inv=True, cmask=0xFF)
    assert d["value"] == 0x3C | 0x01 << 8 | OS | EDGE | INV | 0xFF << 24
    assert d["event"] == "CPU_CLK_UNHALTED.REF_P"
    assert "kernel only" in d["summary"] and "disabled" in d["summary"]


def test_eventsel_unknown_event_and_cmask_summary():
    d = pmu.eventsel_fields(event_select=0xAB, umask=0xCD, cmask=3)
    assert d["event"] is None
    assert "counts cycles with >= 3 events" in d["summary"]


@pytest.mark.parametrize("kw, exc, word", [({"event_select": 256}, ValueError, "event_select"),
                                           ({"umask": -1}, ValueError, "umask"),
                                           ({"cmask": 1.5}, TypeError, "cmask"),
                                           ({"usr": "yes"}, TypeError, "usr"),
                                           ({"cpu": "pentium"}, ValueError, "cpu")])
def test_eventsel_bad_arguments_name_the_argument(kw, exc, word):
    with pytest.raises(exc, match=word):
        pmu.eventsel_fields(**kw)


@pytest.mark.parametrize("kw", [{}, {"event_select": 0, "umask": 0, "usr": False, "os": False,
                                     "int_": False, "en": False},
                                {"event_select": 0xFF, "umask": 0xFF, "edge": True,
                                 "inv": True, "cmask": 0xFF}])
def test_eventsel_explorer_draws_at_the_slider_ends(kw):
    fig = pmu.eventsel_explorer(**kw)
    assert isinstance(fig, Figure)
    value = pmu.eventsel_fields(**kw)["value"]
    assert f"{value:#018x}" in fig.axes[0].get_title(loc="left")


# --- skid ----------------------------------------------------------------------

def test_skid_defaults_land_after_the_overflowing_instruction():
    d = pmu.skid_data()
    offs = d["offsets"]
    assert len(offs) > 100
    # the PMI is taken after skid_min..skid_max more instructions retire and
    # reports the next instruction to run: 1 + skid instructions later
    assert offs.min() >= SKID_MIN + 1 and offs.max() <= SKID_MAX + 1
    assert set(np.unique(offs)) == set(range(SKID_MIN + 1, SKID_MAX + 2))
    # cycles on hot_loop: the 200-cycle load is where most overflows happen ...
    hot = d["hot_index"]
    assert int(d["workload"].cycles[hot]) == 200
    assert np.mean(d["overflow_idx"] == hot) > 0.6
    # ... and no sample is ever attributed to it
    assert not np.any(d["sample_idx"][d["overflow_idx"] == hot] == hot)


def test_skid_zero_still_reports_the_next_instruction():
    d = pmu.skid_data(skid_max=0)
    assert len(d["offsets"]) > 0 and set(np.unique(d["offsets"])) == {1}


def test_skid_is_seeded():
    a, b = pmu.skid_data(seed=3), pmu.skid_data(seed=3)
    assert np.array_equal(a["offsets"], b["offsets"])
    c = pmu.skid_data(seed=4)
    assert not np.array_equal(a["offsets"][:50], c["offsets"][:50])


def test_skid_run_is_capped_and_instructions_event_counts_one_per_instruction():
    d = pmu.skid_data(period=1000, instructions=2_000_000, event="instructions")
    assert d["instructions"] == pmu.MAX_SKID_SAMPLES * 1000
    # one overflow every 1000 instructions; the last PMI may fall after the run
    assert len(d["offsets"]) in (pmu.MAX_SKID_SAMPLES - 1, pmu.MAX_SKID_SAMPLES)


@pytest.mark.parametrize("kw", [{}, {"period": 1000, "skid_max": 32, "instructions": 2_000_000},
                                {"period": 10_000_000, "instructions": 10_000},
                                {"workload": "pointer_chase", "event": "instructions",
                                 "skid_max": 0, "seed": 2**31 - 1}])
def test_skid_histogram_draws_at_the_slider_ends(kw):
    fig = pmu.skid_histogram(**kw)
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_skid_histogram_with_no_samples_says_so():
    fig = pmu.skid_histogram(period=10_000_000, instructions=10_000)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("no samples" in t for t in texts)


@pytest.mark.parametrize("kw, word", [({"period": 999}, "period"), ({"skid_max": 33}, "skid_max"),
                                      ({"workload": "multi_function"}, "workload"),
                                      ({"event": "branches"}, "event"),
                                      ({"instructions": 3_000_000}, "instructions")])
def test_skid_bad_arguments_name_the_argument(kw, word):
    with pytest.raises(ValueError, match=word):
        pmu.skid_data(**kw)


# --- the stack diagram -----------------------------------------------------------

@pytest.mark.parametrize("flow", list(stack.FLOWS))
def test_stack_diagram_every_flow(flow):
    fig = stack.stack_diagram(flow)
    assert isinstance(fig, Figure)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for folder in ("pebslab/guest/", "pebslab/kvm/", "pebslab/host/", "pebslab/hw/"):
        assert folder in texts
    assert "EPT" in texts and "VM exit" in texts and "PMI injection" in texts


def test_stack_flow_steps():
    assert stack.flow_steps("all") == []
    assert any("EPT" in s for s in stack.flow_steps("pebs"))
    with pytest.raises(ValueError, match="flow"):
        stack.flow_steps("vmcall")


def test_explorers_registry_runs_at_defaults():
    for mod in (pmu, stack):
        for name, (fn, kwargs) in mod.EXPLORERS.items():
            assert fn.__name__ == name
            assert isinstance(fn(**kwargs), Figure)


# --- set-up check -------------------------------------------------------------------

def test_setup_check_versions_and_verify():
    v = setup_check.versions()
    assert list(v) == ["python", *setup_check.PACKAGES]
    active, note = setup_check.jit_status()
    assert isinstance(active, bool) and note
    assert setup_check.verify(quiet=True) is True


def test_setup_check_run_without_warm_up(capsys):
    report = setup_check.run(progress=False, warm_up=False)
    out = capsys.readouterr().out
    assert "numpy" in out and "numba JIT" in out
    assert report.warm_seconds == {}
