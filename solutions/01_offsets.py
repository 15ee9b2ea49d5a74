# Notebook 01, exercise 3 (investigate): where interrupt-based samples land.
# check: ex01_offsets
def sample_offsets(skid_max):
    """Return the instruction offsets (after the overflowing one) a sample IP can have.

    The PMI is taken after 1..skid_max more instructions retire (0 when
    skid_max is 0), and the handler records the next instruction to run.
    """
    low = min(1, skid_max)
    return list(range(low + 1, skid_max + 2))
