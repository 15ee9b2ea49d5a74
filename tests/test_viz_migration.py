"""Tests for pebslab.viz.migration (notebook 10's figures).

Expected values come from the patch's rules (kvm_pmu_set_msr pins on a
PEBS_ENABLE write from the DS_AREA KVM holds; reprogram_gp_counter reads
pebs_enable only when it creates the host event) and from the set-up: a
DS page plus 16 buffer pages, at most 17 pins (the patch's
MAX_PINNED_PAGES), PEBS only on PMC0 on Silvermont (FACTS a.7).
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import pebslab as pl  # noqa: E402
from pebslab.hw import msr as M  # noqa: E402
from pebslab.kvm import dirty_log as DL  # noqa: E402
from pebslab.hw.mmu import EPT_W  # noqa: E402
from pebslab.viz import migration as VZ  # noqa: E402
from pebslab.vmm import migrate as MG  # noqa: E402


@pytest.fixture(scope="module")
def saved():
    src = VZ.source_vm("patch")
    return src, MG.save_state(src.vm)


def _dest():
    return pl.Host(cpu="silvermont", frames=1024, seed=1)


@pytest.mark.parametrize("order", MG.MSR_ORDERS)
def test_replay_of_a_named_order_ends_where_restore_state_ends(saved, order):
    src, state = saved
    vm, steps = VZ.replay_restore(state, _dest(), MG.restore_order(state.vcpus[0].msrs, order))
    ref = MG.restore_state(state, _dest(), msr_order=order)
    final = ref.restore_report["vcpus"][0]["final"]
    assert steps[-1].missing == len(final["missing"])
    assert steps[-1].pinned == len(final["pinned"])
    assert (steps[-1].host_event == "precise") == ref.restore_report["vcpus"][0]["armed"][0]
    assert MG.save_state(vm).vcpus[0].msrs == state.vcpus[0].msrs
    assert vm.vcpus[0].core.tsc == state.vcpus[0].tsc


def test_each_step_shows_the_patch_acting_at_once(saved):
    src, state = saved
    order = MG.restore_order(state.vcpus[0].msrs, "userspace")
    vm, steps = VZ.replay_restore(state, _dest(), order)
    by = {s.msr: s for s in steps}
    assert M.MSR_IA32_PERF_CAPABILITIES not in by               # read-only: not written
    assert by[M.MSR_IA32_PEBS_ENABLE].ds_area == 0 and by[M.MSR_IA32_PEBS_ENABLE].pinned == 0
    assert by[M.MSR_CORE_PERF_GLOBAL_CTRL].host_event == "counting"
    assert by[M.MSR_IA32_DS_AREA].pinned == 0 and by[M.MSR_IA32_DS_AREA].missing == 17
    assert all(s.host_event == "none" for s in steps if s.msr < M.MSR_CORE_PERF_GLOBAL_CTRL)


def test_pebs_first_pins_17_and_arms_pmc0_and_the_destination_writes_records():
    state, vm, steps, out = VZ.restore_steps("patch", "pebs_first")
    assert steps[1].msr == M.MSR_IA32_PEBS_ENABLE and steps[1].pinned == 17   # DS + 16 pages
    assert steps[-1].host_event == "precise"
    assert out["records"] == out["source_records"] > 0 and not out["crashed"]


def test_a_custom_order_with_global_ctrl_first_still_counts_without_pebs(saved):
    src, state = saved
    msrs = list(state.vcpus[0].msrs)
    order = [M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_P6_EVNTSEL0, M.MSR_IA32_DS_AREA,
             M.MSR_IA32_PEBS_ENABLE]
    order += [m for m in msrs if m not in order]
    vm, steps = VZ.replay_restore(state, _dest(), order)
    assert steps[-1].missing == 0 and steps[-1].host_event == "counting"


def test_fixed_defers_and_adds_a_final_step(saved):
    state, vm, steps, out = VZ.restore_steps("fixed", "userspace")
    assert steps[-1].msr == 0 and steps[-1].missing == 0 and steps[-1].host_event == "precise"
    assert steps[-2].pinned == 0                     # nothing pinned before the end of the list
    assert out["records"] == out["source_records"]


def test_icelake_restores_on_icelake_and_pins_nothing():
    state, vm, steps, out = VZ.restore_steps("icelake", "userspace")
    assert vm.cpu.name == "icelake" and all(s.pinned == 0 for s in steps)
    assert out["records"] == out["source_records"] > 0


def test_refused_destination_reports_reasons():
    state, vm, steps, out = VZ.restore_steps("patch", "userspace", dest_cpu="skylake")
    assert vm is None and steps == []
    assert any("different PEBS format" in r for r in out["reasons"])


def test_replay_rejects_bad_orders(saved):
    src, state = saved
    with pytest.raises(ValueError, match="order must only name saved MSRs"):
        VZ.replay_restore(state, _dest(), [0x123])
    with pytest.raises(TypeError, match="order must be a list of MSR indices"):
        VZ.replay_restore(state, _dest(), ["DS_AREA"])
    with pytest.raises(TypeError, match="state must be a VmState"):
        VZ.replay_restore({}, _dest(), [])


def test_leave_writable_keeps_pages_writable_and_always_dirty():
    src = VZ.source_vm("patch", instructions=0)
    vm = src.vm
    pinned = sorted(int(vm.host_mm.gfn[h]) for h in vm.kvm.pmu.pinned_pages)
    with pytest.raises(ValueError, match="dirty logging is not enabled"):
        VZ.leave_writable(vm, pinned)
    DL.start_dirty_logging(vm)
    VZ.leave_writable(vm, pinned)
    assert all(int(vm.ept[g]) & EPT_W for g in pinned)
    res = vm.run(pl.workloads.hot_loop(), 20_000)
    assert not res.crashed and set(pinned) <= set(DL.get_dirty_log(vm))
    with pytest.raises(ValueError, match="gfn must be"):
        VZ.leave_writable(vm, [10**6])


def test_live_migration_rounds_per_design():
    patch = VZ.live_migration_rounds("patch", "silvermont")
    assert patch["crashed"] and patch["pages_sent"] == [256] and patch["pebs_faults"] == 1
    fixed = VZ.live_migration_rounds("fixed", "silvermont")
    # fixed pins DS + 16 buffer pages + the 4 guest page-table pages: all sent every round
    assert fixed["pages_sent"][1:] == [21, 21, 21] and fixed["dirty_faults"] == 0
    assert fixed["memory_consistent"] and fixed["dest_records"] > 0
    ice = VZ.live_migration_rounds("icelake", "icelake")
    assert ice["always_dirty"] == [] and ice["dirty_faults"] > 0 and ice["memory_consistent"]
    assert ice["dest_records"] == ice["source_records"] / 2 > 0     # 2 rounds of the same run


@pytest.mark.parametrize("design", pl.DESIGN_NAMES)
@pytest.mark.parametrize("order", VZ.ORDER_CHOICES)
def test_explorer_draws_every_setting(design, order):
    fig = VZ.restore_timeline(design, order)
    assert fig.axes and len(fig.axes[0].get_xticklabels()) >= 13
    plt.close(fig)


def test_live_migration_figure_draws():
    fig = VZ.live_migration_figure()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert "migration aborted" in labels[0] and "destination" in labels[1]
    plt.close(fig)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="design must be one of"):
        VZ.restore_timeline(design="v2")
    with pytest.raises(ValueError, match="msr_order must be one of"):
        VZ.restore_steps("patch", "random")
    with pytest.raises(ValueError, match="rounds must be"):
        VZ.live_migration_rounds(rounds=-1)
    assert VZ.pebs_event("silvermont") == 0x0404


def test_restoring_the_cached_source_twice_gives_the_same_steps():
    a = VZ.restore_steps("patch", "pebs_first")
    b = VZ.restore_steps("patch", "pebs_first")
    assert a[0] is b[0]                                   # one saved source per design
    assert a[2] == b[2] and a[3] == b[3]
