# check: ex04_driver_view
# Notebook 04, exercise 3: what the guest's perf driver does with a PERF_CAPABILITIES value.
def driver_view(perf_cap):
    """Decode PERF_CAPABILITIES the way Linux's perf driver uses it (FACTS a.6, a.7, b.6)."""
    fmt = (perf_cap >> 8) & 0xF                  # bits 11:8, PEBS record format
    trap = (perf_cap >> 6) & 1                   # bit 6, PEBS trap-like
    fw = (perf_cap >> 13) & 1                    # bit 13, full-width writes
    sizes = {0: 144, 1: 176, 2: 192, 3: 200, 4: 32}
    pebs = fmt in sizes
    if not pebs:
        pp_ip = None
    elif fmt >= 2:
        pp_ip = "eventing_ip"                    # the record's real_ip
    else:
        pp_ip = "lbr_fixup" if trap else "as_recorded"
    return {"pebs": pebs, "record_size": sizes.get(fmt, 0), "pp_ip": pp_ip,
            "counter_msr": 0x4C1 if fw else 0xC1,
            "max_period": (1 << 47) - 1 if fw else (1 << 31) - 1}
