"""Every correction of the `fixed` design, one at a time, against the `patch` behaviour.

For each knob in pebslab.kvm.designs.FIXES: the same scenario runs under
`patch` and under `patch` with only that knob (plus its stated
prerequisites) set as in `fixed`; the outcomes must differ the way the
fix says. The full `fixed` design must also show the fixed outcome.
"""

from __future__ import annotations

import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.kvm.designs import FIXED, FIXES
from pebslab.hw import msr as M

HOT = pl.workloads.hot_loop()

# prerequisites: a knob that only acts through another knob
PREREQ = {
    "pin": {"pin_limit": FIXED.pin_limit},
    # a pin keeps the frame, not the EPT entry (FACTS g.1): surviving reclaim also
    # needs the reload of the pinned pages' EPT entries before entry
    "track_guest_page_tables": {"pin": "fixed", "pin_limit": FIXED.pin_limit,
                                "pin_page_tables": True, "reload_pinned_ept": True},
    "pin_page_tables": {"pin": "fixed", "pin_limit": FIXED.pin_limit,
                        "reload_pinned_ept": True},
    "reload_pinned_ept": {"pin": "fixed", "pin_limit": FIXED.pin_limit,
                          "pin_page_tables": True},
}


def vm_with(knobs, *, frames=4096, pages=512, cpuid=None, extra_autoload=0):
    host = pl.Host(frames=frames, seed=0)
    vm = host.create_vm(design=pl.get_design("patch", **knobs), memory_pages=pages,
                        cpuid=cpuid, extra_autoload=extra_autoload)
    return host, vm, pl.GuestKernel(vm)


def _last_page_pinned(knobs):
    host, vm, g = vm_with(knobs)
    st = S.manual_pebs(g, buf_offset=2048)
    gpa = vm.vcpus[0].gva_to_gpa((st.absolute_maximum - 1) & ~0xFFF)
    return host.mm.hfn_of(vm.id, gpa >> 12) in vm.kvm.pmu.pinned_pages


def _straddle_all_pinned(knobs):
    host, vm, g = vm_with(knobs)
    st = S.manual_pebs(g, ds_offset=4096 - 64)
    gpa = vm.vcpus[0].gva_to_gpa((st.absolute_maximum - 1) & ~0xFFF)
    return host.mm.hfn_of(vm.id, gpa >> 12) in vm.kvm.pmu.pinned_pages


def _hidden_pebs_gp(knobs):
    no_pebs = pl.cpuid.default("silvermont").without("PDCM", "DS", "DTES64")
    _, vm, _ = vm_with(knobs, cpuid=no_pebs)
    try:
        vm.vcpus[0].rdmsr(M.MSR_IA32_PEBS_ENABLE)
        return False
    except pl.GuestFault:
        return True


def _new_ds_pinned(knobs):
    host, vm, g = vm_with(knobs)
    st = S.manual_pebs(g)
    new_ds = g.mm.alloc(1)
    g.write(new_ds, st.debug_store().to_bytes())
    vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, new_ds)
    frame = host.mm.hfn_of(vm.id, vm.vcpus[0].gva_to_gpa(new_ds) >> 12)
    return frame in vm.kvm.pmu.pinned_pages


def _survives_remap(knobs):
    host, vm, g = vm_with(knobs)
    st = S.manual_pebs(g, threshold_records=4)
    S.remap_buffer_page(g, st, page=0)
    host.reclaim(10_000)
    return not vm.run(HOT, 5_000_000).crashed


def _survives_pressure_on_page_tables(knobs):
    host, vm, g = vm_with(knobs)
    S.manual_pebs(g, threshold_records=4)
    host.reclaim(10_000)          # page-table pages are unpinned unless the knob pins them
    return not vm.run(HOT, 2_000_000).crashed


def _survives_pressure_on_pinned_pages(knobs):
    host, vm, g = vm_with(knobs)
    S.manual_pebs(g, threshold_records=4)
    host.reclaim(10_000)          # zaps the EPT entries of every pinned page too
    res = vm.run(HOT, 2_000_000)
    return not res.crashed and vm.trace.of("PEBS_WRITE").size > 0


def _pin_failure_gp(knobs):
    host, vm, g = vm_with(knobs)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_DS_AREA, 0xFFFF888000F00000)   # not mapped in the guest
    try:
        v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)
        return False
    except pl.GuestFault:
        return True


def _pebs_enable_pmc3_gp(knobs):
    _, vm, _ = vm_with(knobs)
    try:
        vm.vcpus[0].wrmsr(M.MSR_IA32_PEBS_ENABLE, 0x8)
        return False
    except pl.GuestFault:
        return True


def _noncanonical_ds_gp(knobs):
    _, vm, _ = vm_with(knobs)
    try:
        vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, 1 << 47)
        return False
    except pl.GuestFault:
        return True


def _reset_clears(knobs):
    _, vm, g = vm_with(knobs)
    S.manual_pebs(g)
    vm.vcpus[0].reset()
    return vm.kvm.pmu.pebs_enable == 0 and vm.kvm.pmu.num_pinned_pages == 0


def _ds_zero_clears_autoload(knobs):
    _, vm, g = vm_with(knobs)
    S.manual_pebs(g)
    vm.run(HOT, 1000)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)
    v.wrmsr(M.MSR_IA32_DS_AREA, 0)
    vm.run(HOT, 1000)
    return "MSR_IA32_DS_AREA" not in [n for n, _, _ in vm.kvm.autoload.table()]


def _full_autoload_survives(knobs):
    _, vm, g = vm_with(knobs, extra_autoload=6)
    S.manual_pebs(g)
    return not vm.run(HOT, 2_000_000).crashed


def _pebs_off_really_stops(knobs):
    host, vm, g = vm_with(knobs)
    S.manual_pebs(g, threshold_records=4)
    vm.vcpus[0].wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)     # pins dropped here
    host.reclaim(10_000)
    res = vm.run(HOT, 2_000_000)
    return not res.crashed and vm.trace.of("PEBS_WRITE").size == 0


DEMOS = {
    "reprogram_on_pebs_enable": _pebs_off_really_stops,
    "pebs_msrs_gate": _hidden_pebs_gp,
    "pin": _last_page_pinned,
    "pin_limit": _straddle_all_pinned,
    "repin_on_ds_area_write": _new_ds_pinned,
    "track_guest_page_tables": _survives_remap,
    "pin_page_tables": _survives_pressure_on_page_tables,
    "reload_pinned_ept": _survives_pressure_on_pinned_pages,
    "pin_failure": _pin_failure_gp,
    "pebs_enable_mask": _pebs_enable_pmc3_gp,
    "ds_area_canonical_check": _noncanonical_ds_gp,
    "reset_clears_pebs": _reset_clears,
    "ds_area_clear_on_zero": _ds_zero_clears_autoload,
    "autoload_full": _full_autoload_survives,
}


def test_every_fix_is_demonstrated_here_or_in_migration_tests():
    # dirty_log_skips_pinned is shown in tests/test_kvm_migration.py
    assert set(FIXES) - {"dirty_log_skips_pinned"} == set(DEMOS)


@pytest.mark.parametrize("knob", sorted(DEMOS))
def test_fix_changes_the_outcome(knob):
    demo = DEMOS[knob]
    knobs = dict(PREREQ.get(knob, {}))
    knobs[knob] = getattr(FIXED, knob)
    if knob == "pin_limit":
        knobs["pin_limit"] = 18          # room for 2 DS pages + 16 buffer pages
    assert demo({}) is False, f"patch should show the limitation {knob!r} fixes"
    assert demo(knobs) is True, f"{knob}: {FIXES[knob]}"


@pytest.mark.parametrize("knob", sorted(DEMOS))
def test_full_fixed_design_shows_every_fix(knob):
    knobs = {f: getattr(FIXED, f) for f in FIXES}
    knobs["pebs_msrs_gate"] = FIXED.pebs_msrs_gate
    assert DEMOS[knob](knobs) is True
