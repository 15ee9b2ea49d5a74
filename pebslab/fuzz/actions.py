"""The actions a campaign draws: each declared once, with its weight, how it draws and what it does.

pebslab only. An action is a class decorated with :func:`action` (the way
py65 declares an instruction with ``@instruction``): ``draw(c, d)`` returns
its parameters for the current state of campaign ``c`` (concrete values, so
a replay repeats it exactly; None when it does not apply now), ``run(c,
**params)`` performs it and returns an outcome string. :data:`ACTIONS` is
the registry the command line draws from and the hypothesis state machines
of tests/test_fuzz.py build one rule per action from.

This module holds the registry, what an exception means for each kind of
code, and the guest's MSR and CPUID instructions: WRMSR / RDMSR checked
against :mod:`.oracle`, and the MSR sweep (every bit alone, random values,
then enable what was programmed and run). :mod:`.guest_actions` declares
the guest's memory, PEBS, perf and run actions, :mod:`.host_actions` the
host's and userspace's (memory pressure, dirty logging, save/restore,
vCPU reset, destroy); both register into the same :data:`ACTIONS`, in
that order.

Any exception from a guest action other than a modeled fault
(``GuestFault('#GP')``, a guest crash) is a violation with the signature
``exceptions/<type> in <function that raised it>``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Callable

from .. import workloads as W
from ..guest.mm import GuestPageFault
from ..guest.perf import PerfOpenError
from ..host import perf_hw
from ..host.mm import HostOutOfMemory
from ..hw import msr as M
from ..hw.errors import GuestCrash, GuestFault
from ..hw.mmu import PAGE_SIZE as PAGE
from ..hw.models import MODELS
from .oracle import U64, pmu_msr_indices

CPUS = tuple(MODELS)

#: Workloads shared by every campaign (immutable arrays).
WORKLOADS = (W.hot_loop(), W.pointer_chase(), W.multi_function())

#: INST_RETIRED.ANY, USR|OS|EN: what an enabling sequence programs (FACTS b.2)
INST_RETIRED = M.encode_eventsel(0xC0, 0)


@dataclass(frozen=True)
class Action:
    """One declared action (see :func:`action`)."""

    name: str
    weight: float            # relative weight of the command line's random choice
    pebs_bias: float         # weight multiplier where the guest can use PEBS
    ci: bool                 # a rule of the CI state machines (False: too slow for CI)
    draw: Callable
    run: Callable
    doc: str


#: name -> Action, in declaration order
ACTIONS: dict[str, Action] = {}


def action(weight: float, *, pebs_bias: float = 1.0, ci: bool = True):
    """Declare an action class with ``draw(c, d)`` and ``run(c, **params)`` in ACTIONS."""
    def register(cls):
        ACTIONS[cls.__name__] = Action(cls.__name__, weight, pebs_bias, ci,
                                       cls.__dict__["draw"], cls.__dict__["run"],
                                       (cls.__doc__ or "").strip())
        return cls
    return register


# =============================================================================
# outcomes: what an exception means, per kind of code
# =============================================================================

def raised_in(e: BaseException) -> str:
    """The function an exception was raised in (its innermost frame)."""
    tb = traceback.extract_tb(e.__traceback__)
    return tb[-1].name if tb else "?"


def escaped(c, where: str, e: BaseException) -> str:
    """An exception that is no modeled outcome got out: a violation."""
    c.violate("exceptions", f"{type(e).__name__} in {raised_in(e)}",
              f"{type(e).__name__} escaped {where}: {e}")
    return "ESCAPED"


def insn(c, fn, where: str):
    """Run one guest instruction; return (result, outcome): ok, GP, GUEST_CRASH, ESCAPED."""
    crashed = c.vm.crashed
    try:
        r = fn()
    except GuestCrash as e:
        if not crashed:
            escaped(c, where, e)
            return None, "ESCAPED"
        return None, "GUEST_CRASH"
    except GuestFault as e:
        if crashed:
            c.violate("crash", "fault-after-crash", f"{where} on a crashed VM raised {e} "
                                                    f"instead of GuestCrash")
        if e.vector != "#GP":
            c.violate("msr", "vector", f"{where} raised {e.vector}, not #GP")
        c.stats["GP"] += 1
        return e, "GP"
    except Exception as e:  # noqa: BLE001 - the invariant is about exactly this
        escaped(c, where, e)
        return None, "ESCAPED"
    if crashed:
        c.violate("crash", "ran-after-crash", f"{where} on a crashed VM did not raise GuestCrash")
    return r, "ok"


def guest_call(c, fn, where: str):
    """Run guest kernel code: guest OOM and its own page faults are its business."""
    try:
        return fn(), "ok"
    except HostOutOfMemory as e:
        escaped(c, where, e)
        return None, "ESCAPED"
    except MemoryError:
        c.stats["GUEST_OOM"] += 1
        return None, "GUEST_OOM"
    except GuestPageFault:
        c.stats["GUEST_OOPS"] += 1
        return None, "GUEST_OOPS"
    except ValueError as e:
        if c.scribbled:      # GuestMM refusing page tables the guest itself corrupted
            c.stats["GUEST_OOPS"] += 1
            return None, "GUEST_OOPS"
        escaped(c, where, e)
        return None, "ESCAPED"
    except Exception as e:  # noqa: BLE001
        escaped(c, where, e)
        return None, "ESCAPED"


def perf_call(c, fn, where: str):
    """Run a guest perf driver call: its error returns are outcomes, not violations."""
    crashed = c.vm.crashed
    try:
        return fn(), "ok"
    except GuestCrash as e:
        if crashed:
            return None, "GUEST_CRASH"
        escaped(c, where, e)
        return None, "ESCAPED"
    except PerfOpenError:
        c.stats["PERF_ERR"] += 1
        return None, "PERF_ERR"
    except GuestFault:
        c.stats["GP"] += 1
        return None, "GP"
    except HostOutOfMemory as e:
        escaped(c, where, e)
        return None, "ESCAPED"
    except MemoryError:
        c.stats["GUEST_OOM"] += 1
        return None, "GUEST_OOM"
    except GuestPageFault:     # the guest kernel touched memory it unmapped: its oops
        c.stats["GUEST_OOPS"] += 1
        return None, "GUEST_OOPS"
    except ValueError:         # perf_event_open's -EINVAL / -EOPNOTSUPP
        c.stats["PERF_ERR"] += 1
        return None, "PERF_ERR"
    except Exception as e:  # noqa: BLE001
        escaped(c, where, e)
        return None, "ESCAPED"


def run_vm(c, vm, fn, where: str) -> str:
    """Run guest instructions; the RunResult must agree with the VM's crash state."""
    crashed = vm.crashed
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001
        return escaped(c, where, e)
    if res.crashed != vm.crashed:
        c.violate("crash", "run-result", f"RunResult.crashed={res.crashed} but "
                                         f"vm.crashed={vm.crashed}")
    if crashed and res.instructions:
        c.violate("crash", "ran-after-crash", f"a crashed VM retired {res.instructions} "
                                              f"instructions")
    c.stats["instructions"] += res.instructions
    return "GUEST_CRASH" if vm.crashed else "ok"


def host_call(c, fn, where: str, allowed=()):
    """Run host-side code (reclaim, migration): only ``allowed`` exceptions are outcomes."""
    try:
        return fn(), "ok"
    except allowed as e:
        return e, type(e).__name__
    except Exception as e:  # noqa: BLE001
        escaped(c, where, e)
        return None, "ESCAPED"


# =============================================================================
# MSR accesses checked against the oracle
# =============================================================================

def check_wrmsr(c, v, msr: int, value: int) -> str:
    """Guest WRMSR, then an RDMSR of the same MSR; both compared with the oracle."""
    # (no "current" value: an unchanged control value with reserved bits could only be
    # there if KVM had accepted it before, which was reported then)
    verdict = c.oracle.write(msr, value)
    name = M.msr_name(msr)
    r, out = insn(c, lambda: v.wrmsr(msr, value), f"WRMSR {name}")
    c.cover(msr, "wr", out)
    if out in ("GUEST_CRASH", "ESCAPED") or verdict.accept is None:
        return out
    if msr == M.MSR_IA32_DS_AREA and out == "ok" and c.vm.design.name == "fixed":
        c.ds_repin_failed[v.index] = bool(v.pmu.pebs_enable) and not v.pmu.pinned_pages
    if out == "GP":
        if verdict.accept:
            if msr in (M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA) \
                    and c.vm.design.name == "fixed" and "cannot pin" in (r.reason or ""):
                return "GP"     # the `fixed` design refuses PEBS it cannot make safe
            c.violate("msr", f"{verdict.rule}/#GP", f"WRMSR {name} {value:#x} #GP'd; the "
                                                    f"oracle accepts it ({verdict.rule})")
        return "GP"
    if not verdict.accept:
        c.violate("msr", f"{verdict.rule}/accepted", f"WRMSR {name} {value:#x} was accepted; "
                                                     f"the oracle says #GP ({verdict.rule})")
        return "ok"
    got, out2 = insn(c, lambda: v.rdmsr(msr), f"RDMSR {name}")
    c.cover(msr, "rd", out2)
    if out2 != "ok":
        c.violate("msr", "readback", f"RDMSR {name} right after a successful WRMSR: {out2}")
        return "ok"
    if verdict.readback is not None and got != verdict.readback:
        c.violate("msr", f"readback:{c.oracle.kind(msr)[0]}",
                  f"WRMSR {name} {value:#x} reads back {got:#x}; the oracle says "
                  f"{verdict.readback:#x}")
    if msr == M.MSR_CORE_PERF_GLOBAL_OVF_CTRL:
        st, _ = insn(c, lambda: v.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS), "RDMSR GLOBAL_STATUS")
        if isinstance(st, int) and st & value:
            c.violate("msr", "ovf-ctrl-clears", f"GLOBAL_STATUS {st:#x} still has bits of the "
                                                f"OVF_CTRL value {value:#x} just written")
    return "ok"


def check_rdmsr(c, v, msr: int) -> tuple[int | None, str]:
    """Guest RDMSR compared with the oracle: exists iff the oracle says so, value in range."""
    name = M.msr_name(msr)
    r, out = insn(c, lambda: v.rdmsr(msr), f"RDMSR {name}")
    c.cover(msr, "rd", out)
    k = c.oracle.kind(msr)
    if k is not None and k[0] == "unmodeled":
        return (r if out == "ok" else None), out
    if out == "GP" and k is not None:
        c.violate("msr", "missing-msr", f"RDMSR {name} #GP'd; the oracle says the guest has it")
    elif out == "ok":
        why = c.oracle.read_problem(msr, r)
        if why:
            c.violate("msr", f"{why[0]}/read", f"RDMSR {name}: {why[1]}")
    return (r if out == "ok" else None), out


# =============================================================================
# guest instructions
# =============================================================================

#: the MSR numbers the random WRMSR / RDMSR favour
HOT_MSRS = (M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA, M.MSR_CORE_PERF_GLOBAL_CTRL,
            M.MSR_CORE_PERF_GLOBAL_STATUS, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
            M.MSR_IA32_PERFCTR0, M.MSR_P6_EVNTSEL0, M.MSR_CORE_PERF_FIXED_CTR0,
            M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_PEBS_DATA_CFG, M.MSR_IA32_PERF_CAPABILITIES,
            M.MSR_IA32_PMC0)


def draw_msr(c, d) -> int:
    how = d.choice(("hot", "pmu", "any"), (6, 3, 1))
    if how == "hot":
        return d.choice(HOT_MSRS)
    if how == "pmu":
        return d.choice(pmu_msr_indices(c.config.cpu) + (0x3F4, 0x3F5))
    return d.integer(0, 0xFFFFFFFF)


def interesting_values(c, msr: int) -> list[int]:
    """Values near the edges of what ``msr`` accepts, and addresses the guest uses."""
    o = c.oracle
    vals = [0, U64, 1, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 47, 1 << 63]
    pages = c.known_pages()
    if msr == M.MSR_IA32_DS_AREA:
        vals += [perf_hw.HOST_DS_AREA, 0x0000800000000000, 0x8000000000000000,
                 0xFFFF7FFFFFFFF000, 0xFFFF888000000000 + (1 << 30), 0x1000, 0x401000]
        vals += [s.ds for s in c.setups[-3:]]
        if c.guest.perf.ds_gva is not None:
            vals.append(c.guest.perf.ds_gva)
        if pages:
            vals += pages[-4:] + [pages[0] + PAGE - 64, pages[-1] + PAGE - 8]
    elif msr == M.MSR_IA32_PEBS_ENABLE:
        vals += [0x1, 0x2, 0x3, 0xF, o.pebs_enable_valid, 0xF_0000_000F,
                 1 << 32, 0x1_0000_0001, 0x10, 1 << 35, (1 << o.nr_gp) - 1]
    elif msr in (M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
                 M.MSR_CORE_PERF_GLOBAL_STATUS):
        vals += [o.counters, 0x1, 0x3, 0x7_0000_0003, 1 << 62, 3 << 62,
                 o.counters | 1 << 62, 0xFF, 1 << 35]
    elif M.MSR_P6_EVNTSEL0 <= msr < M.MSR_P6_EVNTSEL0 + 9:
        for code in (0x00C0, 0x003C, 0x0404, 0x81D0, 0x20D1, 0x00C4, 0x412E, 0x0300):
            vals.append(M.encode_eventsel(code & 0xFF, code >> 8))
            vals.append(M.encode_eventsel(code & 0xFF, code >> 8, int=True))
        vals += [M.encode_eventsel(0xC0, 0, en=False), M.encode_eventsel(0xC0, 0, any=True),
                 M.encode_eventsel(0xC0, 0, in_tx=True), M.encode_eventsel(0xC0, 0, in_txcp=True),
                 M.encode_eventsel(0xC0, 0, adaptive=True), M.encode_eventsel(0xC0, 0, cmask=1),
                 M.encode_eventsel(0xC0, 0, inv=True, cmask=16), 1 << 35]
    elif msr == M.MSR_CORE_PERF_FIXED_CTR_CTRL:
        vals += [0xB, 0xBB, 0xBBB, 0xBBBB, 0x444, 0x333, 1 << 32, 0xB | 1 << 32, 0x8]
    elif msr == M.MSR_PEBS_DATA_CFG:
        vals += [0xF, 0x1, 0x2, 0xFF00000F, 0x1F, 1 << 24, 3 << 24 | 8]
    else:   # counters and the rest
        vals += [(-97) & 0xFFFFFFFF, (-10007) & 0xFFFFFFFF, (1 << 48) - 1, 1 << 48,
                 0xFFFFFF0123456789, 0x7FFFFFFF, (1 << 48) - 2, 0x800000000001]
    return vals


def draw_value(c, d, msr: int) -> int:
    how = d.choice(("interesting", "random64", "random32", "bit"), (6, 2, 1, 1))
    if how == "interesting":
        return d.choice(interesting_values(c, msr)) & U64
    if how == "random64":
        return d.integer(0, U64)
    if how == "random32":
        return d.integer(0, 0xFFFFFFFF)
    return 1 << d.integer(0, 63)


@action(14, pebs_bias=0.6)
class wrmsr:
    """Guest WRMSR of an MSR (biased towards the PMU's) with an edge or random value."""

    def draw(c, d):
        msr = draw_msr(c, d)
        return {"vcpu": d.integer(0, c.config.vcpus - 1), "msr": msr,
                "value": draw_value(c, d, msr)}

    def run(c, vcpu, msr, value):
        return check_wrmsr(c, c.vcpu(vcpu), msr, value)


@action(7, pebs_bias=0.6)
class rdmsr:
    """Guest RDMSR of an MSR (biased towards the PMU's)."""

    def draw(c, d):
        return {"vcpu": d.integer(0, c.config.vcpus - 1), "msr": draw_msr(c, d)}

    def run(c, vcpu, msr):
        return check_rdmsr(c, c.vcpu(vcpu), msr)[1]


def _or_msr(c, v, msr: int, bits: int) -> str:
    """Read ``msr`` and write it back with ``bits`` added (as a guest driver would)."""
    cur, out = check_rdmsr(c, v, msr)
    if out != "ok":
        return out
    return check_wrmsr(c, v, msr, cur | bits)


def enable_sequence(c, v, msr: int) -> str:
    """Enable what a sweep of ``msr`` programmed: event select / fixed control, GLOBAL_CTRL.

    pebslab only. A counter counts only with its enable bits *and* its
    GLOBAL_CTRL bit set (FACTS b.2-b.4); this is the sequence that makes
    KVM create the host perf events behind the guest's counters.
    """
    gp = [(M.MSR_IA32_PERFCTR0, "pmc"), (M.MSR_IA32_PMC0, "pmc"), (M.MSR_P6_EVNTSEL0, "sel")]
    for base, _ in gp:
        if base <= msr <= base + M.INTEL_PMC_MAX_GENERIC:
            i = msr - base
            if check_wrmsr(c, v, M.MSR_P6_EVNTSEL0 + i, INST_RETIRED) == "GUEST_CRASH":
                return "GUEST_CRASH"
            check_wrmsr(c, v, M.MSR_IA32_PERFCTR0 + i, 0)
            return _or_msr(c, v, M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << i)
    f0 = M.MSR_CORE_PERF_FIXED_CTR0
    fields = range(M.INTEL_PMC_MAX_FIXED)
    if f0 <= msr <= f0 + M.INTEL_PMC_MAX_FIXED:
        fields = [msr - f0]
    elif msr not in (M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_CORE_PERF_GLOBAL_CTRL,
                     M.MSR_CORE_PERF_GLOBAL_STATUS, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL):
        return "ok"
    out = "ok"
    for i in fields:     # each field, then its GLOBAL_CTRL bit: 0xB = OS|USR|PMI (FACTS b.3)
        if i < M.INTEL_PMC_MAX_FIXED:
            out = _or_msr(c, v, M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB << 4 * i)
            if out == "GUEST_CRASH":
                return out
        out = _or_msr(c, v, M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << (M.INTEL_PMC_IDX_FIXED + i))
        if out == "GUEST_CRASH":
            return out
    return out


@action(4, pebs_bias=0.8)
class msr_sweep:
    """One PMU MSR: every bit alone, all defined bits, two random values; enable it; run."""

    def draw(c, d):
        todo = [m for m in pmu_msr_indices(c.config.cpu) if m not in c.swept]
        return {"vcpu": d.integer(0, c.config.vcpus - 1),
                "msr": d.choice(todo or pmu_msr_indices(c.config.cpu)),
                "randoms": [d.integer(0, U64), d.integer(0, 0xFFFFFFFF)],
                "n": d.choice((50, 200, 1000))}

    def run(c, vcpu, msr, randoms, n):
        v = c.vcpu(vcpu)
        valid = c.oracle.valid_bits(msr)
        values = [1 << b for b in range(64)]
        if valid and valid & (valid - 1):
            values.append(valid)
        out = "ok"
        for value in values + list(randoms):
            single = value & (value - 1) == 0
            c.cover(msr, "bit" if single else "value",
                    "defined" if value & c.oracle.valid_bits(msr) == value else "reserved",
                    value)
            if check_wrmsr(c, v, msr, value) == "GUEST_CRASH":
                return "GUEST_CRASH"
        if enable_sequence(c, v, msr) == "GUEST_CRASH":
            return "GUEST_CRASH"
        c.cover(msr, "enabled", "ok")
        w = WORKLOADS[0]
        out = run_vm(c, c.vm, lambda: c.vm.run(w, n, vcpu=v.index), "vm.run")
        if out != "ok":
            return out
        check_rdmsr(c, v, msr)
        c.swept.add(msr)
        c.cover(msr, "sweeps", "ok")
        return "ok"


@action(2)
class cpuid:
    """Guest CPUID of a PMU-related or random leaf: the VM's table, nothing else."""

    def draw(c, d):
        return {"leaf": d.choice((0x1, 0xA, 0x0, 0x7, 0x80000001, d.integer(0, 0xFFFFFFFF)))}

    def run(c, leaf):
        v = c.vm.vcpus[0]
        r, out = insn(c, lambda: v.cpuid(leaf), "CPUID")
        if out == "ok" and r != c.vm.cpuid.leaf(leaf):
            c.violate("cpuid", "table", f"CPUID {leaf:#x} returned {r}, the VM's table says "
                                        f"{c.vm.cpuid.leaf(leaf)}")
        return out


# the other actions register themselves on import (after the names they use exist)
from . import guest_actions, host_actions  # noqa: E402,F401
