"""Checkers for notebook 09 (timing): perf's throttling, the handler's exits, the exit budget.

pebslab only. Every right answer comes from the real model:

* ``ex09_first_warning``: :func:`pebslab.host.perf.simulate_throttling`
  (perf_sample_event_took() of today's kernel/events/core.c) fed a
  constant sample length.
* ``ex09_handler_exits``: the VM exits of the guest's PMI handler in a real
  run of the running example (:func:`pebslab.viz.timing.pmi_windows`), for
  every guest era this pebslab models.
* ``ex09_max_exit_cost``: the learner's exit cost is tried in real runs:
  at that cost the guest must print no "perf interrupt took too long", one
  cycle more must make it print.
"""

from __future__ import annotations

import functools

import numpy as np

from ._base import CheckFailed, Result, run_cases
from ..hw import msr as M

__all__ = ["ex09_first_warning", "ex09_handler_exits", "ex09_max_exit_cost", "WARN_WINDOW"]

#: ex09_first_warning looks at this many samples; later warnings count as "never".
WARN_WINDOW = 5000


def _finish(res: Result, quiet: bool, strict: bool) -> Result:
    if not quiet:
        print(res)
    if strict and not res.ok:
        raise CheckFailed(str(res))
    return res


# -----------------------------------------------------------------------------
# exercise 1: when does the first message come?
# -----------------------------------------------------------------------------

_LENGTHS = (1000, 2500, 2501, 2600, 3125, 6750, 20_000, 250_000)


def _first_warning(ns: int):
    from ..host import perf as HP

    out = HP.simulate_throttling(np.full(WARN_WINDOW, ns, dtype=np.int64))
    w = np.flatnonzero(out["warned"])
    return int(w[0]) if w.size else None


def ex09_first_warning(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``first_warning(handler_ns) -> int or None``.

    pebslab only. Expected: the 0-based index of the first sample after
    which today's perf_sample_event_took() prints its warning, at the
    default sysctls, when every sample takes ``handler_ns``; None if no
    warning comes within WARN_WINDOW samples.
    """
    cases = [(f"every sample {ns:,} ns", (ns,), _first_warning(ns)) for ns in _LENGTHS]
    res = run_cases("ex09_first_warning", candidate, cases, quiet=True)
    if res.failed:
        desc, expected, got = res.failed[0]
        if expected is None:
            res.hint = (f"for {desc} the average never exceeds perf_sample_allowed_ns (2500 ns): "
                        "the warning needs avg > allowed, strictly")
        elif isinstance(got, int) and not isinstance(got, bool) and expected is not None:
            res.hint = (f"for {desc} you are {'early' if got < expected else 'late'} by "
                        f"{abs(got - expected)} samples: the running sum loses 1/128 of itself "
                        "before each new sample is added, starting from 0, and the index is "
                        "0-based")
        else:
            res.hint = "return the index as an int, or None when no warning comes"
    return _finish(res, quiet, strict)


# -----------------------------------------------------------------------------
# exercise 2: the exits of the guest's PMI handler
# -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _exits(linux: str) -> tuple:
    from ..viz import timing as T

    vm, rec, res, start = T.pmi_session("patch", linux)
    wins = T.pmi_windows(vm, start)
    vm.destroy()
    return tuple((op, msr) for op, msr, _ in wins[1].exits)


def _show(seq) -> str:
    return ", ".join(f"{op} {M.msr_name(m).replace('MSR_', '').replace('CORE_PERF_', '')}"
                     for op, m in seq)


def ex09_handler_exits(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``handler_exits(linux) -> list of (op, msr)`` for one PEBS PMI of the running example.

    pebslab only. ``op`` is "rd" or "wr", ``msr`` the MSR index. Expected:
    the MSR exits of the guest's PMI handler in a real run, for every guest
    era pebslab models (viz.timing.linux_eras()).
    """
    from ..viz import timing as T

    def norm(got):
        try:
            return tuple((str(op), int(m)) for op, m in got)
        except (TypeError, ValueError):
            return got

    cases = [(f"a Linux {era} guest", (era,), _exits(era)) for era in T.linux_eras()]
    res = run_cases("ex09_handler_exits", lambda era: norm(candidate(era)), cases, quiet=True)
    if res.failed:
        desc, expected, got = res.failed[0]
        if isinstance(got, tuple):
            k = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
                     min(len(expected), len(got)))
            if k < len(expected):
                res.hint = (f"for {desc}: exit {k + 1} should be {_show([expected[k]])}, you "
                            f"have {_show(got[k:k + 1]) or 'nothing'}. The handler's steps: "
                            "disable, read status, acknowledge, handle, read status again, "
                            "enable")
            else:
                res.hint = (f"for {desc} you list {len(got) - len(expected)} exits too many "
                            f"({_show(got[len(expected):])})")
        else:
            res.hint = "return a list of pairs such as ('wr', 0x38f)"
    return _finish(res, quiet, strict)


# -----------------------------------------------------------------------------
# exercise 3: the exit cost at which the warnings stop
# -----------------------------------------------------------------------------

def _warns(vmexit: int, create: int, release: int, linux: str) -> tuple[bool, int]:
    from ..viz import timing as T

    s = T.pmi_summary("patch", linux, vmexit=vmexit, perf_event_create=create,
                      perf_event_release=release)
    r = T.throttle_run(s["handler_ns"], s["samples_per_s"])
    return r["first_warning"] is not None, s["handler_ns"]


def _max_cases():
    from ..viz import timing as T

    cases = [((4000, 2000, "current"), "today's guest, the default Costs"),
             ((0, 0, "current"), "today's guest, host perf events for free"),
             ((1000, 0, "current"), "today's guest, create 1,000, release free"),
             ((0, 500, "current"), "today's guest, create free, release 500")]
    if "3.15" in T.linux_eras():
        cases += [((0, 0, "3.15"), "a Linux 3.15 guest, host perf events for free"),
                  ((4000, 2000, "3.15"), "a Linux 3.15 guest, the default Costs")]
    return cases


def ex09_max_exit_cost(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``max_exit_cost(perf_event_create, perf_event_release, linux) -> int or None``.

    pebslab only. The answer is the largest ``vmexit`` (cycles per VM exit
    round trip, the other Costs at their defaults) at which the running
    example's guest never prints "perf interrupt took too long" under
    today's throttling at the default sysctls; None if even 0 prints it.
    Checked by running the model at the answer and one cycle above it.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    res = Result("ex09_max_exit_cost")
    for (create, release, linux), desc in _max_cases():
        label = f"{desc} (create={create}, release={release}, linux={linux!r})"
        try:
            got = candidate(create, release, linux)
        except NotImplementedError:
            res.error = "your function still raises NotImplementedError; fill it in"
            break
        except Exception as e:  # noqa: BLE001 - a learner's bug is a wrong answer
            res.failed.append((label, "the largest quiet vmexit", f"{type(e).__name__}: {e}"))
            continue
        if got is None:
            warns, ns = _warns(0, create, release, linux)
            if warns:
                res.passed += 1
            else:
                res.failed.append((label, "a number", f"None, but at vmexit=0 the handler takes "
                                   f"{ns} ns and the guest stays quiet"))
            continue
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)) or got < 0:
            res.failed.append((label, "an int >= 0 or None", got))
            continue
        got = int(got)
        if got > 100_000:
            res.failed.append((label, "at most 100000", got))
            continue
        warns, ns = _warns(got, create, release, linux)
        if warns:
            res.failed.append((label, "a quiet guest", f"at vmexit={got} the handler takes {ns} ns "
                               f"> 2500 ns allowed: the guest warns"))
            continue
        warns1, ns1 = _warns(got + 1, create, release, linux)
        if not warns1:
            res.failed.append((label, "the largest quiet value", f"{got}, but vmexit={got + 1} "
                               f"({ns1} ns) is still quiet: you can go higher"))
            continue
        res.passed += 1
    if res.failed:
        res.hint = ("the guest's clock sees only its handler: count its exits (each costs "
                    "vmexit + msr_emulation) and the KVM work inside them, turn cycles into ns "
                    "at the notebook's clock (GHZ), and compare with perf_sample_allowed_ns.")
    return _finish(res, quiet, strict)
