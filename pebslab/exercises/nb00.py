"""Checkers for notebook 00 (welcome: the life of one PEBS record in a VM).

pebslab only. Three exercises on the course's running example (a Silvermont
``patch`` guest recording ``MEM_UOPS_RETIRED.L2_MISS_LOADS:pp`` on
``hot_loop``):

- ``ex00_delivery`` (warm-up): read a run's trace and measure how long the
  first PEBS record waits in guest memory before the guest drains it;
- ``ex00_gate`` (apply): write the CPUID gating Eric Northup asked for in
  review of ``kvm_pmu_msr``; expected answers come from VMs of the
  ``review`` design (pebslab.kvm.pmu.kvm_pmu_msr) with guest CPUIDs that
  lack DS, DTES64 or PDCM;
- ``ex00_pins`` (investigate): how many host frames each design pins for
  the running example, on a Silvermont and an Ice Lake host; expected
  answers are the pins of real VMs (``vm.kvm.pmu.pinned_pages``).
"""

from __future__ import annotations

import functools

from ..hw import msr as M
from ._base import run_cases, unwritten

__all__ = ["ex00_delivery", "ex00_gate", "ex00_pins"]


#: The running example's precise event per host CPU (as pebslab.viz.story uses it).
_EVENT = {"silvermont": "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp",
          "icelake": "MEM_LOAD_RETIRED.L3_MISS:pp"}

# ---------------------------------------------------------------------------
# ex00_delivery


# (design, period, seed, instructions) of the runs whose traces are the cases
_DELIVERY_RUNS = (("patch", 10007, 0, 900_000), ("patch", 4001, 1, 400_000),
                  ("fixed", 10007, 0, 900_000), ("review", 20011, 2, 1_600_000),
                  ("icelake", 10007, 0, 200_000))


def _trace_rows(design: str, period: int, seed: int, instructions: int) -> list[dict]:
    import pebslab as pl
    host = pl.Host(cpu="silvermont", frames=2048, seed=seed)
    vm = host.create_vm(design=design, memory_pages=512)
    try:
        guest = pl.GuestKernel(vm)
        try:
            guest.perf.record(_EVENT["silvermont"], period=period)
        except ValueError:              # icelake design: no PEBS on this host
            guest.perf.record("MEM_UOPS_RETIRED.L2_MISS_LOADS", period=period)
        vm.run(pl.workloads.hot_loop(), instructions=instructions)
        return [dict(r) for r in vm.trace.rows()]
    finally:
        vm.destroy()


def _delay(rows, end_kind: str = "DRAIN", first_end: bool = False):
    """Reference: cycles from the first PEBS_WRITE to the first ``end_kind`` after it."""
    start = next((k for k, r in enumerate(rows) if r["kind"] == "PEBS_WRITE"), None)
    if start is None:
        return None
    if first_end:
        end = next((r for r in rows if r["kind"] == end_kind), None)
    else:
        end = next((r for r in rows[start:] if r["kind"] == end_kind), None)
    return None if end is None else int(end["time"]) - int(rows[start]["time"])


@functools.lru_cache(maxsize=1)
def _delivery_cases() -> tuple:
    cases = []
    for design, period, seed, n in _DELIVERY_RUNS:
        rows = _trace_rows(design, period, seed, n)
        what = (f"the trace of a {design} VM, period {period}, seed {seed} "
                f"({sum(r['kind'] == 'PEBS_WRITE' for r in rows)} PEBS_WRITE rows)")
        cases.append((what, (rows,), _delay(rows)))
    # a trace cut just after a record: it opens with the DRAIN of that record
    rows = _trace_rows("patch", 10007, 0, 1_600_000)
    cut = next(k for k, r in enumerate(rows) if r["kind"] == "PEBS_WRITE") + 1
    cases.append(("a trace that starts just after a record was written (its first DRAIN "
                  "belongs to an earlier record)", (rows[cut:],), _delay(rows[cut:])))
    return tuple(cases)


def _delivery_hint(candidate) -> str:
    """Name the likely mistake from the candidate's answer on the first case it gets wrong."""
    for _what, (rows,), expected in _delivery_cases():
        try:
            got = candidate(list(rows))
        except NotImplementedError:
            return ""
        except Exception as e:  # noqa: BLE001
            return f"your function raised {type(e).__name__}: {e}"
        if got == expected:
            continue
        if expected is None:
            return ("this run has no PEBS_WRITE at all (the icelake design offers no PEBS on a "
                    "Silvermont host): return None there")
        if got == _delay(rows, first_end=True):
            return ("you took the first DRAIN of the whole trace; take the first DRAIN at or "
                    "after the first PEBS_WRITE")
        if got == _delay(rows, "PMI_INJECT"):
            return ("you stopped at PMI_INJECT: the interrupt is only the doorbell; the record "
                    "is read when the guest's handler drains the buffer (DRAIN)")
        if got == _delay(rows, "PMI"):
            return ("you stopped at the host's PMI: the guest has not even been told yet; "
                    "follow the chain to the guest's DRAIN")
        if isinstance(got, int) and got < 0:
            return "a delay is later minus earlier: DRAIN time - PEBS_WRITE time"
        return ("take the 'time' of the first row whose kind is PEBS_WRITE and of the first "
                "DRAIN row after it, and subtract")
    return ""


def ex00_delivery(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``delivery_delay(rows) -> int | None``: cycles a record waits before the drain.

    pebslab only. ``rows`` is ``vm.trace.rows()`` of a real run; the answer
    is the time of the first DRAIN row at or after the first PEBS_WRITE row,
    minus the time of that PEBS_WRITE, or None if the run wrote no record.
    """
    stub = unwritten("ex00_delivery", candidate, ([],), quiet, strict)
    if stub is not None:
        return stub
    return run_cases("ex00_delivery", lambda rows: candidate(list(rows)), _delivery_cases(),
                     hint=_delivery_hint(candidate), strict=strict, quiet=quiet)


# ---------------------------------------------------------------------------
# ex00_gate

_FEATURES = ("DS", "DTES64", "PDCM")


@functools.lru_cache(maxsize=1)
def _gate_cases() -> tuple:
    import pebslab as pl
    from ..hw import cpuid as CPUID
    from ..kvm.designs import get_design, pebs_virtualization_supported
    from ..kvm.pmu import kvm_pmu_msr

    cases = []
    drops = ((), ("DS",), ("DTES64",), ("PDCM",), ("DS", "PDCM"), _FEATURES)
    for cpu in ("silvermont", "haswell", "icelake"):
        for drop in drops:
            host = pl.Host(cpu=cpu, frames=256, seed=0)
            cpuid = CPUID.default(host.cpu).without(*drop) if drop else None
            vm = host.create_vm(design="review", memory_pages=32, cpuid=cpuid)
            v = vm.vcpus[0]
            host_can = pebs_virtualization_supported(host.cpu, get_design("review"))
            features = frozenset(f for f in _FEATURES if v.cpuid_has(f))
            expected = bool(kvm_pmu_msr(v, M.MSR_IA32_DS_AREA))
            vm.destroy()
            desc = (f"{cpu} host (perf_pebs_virtualization() = {host_can}), guest CPUID has "
                    f"{sorted(features) or 'none of DS, DTES64, PDCM'}")
            cases.append((desc, (host_can, features), expected))
    # Userspace may hand a guest any CPUID bits it likes (KVM_SET_CPUID); pebslab's VMM
    # filters them, so set pebs_allowed by hand on a Haswell VM, as if it had not.
    host = pl.Host(cpu="haswell", frames=256, seed=0)
    vm = host.create_vm(design="review", memory_pages=32)
    v = vm.vcpus[0]
    v.pmu.pebs_allowed = True
    cases.append(("haswell host (perf_pebs_virtualization() = False), userspace set DS, "
                  "DTES64, PDCM in the guest CPUID anyway", (False, frozenset(_FEATURES)),
                  bool(kvm_pmu_msr(v, M.MSR_IA32_DS_AREA))))
    vm.destroy()
    # drop duplicates (a host that cannot virtualize filters the bits anyway)
    seen, out = set(), []
    for c in cases:
        if c[1] not in seen:
            seen.add(c[1])
            out.append(c)
    return tuple(out)


def _gate_hint(candidate) -> str:
    try:
        no_host = candidate(False, frozenset(_FEATURES))
        only_host = candidate(True, frozenset())
        partial = {f: candidate(True, frozenset(_FEATURES) - {f}) for f in _FEATURES}
    except NotImplementedError:
        return ""
    except Exception as e:  # noqa: BLE001
        return f"your function raised {type(e).__name__}: {e}"
    if no_host:
        return ("a guest CPUID can say anything userspace likes; without "
                "perf_pebs_virtualization() on the host there is nothing to virtualize")
    if only_host:
        return ("that is the patch as posted (host only); the review asks that the guest's "
                "CPUID be consulted too")
    let_through = [f for f, v in partial.items() if v]
    if let_through:
        return (f"your gate lets a guest whose CPUID lacks {', '.join(let_through)} see "
                "DS_AREA; which CPUID bits does the patch's cpuid.c hunk advertise for PEBS?")
    return ""


def ex00_gate(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``pebs_msrs_visible(host_can, guest_features) -> bool`` (Eric Northup's gate).

    pebslab only. Expected: ``kvm_pmu_msr(vcpu, MSR_IA32_DS_AREA)`` of VMs
    under the ``review`` design (kvm_pmu->pebs_allowed from the guest CPUID)
    on Silvermont, Haswell and Ice Lake hosts with guest CPUIDs missing
    some of DS, DTES64, PDCM.
    """
    stub = unwritten("ex00_gate", candidate, (True, frozenset()), quiet, strict)
    if stub is not None:
        return stub
    return run_cases("ex00_gate", lambda h, f: bool(candidate(h, f)), _gate_cases(),
                     hint=_gate_hint(candidate), strict=strict, quiet=quiet)


# ---------------------------------------------------------------------------
# ex00_pins


def _pins(design: str, cpu: str) -> int:
    import pebslab as pl
    host = pl.Host(cpu=cpu, frames=1024, seed=0)
    vm = host.create_vm(design=design, memory_pages=256)
    try:
        guest = pl.GuestKernel(vm)
        try:
            guest.perf.record(_EVENT[cpu], period=10007)
        except ValueError:
            return 0
        return len(vm.kvm.pmu.pinned_pages)
    finally:
        vm.destroy()


@functools.lru_cache(maxsize=1)
def _pins_cases() -> tuple:
    from ..kvm.designs import DESIGN_NAMES
    return tuple((f"design {d!r} on a {cpu} host", (d, cpu), _pins(d, cpu))
                 for cpu in ("silvermont", "icelake") for d in DESIGN_NAMES)


def ex00_pins(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``pins(design, cpu) -> int``: host frames KVM pins for the running example.

    pebslab only. Expected: ``len(vm.kvm.pmu.pinned_pages)`` right after
    the guest's ``perf record`` of the running example's precise event (0
    when the guest is refused PEBS), for every design on a Silvermont and an
    Ice Lake host.
    """
    stub = unwritten("ex00_pins", candidate, ("icelake", "silvermont"), quiet, strict)
    if stub is not None:
        return stub
    return run_cases(
        "ex00_pins", candidate, _pins_cases(),
        hint=("run it: a fresh Host(cpu=cpu, seed=0), create_vm(design=design), a GuestKernel, "
              "perf.record of the precise event, then len(vm.kvm.pmu.pinned_pages). If the "
              "guest's driver refuses the event (ValueError), nothing was pinned."),
        strict=strict, quiet=quiet)
