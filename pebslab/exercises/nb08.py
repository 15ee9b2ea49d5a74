"""Checkers for notebook 08 (a guest's perf record, end to end).

pebslab only. Sample sets come from real guest recordings on the model
(:func:`pebslab.viz.profile.profile_run`); ground truth from the workloads'
instruction arrays (:func:`pebslab.viz.profile.ground_truth`).
"""

from __future__ import annotations

import functools
import math

from ._base import CheckFailed, Result, run_cases

__all__ = ["ex08_shares", "ex08_ground_truth", "ex08_profile_error"]


def _close(got, expected, tol=1e-9) -> bool:
    if not isinstance(got, dict) or set(got) != set(expected):
        return False
    return all(isinstance(got[k], (int, float)) and not isinstance(got[k], bool)
               and math.isclose(float(got[k]), v, abs_tol=tol) for k, v in expected.items())


def _finish(res: Result, quiet: bool, strict: bool) -> Result:
    if not quiet:
        print(res)
    if strict and not res.ok:
        raise CheckFailed(str(res))
    return res


# ----------------------------------------------------------------------------- exercise 1

@functools.lru_cache(maxsize=1)
def _share_cases() -> tuple:
    from ..viz import profile as P
    import pebslab as pl
    w = pl.workloads.multi_function()
    cases = []
    for modifier, design, cpu, event in ((":pp", "patch", "silvermont", "loads"),
                                         ("", "patch", "silvermont", "loads"),
                                         (":p", "fixed", "silvermont", "instructions"),
                                         (":pp", "icelake", "icelake", "loads"),
                                         (":pp", "patch", "haswell", "loads")):
        run = P.profile_run(modifier, design, cpu, event, instructions=500_000)
        desc = (f"{len(run.samples)} samples of {run.spec} ({design}, {cpu})"
                + (" - perf refused the event" if run.refused else ""))
        cases.append((desc, (run.samples, w), P.shares(run.samples, w)))
    return tuple(cases)


def ex08_shares(candidate, *, quiet: bool = False, strict: bool = False) -> Result:
    """Check ``candidate(samples, workload) -> {function: share}``.

    pebslab only. ``samples`` is ``rec.samples()`` of a real guest recording;
    the answer has one key per function of the workload's symbol table (in
    any order), each the fraction of the samples in it (0.0 if none).
    """
    res = run_cases("ex08_shares", candidate, _share_cases(), compare=_close, quiet=True)
    for desc, expected, got in res.failed:
        if not isinstance(got, dict):
            res.hint = "return a dict {function name: share}"
        elif set(got) != set(expected):
            miss = sorted(set(expected) - set(got))
            res.hint = (f"every function of workload.symbols needs a key, also those without a "
                        f"sample: missing {miss}" if miss else
                        f"keys must be the function names of workload.symbols; extra: "
                        f"{sorted(set(got) - set(expected))}")
        elif "refused" in desc:
            res.hint = "no samples at all: every share is 0.0 (and no division by zero)"
        else:
            bad = next(k for k in expected if not _close({k: got[k]}, {k: expected[k]}))
            res.hint = (f"{bad}: expected {expected[bad]:.4f}, got {got[bad]!r}; a share is "
                        f"samples in the function / all samples (the 'sym' field names the function)")
        break
    return _finish(res, quiet, strict)


# ----------------------------------------------------------------------------- exercise 2

@functools.lru_cache(maxsize=1)
def _truth_cases() -> tuple:
    import pebslab as pl
    from ..viz import profile as P
    cases = []
    for w in (pl.workloads.multi_function(), pl.workloads.hot_loop(),
              pl.workloads.pointer_chase(), pl.workloads.multi_function(seed=3)):
        for kind in P.TRUTH_KINDS:
            cases.append((f"{w.name} ({len(w)} instructions), kind {kind!r}", (w, kind),
                          P.ground_truth(w, kind)))
    return tuple(cases)


def ex08_ground_truth(candidate, *, quiet: bool = False, strict: bool = False) -> Result:
    """Check ``candidate(workload, kind) -> {function: share}``: the profile's ground truth.

    pebslab only. ``kind`` is 'instructions', 'loads', 'stores' or
    'branches'; the answer gives every function of ``workload.symbols`` the
    share of the workload's instructions of that kind whose IP lies in
    [start, end) of the function (0.0 where it has none).
    """
    res = run_cases("ex08_ground_truth", candidate, _truth_cases(), compare=_close, quiet=True)
    for desc, expected, got in res.failed:
        if not isinstance(got, dict) or set(got) != set(expected):
            res.hint = ("one key per function of workload.symbols (start, end, name), 0.0 for "
                        "functions without such instructions")
        elif "'instructions'" in desc:
            res.hint = "kind 'instructions' counts every instruction, whatever its kind"
        else:
            bad = next(k for k in expected if not _close({k: got[k]}, {k: expected[k]}))
            res.hint = (f"{desc}: {bad} should be {expected[bad]:.4f}, you said {got[bad]!r}. "
                        "Divide by the instructions of that kind in the whole trace, and "
                        "remember the end address of a symbol is exclusive")
        break
    return _finish(res, quiet, strict)


# ----------------------------------------------------------------------------- exercise 3

_ERROR_CASES = ((":pp", 500_000), ("", 500_000), ("", 2_000_000), (":p", 1_000_000),
                (":pp", 2_000_000))


@functools.lru_cache(maxsize=1)
def _error_cases() -> tuple:
    from ..viz import profile as P
    truth = P.ground_truth(event="loads")
    cases = []
    for modifier, n in _ERROR_CASES:
        run = P.profile_run(modifier, instructions=n)
        cases.append((f"modifier {modifier!r}, {n:,} instructions ({len(run.samples)} samples)",
                      (modifier, n), P.profile_error(P.shares(run.samples), truth)))
    return tuple(cases)


def ex08_profile_error(candidate, *, quiet: bool = False, strict: bool = False) -> Result:
    """Check ``candidate(modifier, instructions) -> float``: a recording's error.

    pebslab only. The candidate records MEM_UOPS_RETIRED.ALL_LOADS with
    ``modifier`` (':pp', ':p' or '') in a ``patch`` guest on Silvermont for
    ``instructions`` instructions of multi_function (``profile_run``) and
    returns the total variation distance between its per-function shares
    and the ground truth: half the sum over functions of |share - truth|.
    """
    def close(got, expected):
        return (isinstance(got, (int, float)) and not isinstance(got, bool)
                and math.isclose(float(got), expected, abs_tol=1e-9))

    res = run_cases("ex08_profile_error", candidate, _error_cases(), compare=close, quiet=True)
    for desc, expected, got in res.failed:
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            if math.isclose(float(got), 2 * expected, abs_tol=1e-9):
                res.hint = "you have the L1 distance: the TV distance is half of it"
            elif 0 <= got <= 1 and expected:
                res.hint = (f"{desc}: {got:.4f} instead of {expected:.4f}. Record with "
                            "profile_run(modifier, instructions=...) at its other defaults, "
                            "and compare shares over every function, those without samples too")
            else:
                res.hint = "the TV distance is a number between 0 and 1"
        else:
            res.hint = "return one float"
        break
    return _finish(res, quiet, strict)
