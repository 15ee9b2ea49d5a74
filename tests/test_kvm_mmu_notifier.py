"""KVM's MMU notifier (issue 9 item 8): a pinned PEBS buffer loses its EPT entry.

Sources: FACTS g.1 (3.15 try_to_unmap_one -> mmu_notifier_invalidate_page ->
kvm_mmu_notifier_invalidate_page -> kvm_unmap_hva; page_referenced_one ->
kvm_age_rmapp without EPT A/D; change_prot_numa; split_huge_page), SDM
18.9.5 / FACTS c.2 (only EPT-friendly PEBS turns an EPT violation in a
PEBS assist into an ordinary exit), and the APIC-access-page reload KVM
came to use (~3.18 KVM_REQ_APIC_PAGE_RELOAD) for the `fixed` design.
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.hw import core as C
from pebslab.hw import msr as M
from pebslab.kvm import mmu_notifier as MN
from kvm_support import HOT, HOT_IP, baseline, make  # noqa: F401  (tests/ is on sys.path)

ZAP = {
    "reclaim": lambda host: host.reclaim(10_000),
    "age": lambda host: host.mm.age(10_000),
    "ksm_scan": lambda host: host.mm.ksm_scan(10_000),
    "thp_split": lambda host: host.mm.thp_split(10_000),
    "numa_balance": lambda host: host.mm.numa_balance(10_000),
    "migrate_pages": lambda host: host.mm.migrate_pages(10_000),
    "thp_collapse": lambda host: host.mm.thp_collapse(10_000),
}


def pinned_gfns(host, vm):
    return [int(host.mm.gfn[f]) for f in vm.kvm.pmu.pinned_pages]


@pytest.mark.parametrize("zapper", sorted(ZAP))
def test_patch_guest_dies_on_its_pinned_buffer_after_any_zapper(zapper):
    host, vm, guest = make("patch", frames=4096)
    st = S.manual_pebs(guest, period=1, threshold_records=64)
    pins = list(vm.kvm.pmu.pinned_pages)
    gfns = pinned_gfns(host, vm)
    ZAP[zapper](host)
    for f, g in zip(pins, gfns):
        assert host.mm.owner[f] == vm.id and host.mm.ref(f) == 2       # the pin holds the frame
        assert host.mm.hfn_of(vm.id, g) == -1                           # not the EPT entry
    zaps = vm.trace.of("EPT_ZAP")
    pinned_rows = [i for i in vm.trace.info_of("EPT_ZAP") if "pinned" in i]
    assert set(pins) <= set(zaps["frame"].tolist()) and len(pinned_rows) == len(pins)
    st.debug_store()          # guest software touches DS: page tables and DS page refault
    assert host.mm.hfn_of(vm.id, gfns[0]) == pins[0]
    res = vm.run(HOT, 1_000_000)
    assert res.crashed and "PEBS assist took an EPT violation" in vm.crash_reason
    fault = vm.trace.of("PEBS_FAULT")
    assert len(fault) == 1 and int(fault["gva"][0]) & ~0xFFF == st.buffer & ~0xFFF
    assert int(fault["gpa"][0]) >> 12 == gfns[1]          # the pinned first buffer page
    assert vm.destroy() == []
    host.mm.check_invariants()


def test_compaction_skips_pinned_pages_so_the_patch_guest_lives():
    host, vm, guest = make("patch", frames=4096)
    st = S.manual_pebs(guest, period=1, threshold_records=64)
    gfns = pinned_gfns(host, vm)
    host.mm.compact(10_000)
    assert all(host.mm.hfn_of(vm.id, g) >= 0 for g in gfns)
    st.debug_store()
    res = vm.run(HOT, 1_000_000)
    assert not res.crashed and vm.trace.of("PEBS_WRITE").size > 0


def test_aging_with_ept_ad_bits_leaves_the_patch_guest_alone():
    host, vm, guest = make("patch", frames=4096)
    S.manual_pebs(guest, period=1, threshold_records=64)
    assert host.mm.age(10_000, ept_ad=True) == []
    assert not vm.run(HOT, 1_000_000).crashed


@pytest.mark.parametrize("zapper", sorted(ZAP))
def test_fixed_reloads_the_pinned_pages_before_the_next_entry(zapper):
    host, vm, guest = make("fixed", frames=4096)
    st = S.manual_pebs(guest, threshold_records=4)
    pins = list(vm.kvm.pmu.pinned_pages)
    gfns = pinned_gfns(host, vm)
    ZAP[zapper](host)
    assert vm.mmu_notifier.reload_pending == {0}
    assert all(host.mm.hfn_of(vm.id, g) == -1 for g in gfns)        # zapped, DS/buffer/tables
    res = vm.run(HOT, 5_000_000)
    assert not res.crashed and vm.mmu_notifier.reload_pending == set()
    assert [host.mm.hfn_of(vm.id, g) for g in gfns] == pins          # the same frames again
    reloads = [i for i in vm.trace.info_of("NOTE") if i.startswith("PEBS reload")]
    assert len(reloads) == len(pins)
    assert st.samples and set(st.sample_ips()) == {HOT_IP}
    assert vm.destroy() == []
    host.mm.check_invariants()


def test_fixed_keeps_guest_pebs_off_for_an_entry_it_cannot_reload():
    host, vm, guest = make("fixed", frames=4096)
    S.manual_pebs(guest, threshold_records=4)
    v = vm.vcpus[0]
    host.reclaim(10_000)
    v.pmu.pinned_pages.append(0)              # planted: a host frame the VM cannot map
    assert vm.mmu_notifier.kvm_check_request(v) is False
    assert vm.mmu_notifier.reload_pending == {0}
    seen = []
    real_entry = pl.kvm.vmx.vm_entry

    def spy(vcpu):
        real_entry(vcpu)
        seen.append(int(vcpu.core.regs[C.R_PEBS_ENABLE]))
    try:
        pl.kvm.vmx.vm_entry = spy
        vm.run(HOT, 10_000)
    finally:
        pl.kvm.vmx.vm_entry = real_entry
    assert seen and set(seen) == {0}
    assert any("guest PEBS kept off" in i for i in vm.trace.info_of("NOTE"))
    assert vm.trace.of("PEBS_WRITE").size == 0
    v.pmu.pinned_pages.remove(0)
    assert vm.mmu_notifier.kvm_check_request(v) is True
    assert vm.mmu_notifier.reload_pending == set()


def test_icelake_takes_the_ept_violation_and_resolves_it():
    host, vm, guest = make("icelake", cpu="icelake", frames=4096)
    st = S.manual_pebs(guest, event=0x20D1)      # MEM_LOAD_RETIRED.L3_MISS
    host.mm.numa_balance(10_000)
    assert vm.mmu_notifier.reload_pending == set()
    res = vm.run(HOT, 5_000_000)
    assert not res.crashed and res.exits.get("EPT_VIOLATION", 0) > 0
    assert st.samples and set(st.sample_ips()) == {HOT_IP}


def test_gfn_to_pfn_makes_the_page_resident_but_maps_nothing_in_ept():
    host, vm, guest = make("patch")
    v = vm.vcpus[0]
    gfn = 300
    host.mm.reclaim(10_000)
    assert host.mm.is_swapped(vm.id, gfn)
    hfn = v.gfn_to_pfn(gfn)
    assert host.mm.hfn_of(vm.id, gfn) == -1 and host.mm.is_unmapped(vm.id, gfn)
    assert host.mm.ref(hfn) == 2                       # the VM's reference + the one taken
    host.mm.put_page(hfn)
    vm.phys.read(gfn << 12, 8)                         # the guest's access maps that frame
    assert host.mm.hfn_of(vm.id, gfn) == hfn
    host.mm.check_invariants()


def test_the_3_15_guest_repins_every_pmi_but_that_restores_no_ept_entry():
    host = pl.Host(cpu="silvermont", frames=2048, seed=0)
    vm = host.create_vm(design="patch", memory_pages=512)
    guest = pl.GuestKernel(vm, linux="3.15")
    guest.perf.record("MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", period=3)
    assert vm.run(HOT, 10 * len(HOT)).pmis_injected > 0
    pins = list(vm.kvm.pmu.pinned_pages)
    host.mm.thp_split(10_000)
    guest.perf.read_ds()                      # DS page and page tables refault
    res = vm.run(HOT, 100 * len(HOT))
    assert res.crashed and "PEBS assist" in vm.crash_reason
    assert vm.kvm.pmu.pinned_pages == pins
    assert vm.destroy() == []


def test_accounting_is_exact_after_zaps_and_destroy():
    host = pl.Host(frames=2048, seed=0)
    ref0, owner0 = baseline(host)
    for design in ("patch", "fixed"):
        vm = host.create_vm(design=design, memory_pages=256)
        guest = pl.GuestKernel(vm)
        S.manual_pebs(guest, threshold_records=4)
        vm.run(HOT, 200_000)
        for zap in ZAP.values():
            zap(host)
            host.mm.check_invariants()
        vm.run(HOT, 200_000)
        assert vm.destroy() == []
        assert np.array_equal(host.mm.refcount, ref0) and np.array_equal(host.mm.owner, owner0)
        assert host.mm.unmapped == {} and host.mm.swap == {}
    host.mm.check_invariants()


def test_force_guest_pebs_off_zeroes_the_entry_load_value():
    host, vm, guest = make("patch")
    S.manual_pebs(guest)
    v = vm.vcpus[0]
    pl.kvm.vmx.vmx_prepare_msrs(v)
    assert any(g[0] == M.MSR_IA32_PEBS_ENABLE and g[1] for g in v.autoload.guest)
    MN.force_guest_pebs_off(v)
    assert [g[1] for g in v.autoload.guest if g[0] == M.MSR_IA32_PEBS_ENABLE] == [0]
