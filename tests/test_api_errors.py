"""API misuse: every public entry point rejects bad arguments with a message that helps.

STYLE.md: misuse of the API is ``ValueError`` / ``TypeError`` whose message
names the argument, the value and what is allowed, e.g. ``design must be one
of 'patch', 'review', 'fixed', 'icelake'; got 'v2'``. A wrong *type* is a
TypeError, a right type with a wrong value (out of range, not one of the
choices, inconsistent with the other arguments or the machine) a ValueError.

The table covers the entry points of the public API (DESIGN.md section 3)
and every explorer function in a pebslab.viz module's EXPLORERS dict
(discovered at collection time: the viz modules are still being written).
Where an entry point misses the rule today the case is a strict xfail whose
reason says what is wrong; fixing it turns the xfail into an XPASS, the cue
to drop the mark.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil
import signal
from dataclasses import dataclass

import numpy as np
import pytest

import pebslab as pl
import pebslab.viz
from pebslab import scenarios as S
from pebslab import workloads as W
from pebslab.hw import cpuid as CPUID
from pebslab.hw import msr as M
from pebslab.hw import pebs as P
from pebslab.kvm import pebs_pin

ALLOWED_WORDS = ("must", "one of", "allowed", "expected", "only", "needs", "at most",
                 "at least", "valid", "multiple of", "fields are", "use ")


@dataclass
class Case:
    """One misuse: ``call()`` must raise ``exc`` naming ``arg`` and showing ``value``."""

    id: str
    call: object
    exc: type
    arg: str
    value: object
    xfail: str | None = None
    #: a state error (e.g. "not mapped"): what is allowed is implied, not listed
    state: bool = False
    timeout: float = 20


def small():
    """A fresh host, VM and guest kernel (cheap: 64-page guest)."""
    host = pl.Host(frames=256)
    vm = host.create_vm(memory_pages=64)
    return host, vm, pl.GuestKernel(vm)


def on_vm(fn):
    return lambda: fn(*small())


class _Hang(BaseException):
    """Raised by the deadline's alarm (a BaseException: pytest.raises(Exception) lets it by)."""


@contextlib.contextmanager
def deadline(seconds):
    """A hang becomes an AssertionError (an unvalidated argument can make work unbounded)."""
    def fire(*_):
        raise _Hang
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    hung = False
    try:
        yield
    except _Hang:
        hung = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if hung:
        raise AssertionError(f"no error within {seconds} s: the argument was not "
                             f"validated and the call ran on") from None


def shown(value, exc) -> list[str]:
    out = [repr(value), str(value)]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        out.append(hex(value))
    if exc is TypeError:
        out.append(type(value).__name__)
    return out


def check(case: Case) -> None:
    with deadline(case.timeout):
        with pytest.raises(Exception) as info:
            case.call()
    e = info.value
    assert type(e) in (TypeError, ValueError), \
        f"raised {type(e).__name__} ({e}); misuse must be TypeError or ValueError"
    msg = str(e)
    # a wrong type for a *choice* argument may be a ValueError listing the choices
    # ("design must be one of 'patch', ...; got 3"), as for any other non-member
    choice = case.exc is TypeError and isinstance(e, ValueError) and "one of" in msg
    assert isinstance(e, case.exc) or choice, \
        f"raised {type(e).__name__} ({e}); expected {case.exc.__name__}"
    assert case.arg in msg, f"the message does not name the argument {case.arg!r}: {msg}"
    assert any(s in msg for s in shown(case.value, case.exc)), \
        f"the message does not show the value {case.value!r}: {msg}"
    if not case.state:
        assert any(w in msg for w in ALLOWED_WORDS), \
            f"the message does not say what is allowed: {msg}"


# =============================================================================
# the table
# =============================================================================

TYPE_NOT_VALUE = "raises ValueError for a wrong type (should be TypeError)"


def _hot(**kw):
    return lambda: W.hot_loop(**kw)


CASES = [
    # ---- pl.Host ------------------------------------------------------------------------
    Case("Host-cpu-type", lambda: pl.Host(cpu=3), TypeError, "cpu", 3),
    Case("Host-cpu-value", lambda: pl.Host(cpu="pentium"), ValueError, "cpu", "pentium"),
    Case("Host-frames-range", lambda: pl.Host(frames=10), ValueError, "frames", 10),
    Case("Host-frames-type", lambda: pl.Host(frames="64"), TypeError, "frames", "64"),
    Case("Host-seed-range", lambda: pl.Host(seed=-1), ValueError, "seed", -1),
    Case("Host-seed-type", lambda: pl.Host(seed=1.5), TypeError, "seed", 1.5),
    # ---- host.create_vm ---------------------------------------------------------------------
    Case("create_vm-design-value", lambda: pl.Host().create_vm(design="v2"), ValueError,
         "design", "v2"),
    Case("create_vm-design-type", lambda: pl.Host().create_vm(design=2), TypeError, "design", 2),
    Case("create_vm-memory_pages-range", lambda: pl.Host().create_vm(memory_pages=8),
         ValueError, "memory_pages", 8),
    Case("create_vm-memory_pages-type", lambda: pl.Host().create_vm(memory_pages="64"),
         TypeError, "memory_pages", "64"),
    Case("create_vm-memory_pages-vs-free-frames",
         lambda: pl.Host(frames=128).create_vm(memory_pages=1000), ValueError,
         "memory_pages", 1000),
    Case("create_vm-cpuid-type", lambda: pl.Host().create_vm(cpuid="PDCM"), TypeError,
         "cpuid", "PDCM"),
    Case("create_vm-vcpus-range", lambda: pl.Host().create_vm(vcpus=0), ValueError, "vcpus", 0),
    Case("create_vm-extra_autoload-range", lambda: pl.Host().create_vm(extra_autoload=9),
         ValueError, "extra_autoload", 9),
    Case("create_vm-knob-name", lambda: pl.Host().create_vm(pinning="fixed"), ValueError,
         "knob", "pinning"),
    Case("create_vm-knob-value", lambda: pl.Host().create_vm(pin="sometimes"), ValueError,
         "pin", "sometimes"),
    Case("create_vm-knob-bool-type", lambda: pl.Host().create_vm(switch_ds_area="no"),
         TypeError, "switch_ds_area", "no"),
    Case("create_vm-costs-type", lambda: pl.Host().create_vm(costs="cheap"), TypeError,
         "costs", "cheap"),
    # ---- vm.run -------------------------------------------------------------------------
    Case("vm.run-workload-type", on_vm(lambda h, vm, g: vm.run("hot_loop", 10)), TypeError,
         "workload", "str"),
    Case("vm.run-instructions-range", on_vm(lambda h, vm, g: vm.run(W.hot_loop(), -1)),
         ValueError, "instructions", -1),
    Case("vm.run-instructions-type", on_vm(lambda h, vm, g: vm.run(W.hot_loop(), 1.5)),
         TypeError, "instructions", 1.5),
    Case("vm.run-vcpu-range", on_vm(lambda h, vm, g: vm.run(W.hot_loop(), 10, vcpu=3)),
         ValueError, "vcpu", 3),
    # ---- vcpu instructions ----------------------------------------------------------------
    Case("vcpu.rdmsr-index-type", on_vm(lambda h, vm, g: vm.vcpus[0].rdmsr("0x38f")),
         TypeError, "index", "str"),
    Case("vcpu.rdmsr-index-range", on_vm(lambda h, vm, g: vm.vcpus[0].rdmsr(1 << 32)),
         ValueError, "index", 1 << 32),
    Case("vcpu.wrmsr-value-range",
         on_vm(lambda h, vm, g: vm.vcpus[0].wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 64)),
         ValueError, "value", 1 << 64),
    Case("vcpu.wrmsr-value-negative",
         on_vm(lambda h, vm, g: vm.vcpus[0].wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, -1)),
         ValueError, "value", -1),
    Case("vcpu.wrmsr-value-type",
         on_vm(lambda h, vm, g: vm.vcpus[0].wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1.0)),
         TypeError, "value", 1.0),
    Case("vcpu.cpuid-function-range", on_vm(lambda h, vm, g: vm.vcpus[0].cpuid(-1)),
         ValueError, "function", -1),
    Case("vcpu.cpuid-function-type", on_vm(lambda h, vm, g: vm.vcpus[0].cpuid("1")),
         TypeError, "function", "1"),
    Case("vcpu.load_cr3-gpa-range", on_vm(lambda h, vm, g: vm.vcpus[0].load_cr3(64 * 4096)),
         ValueError, "gpa", 64 * 4096),
    Case("vcpu.load_cr3-gpa-type", on_vm(lambda h, vm, g: vm.vcpus[0].load_cr3("0")),
         TypeError, "gpa", "0"),
    Case("vcpu.set_pmi_handler-fn-type", on_vm(lambda h, vm, g: vm.vcpus[0].set_pmi_handler(3)),
         TypeError, "fn", 3),
    Case("vm.phys-after-destroy",
         on_vm(lambda h, vm, g: (vm.destroy(), vm.phys.read(0, 8))), ValueError, "destroyed",
         "destroyed", state=True),
    # ---- pl.GuestKernel and guest.mm ------------------------------------------------------
    Case("GuestKernel-machine-type", lambda: pl.GuestKernel(3), TypeError, "machine", "int"),
    Case("mm.map-gva-unaligned", on_vm(lambda h, vm, g: g.mm.map(0xFFFF888000100010, 0x5000)),
         ValueError, "gva", 0xFFFF888000100010),
    Case("mm.map-gva-noncanonical",
         on_vm(lambda h, vm, g: g.mm.map(0x0000800000000000, 0x5000)), ValueError, "gva",
         0x0000800000000000),
    Case("mm.map-gva-type", on_vm(lambda h, vm, g: g.mm.map("0x1000", 0x5000)), TypeError,
         "gva", "0x1000"),
    Case("mm.map-gpa-range", on_vm(lambda h, vm, g: g.mm.map(0x1000, 64 * 4096)), ValueError,
         "gpa", 64 * 4096),
    Case("mm.map-writable-type", on_vm(lambda h, vm, g: g.mm.map(0x1000, 0x5000, writable=1)),
         TypeError, "writable", 1),
    Case("mm.map-already-mapped",
         on_vm(lambda h, vm, g: g.mm.map(g.mm.alloc(1), 0x5000)), ValueError, "gva",
         0xFFFF888000000000),
    Case("mm.unmap-not-mapped", on_vm(lambda h, vm, g: g.mm.unmap(0x1000)), ValueError, "gva",
         0x1000, state=True),
    Case("mm.remap-not-mapped", on_vm(lambda h, vm, g: g.mm.remap(0x1000, 0x5000)),
         ValueError, "gva", 0x1000, state=True),
    Case("mm.remap-new_gpa-unaligned",
         on_vm(lambda h, vm, g: g.mm.remap(g.mm.alloc(1), 0x5004)), ValueError, "new_gpa",
         0x5004),
    Case("mm.alloc-n_pages-range", on_vm(lambda h, vm, g: g.mm.alloc(0)), ValueError,
         "n_pages", 0),
    Case("mm.alloc-n_pages-type", on_vm(lambda h, vm, g: g.mm.alloc("1")), TypeError,
         "n_pages", "1"),
    Case("mm.alloc-user-type", on_vm(lambda h, vm, g: g.mm.alloc(1, user="yes")), TypeError,
         "user", "yes"),
    Case("mm.read-n-range", on_vm(lambda h, vm, g: g.mm.read(g.mm.alloc(1), -1)), ValueError,
         "n", -1),
    Case("mm.read-gva-type", on_vm(lambda h, vm, g: g.mm.read(None, 8)), TypeError, "gva",
         None),
    Case("mm.write-data-type", on_vm(lambda h, vm, g: g.mm.write(g.mm.alloc(1), "abc")),
         TypeError, "data", "str"),
    Case("guest.write-data-type", on_vm(lambda h, vm, g: g.write(g.mm.alloc(1), [1, 2])),
         TypeError, "data", "list"),
    # ---- guest.perf -------------------------------------------------------------------------
    Case("perf.record-event-type", on_vm(lambda h, vm, g: g.perf.record(3)), TypeError,
         "event", "int"),
    Case("perf.record-event-value", on_vm(lambda h, vm, g: g.perf.record("cyclez")),
         ValueError, "event", "cyclez"),
    Case("perf.record-period-range", on_vm(lambda h, vm, g: g.perf.record("cycles", 0)),
         ValueError, "period", 0),
    Case("perf.record-period-type", on_vm(lambda h, vm, g: g.perf.record("cycles", "100")),
         TypeError, "period", "100"),
    Case("perf.record-period-too-big",
         on_vm(lambda h, vm, g: g.perf.record("cycles", 1 << 40)), ValueError, "period",
         1 << 40),
    Case("perf.record-large_pebs-type",
         on_vm(lambda h, vm, g: g.perf.record("cycles:pp", large_pebs="yes")), TypeError,
         "large_pebs", "yes"),
    Case("perf.record-large_pebs-not-precise",
         on_vm(lambda h, vm, g: g.perf.record("cycles", large_pebs=True)), ValueError,
         "large_pebs", "cycles"),
    Case("perf.stat-events-type", on_vm(lambda h, vm, g: g.perf.stat(3)), TypeError, "events",
         "int"),
    Case("perf.stat-events-empty", on_vm(lambda h, vm, g: g.perf.stat([])), ValueError,
         "events", "[]"),
    Case("perf.stat-events-value", on_vm(lambda h, vm, g: g.perf.stat(["instructions", "x"])),
         ValueError, "event", "x"),
    # ---- pebslab.hw.pebs ------------------------------------------------------------------------
    Case("pebs.decode-raw-type", lambda: P.decode([1, 2], 2), TypeError, "raw", "list"),
    Case("pebs.decode-fmt-value", lambda: P.decode(b"", 9), ValueError, "fmt", 9),
    Case("pebs.decode-fmt-type", lambda: P.decode(b"", "2"), TypeError, "fmt", "2"),
    Case("pebs.decode-raw-length", lambda: P.decode(bytes(100), 2), ValueError, "raw", 100),
    Case("pebs.decode-data_cfg-for-legacy", lambda: P.decode(bytes(192), 2, data_cfg=1),
         ValueError, "data_cfg", "0x1"),
    Case("pebs.encode-records-type", lambda: P.encode(3, 2), TypeError, "records", "int"),
    Case("pebs.encode-fmt-value", lambda: P.encode([], 7), ValueError, "fmt", 7),
    Case("pebs.encode-field-name", lambda: P.encode([{"rip": 1}], 2), ValueError, "rip", "rip"),
    Case("pebs.hexdump-data-type", lambda: P.hexdump("abc"), TypeError, "data", "str"),
    Case("pebs.hexdump-width-range", lambda: P.hexdump(b"ab", width=0), ValueError, "width", 0),
    Case("pebs.hexdump-base-range", lambda: P.hexdump(b"ab", base=-1), ValueError, "base", -1),
    Case("pebs.record_dtype-fmt-value", lambda: P.record_dtype(5), ValueError, "fmt", 5),
    Case("pebs.record_dtype-fmt-type", lambda: P.record_dtype(None), TypeError, "fmt", None),
    # ---- pebslab.hw.msr ---------------------------------------------------------------------------
    Case("msr.encode_eventsel-event_select-range", lambda: M.encode_eventsel(256), ValueError,
         "event_select", 256),
    Case("msr.encode_eventsel-umask-type", lambda: M.encode_eventsel(0xC0, "x"), TypeError,
         "umask", "x"),
    Case("msr.encode_eventsel-flag-type", lambda: M.encode_eventsel(0xC0, en="no"), TypeError,
         "en", "no"),
    Case("msr.decode_eventsel-value-range", lambda: M.decode_eventsel(1 << 64), ValueError,
         "value", 1 << 64),
    Case("msr.decode_eventsel-value-type", lambda: M.decode_eventsel("0"), TypeError, "value",
         "str"),
    Case("msr.decode_perf_capabilities-value-range", lambda: M.decode_perf_capabilities(-1),
         ValueError, "value", -1),
    Case("msr.decode_perf_capabilities-value-type",
         lambda: M.decode_perf_capabilities(2.0), TypeError, "value", "float"),
    # ---- pebslab.hw.cpuid --------------------------------------------------------------------------
    Case("cpuid.default-cpu-value", lambda: CPUID.default("pentium"), ValueError, "cpu",
         "pentium"),
    Case("cpuid.default-cpu-type", lambda: CPUID.default(3), TypeError, "cpu", "int"),
    Case("Cpuid.without-feature-value", lambda: CPUID.default("haswell").without("PEBS"),
         ValueError, "feature", "PEBS"),
    Case("Cpuid.without-feature-type", lambda: CPUID.default("haswell").without(21),
         TypeError, "feature", "int"),
    # ---- pebslab.scenarios.manual_pebs ---------------------------------------------------------
    Case("manual_pebs-ds_offset-range", on_vm(lambda h, vm, g: S.manual_pebs(g, ds_offset=4096)),
         ValueError, "ds_offset", 4096),
    Case("manual_pebs-ds_offset-alignment",
         on_vm(lambda h, vm, g: S.manual_pebs(g, ds_offset=4)), ValueError, "ds_offset", 4),
    Case("manual_pebs-buf_pages-range", on_vm(lambda h, vm, g: S.manual_pebs(g, buf_pages=0)),
         ValueError, "buf_pages", 0),
    Case("manual_pebs-period-range", on_vm(lambda h, vm, g: S.manual_pebs(g, period=0)),
         ValueError, "period", 0),
    Case("manual_pebs-counter-range", on_vm(lambda h, vm, g: S.manual_pebs(g, counter=9)),
         ValueError, "counter", 9),
    Case("manual_pebs-threshold-range",
         on_vm(lambda h, vm, g: S.manual_pebs(g, threshold_records=0)), ValueError,
         "threshold_records", 0),
    Case("manual_pebs-ds_offset-type",
         on_vm(lambda h, vm, g: S.manual_pebs(g, ds_offset="0")), TypeError, "ds_offset", "0"),
    Case("manual_pebs-guest-type", lambda: S.manual_pebs(3), TypeError, "guest", "int"),
    Case("manual_pebs-vcpu-range", on_vm(lambda h, vm, g: S.manual_pebs(g, vcpu=5)),
         ValueError, "vcpu", 5),
    Case("manual_pebs-event-range", on_vm(lambda h, vm, g: S.manual_pebs(g, event=0x1_0000)),
         ValueError, "event", 0x10000),
    Case("manual_pebs-counter-vs-pmu", on_vm(lambda h, vm, g: S.manual_pebs(g, counter=5)),
         ValueError, "counter", 5),
    # ---- pebslab.kvm.designs.get_design ------------------------------------------------------------
    Case("get_design-design-value", lambda: pl.get_design("v2"), ValueError, "design", "v2"),
    Case("get_design-design-type", lambda: pl.get_design(None), TypeError, "design",
         "NoneType"),
    Case("get_design-knob-name", lambda: pl.get_design("patch", pinn="x"), ValueError, "knob",
         "pinn"),
    Case("get_design-pin_limit-range", lambda: pl.get_design("patch", pin_limit=0),
         ValueError, "pin_limit", 0),
    Case("get_design-autoload_full-value",
         lambda: pl.get_design("patch", autoload_full="panic"), ValueError, "autoload_full",
         "panic"),
    # ---- pebslab.workloads -------------------------------------------------------------------
    Case("hot_loop-n-range", _hot(n=1), ValueError, "n", 1),
    Case("hot_loop-n-type", _hot(n="64"), TypeError, "n", "64"),
    Case("hot_loop-hot_index-vs-n", _hot(n=8, hot_index=7), ValueError, "hot_index", 7),
    Case("hot_loop-hot_cycles-range", _hot(hot_cycles=0), ValueError, "hot_cycles", 0),
    Case("hot_loop-seed-range", _hot(seed=-1), ValueError, "seed", -1),
    Case("pointer_chase-n-range", lambda: W.pointer_chase(n=2), ValueError, "n", 2),
    Case("pointer_chase-seed-type", lambda: W.pointer_chase(seed=0.5), TypeError, "seed", 0.5),
    Case("multi_function-seed-type", lambda: W.multi_function(seed="0"), TypeError, "seed",
         "0"),
    Case("by_name-name-value", lambda: W.by_name("spin"), ValueError, "name", "spin"),
    Case("by_name-name-type", lambda: W.by_name(3), TypeError, "name", 3),
    Case("Workload-array-type", lambda: W.Workload(*([[1]] * 9)), TypeError, "ip", "list"),
    # ---- pebslab.kvm.pebs_pin ------------------------------------------------------------------
    Case("patch_pin_plan-ds_area-range", lambda: pebs_pin.patch_pin_plan(-1, 0, 0), ValueError,
         "ds_area", -1),
    Case("patch_pin_plan-ds_area-type", lambda: pebs_pin.patch_pin_plan("0", 0, 0), TypeError,
         "ds_area", "0"),
    Case("patch_pin_plan-limit-range", lambda: pebs_pin.patch_pin_plan(0, 0, 0, limit=0),
         ValueError, "limit", 0),
    Case("needed_pages-ds_area-range", lambda: pebs_pin.needed_pages(-4096, 0, 4096),
         ValueError, "ds_area", -4096),
    Case("needed_pages-ds_area-type", lambda: pebs_pin.needed_pages("0", 0, 4096), TypeError,
         "ds_area", "0"),
    Case("needed_pages-huge-range", lambda: pebs_pin.needed_pages(0, 0, (1 << 64) - 1),
         ValueError, "absolute_maximum", (1 << 64) - 1, timeout=2),
    # ---- pebslab.baremetal.BareMetal -------------------------------------------------------------
    Case("BareMetal-frames-range", lambda: pl.BareMetal(frames=8), ValueError, "frames", 8),
    Case("BareMetal-frames-type", lambda: pl.BareMetal(frames="1024"), TypeError, "frames",
         "1024"),
    Case("BareMetal-cpu-value", lambda: pl.BareMetal(cpu="486"), ValueError, "cpu", "486"),
    Case("BareMetal-seed-range", lambda: pl.BareMetal(seed=-1), ValueError, "seed", -1),
    Case("BareMetal.run-instructions-range",
         lambda: pl.BareMetal().run(W.hot_loop(), -1), ValueError, "instructions", -1),
    Case("BareMetal.run-workload-type", lambda: pl.BareMetal().run("hot_loop", 10), TypeError,
         "workload", "str"),
]


def _params(cases):
    out = []
    for c in cases:
        marks = [pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


@pytest.mark.parametrize("case", _params(CASES))
def test_entry_point_rejects_misuse(case):
    check(case)


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# =============================================================================
# viz explorers, discovered from each module's EXPLORERS dict
# =============================================================================

#: (module, explorer, argument, "type" | "range" | "huge" | "choice") -> why it fails today
VIZ_XFAIL: dict[tuple[str, str, str, str], str] = {}


#: generated misuses that are in fact documented inputs of that explorer
VIZ_NOT_MISUSE = {
    ("msrs", "msr_write_outcome", "msr", "type"),     # an MSR number is accepted too
    ("msrs", "msr_write_outcome", "value", "type"),   # so is a string such as '0x1'
}


def _explorers():
    out = []
    for info in pkgutil.iter_modules(pebslab.viz.__path__):
        try:
            mod = importlib.import_module(f"pebslab.viz.{info.name}")
        except Exception:  # noqa: BLE001 - a module being written may not import yet
            continue
        for name, entry in sorted(getattr(mod, "EXPLORERS", {}).items()):
            fn, defaults = entry
            params = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                      if p.default is not inspect.Parameter.empty}
            params.update(defaults)
            out.append((info.name, name, fn, params))
    return out


def _viz_cases():
    cases = []
    for mod, name, fn, params in _explorers():
        for arg, default in params.items():
            if isinstance(default, bool):
                tries = [("type", "yes", TypeError)]
            elif isinstance(default, int):
                tries = [("type", str(default), TypeError), ("range", -1, ValueError),
                         ("huge", 10 ** 30, ValueError)]
            elif isinstance(default, str):
                tries = [("type", 3, TypeError), ("choice", "no-such-" + arg, ValueError)]
            elif isinstance(default, float):
                tries = [("type", "x", TypeError)]
            else:
                continue
            for kind, bad, exc in tries:
                kw = dict(params)
                kw[arg] = bad
                key = (mod, name, arg, kind)
                if key in VIZ_NOT_MISUSE:
                    continue
                cases.append(Case(f"viz.{mod}.{name}-{arg}-{kind}",
                                  (lambda fn=fn, kw=kw: _close(fn(**kw))), exc, arg, bad,
                                  VIZ_XFAIL.get(key)))
    return cases


def _close(result):
    import matplotlib.pyplot as plt
    plt.close("all")
    return result


@pytest.fixture(autouse=False)
def agg():
    import matplotlib
    matplotlib.use("Agg")
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


VIZ_CASES = _viz_cases()


@pytest.mark.parametrize("case", _params(VIZ_CASES))
def test_viz_explorer_rejects_misuse(case, agg):
    check(case)


def test_viz_explorers_were_discovered():
    names = {(m, n) for m, n, _, _ in _explorers()}
    assert ("pinning", "page_map") in names, sorted(names)
