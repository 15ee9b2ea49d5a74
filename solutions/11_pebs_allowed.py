# Solution to exercise 2 (apply) of notebook 11: the review's CPUID gate.
# check: ex11_pebs_allowed


def pebs_allowed(cpuid):
    """pebs_allowed as kvm_pmu_cpuid_update() should derive it from the guest CPUID."""
    _eax, _ebx, ecx, edx = cpuid.leaf(0x1)
    ds = edx >> 21 & 1          # CPUID.1:EDX.DS: a DS save area (IA32_DS_AREA)
    dtes64 = ecx >> 2 & 1       # CPUID.1:ECX.DTES64: its 64-bit layout
    pdcm = ecx >> 15 & 1        # CPUID.1:ECX.PDCM: IA32_PERF_CAPABILITIES (the PEBS format)
    version = cpuid.leaf(0xA)[0] & 0xFF     # CPUID.0AH:EAX[7:0]: 0 = no PMU at all
    return bool(ds and dtes64 and pdcm and version > 0)
