# Notebook 00, exercise 2 (apply): Eric Northup's CPUID gate for the PEBS MSRs.
# check: ex00_gate
def pebs_msrs_visible(host_can, guest_features):
    """Return True if a guest may see DS_AREA, PEBS_ENABLE and PERF_CAPABILITIES.

    The host must be able to virtualize PEBS (the patch's only condition), and
    the guest's CPUID must advertise every bit the patch's cpuid.c hunk adds
    for PEBS: DS, DTES64 and PDCM (kvm_pmu->pebs_allowed, as the review asks).
    """
    return bool(host_can) and {"DS", "DTES64", "PDCM"} <= set(guest_features)
