"""kvm/pmu.py: the MSR rules of the virtual PMU, written from their sources.

Sources: the patch text (shared seed) for PEBS_ENABLE (valid bits
0xf0000000f), DS_AREA (stored unchecked), PERF_CAPABILITIES (host value &
(PEBS_TRAP | ARCH_REG | PEBS_FORMAT), no write case) and the overflow
handler (bit 62 for precise events); Linux 3.15 arch/x86/kvm/pmu.c for the
2014 rules (kvm_pmu_cpuid_update: reserved_bits 0xffffffff00200000,
INTEL_PMC_MAX_FIXED = 3; kvm_pmu_set_msr: FIXED_CTR_CTRL reserved
0xfffffffffffff444, GLOBAL_OVF_CTRL accepts bits 62-63, GLOBAL_STATUS only
host-initiated, counters sign-extended from 32 bits); cpuid.c
__do_cpuid_ent (version capped at 2); FACTS b.4-b.8 and c.4 for the
upstream rules.
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.hw import core as C
from pebslab.hw import msr as M
from pebslab.kvm import cpuid as kcpuid
from pebslab.kvm import pebs_pin
from pebslab.kvm import pmu as kpmu
from pebslab.kvm.designs import pebs_virtualization_supported
from kvm_support import HOT, HOT_IP, NEXT_IP, baseline, make  # noqa: F401  (tests/ is on sys.path)


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


# --------------------------------------------------------------------------- the 2014 MSR rules

def vcpu_of(design="patch", cpu="silvermont", **kw):
    host = pl.Host(cpu=cpu, frames=256)
    return host.create_vm(design=design, memory_pages=64, **kw).vcpus[0]


def gp(fn, *args):
    with pytest.raises(pl.GuestFault) as e:
        fn(*args)
    assert e.value.vector == "#GP"
    return e.value


@pytest.mark.parametrize("bit", [21, 32, 33, 40, 63])
def test_2014_eventsel_reserved_bits_are_gp_without_tsx(bit):
    # 3.15 kvm_pmu_cpuid_update: reserved_bits = 0xffffffff00200000 (63:32 and AnyThread)
    v = vcpu_of()
    gp(v.wrmsr, M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0) | 1 << bit)
    assert v.rdmsr(M.MSR_P6_EVNTSEL0) == 0


def test_2014_eventsel_tsx_bits_writable_on_a_tsx_host():
    # 3.15: reserved_bits ^= HSW_IN_TX | HSW_IN_TX_CHECKPOINTED when the host has HLE/RTM
    v = vcpu_of(cpu="haswell")
    value = M.encode_eventsel(0x3C, 0) | 1 << 32 | 1 << 33
    v.wrmsr(M.MSR_P6_EVNTSEL0 + 2, value)
    assert v.rdmsr(M.MSR_P6_EVNTSEL0 + 2) == value
    gp(v.wrmsr, M.MSR_P6_EVNTSEL0, M.encode_eventsel(0x3C, 0) | 1 << 34)


@pytest.mark.parametrize("value,ok", [(0xBBB, True), (0x4, False), (0x40, False),
                                      (0x400, False), (0xB << 12, False), (1 << 63, False)])
def test_2014_fixed_ctr_ctrl_reserved_bits(value, ok):
    # 3.15 kvm_pmu_set_msr: if (!(data & 0xfffffffffffff444ull)) -> reprogram; else #GP
    v = vcpu_of()
    if ok:
        v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, value)
        assert v.rdmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL) == value
    else:
        gp(v.wrmsr, M.MSR_CORE_PERF_FIXED_CTR_CTRL, value)


def test_global_ctrl_accepts_exactly_the_counters_the_guest_has():
    # global_ctrl_mask = ~(GP mask | fixed mask << 32); Silvermont: 2 GP, 3 fixed (FACTS b.4)
    v = vcpu_of()
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 0x7_0000_0003)
    for bit in (2, 31, 35, 62, 63):
        gp(v.wrmsr, M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << bit)
    assert v.rdmsr(M.MSR_CORE_PERF_GLOBAL_CTRL) == 0x7_0000_0003


def test_global_ovf_ctrl_accepts_bits_62_63_and_clears_status():
    # 3.15: if (!(data & (pmu->global_ctrl_mask & ~(3ull << 62)))) { clear status; store }
    v = vcpu_of()
    v.pmu.global_status = 1 << 62 | 1
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 3 << 62)
    assert v.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS) == 1
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 1)
    assert v.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS) == 0
    gp(v.wrmsr, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 1 << 2)


def test_global_status_is_written_only_by_the_host():
    # 3.15: case MSR_CORE_PERF_GLOBAL_STATUS: if (msr_info->host_initiated) store; else #GP
    v = vcpu_of()
    gp(v.wrmsr, M.MSR_CORE_PERF_GLOBAL_STATUS, 1)
    kpmu.kvm_pmu_set_msr(v, M.MSR_CORE_PERF_GLOBAL_STATUS, 1, host_initiated=True)
    assert v.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS) == 1


def test_guest_counter_write_is_sign_extended_from_32_bits():
    # 3.15: if (!msr_info->host_initiated) data = (s64)(s32)data; then masked to the width
    v = vcpu_of()
    v.wrmsr(M.MSR_IA32_PERFCTR0, 0x1_8000_0000)
    width = v.pmu.counter_bitmask[0]
    assert v.rdmsr(M.MSR_IA32_PERFCTR0) == (-0x8000_0000) & width
    v.wrmsr(M.MSR_IA32_PERFCTR0, 0x7FFF_FFFF)
    assert v.rdmsr(M.MSR_IA32_PERFCTR0) == 0x7FFF_FFFF


def test_patch_pebs_enable_valid_bits_are_0xf0000000f():
    # the patch: if (data & ~0xf0000000fULL) break;  (-> #GP)
    v = vcpu_of()
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0xF_0000_000F)
    assert v.rdmsr(M.MSR_IA32_PEBS_ENABLE) == 0xF_0000_000F
    for bit in (4, 31, 36, 63):
        gp(v.wrmsr, M.MSR_IA32_PEBS_ENABLE, 1 << bit)


def test_patch_ds_area_is_stored_unchecked():
    # the patch: case MSR_IA32_DS_AREA: pmu->ds_area = data; return 0;
    v = vcpu_of()
    for value in (0x0000_8000_0000_0000, 0xDEAD_BEEF_0000_0001, 0):
        v.wrmsr(M.MSR_IA32_DS_AREA, value)
        assert v.rdmsr(M.MSR_IA32_DS_AREA) == value


def test_patch_perf_capabilities_reports_the_host_pebs_bits_and_is_read_only():
    # the patch: *data = host_perf_cap & (PERF_CAP_PEBS_TRAP | PERF_CAP_ARCH_REG |
    # PERF_CAP_PEBS_FORMAT): bits 6, 7 and 11:8; no set case (-> #GP)
    for cpu in ("silvermont",):
        v = vcpu_of(cpu=cpu)
        host = pl.get_model(cpu).perf_capabilities
        assert v.rdmsr(M.MSR_IA32_PERF_CAPABILITIES) == host & (1 << 6 | 1 << 7 | 0xF << 8)
        gp(v.wrmsr, M.MSR_IA32_PERF_CAPABILITIES, 0)


def test_kvm_pmu_init_reads_host_perf_cap_only_with_pdcm():
    # the patch: if (boot_cpu_has(X86_FEATURE_PDCM)) rdmsrl_safe(MSR_IA32_PERF_CAPABILITIES, ...)
    v = vcpu_of()
    assert v.pmu.host_perf_cap == pl.get_model("silvermont").perf_capabilities
    v.host_has_pdcm = lambda: False
    kpmu.kvm_pmu_init(v)
    assert v.pmu.host_perf_cap == 0
    assert v.rdmsr(M.MSR_IA32_PERF_CAPABILITIES) == 0


def test_icelake_pebs_data_cfg_valid_bits():
    # FACTS c.4: MSR_PEBS_DATA_CFG write #GP if data & ~0xff00000f
    v = vcpu_of("icelake", "icelake")
    v.wrmsr(M.MSR_PEBS_DATA_CFG, 0xFF00_000F)
    assert v.rdmsr(M.MSR_PEBS_DATA_CFG) == 0xFF00_000F
    for bit in (4, 23, 32):
        gp(v.wrmsr, M.MSR_PEBS_DATA_CFG, 1 << bit)


def test_icelake_fixed_counter_pebs_and_adaptive_bits():
    # FACTS b.5/c.4: with PEBS_BASELINE, pebs_enable_rsvd = global_ctrl_rsvd; EVENTSEL bit 34
    # and FIXED_CTR_CTRL bit 32+4i become writable
    v = vcpu_of("icelake", "icelake")
    nf = v.pmu.nr_arch_fixed_counters
    valid = (1 << v.pmu.nr_arch_gp_counters) - 1 | ((1 << nf) - 1) << 32
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, valid)
    gp(v.wrmsr, M.MSR_IA32_PEBS_ENABLE, 1 << (32 + nf))
    v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0) | 1 << 34)
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0x1 << 32 | 0x1 << 36 | 0x1 << 40 | 0xBBB)
    # under the patch bit 34 is reserved (63:32 are)
    gp(vcpu_of().wrmsr, M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0) | 1 << 34)


# --------------------------------------------------------------------------- what KVM exposes

@pytest.mark.parametrize("design", ["patch", "review", "fixed", "icelake"])
def test_kvm_exposes_at_most_pmu_version_2_and_three_fixed_counters(design):
    # 2014 cpuid.c __do_cpuid_ent: eax.split.version_id = min(cap.version, 2); upstream
    # kvm_init_pmu_capability keeps min(version, 2); fixed counters: fixed_pmc_events[] has 3
    # entries (3.15: min(edx & 0x1f, INTEL_PMC_MAX_FIXED = 3))
    v = vcpu_of(design, "icelake")       # the host has PMU v5 and 4 fixed counters
    eax, _, _, edx = v.cpuid(0xA)
    assert eax & 0xFF == 2 and edx & 0x1F == 3
    assert v.pmu.version == 2 and v.pmu.nr_arch_fixed_counters == 3


@pytest.mark.parametrize("design", ["patch", "review", "fixed", "icelake"])
def test_fourth_fixed_counter_is_gp_never_an_index_error(design):
    # issue 9 item 1: FIXED_CTR3 (0x30c), FIXED_CTR_CTRL bits 15:12, GLOBAL_CTRL bit 35 and
    # PEBS_ENABLE bit 35 are #GP: KVM backs only fixed_pmc_events[0..2]
    v = vcpu_of(design, "icelake")
    gp(v.rdmsr, M.MSR_CORE_PERF_FIXED_CTR0 + 3)
    gp(v.wrmsr, M.MSR_CORE_PERF_FIXED_CTR0 + 3, 1)
    gp(v.wrmsr, M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB << 12)
    gp(v.wrmsr, M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 35)
    gp(v.wrmsr, M.MSR_IA32_PEBS_ENABLE, 1 << 35)


def test_no_design_can_expose_a_fixed_counter_kvm_cannot_back():
    assert len(kpmu.FIXED_PMC_EVENTS) == 3
    with pytest.raises(ValueError, match="max_fixed_counters must be in 0..3; got 4"):
        pl.get_design("icelake", max_fixed_counters=4)


def test_reserved_bits_of_every_pmu_msr_are_gp_on_every_design():
    # issue 9 item 1: a reserved bit of FIXED_CTR_CTRL / GLOBAL_CTRL / PEBS_ENABLE is a #GP
    for design, cpu in (("patch", "silvermont"), ("review", "silvermont"),
                        ("fixed", "silvermont"), ("icelake", "icelake")):
        v = vcpu_of(design, cpu)
        for msr, bit in ((M.MSR_CORE_PERF_FIXED_CTR_CTRL, 2), (M.MSR_CORE_PERF_FIXED_CTR_CTRL, 48),
                         (M.MSR_CORE_PERF_GLOBAL_CTRL, 40), (M.MSR_IA32_PEBS_ENABLE, 62)):
            gp(v.wrmsr, msr, 1 << bit)


def test_userspace_cpuid_above_the_cap_is_capped_too():
    leaves = dict(pl.cpuid.default("icelake").leaves)
    eax, ebx, ecx, edx = leaves[0xA]
    leaves[0xA] = ((eax & ~0xFF) | 5, ebx, ecx, (edx & ~0x1F) | 4)
    v = vcpu_of("icelake", "icelake", cpuid=pl.cpuid.Cpuid(leaves))
    assert v.pmu.version == 2 and v.pmu.nr_arch_fixed_counters == 3


def test_the_patch_cpuid_hunk_sets_ds_dtes64_pdcm_only_where_pebs_is_virtualized():
    # the patch: f_ds/f_pdcm/f_dtes64 = perf_pebs_virtualization() ? F(x) : 0
    for cpu, design, expect in (("silvermont", "patch", True), ("haswell", "patch", False),
                                ("icelake", "patch", False), ("icelake", "icelake", True),
                                ("silvermont", "icelake", False)):
        d = pl.get_design(design)
        regs = kcpuid.__do_cpuid_ent(1, pl.cpuid.default(cpu), pl.get_model(cpu), d)
        ecx, edx = regs[2], regs[3]
        assert bool(edx >> 21 & 1) is expect and bool(ecx >> 2 & 1) is expect \
            and bool(ecx >> 15 & 1) is expect, (cpu, design)
        assert pebs_virtualization_supported(pl.get_model(cpu), d) is expect


# --------------------------------------------------------------------------- PEBS_ENABLE side effects

def _pins(vm):
    return len(vm.trace.of("PIN")), len(vm.trace.of("UNPIN"))


def test_patch_pebs_enable_hunk_repins_only_on_a_new_non_zero_value():
    host, vm, guest = make("patch")
    S.manual_pebs(guest)                 # PEBS_ENABLE = 1: 17 pins
    v = vm.vcpus[0]
    assert kpmu.pebs_enable_changed(v) is kpmu.pebs_enable_changed_patch
    p0, u0 = _pins(vm)
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)   # same value: nothing
    assert _pins(vm) == (p0, u0)
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0xF_0000_0001)   # new non-zero: release 17, pin 17
    assert _pins(vm) == (p0 + 17, u0 + 17)
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)   # 0: release
    assert _pins(vm) == (p0 + 17, u0 + 34) and v.pmu.pinned_pages == []
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)   # 0 again: nothing to release
    assert _pins(vm) == (p0 + 17, u0 + 34)


def test_fixed_design_chooses_the_corrected_side_effects():
    _, vm, _ = make("fixed")
    assert kpmu.pebs_enable_changed(vm.vcpus[0]) is kpmu.pebs_enable_changed_fixed


def test_patch_reset_keeps_pins_destroy_releases_them():
    # the patch adds kvm_pmu_release_pin() to kvm_pmu_destroy only
    host, vm, guest = make("patch")
    S.manual_pebs(guest)
    pinned = list(vm.kvm.pmu.pinned_pages)
    kpmu.kvm_pmu_reset(vm.vcpus[0])
    assert vm.kvm.pmu.pinned_pages == pinned
    assert all(host.mm.refcount[f] == 2 for f in pinned)
    kpmu.kvm_pmu_destroy(vm.vcpus[0])
    assert vm.kvm.pmu.pinned_pages == []
    assert all(host.mm.refcount[f] == 1 for f in pinned)


# --------------------------------------------------------------------------- a PMI at the VM exit

def _counting_guest(design="patch", cpu="silvermont"):
    _, vm, _ = make(design, cpu=cpu)
    v = vm.vcpus[0]
    pmis = []
    v.set_pmi_handler(lambda vc, ip, cpl: pmis.append(vc.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS)))
    return vm, v, pmis


@pytest.mark.parametrize("design,cpu", [("patch", "silvermont"), ("icelake", "icelake")])
def test_an_overflow_just_before_an_exit_is_not_lost(design, cpu):
    # issue 9 item 2: the counter overflows on the last instruction of the run (the PMI still
    # in its skid), then the guest's next instruction is the WRMSR that clears GLOBAL_CTRL.
    # The NMI is taken at that VM exit and the host's handler runs before KVM handles the
    # WRMSR (and releases the event): GLOBAL_STATUS bit 0 is set and a PMI is injected.
    vm, v, pmis = _counting_guest(design, cpu)
    v.wrmsr(M.MSR_IA32_PERFCTR0, (-100) & 0xFFFF_FFFF)
    v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0, int=True))
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    vm.run(HOT, 100)                      # instruction 100 overflows the counter
    assert v.core.regs[C.R_SKID] > 0      # its PMI is still in the skid
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    assert v.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS) & 1
    vm.run(HOT, 10)                       # the PMI is injected at the next entry
    assert len(pmis) == 1 and pmis[0] & 1


def test_the_pending_pmi_is_taken_once():
    vm, v, pmis = _counting_guest()
    v.wrmsr(M.MSR_IA32_PERFCTR0, (-100) & 0xFFFF_FFFF)
    v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0, int=True))
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    vm.run(HOT, 100)
    v.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS)          # the exit that takes it
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)          # a second exit: nothing pending
    assert len(vm.trace.of("PMI")) == 1 and v.pmi_pending and pmis == []
    vm.run(HOT, 10)                                  # re-armed at -100: no new overflow
    assert len(pmis) == 1 and len(vm.trace.of("PMI")) == 1


# --------------------------------------------------------------------------- precise events on fixed counters

def test_icelake_precise_fixed_counter_event_sits_on_its_own_fixed_counter():
    # issue 9 item 5: with extended PEBS (PMU_FL_PEBS_ALL) host perf schedules a precise
    # instructions event on fixed counter 0 when it is free, so the guest's FIXED_CTR0 is not
    # cross-mapped (FACTS c.3: a cross-mapped counter loses guest PEBS) and it counts
    from pebslab.kvm import vmx
    host, vm, guest = make("icelake", cpu="icelake", frames=4096)
    S.manual_pebs(guest, event=0x20D1)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR0, (-100_003) & v.pmu.counter_bitmask[1])
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB)
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1 | 1 << 32)
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 | 1 << 32)
    ev = v.pmu.fixed_counters[0].perf_event
    assert ev is not None and ev.attr.precise_ip and ev.hw_idx == 32
    assert vmx.cross_mapped_mask(v) == 0
    before = v.rdmsr(M.MSR_CORE_PERF_FIXED_CTR0)
    vm.run(HOT, 50_000)
    assert (v.rdmsr(M.MSR_CORE_PERF_FIXED_CTR0) - before) & v.pmu.counter_bitmask[1] >= 50_000


def test_pre_icelake_precise_events_still_avoid_fixed_counters():
    from pebslab.host.perf import HostPerf, PerfEventAttr, PERF_TYPE_HARDWARE
    attr = PerfEventAttr(type=PERF_TYPE_HARDWARE, config=1, precise_ip=1)   # instructions:p
    assert HostPerf(4, 3).create_kernel_counter(attr).hw_idx == 0
    icx = HostPerf(8, 4, pebs_fixed_mask=0xF)
    assert icx.create_kernel_counter(attr).hw_idx == 0          # a GP counter's event
    assert icx.create_kernel_counter(attr, precise_fixed=True).hw_idx == 32


# --------------------------------------------------------------------------- adaptive records per counter

def _record_sizes(vm):
    return {int(i.split("-")[0]) for i in vm.trace.info_of("PEBS_WRITE")}


@pytest.mark.parametrize("adaptive", [False, True])
def test_icelake_guest_adaptive_bit_reaches_the_host_counter(adaptive):
    # issue 9 item 3 (KVM half): the guest's EVENTSEL bit 34 goes to the host counter, so the
    # counter writes adaptive records with the groups of the guest's PEBS_DATA_CFG (basic 32 +
    # memory info 32 + GPRs 144 = 208 bytes, FACTS a.3) only when the guest asked for them
    from pebslab.hw import pebs as P
    host, vm, guest = make("icelake", cpu="icelake", frames=4096)
    st = S.manual_pebs(guest, event=0x20D1, period=50, threshold_records=4)
    v = vm.vcpus[0]
    cfg = P.PEBS_DATACFG_MEMINFO | P.PEBS_DATACFG_GP
    v.wrmsr(M.MSR_PEBS_DATA_CFG, cfg)
    sel = v.rdmsr(M.MSR_P6_EVNTSEL0)
    v.wrmsr(M.MSR_P6_EVNTSEL0, sel | (M.ICL_EVENTSEL_ADAPTIVE if adaptive else 0) | 0)
    if not adaptive:
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 0)
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)          # recreate the event
    ev = v.pmu.gp_counters[0].perf_event
    assert ev.attr.precise_ip and ev.attr.adaptive is adaptive
    vm.run(HOT, 200_000)
    assert _record_sizes(vm) == ({P.adaptive_record_size(cfg)} if adaptive else {32})
    assert st is not None


def test_icelake_fixed_counter_adaptive_bit_reaches_the_host_counter():
    host, vm, guest = make("icelake", cpu="icelake", frames=4096)
    S.manual_pebs(guest, event=0x20D1)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB | M.ICL_FIXED_0_ADAPTIVE)
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1 << 32)
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 32)
    ev = v.pmu.fixed_counters[0].perf_event
    assert ev.attr.adaptive and ev.hw_idx == 32
    vm.vcpus[0].pcpu.program_new()
    from pebslab.hw import core as HC
    assert int(v.core.regs[HC.R_FIXED_CTR_CTRL]) & M.ICL_FIXED_0_ADAPTIVE
