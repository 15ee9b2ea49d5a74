"""Benchmark of the simulated core: simulated instructions per second, and start-up time.

pebslab only. Prints one JSON object (no timed tests: numbers depend on the
machine). The session measured is what a perf-record notebook runs:

* CPU model ``skylake`` (PEBS format 3, 200-byte records), workload
  ``multi_function`` (user code, a syscall, kernel code);
* two counters count: fixed counter 1 (CPU_CLK_UNHALTED.CORE, OS+USR) and
  GP counter 0 (INST_RETIRED.ANY_P, OS+USR) with PEBS at period 10007
  (auto-reload from ``pebs_event_reset[0]``);
* a DS area and a 64 KiB PEBS buffer mapped by the guest page tables, with
  Linux's "large PEBS" threshold (absolute maximum - max_pebs_events
  records, FACTS a.4); on the threshold PMI the "handler" drains the buffer
  (resets ``pebs_index``) and clears GLOBAL_STATUS with OVF_CTRL.

Figures, each for the compiled loop (numba) and for the same source run as
plain Python (``Core.run(jit=False)``: a short run, extrapolated):

* ``fast_forward``: the default loop, which retires stretches where nothing
  can happen at once (see ``pebslab.hw.core.core_run``);
* ``stepping``: ``core.fast_forward = False``, one instruction at a time
  (what a session with CMASK/EDGE counters runs at).

Rates are given per second of wall-clock time and per second of process
CPU time; the targets are checked on CPU time, which does not depend on
what else the machine runs (wall-clock figures alongside).

Start-up is measured in fresh interpreters: ``cold`` with an empty
temporary NUMBA_CACHE_DIR (everything compiles), ``warm`` a second time
with the same directory (numba loads its cache). Each reports the import of
pebslab and its core, the first 1000-instruction run, and the whole
process wall time.

Usage: ``python bench/bench_core.py [--instructions N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PERIOD = 10007
BUFFER_BYTES = 64 * 1024           # PEBS_BUFFER_SIZE (FACTS a.4)
TARGETS = {"numba_instructions_per_s": 100e6, "speedup": 50.0, "warm_start_s": 2.0}


class _Phys:
    """Physical memory == host memory (identity EPT), the interface GuestMM needs."""

    def __init__(self, mem, core):
        self.mem, self.core = mem, core

    @property
    def pages(self):
        return self.mem.size // 4096

    def read(self, gpa, n):
        return self.mem[gpa:gpa + n].tobytes()

    def write(self, gpa, data):
        self.mem[gpa:gpa + len(data)] = np.frombuffer(bytes(data), np.uint8)

    def flush_tlb(self):
        self.core.flush_tlb()


def session(cpu="skylake", fast_forward=True, seed=0):
    """Set up the benchmark session; return (core, mem, ept, drain) ready to run."""
    from pebslab.guest.mm import GuestMM
    from pebslab.hw import core as C
    from pebslab.hw import msr as M
    from pebslab.hw import pebs

    core = C.Core(cpu, seed=seed)
    core.fast_forward = fast_forward
    m = core.model
    frames = 64
    mem = np.zeros(frames * 4096, np.uint8)
    ept = (np.arange(frames, dtype=np.uint64) << np.uint64(12)) | np.uint64(7)
    mm = GuestMM(_Phys(mem, core))
    core.regs[C.R_CR3] = np.uint64(mm.cr3)
    ds = mm.alloc(1)
    buf = mm.alloc(BUFFER_BYTES // 4096)
    size = m.pebs_record_size
    absmax = buf + (BUFFER_BYTES // size) * size
    reserved = bin(m.pebs_counter_mask).count("1")       # max_pebs_events
    thresh = absmax - reserved * size
    width_mask = (1 << m.width) - 1
    reset = (-PERIOD) & width_mask
    slots = [0] * pebs.DS_RESET_SLOTS
    slots[0] = reset
    store = pebs.DebugStore(pebs_buffer_base=buf, pebs_index=buf, pebs_absolute_maximum=absmax,
                            pebs_interrupt_threshold=thresh, pebs_event_reset=tuple(slots))
    mm.write(ds, store.to_bytes())
    core.wrmsr(M.MSR_IA32_DS_AREA, ds)
    core.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0x00))   # INST_RETIRED.ANY_P
    core.wrmsr(M.MSR_IA32_PERFCTR0, reset & 0xFFFFFFFF)            # sign-extended: -PERIOD
    core.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL,
               (M.INTEL_FIXED_0_KERNEL | M.INTEL_FIXED_0_USER) << 4)  # fixed counter 1
    core.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)
    core.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 | 1 << 33)
    index_gva = ds + pebs.DS_OFF_PEBS_INDEX

    def drain():
        mm.write(index_gva, buf.to_bytes(8, "little"))
        core.wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, int(core.regs[C.R_GLOBAL_STATUS]))

    return core, mem, ept, drain


def rate(n, jit=True, fast_forward=True, cpu="skylake"):
    """Simulated instructions per second over n instructions (after a warm-up run)."""
    from pebslab import workloads
    from pebslab.hw import core as C

    w = workloads.multi_function(seed=0)
    core, mem, ept, drain = session(cpu, fast_forward)
    core.run(w, 1000, mem, ept, jit=jit)                 # compile / build the tables
    start = int(core.regs[C.R_RETIRED])
    exits = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    while (done := int(core.regs[C.R_RETIRED]) - start) < n:
        e = core.run(w, n - done, mem, ept, jit=jit)
        core.take_log()
        exits[C.EXIT_NAMES[e]] = exits.get(C.EXIT_NAMES[e], 0) + 1
        if e == C.EXIT_PMI:
            drain()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"instructions": n, "seconds": round(dt, 4), "cpu_seconds": round(cpu, 4),
            "per_s": n / dt, "per_cpu_s": n / cpu,
            "pebs_records": int(core.regs[C.R_ASSISTS]), "exits": exits}


_CHILD = r"""
import json, time
t0 = time.perf_counter()
import pebslab
from pebslab import workloads
from pebslab.hw import core as C
t1 = time.perf_counter()
import numpy as np
w = workloads.multi_function(seed=0)
core = C.Core("skylake")
mem = np.zeros(16 * 4096, np.uint8)
ept = (np.arange(16, dtype=np.uint64) << np.uint64(12)) | np.uint64(7)
core.wrmsr(0x186, 0x4300C0)
core.wrmsr(0x38F, 1)
core.run(w, 1000, mem, ept)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_run_s": t2 - t1}))
"""


def start_up(cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    env.pop("NUMBA_DISABLE_JIT", None)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["process_s"] = wall
    r["process_cpu_s"] = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return {k: round(v, 3) for k, v in r.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instructions", type=int, default=1_000_000_000,
                    help="instructions for the numba fast-forward figure (default 1e9)")
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    args = ap.parse_args(argv)
    q = 10 if args.quick else 1
    import numba

    n_ff = args.instructions // q
    numba_ff = rate(n_ff, jit=True, fast_forward=True)
    numba_step = rate(50_000_000 // q, jit=True, fast_forward=False)
    py_ff = rate(5_000_000 // q, jit=False, fast_forward=True)
    py_step = rate(200_000 // q, jit=False, fast_forward=False)
    models = {cpu: round(rate(100_000_000 // q, cpu=cpu)["per_cpu_s"] / 1e6, 1)
              for cpu in ("silvermont", "haswell", "skylake", "icelake")}
    with tempfile.TemporaryDirectory(prefix="pebslab-numba-") as d:
        cold = start_up(d)
        warm = start_up(d)

    def fig(r):
        return {"M_instructions_per_cpu_s": round(r["per_cpu_s"] / 1e6, 2),
                "M_instructions_per_wall_s": round(r["per_s"] / 1e6, 2),
                "instructions": r["instructions"], "cpu_seconds": r["cpu_seconds"],
                "wall_seconds": r["seconds"], "pebs_records": r["pebs_records"],
                "exits": r["exits"]}

    def speedup(a, b):
        return round(a["per_cpu_s"] / b["per_cpu_s"], 1)

    report = {
        "session": {"cpu": "skylake", "workload": "multi_function",
                    "counters": ["FIXED_CTR1 cycles", "PMC0 INST_RETIRED.ANY_P PEBS"],
                    "pebs_period": PERIOD, "buffer_bytes": BUFFER_BYTES,
                    "threshold": "large PEBS (absmax - 4 records)"},
        "fast_forward": {"numba": fig(numba_ff), "python": fig(py_ff),
                         "speedup": speedup(numba_ff, py_ff)},
        "stepping": {"numba": fig(numba_step), "python": fig(py_step),
                     "speedup": speedup(numba_step, py_step)},
        "numba_fast_forward_M_per_cpu_s_by_model": models,
        "start_up": {"cold": cold, "warm": warm},
        "targets (CPU time)": {
            "numba >= 100 M/s (fast_forward)": numba_ff["per_cpu_s"] >= TARGETS[
                "numba_instructions_per_s"],
            "numba >= 100 M/s (stepping)": numba_step["per_cpu_s"] >= TARGETS[
                "numba_instructions_per_s"],
            "speedup >= 50x (fast_forward)": speedup(numba_ff, py_ff) >= TARGETS["speedup"],
            "speedup >= 50x (stepping)": speedup(numba_step, py_step) >= TARGETS["speedup"],
            "warm start < 2 s": warm["process_cpu_s"] < TARGETS["warm_start_s"],
        },
        "machine": {"python": platform.python_version(), "numba": numba.__version__,
                    "numpy": np.__version__, "cpus": os.cpu_count(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
