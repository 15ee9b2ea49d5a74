"""kvm/x86.py and RDPMC: IA32_MISC_ENABLE reads never fault; RDPMC of a missing counter is #GP.

Sources: arch/x86/kvm/x86.c kvm_get_msr_common / kvm_set_msr_common
(MSR_IA32_MISC_ENABLE always emulated), FACTS c.4 (upstream sets EMON,
bit 7, with a vPMU and clears PEBS_UNAVAIL, bit 12, when the guest has
PEBS; kvm_vcpu_reset starts from PEBS_UNAVAIL | BTS_UNAVAIL), 2014
arch/x86/kvm/pmu.c kvm_pmu_read_pmc (ECX bit 30 selects the fixed
counters, bit 31 the 32-bit read, a counter past nr_arch_* is #GP).
"""

from __future__ import annotations

import pytest

import pebslab as pl
from pebslab.baremetal import BareMetal
from pebslab.hw import msr as M
from pebslab.kvm import x86

EMON, BTS_UNAVAIL, PEBS_UNAVAIL = 1 << 7, 1 << 11, 1 << 12



def vcpu_of(design="patch", cpu="silvermont", **kw):
    return pl.Host(cpu=cpu, frames=256).create_vm(design=design, memory_pages=64, **kw).vcpus[0]


@pytest.mark.parametrize("design", ["patch", "review", "fixed", "icelake"])
@pytest.mark.parametrize("cpu", ["silvermont", "haswell", "icelake"])
def test_misc_enable_read_never_faults(design, cpu):
    v = vcpu_of(design, cpu)
    assert isinstance(v.rdmsr(M.MSR_IA32_MISC_ENABLE), int)


def test_icelake_misc_enable_says_pebs_where_kvm_gives_pebs():
    # FACTS c.4 (bef6ecca46ac, d10551738f6a): EMON with a vPMU; PEBS_UNAVAIL clear iff the guest
    # has PEBS (a PEBS format in PERF_CAPABILITIES); BTS stays unavailable
    v = vcpu_of("icelake", "icelake")
    assert v.rdmsr(M.MSR_IA32_MISC_ENABLE) == EMON | BTS_UNAVAIL
    v2 = vcpu_of("icelake", "skylake")               # no EPT-friendly PEBS: no guest PEBS
    assert v2.rdmsr(M.MSR_IA32_MISC_ENABLE) == EMON | BTS_UNAVAIL | PEBS_UNAVAIL
    v3 = vcpu_of("icelake", "icelake", cpuid=pl.cpuid.default("icelake").without("PDCM"))
    assert v3.rdmsr(M.MSR_IA32_MISC_ENABLE) & PEBS_UNAVAIL


def test_icelake_guest_cannot_flip_the_vpmu_bits():
    # upstream kvm_set_msr_common keeps the vPMU bits of MISC_ENABLE on a guest write
    v = vcpu_of("icelake", "icelake")
    v.wrmsr(M.MSR_IA32_MISC_ENABLE, PEBS_UNAVAIL | 1)
    assert v.rdmsr(M.MSR_IA32_MISC_ENABLE) == EMON | BTS_UNAVAIL | 1


@pytest.mark.parametrize("design,cpu,pebs", [("patch", "silvermont", True),
                                             ("review", "haswell", False),
                                             ("fixed", "silvermont", True)])
def test_misc_enable_pebs_unavail_tells_whether_the_guest_has_pebs(design, cpu, pebs):
    v = vcpu_of(design, cpu)
    value = v.rdmsr(M.MSR_IA32_MISC_ENABLE)
    assert bool(value & PEBS_UNAVAIL) is not pebs
    assert value & EMON and value & BTS_UNAVAIL


def test_2014_misc_enable_is_plain_storage():
    # 3.15 kvm_set_msr_common: vcpu->arch.ia32_misc_enable_msr = data
    v = vcpu_of("patch")
    v.wrmsr(M.MSR_IA32_MISC_ENABLE, PEBS_UNAVAIL | EMON)
    assert v.rdmsr(M.MSR_IA32_MISC_ENABLE) == PEBS_UNAVAIL | EMON


def test_rdpmc_reads_the_counters_the_guest_has():
    vm = pl.Host(frames=256).create_vm(design="patch", memory_pages=64)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_PERFCTR0 + 1, 0x1234)
    assert v.rdpmc(1) == 0x1234
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR0 + 2, 0x5678)
    assert v.rdpmc(1 << 30 | 2) == 0x5678
    v.wrmsr(M.MSR_IA32_PERFCTR0, 0xFFFF_FFFF)      # sign-extended: all 48 bits set
    assert v.rdpmc(0) == v.pmu.counter_bitmask[0]
    assert v.rdpmc(1 << 31) == 0xFFFF_FFFF            # fast read: low 32 bits
    assert vm.exit_counts["RDPMC"] == 4


@pytest.mark.parametrize("ecx", [2, 7, 1 << 30 | 3, 1 << 30 | 31, 0x3FFF_FFFF])
def test_rdpmc_of_a_missing_counter_is_gp(ecx):
    # Silvermont guest: 2 GP counters, 3 fixed
    v = vcpu_of()
    with pytest.raises(pl.GuestFault) as e:
        v.rdpmc(ecx)
    assert e.value.vector == "#GP"


def test_bare_metal_rdpmc_follows_the_same_rules():
    m = BareMetal("silvermont", frames=64)
    m.vcpu.wrmsr(M.MSR_IA32_PERFCTR0 + 1, 0x42)
    assert m.vcpu.rdpmc(1) == 0x42
    with pytest.raises(pl.GuestFault):
        m.vcpu.rdpmc(1 << 30 | 3)
