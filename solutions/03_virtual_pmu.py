# Notebook 03, exercise: the sample_period KVM gives the host perf event.
# check: ex03_period
def kvm_sample_period(counter, width):
    """Return the perf sample_period for a guest counter of ``width`` bits holding ``counter``.

    The counter overflows when it wraps past 2**width - 1; the events left
    until then, modulo 2**width, are (-counter) & mask (reprogram_counter()).
    """
    mask = (1 << width) - 1
    return (-counter) & mask
