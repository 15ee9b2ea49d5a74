"""Checkers for notebook 01 (PMU basics and skid).

pebslab only. ``ex01_preset`` checks a learner's ``preset(period, width)``
twice: against the value the guest perf driver writes to a counter of that
width (pebslab.guest.perf.GuestPerf.x86_perf_event_set_period, run on a
bare-metal core), and by running the learner's value on the model: preset
PMC0, count INST_RETIRED, and see after how many instructions the counter
overflows.
"""

from __future__ import annotations

import dataclasses

from ..hw.errors import GuestFault
from ..hw import msr as M
from ..hw.models import get_model
from ._base import run_cases

__all__ = ["ex01_preset", "ex01_count", "ex01_offsets"]

#: A model with full-width counter writes (PERF_CAPABILITIES.FW_WRITES), so a
#: preset of any width can be written as is through IA32_A_PMC0 (0x4C1).
_CPU = "haswell"

#: (period, width) pairs compared with the value the driver writes.
_VALUE_CASES = ((2, 48), (10007, 48), ((1 << 31) + 5, 48), ((1 << 47) - 1, 48),
                (100, 36), ((1 << 35) - 1, 36), (5000, 40))
#: (period, width) pairs run on the model.
_RUN_CASES = ((1, 48), (2, 48), (64, 48), (10007, 48), (1000, 36), (777, 40))


def _model(width: int):
    return dataclasses.replace(get_model(_CPU), width=width)


def _driver_preset(period: int, width: int) -> int:
    """The value the guest perf driver writes to preset a counter for ``period``.

    Runs ``perf record -e instructions -c period`` on a bare-metal core
    whose counters are ``width`` bits wide (CPUID.0AH reports the width, the
    driver reads it as x86_pmu.cntval_bits) and returns the value it wrote
    to the counter (fixed counter 0, IA32_FIXED_CTR0).
    """
    from ..baremetal import BareMetal
    from ..guest.kernel import GuestKernel
    machine = BareMetal(_model(width), frames=64, seed=0)
    kernel = GuestKernel(machine)
    rec = kernel.perf.record("instructions", period=period)
    msr = M.MSR_CORE_PERF_FIXED_CTR0 + rec.counter - M.INTEL_PMC_IDX_FIXED
    writes = [r["value"] for r in machine.trace.rows("MSR_WRITE") if r["msr"] == msr]
    return writes[-1]


def _overflow_after(value, period: int, width: int) -> str:
    """Preset PMC0 with ``value``, count ``period`` instructions; say when it overflowed.

    Writes ``value`` through IA32_A_PMC0 (0x4C1, full width), selects
    INST_RETIRED.ANY_P (USR, OS, EN; no PMI) and runs ``period``
    instructions. The number of instructions after which the counter wrapped
    is read back from the model: if GLOBAL_STATUS bit 0 is set, the counter
    has counted ``c`` events since the wrap, so it wrapped at instruction
    ``period - c``; if not, it needs ``2**width - c`` more events.
    """
    from ..baremetal import BareMetal
    from ..workloads import hot_loop
    machine = BareMetal(_model(width), frames=64, seed=0)
    vcpu = machine.vcpu
    vcpu.wrmsr(M.MSR_IA32_PMC0, value)
    vcpu.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, usr=True, os=True, en=True))
    vcpu.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    machine.run(hot_loop(), period)
    c = vcpu.rdmsr(M.MSR_IA32_PMC0)
    if vcpu.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS) & 1:
        k = period - c
    else:
        k = period + (1 << width) - c
    return f"overflow after {k} instructions"


def _diagnose(candidate) -> str:
    """A hint that names the likely mistake, from the candidate's answers."""
    try:
        p, w = 10007, 48
        mask = (1 << w) - 1
        got = candidate(p, w)
        got40 = candidate(100, 40)
    except NotImplementedError:
        return ""
    except Exception as e:  # noqa: BLE001
        return (f"your function raised {type(e).__name__} for (10007, 48); it should return "
                "an int")
    if not isinstance(got, int) or isinstance(got, bool):
        return f"return an int (you returned a {type(got).__name__})"
    if got == ((1 - p) & mask):
        return ("off by one: 1 - period wraps on event period - 1. kvm-unit-tests "
                "(x86/pmu.c, measure_for_overflow) presets 1 - count on purpose: its comment "
                "cites the SDM, which asks for +1 so the overflow interrupt is raised at once "
                "rather than after the overflow propagates through the counter (FACTS b.8). "
                "A sampling driver wants the wrap on exactly the period-th event: -period")
    if got == ((-p - 1) & mask):
        return "off by one: -period - 1 wraps one event late; the counter wraps at 2**width"
    if got == p:
        return ("the counter counts *up* and overflows when it wraps past 2**width - 1; start "
                "it 'period' events below that wrap point")
    if got == -p or got < 0:
        return ("-period is right in spirit, but an MSR holds an unsigned width-bit value: "
                "keep only the low 'width' bits, (-period) & ((1 << width) - 1)")
    if got40 == ((-100) & mask):
        return "use the width argument: a 40-bit counter wraps at 2**40, not 2**48"
    return ("the counter overflows when it wraps from 2**width - 1 to 0: preset it to "
            "2**width - period, i.e. (-period) & ((1 << width) - 1)")


def ex01_preset(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``preset(period, width)``: the value that makes a counter overflow after ``period`` events.

    Expected values: the preset the guest perf driver writes for a counter
    of that width (x86_perf_event_set_period(): (-left) & cntval_mask), and
    the model's own behaviour when the learner's value is loaded into PMC0.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function preset(period, width); "
                        f"got {type(candidate).__name__}")
    runs = [(f"on the model: {w}-bit PMC0 preset to preset({p}, {w}), then {p} instructions",
             ("run", p, w), f"overflow after {p} instructions") for p, w in _RUN_CASES]
    values = [(f"preset({p}, {w})", ("value", p, w), f"{_driver_preset(p, w):#x}")
              for p, w in _VALUE_CASES]
    # one model run first, so a wrong answer shows what the counter did
    cases = [runs[3]] + values + runs[:3] + runs[4:]

    def on_case(mode, p, w):
        value = candidate(p, w)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"not an int: {value!r}"
        if mode == "value":
            return f"{value:#x}" if value >= 0 else str(value)
        try:
            return _overflow_after(value, p, w)
        except GuestFault as f:
            return f"WRMSR faulted: {f}"
        except (TypeError, ValueError) as e:
            return f"WRMSR refused the value: {e}"

    hint = _diagnose(candidate)
    return run_cases("ex01_preset", on_case, cases, hint=hint, quiet=quiet, strict=strict)


# ---------------------------------------------------------------------------
# ex01_count (apply): what does an event select count?

#: (description, event select value) of the cases; INST_RETIRED.ANY_P (0xC0)
_COUNT_SELS = (
    ("USR|OS|EN", dict(usr=True, os=True, en=True)),
    ("USR|EN", dict(usr=True, os=False, en=True)),
    ("OS|EN", dict(usr=False, os=True, en=True)),
    ("OS|INT|EN", dict(usr=False, os=True, int=True, en=True)),
    ("USR|OS, EN clear", dict(usr=True, os=True, en=False)),
    ("EN only (neither USR nor OS)", dict(usr=False, os=False, en=True)),
)
_COUNT_RESERVED = (("USR|OS|EN + bit 32 (IN_TX, Haswell only)", 1 << 32),
                   ("USR|OS|EN + bit 34 (ADAPTIVE, Ice Lake only)", 1 << 34))
_COUNT_LENGTHS = (100_000, 33_333)


def _count_on_model(value: int, n: int):
    """Program PMC0 with ``value`` on a bare-metal Silvermont, run ``n`` instructions of multi_function."""
    from ..baremetal import BareMetal
    from ..workloads import multi_function
    import numpy as np
    machine = BareMetal("silvermont", frames=64, seed=0)
    cpu = machine.vcpu
    w = multi_function()
    i = np.arange(n) % len(w)
    n_kernel = int(np.count_nonzero(w.cpl[i] == 0))
    try:
        cpu.wrmsr(M.MSR_P6_EVNTSEL0, value)
    except GuestFault:
        return n - n_kernel, n_kernel, "#GP"
    cpu.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    machine.run(w, n)
    return n - n_kernel, n_kernel, int(cpu.rdmsr(M.MSR_IA32_PERFCTR0))


def _count_cases() -> list:
    cases = []
    sels = [(d, M.encode_eventsel(0xC0, **kw)) for d, kw in _COUNT_SELS]
    base = M.encode_eventsel(0xC0, usr=True, os=True, en=True)
    sels += [(d, base | bit) for d, bit in _COUNT_RESERVED]
    for n in _COUNT_LENGTHS:
        for desc, value in sels:
            nu, nk, got = _count_on_model(value, n)
            cases.append((f"{desc} ({value:#x}) over {nu} user + {nk} kernel instructions",
                          (value, nu, nk), got))
    return cases


def _count_hint(candidate) -> str:
    base = M.encode_eventsel(0xC0, usr=True, os=True, en=True)
    try:
        off = candidate(M.encode_eventsel(0xC0, usr=True, os=True, en=False), 10, 5)
        none = candidate(M.encode_eventsel(0xC0, en=True, usr=False, os=False), 10, 5)
        user = candidate(M.encode_eventsel(0xC0, usr=True, os=False, en=True), 10, 5)
        gp = candidate(base | 1 << 32, 10, 5)
    except NotImplementedError:
        return ""
    except Exception as e:  # noqa: BLE001
        return f"your function raised {type(e).__name__}: {e}"
    if gp != "#GP":
        return ("bits 63:32 of IA32_PERFEVTSELx are reserved on Silvermont: the WRMSR itself "
                "faults, and nothing is counted; return the string '#GP'")
    if off != 0:
        return "with EN (bit 22) clear the counter does not count at all"
    if user == 5:
        return "USR (bit 16) counts at CPL > 0, i.e. user code; OS (bit 17) at CPL 0"
    if none != 0:
        return "with neither USR nor OS set, no privilege level is counted"
    return "decode the bits with the table of the notebook: EN, USR, OS, and the reserved bits"


def ex01_count(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``instructions_counted(eventsel, n_user, n_kernel) -> int | '#GP'``.

    pebslab only. Each case writes an INST_RETIRED.ANY_P event select to
    PERFEVTSEL0 of a bare-metal Silvermont, enables PMC0 in GLOBAL_CTRL,
    runs multi_function (user code and a read() system call in kernel
    code) and reads PMC0; '#GP' if the WRMSR faulted (reserved bits).
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    try:
        candidate(M.encode_eventsel(0xC0, usr=True, os=True, en=True), 1, 1)
    except NotImplementedError:
        return run_cases("ex01_count", candidate, [("a first call", (0, 1, 1), 0)],
                         quiet=quiet, strict=strict)
    except Exception:  # noqa: BLE001
        pass
    return run_cases("ex01_count", candidate, _count_cases(), hint=_count_hint(candidate),
                     quiet=quiet, strict=strict)


# ---------------------------------------------------------------------------
# ex01_offsets (investigate): where can an interrupt-based sample land?

_OFFSET_SKIDS = (0, 1, 2, 4, 8, 12)


def ex01_offsets(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``sample_offsets(skid_max) -> list[int]``: the sample-IP offsets the model produces.

    pebslab only. Expected: the sorted distinct offsets (instructions after
    the overflowing one) of interrupt-based ``cycles`` samples on
    ``hot_loop``, from pebslab.viz.pmu.skid_data(skid_max=...) (period
    10007, seed 0, one million instructions), for several skid_max.
    """
    from ..viz.pmu import skid_data
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    try:
        candidate(8)
    except NotImplementedError:
        return run_cases("ex01_offsets", candidate, [("a first call", (8,), [])],
                         quiet=quiet, strict=strict)
    except Exception:  # noqa: BLE001
        pass
    cases = []
    for s in _OFFSET_SKIDS:
        d = skid_data(skid_max=s)
        cases.append((f"skid_max = {s} ({len(d['offsets'])} samples)", (s,),
                      sorted({int(x) for x in d["offsets"]})))
    hint = ""
    try:
        got = [int(x) for x in candidate(8)]
        if got == list(range(1, 9)):
            hint = ("those are the skids; the handler records the interrupted IP, the next "
                    "instruction to run, one further on")
        elif 0 in got:
            hint = "can a PMI ever be taken before the overflowing instruction has retired?"
        got0 = [int(x) for x in candidate(0)]
        if not hint and got0 != [1]:
            hint = "try skid_max = 0 on the model first: viz.pmu.skid_data(skid_max=0)"
    except Exception:  # noqa: BLE001
        pass
    return run_cases("ex01_offsets", lambda s: sorted(int(x) for x in candidate(s)), cases,
                     hint=hint, quiet=quiet, strict=strict)
