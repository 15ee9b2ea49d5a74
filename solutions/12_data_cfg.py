# Solution to exercise 1 (warm-up) of notebook 12: a PEBS_DATA_CFG value.
# check: ex12_data_cfg


def data_cfg(meminfo, gp, xmm, lbr_entries):
    """MSR_PEBS_DATA_CFG for the groups wanted; lbr_entries = 0 means no LBR group."""
    cfg = 0
    if meminfo:
        cfg |= 1 << 0           # MEMINFO group (32 bytes)
    if gp:
        cfg |= 1 << 1           # GP registers (144 bytes)
    if xmm:
        cfg |= 1 << 2           # XMM registers (256 bytes)
    if lbr_entries:
        cfg |= 1 << 3           # LBR entries (24 bytes each) ...
        cfg |= (lbr_entries - 1) << 24      # ... how many, minus one, in bits 31:24
    return cfg
