# Notebook 01, exercise 2 (apply): what an INST_RETIRED event select counts.
# check: ex01_count
def instructions_counted(eventsel, n_user, n_kernel):
    """Return what PMC0 counts for this event select, or '#GP' if the WRMSR faults.

    Bits 63:32 are reserved on Silvermont (the WRMSR faults); EN (bit 22)
    must be set; USR (bit 16) counts CPL > 0, OS (bit 17) counts CPL 0.
    """
    if eventsel >> 32:
        return "#GP"
    if not eventsel >> 22 & 1:
        return 0
    return (n_user if eventsel >> 16 & 1 else 0) + (n_kernel if eventsel >> 17 & 1 else 0)
