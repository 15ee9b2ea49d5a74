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
from pebslab.hw import msr as M
from pebslab.kvm import pebs_pin
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
