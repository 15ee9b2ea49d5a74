# Notebook 08, exercise 2 (apply): the ground truth a profile should converge to.
# check: ex08_ground_truth
import numpy as np

KINDS = {"loads": 1, "stores": 2, "branches": 3}     # pebslab.workloads.KIND_*


def true_shares(workload, kind):
    """Each function's share of the workload's instructions of ``kind`` (one pass of the trace)."""
    if kind == "instructions":
        counted = np.ones(len(workload), bool)
    else:
        counted = workload.kind == KINDS[kind]
    total = int(counted.sum())
    out = {}
    for start, end, name in workload.symbols:
        inside = (workload.ip >= start) & (workload.ip < end)
        out[name] = int((counted & inside).sum()) / total if total else 0.0
    return out
