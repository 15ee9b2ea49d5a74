"""Notebook 07's timeline: the PEBS MSRs in guest and host mode, from a real session's lists."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

from pebslab.viz import switching as S

# 2014 vmx.c: NR_AUTOLOAD_MSRS = 8 (FACTS c.5)
NR_AUTOLOAD_MSRS = 8


@pytest.fixture(scope="module")
def patch_run():
    return S.switching_run("patch")


def test_patch_switches_all_three_while_the_guest_profiles(patch_run):
    p = patch_run.phase("record")
    names = [n for n, _, _ in p.autoload]
    # atomic_switch_perf_msrs adds GLOBAL_CTRL and PEBS_ENABLE, the patch's hunk DS_AREA after them
    assert names == ["MSR_CORE_PERF_GLOBAL_CTRL", "MSR_IA32_PEBS_ENABLE", "MSR_IA32_DS_AREA"]
    assert p.guest_mode["DS_AREA"] == p.guest_wrote["DS_AREA"] != 0
    assert p.host_mode["DS_AREA"] == S.host_ds_area() != p.guest_mode["DS_AREA"]
    # the guest-owned precise event counts and does PEBS only in guest mode
    assert p.guest_mode["PEBS_ENABLE"] == 1 and p.host_mode["PEBS_ENABLE"] == 0
    assert p.guest_mode["GLOBAL_CTRL"] == 1 and p.host_mode["GLOBAL_CTRL"] == 0
    assert p.records > 0 and p.pmis == p.records and not p.hazards and not p.crashed


def test_equal_host_and_guest_values_leave_the_list(patch_run):
    # atomic_switch_perf_msrs clears an MSR whose host and guest values are equal (FACTS c.3)
    assert patch_run.phase("boot").autoload == ()
    stopped = [n for n, _, _ in patch_run.phase("stop").autoload]
    assert stopped == ["MSR_IA32_DS_AREA"]


def test_patch_keeps_a_stale_ds_area_entry_and_fixed_clears_it(patch_run):
    p = patch_run.phase("ds_zero")
    # the hunk only adds when ds_area != 0 and never clears: the old GVA is still loaded
    assert p.guest_wrote["DS_AREA"] == 0
    assert p.guest_mode["DS_AREA"] == patch_run.phase("record").guest_wrote["DS_AREA"]
    assert any("stale" in why for _, _, why in p.hazards)
    q = S.switching_run("patch", ds_area_clear_on_zero=True).phase("ds_zero")
    assert q.autoload == () and q.guest_mode["DS_AREA"] == S.host_ds_area()


def test_unswitched_ds_area_aims_guest_records_at_the_host_area():
    run = S.switching_run("patch", switch_ds_area=False)
    p = run.phase("record")
    assert p.guest_mode["DS_AREA"] == S.host_ds_area() and p.guest_mode["PEBS_ENABLE"]
    # Silvermont cannot take a fault in the assist: the record is lost, the guest dies
    assert p.crashed and "PEBS assist" in p.crash_reason and p.records == 0
    assert ("guest", "DS_AREA") in {(w, m) for w, m, _ in p.hazards}


@pytest.mark.parametrize("knob, msr", [("switch_pebs_enable", "PEBS_ENABLE"),
                                       ("switch_global_ctrl", "GLOBAL_CTRL")])
def test_unswitched_pebs_enable_or_global_ctrl_loses_every_record_silently(knob, msr):
    p = S.switching_run("patch", **{knob: False}).phase("record")
    assert p.guest_wrote[msr] == 1 and p.guest_mode[msr] == 0
    assert p.records == 0 and p.samples == 0 and not p.crashed


def test_a_full_list_drops_ds_area_first_then_pebs_enable():
    six = S.switching_run("patch", extra_autoload=NR_AUTOLOAD_MSRS - 2).phase("record")
    assert len(six.autoload) == NR_AUTOLOAD_MSRS and six.full >= 1
    assert "MSR_IA32_DS_AREA" not in [n for n, _, _ in six.autoload] and six.crashed
    seven = S.switching_run("patch", extra_autoload=NR_AUTOLOAD_MSRS - 1).phase("record")
    assert [n for n, _, _ in seven.autoload][-1] == "MSR_CORE_PERF_GLOBAL_CTRL"
    assert not seven.crashed and seven.records == 0
    # fixed's rule: keep guest PEBS off rather than run it with the host's DS area
    kept = S.switching_run("patch", extra_autoload=6, autoload_full="disable_pebs").phase("record")
    assert not kept.crashed and kept.guest_mode["PEBS_ENABLE"] == 0


def test_knob_outcomes_cover_every_switch():
    rows = {r["setting"]: r for r in S.knob_outcomes()}
    assert rows["all switched (patch)"]["samples"] > 0
    assert rows["DS_AREA not switched"]["crashed"]
    assert rows["PEBS_ENABLE not switched"]["samples"] == 0


def test_same_seed_same_session():
    assert S.switch_table(seed=2) == S.switch_table(seed=2)


@pytest.mark.parametrize("kw", [{}, {"switch_ds_area": False}, {"extra_autoload": 8},
                                {"switch_global_ctrl": False, "switch_pebs_enable": False,
                                 "switch_ds_area": False, "ds_area_clear_on_zero": True},
                                {"design": "icelake"}, {"design": "fixed", "extra_autoload": 6}])
def test_timeline_draws_at_the_widget_ends(kw):
    fig = S.switch_timeline(**kw)
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"GLOBAL_CTRL", "PEBS_ENABLE", "DS_AREA"} <= texts
    plt.close(fig)


@pytest.mark.parametrize("kw, exc", [({"design": "v2"}, ValueError),
                                     ({"extra_autoload": 9}, ValueError),
                                     ({"switch_ds_area": "no"}, TypeError),
                                     ({"autoload_full": "panic"}, ValueError),
                                     ({"seed": -1}, ValueError)])
def test_bad_arguments_are_named(kw, exc):
    with pytest.raises(exc, match=next(iter(kw))):
        S.switching_run(**kw)
