"""What KVM lets a guest see in CPUID: the patch's cpuid.c hunk and leaf 0xA.

Models __do_cpuid_ent() in arch/x86/kvm/cpuid.c (what
KVM_GET_SUPPORTED_CPUID reports) with the patch's hunk, and the usual
userspace step of handing the guest only what KVM supports
(:func:`kvm_filter_cpuid`, what QEMU does before KVM_SET_CPUID2).
"""

from __future__ import annotations

from ..hw import cpuid as CPUID
from ..hw.models import CpuModel
from .designs import Design, pebs_virtualization_supported

#: CPUID.1 feature bits the patch lets through when the host can virtualize PEBS
#: (f_ds in EDX, f_dtes64 and f_pdcm in ECX).
PEBS_CPUID_FEATURES = ("DS", "DTES64", "PDCM")


def __do_cpuid_ent(function: int, host: CPUID.Cpuid, cpu: CpuModel,
                   design: Design) -> tuple[int, int, int, int]:
    """One leaf of what KVM supports, from the host's leaf (__do_cpuid_ent).

    Leaf 1 with the patch's hunk: DS, DTES64 and PDCM only when
    perf_pebs_virtualization() (here :func:`pebs_virtualization_supported`)
    says so; 0 otherwise, as before the patch. Leaf 0xA: the version capped at
    ``design.pmu_version_cap`` (2: ``min(cap.version, 2)``) and the fixed
    counters at ``design.max_fixed_counters`` (3). Other leaves pass through.
    """
    eax, ebx, ecx, edx = host.leaf(function)
    if function == 1:
        if not pebs_virtualization_supported(cpu, design):
            for name in PEBS_CPUID_FEATURES:
                leaf, reg, bit = CPUID.FEATURES[name]
                if reg == CPUID.ECX:
                    ecx &= ~(1 << bit)
                elif reg == CPUID.EDX:
                    edx &= ~(1 << bit)
    elif function == 0xA and eax & 0xFF:
        eax = (eax & ~0xFF) | min(eax & 0xFF, design.pmu_version_cap)
        edx = (edx & ~0x1F) | min(edx & 0x1F, design.max_fixed_counters)
    return eax, ebx, ecx, edx


def kvm_filter_cpuid(cpuid: CPUID.Cpuid, cpu: CpuModel, design: Design) -> CPUID.Cpuid:
    """The guest's CPUID: what userspace asks for, limited to what KVM supports.

    pebslab only (QEMU intersects its CPU model with KVM_GET_SUPPORTED_CPUID
    before KVM_SET_CPUID2): leaf 1 loses the PEBS bits KVM does not support
    (:func:`__do_cpuid_ent`); leaf 0xA takes the lower version and fixed
    counter count. A leaf 0xA of version 0 (no PMU) stays as it is.
    """
    supported = {fn: __do_cpuid_ent(fn, cpuid, cpu, design) for fn in (1, 0xA)}
    leaves = dict(cpuid.leaves)
    if 1 in leaves:
        eax, ebx, ecx, edx = leaves[1]
        s = supported[1]
        leaves[1] = (eax, ebx, ecx & s[2], edx & s[3])
    if 0xA in leaves:
        leaves[0xA] = supported[0xA]
    out = CPUID.Cpuid(leaves)
    return out
