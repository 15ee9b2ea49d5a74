"""Check the installation: versions, numba JIT, a warm cache, and one exact result.

pebslab only. Notebook 00 calls :func:`run` (versions, whether the run loop
is compiled, and a warm-up simulation on every CPU model, with a progress
bar) and :func:`verify` (True when the model runs and reproduces results
known independently of it, e.g. INST_RETIRED of a run equals the
instructions the run retired).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata

__all__ = ["PACKAGES", "SetupReport", "versions", "jit_status", "warm", "run", "verify"]

#: Distributions whose versions the report lists, after Python itself.
PACKAGES = ("numpy", "numba", "matplotlib", "ipywidgets", "pebslab")


def versions() -> dict[str, str]:
    """Return {name: version} for Python and :data:`PACKAGES` ("not installed" if missing)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name == "pebslab":
                from . import __version__
                out[name] = __version__ + " (not installed: imported from the source tree)"
            else:
                out[name] = "not installed"
    return out


def jit_status() -> tuple[bool, str]:
    """Return (active, explanation): is the core's run loop compiled by numba?

    pebslab only: the loop (pebslab.hw.core.core_run) is compiled when
    numba imports and NUMBA_DISABLE_JIT is not set; otherwise the same code
    runs as plain Python, correct but about a hundred times slower.
    """
    from . import _jit
    from .hw import core
    if not _jit.HAVE_NUMBA:
        return False, "numba is not importable: the run loop runs as plain Python (slow)"
    if os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0"):
        return False, ("NUMBA_DISABLE_JIT is set: the run loop runs as plain Python "
                       "(slow, but the reference the tests compare with)")
    if not hasattr(core.core_run, "py_func"):
        return False, "the run loop is not a numba function: it runs as plain Python (slow)"
    cache = os.environ.get("NUMBA_CACHE_DIR") or "__pycache__ beside the sources"
    return True, f"numba JIT active; compiled code is cached in {cache}"


class _Progress:
    """An ipywidgets IntProgress inside a notebook, else one text line per step."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.n = 0
        self.bar = None
        self.enabled = enabled
        if enabled and _in_notebook():
            try:
                import ipywidgets
                from IPython.display import display
                self.bar = ipywidgets.IntProgress(value=0, min=0, max=total,
                                                  description="warming up")
                display(self.bar)
            except Exception:       # no widgets: fall back to text
                self.bar = None

    def step(self, label: str) -> None:
        self.n += 1
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.value = self.n
            self.bar.description = label[:20]
        else:
            print(f"  [{self.n}/{self.total}] {label}", flush=True)

    def done(self) -> None:
        if self.bar is not None:
            self.bar.description = "done"
            self.bar.bar_style = "success"


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _warm_model(name: str) -> None:
    """Run a short counting + PEBS session on bare metal with CPU model ``name``."""
    from .baremetal import BareMetal
    from .guest.kernel import GuestKernel
    from .workloads import hot_loop
    machine = BareMetal(name, frames=256, seed=0)
    kernel = GuestKernel(machine)
    counting = kernel.perf.stat(["instructions", "cycles"])
    rec = kernel.perf.record("INST_RETIRED.ANY_P:pp", period=1009)
    machine.run(hot_loop(), 20_000)
    rec.stop()
    counting.stop()


def _warm_vm() -> None:
    """Run a short PEBS session in a VM under the 2014 patch (Silvermont host)."""
    from .guest.kernel import GuestKernel
    from .system import Host
    from .workloads import hot_loop
    host = Host(cpu="silvermont", frames=1024, seed=0)
    vm = host.create_vm(design="patch", memory_pages=256)
    kernel = GuestKernel(vm)
    kernel.perf.record("MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", period=101)
    vm.run(hot_loop(), 20_000)
    vm.destroy()


def warm(progress: bool = True) -> dict[str, float]:
    """Run a tiny simulation on every CPU model (and one VM) so numba's cache is warm.

    pebslab only. The first run in a fresh environment compiles the run
    loop (tens of seconds); later ones load it from the cache. Returns
    {step: seconds}. ``progress`` shows an ipywidgets progress bar in a
    notebook, one text line per step elsewhere.
    """
    from .hw.models import MODELS
    steps = [(f"bare metal, {name}", lambda n=name: _warm_model(n)) for name in MODELS]
    steps.append(("VM, patch, silvermont", _warm_vm))
    bar = _Progress(len(steps), progress)
    out = {}
    for label, fn in steps:
        t0 = time.perf_counter()
        fn()
        out[label] = time.perf_counter() - t0
        bar.step(label)
    bar.done()
    return out


@dataclass
class SetupReport:
    """What :func:`run` found: versions, JIT status, warm-up seconds per step."""

    versions: dict = field(default_factory=dict)
    jit_active: bool = False
    jit_note: str = ""
    warm_seconds: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"{k:<11} {v}" for k, v in self.versions.items()]
        lines.append(f"{'numba JIT':<11} {'on' if self.jit_active else 'OFF'} - {self.jit_note}")
        if self.warm_seconds:
            total = sum(self.warm_seconds.values())
            lines.append(f"{'warm-up':<11} {len(self.warm_seconds)} short runs in {total:.1f} s: "
                         + "; ".join(self.warm_seconds))
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def run(progress: bool = True, warm_up: bool = True) -> SetupReport:
    """Report versions and the JIT status, then warm the numba cache; print and return the report.

    pebslab only. Versions vary between machines: a notebook cell that
    shows this report is not compared by the notebook tests.
    """
    active, note = jit_status()
    report = SetupReport(versions=versions(), jit_active=active, jit_note=note)
    if warm_up:
        report.warm_seconds = warm(progress)
    print(report)
    return report


def verify(quiet: bool = False) -> bool:
    """Return True if the model runs and reproduces results known independently of it.

    pebslab only. Three checks, each against numbers computed from the
    workload itself, not from the model:

    * counting on bare metal (Silvermont): over N instructions of hot_loop,
      ``instructions`` = N, ``cycles`` = the sum of the instructions'
      cycles, ``branches`` = the branches among them;
    * PEBS on bare metal: every sample of the hot load's event
      (``MEM_UOPS_RETIRED.L2_MISS_LOADS:pp``, period 3) is at the hot
      load's IP, one per three passes;
    * a VM under the 2014 patch records the same samples and pins 17
      pages (MAX_PINNED_PAGES: a 64 KiB buffer + the DS area).

    Prints what failed unless ``quiet``.
    """
    import numpy as np

    from .baremetal import BareMetal
    from .guest.kernel import GuestKernel
    from .system import Host
    from .workloads import KIND_BRANCH, hot_loop

    problems = []
    w = hot_loop()
    n = 10 * len(w) + 3
    idx = np.arange(n) % len(w)
    want = {"instructions": n, "cycles": int(w.cycles.astype(np.int64)[idx].sum()),
            "branches": int(np.count_nonzero(w.kind[idx] == KIND_BRANCH))}
    try:
        m = BareMetal("silvermont", frames=256, seed=0)
        k = GuestKernel(m)
        counting = k.perf.stat(list(want))
        m.run(w, n)
        got = counting.stop()
        for name, v in want.items():
            if got.get(name) != v:
                problems.append(f"perf stat {name}: expected {v}, got {got.get(name)}")

        passes = 30
        hot_ip = int(w.ip[int(np.argmax(w.cycles))])
        m = BareMetal("silvermont", frames=256, seed=0)
        k = GuestKernel(m)
        rec = k.perf.record("MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", period=3)
        m.run(w, passes * len(w))
        ips = [int(x) for x in rec.samples()["ip"]]
        if len(ips) != passes // 3 or any(ip != hot_ip for ip in ips):
            problems.append(f"bare-metal PEBS: expected {passes // 3} samples at {hot_ip:#x}, "
                            f"got {len(ips)} at {sorted(set(hex(i) for i in ips))}")

        host = Host(cpu="silvermont", frames=1024, seed=0)
        vm = host.create_vm(design="patch", memory_pages=256)
        k = GuestKernel(vm)
        rec = k.perf.record("MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", period=3)
        vm.run(w, passes * len(w))
        ips = [int(x) for x in rec.samples()["ip"]]
        pinned = len(vm.kvm.pmu.pinned_pages)
        vm.destroy()
        if len(ips) != passes // 3 or any(ip != hot_ip for ip in ips):
            problems.append(f"PEBS in a VM: expected {passes // 3} samples at {hot_ip:#x}, "
                            f"got {len(ips)} at {sorted(set(hex(i) for i in ips))}")
        if pinned != 17:
            problems.append(f"PEBS in a VM: expected 17 pinned pages, got {pinned}")
    except Exception as e:  # noqa: BLE001 - any crash means the set-up is broken
        problems.append(f"the model raised {type(e).__name__}: {e}")
    if problems and not quiet:
        print("setup check failed:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
    return not problems
