# check: ex04_slm_pebs_enable
# Notebook 04, part 2: the PEBS_ENABLE check a Silvermont guest needs.
def is_valid_slm(value):
    """True if ``value`` only uses what Silvermont can do: PEBS on PMC0 and its load-latency bit."""
    SLM_VALID = (1 << 0) | (1 << 32)   # PMC0 only (SDM 18.6.1.1), LL twin 32 bits higher
    return (value & ~SLM_VALID) == 0
