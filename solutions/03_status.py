# Notebook 03, exercise 1 (warm-up): the guest's GLOBAL_STATUS under the patch.
# check: ex03_status
def guest_status(overflows):
    """Return the virtual GLOBAL_STATUS after ``overflows`` [(counter index, precise), ...].

    The patched kvm_perf_overflow() sets bit 62 (the PEBS buffer bit) for a
    precise event and the counter's own bit otherwise.
    """
    status = 0
    for idx, precise in overflows:
        status |= 1 << 62 if precise else 1 << idx
    return status
