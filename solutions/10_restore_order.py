# Notebook 10, exercise 1 (warm-up): a KVM_SET_MSRS order the 2014 patch restores correctly.
# check: ex10_restore_order
def restore_order(msrs):
    """Return the saved MSR indices in an order that works under the patch.

    DS_AREA (0x600) first, so that the PEBS_ENABLE write pins from the real
    DS area; PEBS_ENABLE (0x3f1) next, so that the write enabling PMC0
    (EVNTSEL0 or GLOBAL_CTRL) creates a precise host event; the rest in
    ascending order.
    """
    first = [m for m in (0x600, 0x3F1) if m in msrs]
    return first + [m for m in sorted(msrs) if m not in first]
