"""Checkers for notebook 07 (switching the PEBS MSRs at VM entry and exit).

pebslab only. Every right answer comes from real sessions of the model
(:mod:`pebslab.viz.switching`: a Silvermont VM whose guest boots, records a
precise event, stops, clears DS_AREA) and from the MSR-load lists KVM left
in them (``vm.kvm.autoload``).
"""

from __future__ import annotations

import functools

from ._base import Result, run_cases

__all__ = ["ex07_cpu_values", "ex07_predict_list", "ex07_diagnose"]

_MSRS = ("GLOBAL_CTRL", "PEBS_ENABLE", "DS_AREA")
_LONG = {"GLOBAL_CTRL": "MSR_CORE_PERF_GLOBAL_CTRL", "PEBS_ENABLE": "MSR_IA32_PEBS_ENABLE",
         "DS_AREA": "MSR_IA32_DS_AREA"}


# ----------------------------------------------------------------------------- exercise 1

@functools.lru_cache(maxsize=1)
def _cpu_cases() -> tuple:
    from ..viz import switching as S
    cases = []
    settings = (("patch", {}, 0), ("patch", {"switch_pebs_enable": False}, 0),
                ("patch", {"switch_ds_area": False}, 0), ("patch", {}, 6),
                ("patch", {"ds_area_clear_on_zero": True}, 0))
    for design, knobs, extra in settings:
        run = S.switching_run(design, extra_autoload=extra, **knobs)
        before = {"GLOBAL_CTRL": 0, "PEBS_ENABLE": 0, "DS_AREA": S.host_ds_area()}
        for p in run.phases:
            what = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "all switched"
            if extra:
                what += f", {extra} other MSRs on the list"
            desc = f"phase '{p.key}' ({what})"
            table = [list(row) for row in p.autoload]
            cases.append((desc, (table, dict(before)), (dict(p.guest_mode), dict(p.host_mode))))
            before = dict(p.host_mode)
    return tuple(cases)


def ex07_cpu_values(candidate, *, quiet: bool = False, strict: bool = False) -> Result:
    """Check ``candidate(autoload, before) -> (guest_mode, host_mode)``.

    pebslab only. ``autoload`` is ``vm.kvm.autoload.table()`` (rows of MSR
    name, guest value, host value); ``before`` maps GLOBAL_CTRL, PEBS_ENABLE
    and DS_AREA to their host-mode values before the VM entry. The answer:
    two dicts with the same keys, the values in guest mode (after the
    VM-entry MSR-load list) and in host mode (after the VM-exit list).
    """
    def compare(got, expected):
        return isinstance(got, tuple) and len(got) == 2 and all(
            isinstance(g, dict) and {k: g.get(k) for k in _MSRS} == e
            for g, e in zip(got, expected))

    res = run_cases("ex07_cpu_values", candidate, _cpu_cases(), compare=compare,
                    quiet=True, strict=False)
    res.hint = _cpu_hint(res)
    return _finish(res, quiet, strict)


def _cpu_hint(res: Result) -> str:
    for desc, expected, got in res.failed:
        if not (isinstance(got, tuple) and len(got) == 2 and all(isinstance(g, dict) for g in got)):
            return ("return a pair (guest_mode, host_mode) of dicts keyed 'GLOBAL_CTRL', "
                    "'PEBS_ENABLE', 'DS_AREA'")
        for mode, g, e in (("guest", got[0], expected[0]), ("host", got[1], expected[1])):
            for k in _MSRS:
                if g.get(k) != e[k]:
                    return (f"{k} in {mode} mode is {e[k]:#x}, you said {g.get(k)!r}: is "
                            f"{_LONG[k]} on the list in that case? An MSR on no list keeps "
                            f"the value it had before the transition")
    return ""


# ----------------------------------------------------------------------------- exercise 2

_SITUATIONS = ("nothing", "ds_area", "perf")


def _list_after(extra: int, situation: str) -> list[str]:
    """The PEBS MSRs on the list after one entry of a real patch VM."""
    import pebslab as pl
    host = pl.Host(cpu="silvermont", frames=512, seed=0)
    vm = host.create_vm(design="patch", memory_pages=128, extra_autoload=extra)
    guest = pl.GuestKernel(vm)
    if situation == "ds_area":
        vm.vcpus[0].wrmsr(pl.msr.MSR_IA32_DS_AREA, guest.mm.alloc(1))
    elif situation == "perf":
        guest.perf.record("MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", period=10007)
    vm.run(pl.workloads.hot_loop(), instructions=100)
    short = {v: k for k, v in _LONG.items()}
    out = [short[n] for n, _, _ in vm.kvm.autoload.table() if n in short]
    vm.destroy()
    return out


@functools.lru_cache(maxsize=1)
def _list_cases() -> tuple:
    cases = []
    for extra in range(0, 9):
        for situation in _SITUATIONS:
            has_ds = situation in ("ds_area", "perf")
            precise = situation == "perf"
            desc = (f"{extra} other MSRs, guest DS_AREA {'set' if has_ds else '0'}, "
                    f"precise event {'running' if precise else 'off'}")
            cases.append((desc, (extra, has_ds, precise), _list_after(extra, situation)))
    return tuple(cases)


def ex07_predict_list(candidate, *, quiet: bool = False, strict: bool = False) -> Result:
    """Check ``candidate(extra, ds_area_set, precise_running) -> list of MSR names``.

    pebslab only. The names ('GLOBAL_CTRL', 'PEBS_ENABLE', 'DS_AREA') that
    are on the 2014 MSR-load lists, in list order, after one VM entry of a
    ``patch`` VM that already has ``extra`` other MSRs on its lists. Expected
    answers are read off real VMs' ``vm.kvm.autoload``.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    res = run_cases("ex07_predict_list", lambda *a: list(candidate(*a)), _list_cases(),
                    quiet=True)
    res.hint = _list_hint(res)
    return _finish(res, quiet, strict)


def _list_hint(res: Result) -> str:
    for desc, expected, got in res.failed:
        if not isinstance(got, list):
            return "return a list of names such as ['GLOBAL_CTRL', 'PEBS_ENABLE']"
        missing = [m for m in expected if m not in got]
        extra = [m for m in got if m not in expected]
        if extra and "running" not in desc and extra[0] != "DS_AREA":
            return (f"{extra[0]}: with no event running, host and guest values are equal, and "
                    "atomic_switch_perf_msrs takes an MSR off the list when they are")
        if extra:
            return (f"{extra[0]} does not fit in that case ({desc}): the lists hold "
                    "NR_AUTOLOAD_MSRS = 8 entries, and the others got there first")
        if missing:
            return (f"{missing[0]} is on the list in that case ({desc}); count the free slots "
                    "again, and mind which code adds its MSRs first on every entry")
        return "right MSRs, wrong order: which function runs first in vmx_vcpu_run?"
    return ""


# ----------------------------------------------------------------------------- exercise 3

_MYSTERIES = (
    ("patch", {}, 0, "none"),
    ("patch", {"switch_global_ctrl": False}, 0, "switch_global_ctrl"),
    ("patch", {"switch_pebs_enable": False}, 0, "switch_pebs_enable"),
    ("patch", {"switch_ds_area": False}, 0, "switch_ds_area"),
    ("patch", {}, 6, "list_full"),
    ("patch", {}, 7, "list_full"),
    ("patch", {"autoload_full": "disable_pebs"}, 6, "list_full"),
    ("fixed", {}, 0, "none"),
    ("fixed", {"switch_ds_area": False}, 0, "switch_ds_area"),
    ("patch", {"switch_global_ctrl": False, "ds_area_clear_on_zero": True}, 0,
     "switch_global_ctrl"),
)


@functools.lru_cache(maxsize=1)
def _mystery_cases() -> tuple:
    from ..viz import switching as S
    cases = []
    for k, (design, knobs, extra, answer) in enumerate(_MYSTERIES):
        p = S.switching_run(design, extra_autoload=extra, **knobs).phase("record")
        evidence = {
            "on_list": [n for n, _, _ in p.autoload],
            "guest_wrote": dict(p.guest_wrote),
            "records": p.records,
            "samples": p.samples,
            "crashed": p.crashed,
            "crash_reason": p.crash_reason,
            "list_full_warnings": p.full,
        }
        cases.append((f"mystery VM {k + 1}", (evidence,), answer))
    return tuple(cases)


def mystery_evidence(k: int) -> dict:
    """The evidence of mystery VM ``k`` (1-based), to look at while solving exercise 3."""
    cases = _mystery_cases()
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(cases):
        raise ValueError(f"k must be an int in 1..{len(cases)}; got {k!r}")
    return cases[k - 1][1][0]


def ex07_diagnose(candidate, *, quiet: bool = False, strict: bool = False) -> Result:
    """Check ``candidate(evidence) -> str``: which switch broke in a mystery VM.

    pebslab only. ``evidence`` is what an administrator can see of a VM whose
    guest ran ``perf record`` of a precise event: the MSRs on its MSR-load
    lists, what the guest wrote, records, samples, crash, and the kernel's
    "Not enough msr switch entries" warnings. Answers: 'none',
    'switch_global_ctrl', 'switch_pebs_enable', 'switch_ds_area', 'list_full'.
    """
    res = run_cases("ex07_diagnose", candidate, _mystery_cases(), quiet=True)
    res.hint = _diag_hint(res)
    return _finish(res, quiet, strict)


def _diag_hint(res: Result) -> str:
    for desc, expected, got in res.failed:
        if expected == "list_full":
            return (f"{desc}: one of the guest's MSRs is missing from the list, but did KVM "
                    "choose to leave it out? Count the entries, and read the warnings")
        if expected == "none":
            return f"{desc}: every MSR the guest wrote is on the list: nothing is broken"
        return (f"{desc}: which MSR the guest wrote (non-zero) is not on the list, with room "
                f"to spare?")
    return ""


def _finish(res: Result, quiet: bool, strict: bool) -> Result:
    from ._base import CheckFailed
    if not quiet:
        print(res)
    if strict and not res.ok:
        raise CheckFailed(str(res))
    return res
