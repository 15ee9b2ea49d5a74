"""KVM with the PEBS patch: each design's behaviour on the same scenarios.

Expected behaviour comes from the patch text (shared seed) and FACTS b/c/e:
the PEBS_ENABLE mask 0xf0000000f, the 17-page pin cap, the DS area copy of
the patch's 96-byte struct, the autoload limit of 8.
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.hw import msr as M
from pebslab.kvm import pebs_pin

HOT = pl.workloads.hot_loop()
HOT_IP = int(HOT.ip[37])
NEXT_IP = int(HOT.ip[38])


def make(design="patch", cpu="silvermont", frames=2048, pages=512, seed=0, cpuid=None, **kw):
    host = pl.Host(cpu=cpu, frames=frames, seed=seed)
    vm = host.create_vm(design=design, memory_pages=pages, cpuid=cpuid, **kw)
    guest = pl.GuestKernel(vm)
    return host, vm, guest


def baseline(host):
    return host.mm.refcount.copy(), host.mm.owner.copy()


# --------------------------------------------------------------------------- gating

def test_patch_exposes_pebs_msrs_on_silvermont_only():
    _, vm, _ = make("patch")
    v = vm.vcpus[0]
    cap = v.rdmsr(M.MSR_IA32_PERF_CAPABILITIES)
    # the patch reports only PEBS_TRAP | ARCH_REG | PEBS_FORMAT of the host value
    host_cap = pl.get_model("silvermont").perf_capabilities
    assert cap == host_cap & (M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG | M.PERF_CAP_PEBS_FORMAT)
    _, vm2, _ = make("patch", cpu="haswell")
    with pytest.raises(pl.GuestFault):
        vm2.vcpus[0].rdmsr(M.MSR_IA32_PEBS_ENABLE)
    assert not vm2.cpuid.has("PDCM") and not vm2.cpuid.has("DS")


def test_review_gates_pebs_msrs_on_guest_cpuid_patch_does_not():
    no_pebs = pl.cpuid.default("silvermont").without("PDCM", "DS", "DTES64")
    _, vm_p, _ = make("patch", cpuid=no_pebs)
    _, vm_r, _ = make("review", cpuid=no_pebs)
    # patch: the PEBS MSRs are there although the guest CPUID says no PEBS
    vm_p.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, 0xFFFF888000001000)
    assert vm_p.vcpus[0].rdmsr(M.MSR_IA32_DS_AREA) == 0xFFFF888000001000
    # review: #GP on all three, and the ordinary PMU still works
    for msr in (M.MSR_IA32_DS_AREA, M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_PERF_CAPABILITIES):
        with pytest.raises(pl.GuestFault) as e:
            vm_r.vcpus[0].rdmsr(msr)
        assert e.value.vector == "#GP" and e.value.msr == msr
    v = vm_r.vcpus[0]
    v.wrmsr(M.MSR_IA32_PERFCTR0, 0)
    v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0x00))
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    vm_r.run(HOT, 100_000)
    assert v.rdmsr(M.MSR_IA32_PERFCTR0) == 100_000
    # with full CPUID the review design behaves like the patch
    _, vm_r2, _ = make("review")
    vm_r2.vcpus[0].wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)


def test_pebs_enable_reserved_mask_patch_vs_fixed():
    _, vm_p, _ = make("patch")
    _, vm_f, _ = make("fixed")
    # 0xf0000000f: the patch accepts PMC1..3 and load-latency bits although
    # Silvermont has PEBS on PMC0 only (and only 2 GP counters)
    for value in (0x8, 0x1 << 33):
        vm_p.vcpus[0].wrmsr(M.MSR_IA32_PEBS_ENABLE, value)
        with pytest.raises(pl.GuestFault):
            vm_f.vcpus[0].wrmsr(M.MSR_IA32_PEBS_ENABLE, value)
    for design, vm in (("patch", vm_p), ("fixed", vm_f)):
        with pytest.raises(pl.GuestFault):
            vm.vcpus[0].wrmsr(M.MSR_IA32_PEBS_ENABLE, 0x10)


def test_ds_area_canonical_check_patch_vs_fixed():
    _, vm_p, _ = make("patch")
    _, vm_f, _ = make("fixed")
    bad = 0x0000800000000000
    vm_p.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, bad)
    with pytest.raises(pl.GuestFault):
        vm_f.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, bad)


def test_perf_capabilities_is_read_only():
    _, vm, _ = make("patch")
    with pytest.raises(pl.GuestFault):
        vm.vcpus[0].wrmsr(M.MSR_IA32_PERF_CAPABILITIES, 0)


# --------------------------------------------------------------------------- pinning

def test_patch_pins_ds_plus_16_buffer_pages_and_samples_are_exact():
    host, vm, guest = make("patch")
    st = S.manual_pebs(guest)
    pinned = vm.kvm.pmu.pinned_pages
    assert len(pinned) == 17
    assert all(host.mm.refcount[f] == 2 for f in pinned)
    vm.run(HOT, 2_000_000)
    assert st.samples, "PEBS produced no samples"
    assert set(st.sample_ips("real_ip")) == {HOT_IP}   # eventing IP: exact
    assert set(st.sample_ips("ip")) == {NEXT_IP}        # trap-like: one later
    frames = S.frames_written_by_pebs(vm)
    assert frames <= set(pinned)


def test_patch_misses_last_page_of_unaligned_buffer_fixed_does_not():
    for design, expect_all in (("patch", False), ("fixed", True)):
        host, vm, guest = make(design)
        st = S.manual_pebs(guest, buf_offset=2048)
        need = pebs_pin.needed_pages(st.ds, st.buffer, st.absolute_maximum)
        plan = pebs_pin.patch_pin_plan(st.ds, st.buffer, st.absolute_maximum)
        assert len(need) == 18 and len(plan) == 17
        assert set(need) - set(plan) == {(st.absolute_maximum - 1) & ~0xFFF}
        pinned = set(vm.kvm.pmu.pinned_pages)
        last_gpa = vm.vcpus[0].gva_to_gpa((st.absolute_maximum - 1) & ~0xFFF)
        last_frame = host.mm.hfn_of(vm.id, last_gpa >> 12)
        assert (last_frame in pinned) is expect_all


def test_ds_area_straddling_two_pages_is_pinned_twice():
    host, vm, guest = make("patch")
    st = S.manual_pebs(guest, ds_offset=4096 - 64)
    plan = pebs_pin.patch_pin_plan(st.ds, st.buffer, st.absolute_maximum)
    assert plan[1] - plan[0] == 4096
    # 2 DS pages + 15 buffer pages = the 17-page cap: the last buffer page is not pinned
    assert len(vm.kvm.pmu.pinned_pages) == 17
    need = pebs_pin.needed_pages(st.ds, st.buffer, st.absolute_maximum)
    assert len(need) == 18


def test_reclaim_skips_pinned_frames_and_unpinned_page_crashes_patch_guest_only():
    host, vm, guest = make("patch", frames=4096)
    other = host.create_vm(design="patch", memory_pages=256)
    # one record per hot load; no PMI before the buffer is full
    st = S.manual_pebs(guest, buf_offset=2048, period=1, threshold_records=65536)
    pinned = list(vm.kvm.pmu.pinned_pages)
    host.reclaim(10_000)                           # everything that can go, goes
    assert all(host.mm.owner[f] == vm.id for f in pinned)
    st.debug_store()          # the guest touches its DS: its page tables come back in
    res = vm.run(HOT, 2_000_000)
    # the records fill the pinned pages, then reach the last (unpinned, swapped)
    # page of the unaligned buffer: an EPT violation Silvermont cannot handle
    assert res.crashed and vm.crashed and "PEBS assist" in vm.crash_reason
    fault = vm.trace.of("PEBS_FAULT")
    last_page = (st.absolute_maximum - 1) & ~0xFFF
    assert len(fault) == 1 and int(fault["gva"][0]) & ~0xFFF == last_page
    assert len(vm.trace.of("GUEST_CRASH")) == 1
    # the other VM is unaffected
    assert not other.crashed
    r2 = other.run(HOT, 10_000)
    assert r2.instructions == 10_000


def test_fixed_design_survives_the_same_pressure():
    host, vm, guest = make("fixed", frames=4096)
    st = S.manual_pebs(guest, buf_offset=2048, threshold_records=20)
    host.reclaim(10_000)
    res = vm.run(HOT, 30_000_000)
    assert not res.crashed
    assert st.samples and set(st.sample_ips()) == {HOT_IP}


def test_guest_remap_after_setup_hurts_only_itself_under_patch_fixed_repins():
    for design in ("patch", "fixed"):
        host, vm, guest = make(design, frames=4096)
        other = host.create_vm(design=design, memory_pages=256)
        st = S.manual_pebs(guest, threshold_records=4)
        old, new = S.remap_buffer_page(guest, st, page=0)
        host.reclaim(10_000)
        res = vm.run(HOT, 20_000_000)
        if design == "patch":
            assert res.crashed
        else:
            assert not res.crashed and st.samples
            # the new page is pinned now
            hfn = host.mm.hfn_of(vm.id, new >> 12)
            assert hfn in vm.kvm.pmu.pinned_pages
        assert not other.crashed
        owned = {f for f in range(host.mm.frames) if host.mm.owner[f] == vm.id}
        assert S.frames_written_by_pebs(vm) <= owned


def test_ds_area_change_while_enabled_patch_keeps_old_pins_fixed_repins():
    for design in ("patch", "fixed"):
        host, vm, guest = make(design)
        st = S.manual_pebs(guest)
        before = list(vm.kvm.pmu.pinned_pages)
        new_ds = guest.mm.alloc(1)
        guest.write(new_ds, st.debug_store().to_bytes())
        vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, new_ds)
        after = vm.kvm.pmu.pinned_pages
        new_frame = host.mm.hfn_of(vm.id, vm.vcpus[0].gva_to_gpa(new_ds) >> 12)
        if design == "patch":
            assert after == before and new_frame not in after
        else:
            assert new_frame in after


def test_vcpu_reset_patch_keeps_pebs_state_and_pins_fixed_clears():
    for design in ("patch", "fixed"):
        host, vm, guest = make(design)
        S.manual_pebs(guest)
        vm.vcpus[0].reset()
        pmu = vm.kvm.pmu
        if design == "patch":
            assert pmu.pebs_enable == 1 and pmu.num_pinned_pages == 17
        else:
            assert pmu.pebs_enable == 0 and pmu.num_pinned_pages == 0 and pmu.ds_area == 0


def test_destroy_returns_every_frame_and_refcount():
    for design in ("patch", "review", "fixed"):
        host = pl.Host(frames=2048)
        ref0, owner0 = baseline(host)
        vm = host.create_vm(design=design, memory_pages=512)
        guest = pl.GuestKernel(vm)
        S.manual_pebs(guest, buf_offset=1024, ds_offset=4032)
        vm.run(HOT, 500_000)
        host.reclaim(100)
        assert vm.destroy() == []
        assert np.array_equal(host.mm.refcount, ref0)
        assert np.array_equal(host.mm.owner, owner0)
        host.mm.check_invariants()


# --------------------------------------------------------------------------- VMX switching

def test_entry_switches_global_ctrl_pebs_enable_and_ds_area():
    _, vm, guest = make("patch")
    st = S.manual_pebs(guest)
    vm.run(HOT, 1000)
    names = [n for n, _, _ in vm.kvm.autoload.table()]
    assert {"MSR_CORE_PERF_GLOBAL_CTRL", "MSR_IA32_PEBS_ENABLE", "MSR_IA32_DS_AREA"} <= set(names)
    table = {n: (g, h) for n, g, h in vm.kvm.autoload.table()}
    assert table["MSR_IA32_DS_AREA"][0] == st.ds
    assert table["MSR_IA32_PEBS_ENABLE"] == (1, 0)


def test_full_autoload_list_patch_runs_guest_with_host_ds_area():
    _, vm, guest = make("patch", extra_autoload=6)
    S.manual_pebs(guest)
    res = vm.run(HOT, 2_000_000)
    assert vm.trace.of("AUTOLOAD_FULL").size > 0
    # the guest's records are aimed at the host's DS address, unmapped in the guest
    assert res.crashed and "guest page fault" in vm.crash_reason
    _, vm_f, guest_f = make("fixed", extra_autoload=6)
    st = S.manual_pebs(guest_f)
    res = vm_f.run(HOT, 2_000_000)
    assert not res.crashed and not st.samples      # PEBS kept off, nothing lost


def test_unswitched_pebs_enable_is_flagged_as_a_host_hazard():
    _, vm, guest = make("patch", switch_pebs_enable=False)
    st = S.manual_pebs(guest)
    vm.run(HOT, 500_000)
    assert not st.samples          # hardware PEBS_ENABLE stayed at the host's 0


# --------------------------------------------------------------------------- overflow handlers

def test_precise_overflow_sets_bit_62_not_the_counter_bit():
    _, vm, guest = make("patch")
    seen = []
    S.manual_pebs(guest)
    v = vm.vcpus[0]
    orig = v.pmi_handler

    def spy(vcpu, ip, cpl):
        seen.append(vcpu.pmu.global_status)
        orig(vcpu, ip, cpl)
    v.set_pmi_handler(spy)
    vm.run(HOT, 1_000_000)
    assert seen and all(s == 1 << 62 for s in seen)


def test_guest_pmi_handler_reprograms_counters_costing_perf_events():
    # each GLOBAL_CTRL toggle makes 2014 KVM release and recreate the perf event
    _, vm, guest = make("patch")
    S.manual_pebs(guest)
    n0 = vm.perf_events_created
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    assert vm.perf_events_created == n0 + 1


# --------------------------------------------------------------------------- icelake

def test_icelake_design_pins_nothing_and_survives_reclaim_on_icelake_host():
    host, vm, guest = make("icelake", cpu="icelake", frames=4096)
    st = S.manual_pebs(guest, event=0x20D1)      # MEM_LOAD_RETIRED.L3_MISS
    assert vm.kvm.pmu.pinned_pages == []
    host.reclaim(10_000)
    res = vm.run(HOT, 5_000_000)
    assert not res.crashed
    assert res.exits.get("EPT_VIOLATION", 0) > 0
    assert st.samples and set(st.sample_ips()) == {HOT_IP}


def test_icelake_design_on_silvermont_exposes_no_pebs():
    _, vm, _ = make("icelake", cpu="silvermont")
    with pytest.raises(pl.GuestFault):
        vm.vcpus[0].rdmsr(M.MSR_IA32_PEBS_ENABLE)


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_trace_different_seed_differs_only_in_skid():
    def run(seed):
        _, vm, guest = make("patch", seed=seed)
        v = vm.vcpus[0]
        hits = []
        v.set_pmi_handler(lambda vc, ip, cpl: (hits.append(ip),
                                               vc.wrmsr(M.MSR_IA32_PERFCTR0, (-5003) & 0xFFFFFFFF),
                                               vc.wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 1)))
        v.wrmsr(M.MSR_IA32_PERFCTR0, (-5003) & 0xFFFFFFFF)
        v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0, int=True))
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
        vm.run(HOT, 300_000)
        return vm.trace.digest(), hits
    a, ha = run(1)
    b, hb = run(1)
    c, hc = run(2)
    assert a == b and ha == hb
    assert ha != hc and len(set(ha)) > 1
