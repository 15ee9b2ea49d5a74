# Notebook 09, exercise 3 (investigate): the exit cost at which the warnings stop.
# check: ex09_max_exit_cost
def max_exit_cost(perf_event_create, perf_event_release, linux):
    """Largest vmexit (cycles) at which the guest's PMI handler stays within 2500 ns.

    The guest's clock sees its handler: n MSR exits of (vmexit + 300)
    cycles, plus KVM releasing the host perf event (GLOBAL_CTRL = 0) and
    creating it again (GLOBAL_CTRL back). At 2 GHz, 2500 ns are 5000 cycles
    (5001 still rounds down to 2500 ns). Today's perf warns only when the
    average exceeds the allowed time, and a constant length makes the
    average converge to exactly that length. A 3.15 guest's handler has 9
    exits (two PEBS_ENABLE writes, PMC0 read and re-armed) and KVM unpins
    and re-pins the DS page and the one-page buffer (PinCosts).
    """
    from pebslab.kvm.pebs_pin import PinCosts

    if linux == "current":
        exits, pins = 5, 0
    else:
        pc = PinCosts()
        exits = 9
        pins = 2 * (pc.guest_walk + pc.gfn_to_pfn + pc.get_page) + 2 * pc.put_page
    budget = 5001 - perf_event_create - perf_event_release - pins
    if budget < exits * 300:
        return None
    return budget // exits - 300
