# Notebook 08, exercise 1 (warm-up): a recording's per-function profile.
# check: ex08_shares
def function_shares(samples, workload):
    """The fraction of the samples in each function of the workload (0.0 if none)."""
    out = {name: 0.0 for _, _, name in workload.symbols}
    n = len(samples)
    for sym in samples["sym"]:
        out[str(sym)] = out.get(str(sym), 0.0) + 1 / n
    return out
