"""The actions a campaign draws: each declared once, with its weight, how it draws and what it does.

pebslab only. An action is a class decorated with :func:`action` (the way
py65 declares an instruction with ``@instruction``): ``draw(c, d)`` returns
its parameters for the current state of campaign ``c`` (concrete values, so
a replay repeats it exactly; None when it does not apply now), ``run(c,
**params)`` performs it and returns an outcome string. :data:`ACTIONS` is
the registry the command line draws from and the hypothesis state machines
of tests/test_fuzz.py build one rule per action from.

Guest actions: WRMSR / RDMSR (checked against :mod:`.oracle`), the MSR
sweep (every bit alone, random values, then enable what was programmed and
run), CPUID, changes to the guest's page tables, PEBS set up by hand or by
the perf driver, running a workload. Host actions: memory pressure, dirty
logging, save/restore to another host, vCPU reset, destroy.

Any exception from a guest action other than a modeled fault
(``GuestFault('#GP')``, a guest crash) is a violation with the signature
``exceptions/<type> in <function that raised it>``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Callable

from .. import scenarios as S
from .. import workloads as W
from ..guest.mm import GuestPageFault
from ..guest.perf import PerfOpenError
from ..host import perf_hw
from ..host.mm import HostOutOfMemory
from ..hw import msr as M
from ..hw.errors import GuestCrash, GuestFault
from ..hw.mmu import PAGE_SIZE as PAGE
from ..hw.models import MODELS
from . import _targets as T
from .invariants import walk
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


# =============================================================================
# guest memory
# =============================================================================

def pick_page(c, d, mapped: bool) -> int | None:
    """A known guest page that is (or is not) mapped now; a few tries, else None."""
    pages = c.known_pages()
    if not pages:
        return None
    for _ in range(6):
        gva = pages[d.integer(0, len(pages) - 1)]
        # side-effect free (translate() would fault swapped table pages in, and a
        # draw that ends in a skip is not replayed)
        if (walk(c.vm, c.guest.mm.cr3, gva) is not None) == mapped:
            return gva
    return None


def target_gpa(c, d, gva):
    how = d.choice(("old", "fresh", "alias"), (4, 3, 1))
    if how == "old" and gva in c.last_gpa:
        return "old", 0
    if how == "alias":
        return "alias", d.integer(0, 1 << 16)
    return "fresh", 0


def resolve_gpa(c, gva, target, pick):
    """The GPA a (re)map points at: the old one, an alias of a known one, or a fresh one."""
    if target == "old" and gva in c.last_gpa:
        return c.last_gpa[gva], False
    if target == "alias":
        known = sorted({g for g in c.last_gpa.values() if g is not None}
                       | set(c.guest.mm.table_pages))
        if known:
            g = known[pick % len(known)]
            return g, g in c.guest.mm.table_pages
    gpa, out = guest_call(c, lambda: c.guest.mm.alloc_phys(1), "guest.mm.alloc_phys")
    return (gpa if out == "ok" else None), False


def note_remap(c, gva):
    """The guest edits the mapping of ``gva`` (a PTE write, page-tracked under `fixed`)."""
    for v in c.vm.vcpus:
        if v.pmu.pebs_enable:
            c.stats["remap_while_pebs"] += 1


@action(2)
class alloc:
    """The guest kernel allocates and maps a few pages."""

    def draw(c, d):
        return {"pages": d.choice((1, 2, 3, 8))}

    def run(c, pages):
        gva, out = guest_call(c, lambda: c.guest.mm.alloc(pages), "guest.mm.alloc")
        if out == "ok":
            c.add_region(gva, pages, "alloc")
            for i in range(pages):
                c.last_gpa[gva + i * PAGE] = c.guest.mm.translate(gva + i * PAGE)
        return out


@action(3)
class map:
    """The guest maps an unmapped known page (to its old, a fresh or an aliased frame)."""

    def draw(c, d):
        gva = pick_page(c, d, False)
        if gva is None:
            return None
        how, pick = target_gpa(c, d, gva)
        return {"gva": gva, "target": how, "pick": pick}

    def run(c, gva, target, pick):
        if c.guest.mm.translate(gva) is not None:
            return "SKIP"
        gpa, aliased_table = resolve_gpa(c, gva, target, pick)
        if gpa is None:
            return "GUEST_OOM"
        c.scribbled |= aliased_table
        _, out = guest_call(c, lambda: c.guest.mm.map(gva, gpa), "guest.mm.map")
        if out == "ok":
            note_remap(c, gva)
        return out


@action(3)
class unmap:
    """The guest unmaps a known page (the DS area or the PEBS buffer included)."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        return None if gva is None else {"gva": gva}

    def run(c, gva):
        if c.guest.mm.translate(gva) is None:
            return "SKIP"
        old, out = guest_call(c, lambda: c.guest.mm.unmap(gva), "guest.mm.unmap")
        if out == "ok":
            c.last_gpa[gva] = old
            note_remap(c, gva)
        return out


@action(3)
class remap:
    """The guest points a mapped page at another frame (copying its bytes, or not)."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        if gva is None:
            return None
        how, pick = target_gpa(c, d, gva)
        return {"gva": gva, "target": how, "pick": pick, "copy": d.boolean()}

    def run(c, gva, target, pick, copy):
        if c.guest.mm.translate(gva) is None:
            return "SKIP"
        gpa, aliased_table = resolve_gpa(c, gva, target, pick)
        if gpa is None:
            return "GUEST_OOM"
        c.scribbled |= aliased_table
        data = None
        if copy:
            data, out = guest_call(c, lambda: c.guest.read(gva, PAGE), "guest.read")
            if out != "ok":
                return out
        old, out = guest_call(c, lambda: c.guest.mm.remap(gva, gpa), "guest.mm.remap")
        if out != "ok":
            return out
        c.last_gpa[gva] = old
        note_remap(c, gva)
        if data is not None and not aliased_table:
            _, out = guest_call(c, lambda: c.guest.write(gva, data), "guest.write")
        return out


@action(3)
class write_mem:
    """The guest writes 8 bytes into a known page (DS fields, page tables, records)."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        if gva is None:
            return None
        off = d.choice((0x20, 0x28, 0x30, 0x38, 0x40, 0, d.integer(0, PAGE - 8) & ~7))
        return {"gva": gva, "offset": off, "value": draw_value(c, d, M.MSR_IA32_DS_AREA)}

    def run(c, gva, offset, value):
        gpa = c.guest.mm.translate(gva)
        if gpa is None:
            return "SKIP"
        if gpa & ~0xFFF in c.guest.mm.table_pages:
            c.scribbled = True
        if c.dirty_on:
            c.dirty_expect.add(gpa >> 12)
        _, out = guest_call(c, lambda: c.guest.write(gva + offset, value.to_bytes(8, "little")),
                            "guest.write")
        return out


@action(1)
class read_mem:
    """The guest reads from a known page."""

    def draw(c, d):
        gva = pick_page(c, d, True)
        if gva is None:
            return None
        return {"gva": gva, "n": d.choice((8, 96, PAGE, 2 * PAGE))}

    def run(c, gva, n):
        return guest_call(c, lambda: c.guest.read(gva, n), "guest.read")[1]


@action(1)
class context_switch:
    """The guest loads another CR3: a copy of its PML4, the original, or the previous copy."""

    def draw(c, d):
        return {"to": d.choice(("copy", "original", "previous"))}

    def run(c, to):
        mm = c.guest.mm
        if to == "original":
            cr3 = mm.cr3
        elif to == "previous" and c.cr3_copies:
            cr3 = c.cr3_copies[-1]
        else:
            new, out = guest_call(c, lambda: mm.alloc_phys(1), "guest.mm.alloc_phys")
            if out != "ok":
                return out
            pml4, out = guest_call(c, lambda: c.vm.phys.read(mm.cr3, PAGE), "phys.read")
            if out != "ok":
                return out
            _, out = guest_call(c, lambda: c.vm.phys.write(new, pml4), "phys.write")
            if out != "ok":
                return out
            mm.table_pages.add(new)      # the guest kernel keeps it as a page table
            c.cr3_copies.append(new)
            cr3 = new
        for v in c.vm.vcpus:
            try:
                v.load_cr3(cr3)
            except Exception as e:  # noqa: BLE001
                return escaped(c, "vcpu.load_cr3", e)
        return "ok"


# =============================================================================
# PEBS set-up
# =============================================================================

def pebs_events(c) -> list[int]:
    codes = [0x00C0, 0x00C4, 0x003C]
    codes += [e.event | e.umask << 8 for e in c.vm.cpu.events if e.pebs]
    return sorted(set(codes))


@action(5, pebs_bias=1.6)
class manual_pebs:
    """The guest sets PEBS up by hand (scenarios.manual_pebs): DS area, buffer, MSRs."""

    def draw(c, d):
        nr_gp = max(c.oracle.nr_gp, 1)
        return {
            "ds_offset": d.choice((0, 0, 8 * d.integer(0, 511), PAGE - 64, PAGE - 8)),
            "buf_offset": d.choice((0, 0, 2048, 8 * d.integer(0, 511))),
            "buf_pages": d.choice((1, 2, 4, 16, 17, 20, 40)),
            "period": d.choice((97, 500, 2000, 10007)),
            "event": d.choice(pebs_events(c)),
            "counter": d.choice(tuple(range(min(nr_gp, 8))) + (min(nr_gp, 7),)),
            "threshold_records": d.choice((1, 1, 1, 2, 8, 40, 1 << 16)),
            "vcpu": d.integer(0, c.config.vcpus - 1),
        }

    def run(c, vcpu, **kw):
        vcpu = vcpu % len(c.vm.vcpus)
        crashed = c.vm.crashed
        try:
            st = S.manual_pebs(c.guest, vcpu=vcpu, **kw)
        except GuestCrash as e:
            return "GUEST_CRASH" if crashed else escaped(c, "manual_pebs", e)
        except GuestFault:
            c.stats["GP"] += 1
            return "GP"
        except HostOutOfMemory as e:
            return escaped(c, "manual_pebs", e)
        except MemoryError:
            c.stats["GUEST_OOM"] += 1
            return "GUEST_OOM"
        except ValueError as e:
            # the helper refuses a counter the PMU does not have before touching the guest
            if "counter must be a GP counter" in str(e):
                c.stats["ARG_REJECTED"] += 1
                return "ARG_REJECTED"
            return escaped(c, "manual_pebs", e)
        except Exception as e:  # noqa: BLE001
            return escaped(c, "manual_pebs", e)
        if crashed:
            c.violate("crash", "ran-after-crash", "manual_pebs on a crashed VM did not raise "
                                                  "GuestCrash")
        c.setups.append(st)
        c.add_region(st.ds_region[0], st.ds_region[1], "ds")
        c.add_region(st.buf_region[0], st.buf_region[1], "buffer")
        for gva in c.known_pages():
            c.last_gpa.setdefault(gva, c.guest.mm.translate(gva))
        return "ok"


@action(2)
class remap_buffer_page:
    """The guest moves one page of a hand-made PEBS buffer to a new frame."""

    def draw(c, d):
        if not c.setups:
            return None
        return {"setup": d.integer(0, len(c.setups) - 1), "page": d.integer(0, 40)}

    def run(c, setup, page):
        st = c.setups[setup % len(c.setups)]
        page %= st.buf_region[1]
        gva = st.buf_region[0] + page * PAGE
        if c.guest.mm.translate(gva) is None:
            return "SKIP"
        r, out = guest_call(c, lambda: S.remap_buffer_page(c.guest, st, page),
                            "remap_buffer_page")
        if out == "ok":
            c.last_gpa[gva] = r[0]
            note_remap(c, gva)
        return out


@action(4, pebs_bias=0.7)
class perf_record:
    """The guest's perf driver samples an event (PEBS for the :p modifiers)."""

    def draw(c, d):
        names = ["cycles", "instructions", "branches", "ref-cycles", "cache-misses",
                 "cycles:p", "cycles:pp", "instructions:pp", "branches:pp", "instructions:u",
                 "r00c0:pp", "cycles:ppp"]
        names += [e.name + ":pp" for e in c.vm.cpu.events if e.pebs]
        return {"event": d.choice(names),
                "period": d.choice((97, 1000, 10007, 100003, (1 << 31) + 11)),
                "large": d.boolean(0.3)}

    def run(c, event, period, large):
        p = c.guest.perf
        rec, out = perf_call(c, lambda: p.record(event, period, large_pebs=large),
                             f"guest.perf.record({event!r})")
        if out == "ok":
            c.recordings.append(rec)
        if p.ds_gva is not None:
            c.add_region(p.ds_gva, 1, "perf-ds")
            c.add_region(p.pebs_buffer_gva, p.pebs_buffer_size // PAGE, "perf-buffer")
            for gva in c.known_pages():
                c.last_gpa.setdefault(gva, c.guest.mm.translate(gva))
        return out


@action(2)
class perf_stat:
    """The guest's perf driver counts one to three events."""

    def draw(c, d):
        pool = ["instructions", "cycles", "branches", "ref-cycles", "cache-references",
                "instructions:u", "cycles:k", "branch-misses"]
        return {"events": [d.choice(pool) for _ in range(d.integer(1, 3))]}

    def run(c, events):
        cnt, out = perf_call(c, lambda: c.guest.perf.stat(events), "guest.perf.stat")
        if out == "ok":
            c.countings.append(cnt)
        return out


@action(3)
class perf_stop:
    """The guest reads or stops one of its recordings / countings."""

    def draw(c, d):
        live = len(c.recordings) + len(c.countings)
        if not live:
            return None
        return {"pick": d.integer(0, live - 1), "read_only": d.boolean(0.3)}

    def run(c, pick, read_only):
        live = c.recordings + c.countings
        if not live:
            return "SKIP"
        obj = live[pick % len(live)]
        if read_only:
            fn = obj.read if hasattr(obj, "read") else obj.samples
            return perf_call(c, fn, "perf read")[1]
        _, out = perf_call(c, obj.stop, "perf stop")
        if obj in c.recordings:
            c.recordings.remove(obj)
        else:
            c.countings.remove(obj)
        return out


# =============================================================================
# running
# =============================================================================

@action(14, pebs_bias=1.4)
class run:
    """The guest runs a workload on one vCPU."""

    def draw(c, d):
        return {"n": d.choice(c.config.runs), "workload": d.integer(0, len(WORKLOADS) - 1),
                "vcpu": d.integer(0, c.config.vcpus - 1)}

    def run(c, n, workload, vcpu):
        w = WORKLOADS[workload % len(WORKLOADS)]
        return run_vm(c, c.vm, lambda: c.vm.run(w, n, vcpu=vcpu % len(c.vm.vcpus)), "vm.run")


@action(1.5)
class bystander_run:
    """The other VM on the host runs (it only counts instructions)."""

    def draw(c, d):
        return {"n": d.choice(c.config.runs)}

    def run(c, n):
        return run_vm(c, c.bystander, lambda: c.bystander.run(WORKLOADS[0], n), "bystander.run")


@action(0.2, ci=False)
class pressure_run:
    """The guest runs half a million instructions while the host reclaims at every tick."""

    def draw(c, d):
        return {"pressure": d.choice((1, 8, 64)), "n": 520_000}

    def run(c, pressure, n):
        host = c.vm.host
        host.pressure = pressure
        try:
            return ACTIONS["run"].run(c, n, 0, 0)
        finally:
            host.pressure = 0


# =============================================================================
# host
# =============================================================================

@action(6, pebs_bias=1.3)
class reclaim:
    """The host reclaims guest memory (memory pressure)."""

    def draw(c, d):
        return {"n": d.choice((1, 4, 32, 1 << 20))}

    def run(c, n):
        out, res = host_call(c, lambda: c.vm.host.reclaim(n), "host.reclaim")
        if res == "ok":
            c.stats["reclaimed"] += len(out)
        return res


@action(1)
class dirty_log_start:
    """Userspace turns dirty logging on (the first step of live migration)."""

    def draw(c, d):
        return {} if T.has("start_dirty_logging") else None

    def run(c):
        if c.vm.destroyed:
            return "SKIP"
        _, out = host_call(c, lambda: T.MIG.start_dirty_logging(c.vm), "start_dirty_logging")
        if out == "ok":
            c.dirty_on = True
            c.dirty_expect = set()
        return out


@action(1)
class dirty_log_get:
    """Userspace collects the dirty log: every page the guest wrote must be in it."""

    def draw(c, d):
        return {} if T.has("get_dirty_log") else None

    def run(c):
        if not c.dirty_on:
            return "SKIP"
        got, out = host_call(c, lambda: T.MIG.get_dirty_log(c.vm), "get_dirty_log")
        if out == "ok":
            missed = c.dirty_expect - set(got)
            if missed and not c.vm.crashed:
                c.violate("dirty-log", "missed-page", f"pages written while logging but not "
                          f"reported dirty: gfns {sorted(hex(g) for g in missed)[:8]}")
            c.dirty_expect = set()
        return out


@action(1)
class dirty_log_stop:
    """Userspace turns dirty logging off."""

    def draw(c, d):
        return {} if T.has("stop_dirty_logging") else None

    def run(c):
        if not c.dirty_on:
            return "SKIP"
        _, out = host_call(c, lambda: T.MIG.stop_dirty_logging(c.vm), "stop_dirty_logging")
        c.dirty_on = False
        return out


def rebind_guest(guest, vm) -> None:
    """Point a GuestKernel at the machine it was migrated to.

    pebslab only. The guest's memory and registers travel with
    save_state/restore_state, but the Python objects that stand for its
    kernel (GuestMM over ``phys``, the perf driver's vCPU) still point at
    the source machine; pebslab has no API for this yet (a strict xfail in
    tests/test_fuzz.py), so the fuzzer does it by hand.
    """
    guest.machine = vm
    guest.mm.phys = vm.phys
    guest.perf.machine = vm
    guest.perf.vcpu = vm.vcpus[0]


@action(1)
class migrate:
    """Userspace saves the VM and restores it on a new host (maybe another CPU model)."""

    def draw(c, d):
        if not T.has("save_state", "restore_state"):
            return None
        return {"cpu": d.choice((c.vm.cpu.name,) * 3 + CPUS),
                "order": d.choice(getattr(T.MIG, "MSR_ORDERS", ("userspace",))),
                "seed": d.integer(0, 1 << 16)}

    def run(c, cpu, order, seed):
        src = c.vm
        if src.crashed:
            return "SKIP"
        if c.dirty_on:
            ACTIONS["dirty_log_stop"].run(c)
        state, out = host_call(c, lambda: T.MIG.save_state(src), "save_state")
        if out != "ok":
            return out
        dest = c.new_host(cpu, seed)
        err = getattr(T.MIG, "MigrationError", ())
        new, out = host_call(c, lambda: T.MIG.restore_state(state, dest, None, order),
                             "restore_state", allowed=err)
        if out == "ESCAPED":
            # reported; the half-restored destination cannot be torn down: forget its host
            c.hosts.remove(dest)
            c.active_hosts.remove(dest)
            return out
        if out != "ok":
            c.stats["MIGRATION_REFUSED"] += 1
            return "MIGRATION_REFUSED"
        c.all_vms.append(new)
        c.destroy_checked(src)
        rebind_guest(c.guest, new)
        c.vm = new
        c.host = dest
        keep = (c.setups, c.regions, c.last_gpa, c.recordings, c.countings)
        c.adopt_vm(new, state.cpuid)
        c.setups, c.regions, c.last_gpa, c.recordings, c.countings = keep
        c.stats["migrations"] += 1
        return "ok"


@action(1.5)
class reset:
    """INIT/RESET of a vCPU: the PMU's control MSRs read 0 afterwards."""

    def draw(c, d):
        return {"vcpu": d.integer(0, c.config.vcpus - 1)}

    def run(c, vcpu):
        v = c.vcpu(vcpu)
        _, out = host_call(c, v.reset, "vcpu.reset")
        if out != "ok" or c.vm.crashed:
            return out
        # 2014 kvm_pmu_reset clears FIXED_CTR_CTRL, GLOBAL_CTRL, GLOBAL_STATUS; the
        # `fixed` design (FIXES: reset_clears_pebs) and `icelake` also PEBS_ENABLE and
        # DS_AREA (ASSUMPTION for icelake)
        msrs = [M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
                M.MSR_CORE_PERF_FIXED_CTR_CTRL]
        if c.vm.design.name in ("fixed", "icelake"):
            msrs += [M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA]
        bad = {}
        for msr in msrs:
            if c.oracle.kind(msr) is None:
                continue
            got, out = check_rdmsr(c, v, msr)
            if out == "ok" and got:
                bad[M.msr_name(msr)] = hex(got)
        if c.vm.design.name in ("fixed", "icelake") and v.pmu.pinned_pages:
            bad["pinned pages"] = len(v.pmu.pinned_pages)
        if bad:
            c.violate("reset", "not-cleared", f"after vCPU reset: {bad}")
        return "ok"


@action(0.7)
class destroy:
    """Userspace destroys the VM under test; a new one takes its place."""

    def draw(c, d):
        return {}

    def run(c):
        c.destroy_checked(c.vm)
        c.scan_traces()
        c.new_subject(c.host)
        return "ok"
