# Notebook 07, exercise 1 (warm-up): what the CPU holds in guest and host mode.
# check: ex07_cpu_values
def cpu_values(autoload, before):
    """Return (guest_mode, host_mode) for GLOBAL_CTRL, PEBS_ENABLE and DS_AREA.

    VM entry loads every MSR of the VM-entry MSR-load list with its guest
    value, VM exit every MSR of the VM-exit list with its host value; an MSR
    on no list keeps whatever it held.
    """
    names = {"MSR_CORE_PERF_GLOBAL_CTRL": "GLOBAL_CTRL", "MSR_IA32_PEBS_ENABLE": "PEBS_ENABLE",
             "MSR_IA32_DS_AREA": "DS_AREA"}
    guest_mode = dict(before)
    for name, guest_value, _ in autoload:
        if name in names:
            guest_mode[names[name]] = guest_value
    host_mode = dict(guest_mode)
    for name, _, host_value in autoload:
        if name in names:
            host_mode[names[name]] = host_value
    return guest_mode, host_mode
