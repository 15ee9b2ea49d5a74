# Solution to exercise 3 (investigate) of notebook 12.
# check: ex12_assist_faults


def assist_faults(vm, st):
    """Count the PEBS assist's EPT violations by what the faulting page holds."""
    page = 4096
    guest = st.guest
    rows = [r for r in vm.trace.rows("SWAPIN", "EPT_VIOLATION") if "PEBS assist" in r["info"]]
    # GPAs of the DS area (it may straddle a page) and of every buffer page
    ds = {guest.mm.translate(st.ds) >> 12, guest.mm.translate(st.ds + 159) >> 12}
    base, n = st.buf_region
    buf = {guest.mm.translate(base + i * page) >> 12 for i in range(n)}
    out = {"page tables": 0, "DS area": 0, "buffer": 0}
    for r in rows:
        gfn = int(r["gpa"]) >> 12
        if gfn in ds:
            out["DS area"] += 1
        elif gfn in buf:
            out["buffer"] += 1
        else:                       # what the assist's own page walk read
            out["page tables"] += 1
    return out
