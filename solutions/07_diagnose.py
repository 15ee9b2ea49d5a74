# Notebook 07, exercise 3 (investigate): which switch broke in a mystery VM.
# check: ex07_diagnose
def diagnose(evidence):
    """Name the broken switch from what an administrator can see of the VM."""
    names = {"GLOBAL_CTRL": "MSR_CORE_PERF_GLOBAL_CTRL", "PEBS_ENABLE": "MSR_IA32_PEBS_ENABLE",
             "DS_AREA": "MSR_IA32_DS_AREA"}
    on_list = evidence["on_list"]
    for short in ("GLOBAL_CTRL", "PEBS_ENABLE", "DS_AREA"):
        if evidence["guest_wrote"][short] and names[short] not in on_list:
            # missing: KVM could not add it (the list was full) or never tried
            if evidence["list_full_warnings"] or len(on_list) >= 8:
                return "list_full"
            return "switch_" + short.lower()
    if evidence["list_full_warnings"]:
        return "list_full"          # fixed's rule: on the list, but guest PEBS forced off
    return "none"
