# Solution to exercise 1 (warm-up) of notebook 11 (the review).
# check: ex11_hide_pebs


def hide_pebs(cpuid):
    """A guest CPUID with the PMU (leaf 0xA untouched) but without PEBS."""
    # the three CPUID.1 bits a perf driver checks before it uses PEBS (FACTS b.7)
    return cpuid.without("DS", "DTES64", "PDCM")
