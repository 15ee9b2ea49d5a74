"""The MSRs KVM emulates outside the PMU code that the PMU story needs: IA32_MISC_ENABLE.

Models the MSR_IA32_MISC_ENABLE cases of kvm_get_msr_common() /
kvm_set_msr_common() in arch/x86/kvm/x86.c and the dispatch of
kvm_get_msr() / kvm_set_msr() between them and the PMU (kvm_pmu_msr()
first, as x86.c does). A guest's Linux reads MISC_ENABLE when CPUID has
DS: bit 11 BTS_UNAVAIL and bit 12 PEBS_UNAVAIL say whether BTS and PEBS
exist (init_intel() in arch/x86/kernel/cpu/intel.c); bit 7 EMON says
performance monitoring is available.
"""

from __future__ import annotations

from ..hw import msr as M
from . import pmu as kpmu

#: The bits of MISC_ENABLE that describe the vPMU (MSR_IA32_MISC_ENABLE_PMU_RO_MASK upstream).
MISC_ENABLE_PMU_BITS = (M.MSR_IA32_MISC_ENABLE_EMON | M.MSR_IA32_MISC_ENABLE_BTS_UNAVAIL
                        | M.MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL)


def kvm_misc_enable_refresh(vcpu) -> None:
    """Set the vCPU's MISC_ENABLE when it is created / its CPUID is set.

    Upstream (FACTS c.4): kvm_vcpu_reset starts from PEBS_UNAVAIL |
    BTS_UNAVAIL; intel_pmu_refresh sets EMON when the vPMU has a version
    (bef6ecca46ac) and clears PEBS_UNAVAIL when the guest has PEBS
    (d10551738f6a). pebslab applies the same rule to every design, "the
    guest has PEBS" being :func:`pebslab.kvm.pmu.pebs_msrs_visible`, so bit 12
    tells a guest's init_intel() the truth. ASSUMPTION: what 3.15 put in
    ia32_misc_enable_msr before the guest wrote it is UNVERIFIED.
    """
    value = M.MSR_IA32_MISC_ENABLE_BTS_UNAVAIL | M.MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL
    if vcpu.pmu.version:
        value |= M.MSR_IA32_MISC_ENABLE_EMON
    if kpmu.pebs_msrs_visible(vcpu):
        value &= ~M.MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL
    vcpu.ia32_misc_enable_msr = value


def kvm_get_msr(vcpu, index: int) -> int:
    """RDMSR as KVM emulates it: the PMU's MSRs, then kvm_get_msr_common; else #GP."""
    if index == M.MSR_IA32_MISC_ENABLE:
        return vcpu.ia32_misc_enable_msr
    return kpmu.kvm_pmu_get_msr(vcpu, index)


def kvm_set_msr(vcpu, index: int, data: int, host_initiated: bool = False) -> None:
    """WRMSR as KVM emulates it; raises GuestFault where KVM injects #GP.

    MISC_ENABLE: 2014 stores the value as written; upstream keeps the vPMU
    bits (EMON, BTS_UNAVAIL, PEBS_UNAVAIL) unchanged on a guest write.
    """
    if index == M.MSR_IA32_MISC_ENABLE:
        if vcpu.design.upstream_msr_semantics and not host_initiated:
            data = (data & ~MISC_ENABLE_PMU_BITS) | \
                (vcpu.ia32_misc_enable_msr & MISC_ENABLE_PMU_BITS)
        vcpu.ia32_misc_enable_msr = data
        return
    kpmu.kvm_pmu_set_msr(vcpu, index, data, host_initiated)
