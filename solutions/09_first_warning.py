# Notebook 09, exercise 1 (warm-up): when does the guest print its first warning?
# check: ex09_first_warning
def first_warning(handler_ns):
    """Index of the first sample after which perf warns, or None within 5000 samples.

    Feed the same length to the model of perf_sample_event_took() again and
    again, from the state after boot, and watch for its first message.
    """
    from pebslab.host import perf as HP

    state = HP.ThrottleState.initial()
    for i in range(5000):
        state = HP.perf_sample_event_took(state, handler_ns)
        if state.warnings:
            return i
    return None
