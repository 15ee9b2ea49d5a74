# check: ex04_slm_pebs_enable
# Notebook 04, exercise 2: the PEBS_ENABLE check a Silvermont guest needs.
def is_valid_slm(value):
    """True if ``value`` only uses what Silvermont can do: PEBS on PMC0.

    SDM 18.6.1.1 (FACTS g.3): PEBS on IA32_PMC0 only, and no load-latency
    facility, so bit 32 (LL_EN_PMC0 on the big cores) is reserved too.
    """
    SLM_VALID = 1 << 0
    return (value & ~SLM_VALID) == 0
