# Notebook 03, exercise 2 (apply): the host perf event KVM creates for a guest event select.
# check: ex03_host_event
def host_event(eventsel):
    """Return ("HARDWARE", generic id) or ("RAW", config) as 2014's reprogram_gp_counter() does."""
    from pebslab.kvm.pmu import ARCH_EVENTS
    edge, inv, cmask = 1 << 18, 1 << 23, 0xFF << 24
    event, umask = eventsel & 0xFF, eventsel >> 8 & 0xFF
    if not eventsel & (edge | inv | cmask):
        for ev, um, generic in ARCH_EVENTS:
            if (ev, um) == (event, umask):
                return "HARDWARE", generic
    return "RAW", eventsel & (0xFFFF | edge | inv | cmask)
