# Notebook 07, exercise 2 (apply): which PEBS MSRs make it onto the 2014 MSR-load lists.
# check: ex07_predict_list
NR_AUTOLOAD_MSRS = 8


def predict_list(extra, ds_area_set, precise_running):
    """The PEBS MSRs on the lists after one VM entry, in list order.

    vmx_vcpu_run first calls atomic_switch_perf_msrs (GLOBAL_CTRL, then
    PEBS_ENABLE, each only if its host and guest values differ, i.e. while
    the guest's precise event runs), then the patch's hunk adds DS_AREA if
    the guest has one. add_atomic_switch_msr refuses an entry once the
    lists hold NR_AUTOLOAD_MSRS entries.
    """
    wanted = []
    if precise_running:
        wanted += ["GLOBAL_CTRL", "PEBS_ENABLE"]
    if ds_area_set:
        wanted.append("DS_AREA")
    free = NR_AUTOLOAD_MSRS - extra
    return wanted[:max(free, 0)]
