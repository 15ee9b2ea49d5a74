"""Checkers for notebook 03 (the virtual PMU, up to the first guest PEBS PMI).

pebslab only. Three exercises, none shared with notebook 01:

- ``ex03_status`` (warm-up): the guest's virtual GLOBAL_STATUS after a set of
  overflows, as the patched kvm_perf_overflow() sets it (precise events set
  bit 62 instead of their counter's bit); expected values come from calling
  pebslab.kvm.pmu.kvm_perf_overflow on a real vCPU;
- ``ex03_host_event`` (apply): the (type, config) of the host perf event
  reprogram_gp_counter() creates for a guest event select; expected values
  are the attrs of the events real ``patch`` VMs created;
- ``ex03_period_for`` (investigate): the smallest sampling period at which
  PMI handling stays under 5% of guest time, with the ASSUMED costs of
  pebslab.kvm.vm.Costs and with free perf-event re-creation; expected values
  from pebslab.viz.vpmu.pmi_cost_breakdown.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

from ..hw import msr as M
from ._base import run_cases, unwritten

__all__ = ["ex03_status", "ex03_host_event", "ex03_period_for"]


# ---------------------------------------------------------------------------
# ex03_status

_STATUS_CASES = (
    ((0, False),),
    ((0, True),),
    ((32, False),),
    ((0, True), (0, True)),
    ((0, True), (32, False)),
    ((1, False), (33, False)),
    ((0, False), (1, True)),
    ((0, True), (1, True), (34, False)),
)


def _status_on_model(overflows) -> int:
    import pebslab as pl
    from ..kvm.pmu import get_fixed_pmc, get_gp_pmc, kvm_perf_overflow
    host = pl.Host(cpu="silvermont", frames=64, seed=0)
    vm = host.create_vm(design="patch", memory_pages=16)
    v = vm.vcpus[0]
    for idx, precise in overflows:
        if idx >= 32:
            pmc = get_fixed_pmc(v.pmu, M.MSR_CORE_PERF_FIXED_CTR0 + idx - 32)
        else:
            pmc = get_gp_pmc(v.pmu, M.MSR_IA32_PERFCTR0 + idx, M.MSR_IA32_PERFCTR0)
        ev = SimpleNamespace(context=(pmc, v), attr=SimpleNamespace(precise_ip=int(precise)))
        kvm_perf_overflow(ev)
    status = int(v.pmu.global_status)
    vm.destroy()
    return status


@functools.lru_cache(maxsize=1)
def _status_cases() -> tuple:
    out = []
    for ovf in _STATUS_CASES:
        what = ", ".join(f"{'fixed ' + str(i - 32) if i >= 32 else 'PMC' + str(i)}"
                         f"{' (precise)' if p else ''}" for i, p in ovf)
        out.append((f"overflows of {what}", (list(ovf),), _status_on_model(ovf)))
    return tuple(out)


def ex03_status(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``guest_status(overflows) -> int``: the guest's GLOBAL_STATUS after the overflows.

    pebslab only. ``overflows`` is a list of (counter index, precise) with
    GP counters 0.. and fixed counters 32..; the expected value is what the
    model's kvm_perf_overflow() (the patched pmu.c) leaves in the virtual
    GLOBAL_STATUS of a fresh vCPU.
    """
    stub = unwritten("ex03_status", candidate, ([],), quiet, strict)
    if stub is not None:
        return stub
    hint = ""
    try:
        both = candidate([(0, True)])
        if both == (1 << 62) | 1:
            hint = ("the patch sets bit 62 INSTEAD of the counter's bit for a precise event "
                    "(an if/else in kvm_perf_overflow)")
        elif both == 1:
            hint = "a precise (PEBS) event reports the buffer bit, 62, not its counter's bit"
        elif candidate([(32, False)]) == 32:
            hint = "the status is a bit mask: counter i sets bit i (1 << i), not the value i"
    except Exception:  # noqa: BLE001
        pass
    return run_cases("ex03_status", lambda o: candidate(list(o)), _status_cases(), hint=hint,
                     quiet=quiet, strict=strict)


# ---------------------------------------------------------------------------
# ex03_host_event

def _sel(event, umask, **kw):
    return M.encode_eventsel(event, umask, **kw)


_HOST_EVENT_SELS = (
    ("INST_RETIRED.ANY_P, USR|OS|INT", _sel(0xC0, 0x00, int=True)),
    ("CPU_CLK_UNHALTED.CORE_P, OS only", _sel(0x3C, 0x00, usr=False)),
    ("CPU_CLK_UNHALTED.REF_P (0x3C/0x01)", _sel(0x3C, 0x01)),
    ("LONGEST_LAT_CACHE.MISS (0x2E/0x41)", _sel(0x2E, 0x41)),
    ("BR_INST_RETIRED.ALL_BRANCHES (0xC4/0x00)", _sel(0xC4, 0x00)),
    ("MEM_UOPS_RETIRED.L2_MISS_LOADS (0x04/0x04)", _sel(0x04, 0x04, int=True)),
    ("INST_RETIRED.ANY_P with CMASK = 1", _sel(0xC0, 0x00, cmask=1)),
    ("CPU_CLK_UNHALTED.CORE_P with EDGE", _sel(0x3C, 0x00, edge=True)),
    ("BR_MISP_RETIRED (0xC5/0x00) with INV and CMASK = 2", _sel(0xC5, 0x00, inv=True, cmask=2)),
    ("event 0xC0 umask 0x01 (not in the table)", _sel(0xC0, 0x01)),
)


def _host_event_on_model(eventsel: int) -> tuple[str, int]:
    import pebslab as pl
    from ..host import perf as P
    host = pl.Host(cpu="silvermont", frames=64, seed=0)
    vm = host.create_vm(design="patch", memory_pages=16)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_PERFCTR0, (-10007) & 0xFFFFFFFF)
    v.wrmsr(M.MSR_P6_EVNTSEL0, eventsel)
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    events = [ev for ev in v.pcpu.perf.events() if ev.owner == "kvm"]
    if len(events) != 1:  # pragma: no cover - the model broke its own contract
        raise AssertionError(f"expected one KVM perf event, found {len(events)}")
    a = events[0].attr
    name = {P.PERF_TYPE_HARDWARE: "HARDWARE", P.PERF_TYPE_RAW: "RAW"}[a.type]
    vm.destroy()
    return name, int(a.config)


@functools.lru_cache(maxsize=1)
def _host_event_cases() -> tuple:
    return tuple((f"{what} ({sel:#x})", (sel,), _host_event_on_model(sel))
                 for what, sel in _HOST_EVENT_SELS)


def _host_event_hint(candidate) -> str:
    for desc, (sel,), exp in _host_event_cases():
        try:
            got = tuple(candidate(sel))
        except Exception:  # noqa: BLE001
            continue
        if got == exp:
            continue
        if exp[0] == "RAW" and got[0] == "HARDWARE":
            return (f"{desc}: EDGE, INV or CMASK change what is counted, so KVM cannot use a "
                    "generic event; it passes the raw bits (as does an event not in the table)")
        if exp[0] == "HARDWARE" and got[0] == "RAW":
            return (f"{desc}: this (event, umask) pair is in KVM's table of architectural "
                    "events; look it up and use its generic perf id")
        if exp[0] == "RAW" and got[1] == sel:
            return ("a RAW config keeps only the event, umask, EDGE, INV and CMASK bits of the "
                    "event select; USR, OS, INT and EN become other attr fields")
        return f"{desc}: expected {exp}, got {got}"
    return ""


def ex03_host_event(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``host_event(eventsel) -> (type, config)``: what reprogram_gp_counter() asks perf for.

    pebslab only. ``type`` is "HARDWARE" or "RAW". Expected values: the
    attr of the host perf event that a ``patch`` VM on Silvermont created
    after the guest wrote ``eventsel`` to PERFEVTSEL0 and enabled PMC0.
    """
    stub = unwritten("ex03_host_event", candidate, (_sel(0xC0, 0x00),), quiet, strict)
    if stub is not None:
        return stub
    return run_cases("ex03_host_event", lambda s: tuple(candidate(s)), _host_event_cases(),
                     hint=_host_event_hint(candidate), quiet=quiet, strict=strict)


# ---------------------------------------------------------------------------
# ex03_period_for

#: The periods a learner chooses from (those of the notebook's explorer).
PERIODS = (1009, 2003, 5003, 10007, 20011, 50021, 100003)
_LIMIT = 0.05


@functools.lru_cache(maxsize=None)
def _overhead(event: str, period: int, recreate: bool) -> float:
    from ..viz.vpmu import pmi_cost_breakdown
    kw = {} if recreate else {"perf_event_create": 0, "perf_event_release": 0}
    return pmi_cost_breakdown(period=period, event=event, **kw)["overhead"]


def _period_for(event: str, recreate: bool):
    for p in PERIODS:
        if _overhead(event, p, recreate) < _LIMIT:
            return p
    return None


@functools.lru_cache(maxsize=1)
def _period_cases() -> tuple:
    out = []
    for event in ("instructions", "MEM_UOPS_RETIRED.ALL_LOADS", "cycles"):
        for recreate in (True, False):
            how = "assumed Costs" if recreate else "perf_event_create = release = 0"
            out.append((f"{event}, {how}", (event, recreate), _period_for(event, recreate)))
    return tuple(out)


def ex03_period_for(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``period_for(event, recreate) -> int | None``: the smallest period under 5%.

    pebslab only. The smallest period of ``PERIODS`` at which PMI handling
    takes less than 5% of guest time (viz.vpmu.pmi_cost_breakdown, 200,000
    instructions of hot_loop, design patch), with the assumed Costs
    (``recreate`` True) or with free perf-event re-creation (False); None
    if no period of the list is enough.
    """
    stub = unwritten("ex03_period_for", candidate, ("instructions", True), quiet, strict)
    if stub is not None:
        return stub
    return run_cases(
        "ex03_period_for", candidate, _period_cases(),
        hint=("loop over PERIODS in increasing order and call viz.vpmu.pmi_cost_breakdown("
              "period=p, event=event) (with perf_event_create=0, perf_event_release=0 when "
              "recreate is False); return the first p whose 'overhead' is below 0.05, or None"),
        quiet=quiet, strict=strict)
