# Notebook 02, exercise 1 (warm-up): records until the next PEBS PMI.
# check: ex02_until_pmi
def records_until_pmi(pebs_index, threshold, record_size):
    """Return how many more records the CPU writes up to (and with) the one that raises the PMI.

    Each assist writes at pebs_index and advances it by one record; the PMI comes
    when pebs_index reaches the threshold, so the count is the distance in records.
    """
    return (threshold - pebs_index + record_size - 1) // record_size
