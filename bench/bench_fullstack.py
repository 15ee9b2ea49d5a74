"""Benchmark of the whole stack: a guest `perf record` with one PMI per sample, under KVM.

pebslab only. Prints one JSON object (no timed tests: numbers depend on the
machine). Issue 9 asks for this figure beside the core's (bench_core.py):
the core alone retires billions of simulated instructions per second, but a
profiled guest leaves the compiled loop at every sample: the host PMI (a VM
exit), KVM's overflow handler and PMI injection, and the guest's PMI handler,
whose every MSR access is another exit handled in Python.

For each design, on a CPU where it gives the guest PEBS (``patch``,
``review`` and ``fixed`` on Silvermont; ``icelake`` on Ice Lake), a guest
records a precise event at a period that gives one sample every few
thousand instructions, with a one-record PEBS threshold (Linux's default
when large PEBS is not chosen, FACTS a.4: a PMI after every record). Under
the patch's designs the guest is also run as the 3.15 kernel (FACTS g.2),
whose handler writes PEBS_ENABLE 0 and back on every PMI (an unpin and a
re-pin under the patch).

Figures per run: simulated guest instructions per second and PMIs per
second, of wall-clock time and of process CPU time; PMIs injected; VM exits.

Usage: ``python bench/bench_fullstack.py [--instructions N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pebslab as pl  # noqa: E402

PERIOD = 2003
#: (design, cpu, event, guest kernel eras to run)
RUNS = (
    ("patch", "silvermont", "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", ("3.15", "current")),
    ("review", "silvermont", "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", ("current",)),
    ("fixed", "silvermont", "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", ("3.15", "current")),
    ("icelake", "icelake", "MEM_INST_RETIRED.ALL_LOADS:pp", ("current",)),
)


def one(design: str, cpu: str, event: str, linux: str, instructions: int) -> dict:
    host = pl.Host(cpu=cpu, frames=4096, seed=0)
    vm = host.create_vm(design=design, memory_pages=1024)
    guest = pl.GuestKernel(vm, linux=linux)
    rec = guest.perf.record(event, period=PERIOD)
    work = pl.workloads.pointer_chase()
    vm.run(work, instructions=10_000)            # warm-up (JIT, first PMI)
    w0, c0 = time.perf_counter(), time.process_time()
    res = vm.run(work, instructions=instructions)
    wall, cpu_s = time.perf_counter() - w0, time.process_time() - c0
    samples = len(rec.samples())
    exits = sum(res.exits.values()) if hasattr(res, "exits") else None
    vm.destroy()
    return {
        "design": design, "cpu": cpu, "event": event, "linux": linux,
        "instructions": instructions, "pmis_injected": int(res.pmis_injected),
        "samples": samples, "vm_exits": exits, "crashed": bool(res.crashed),
        "wall_s": round(wall, 4), "cpu_s": round(cpu_s, 4),
        "guest_instructions_per_s_cpu": round(instructions / max(cpu_s, 1e-9)),
        "pmis_per_s_cpu": round(res.pmis_injected / max(cpu_s, 1e-9), 1),
        "guest_instructions_per_s_wall": round(instructions / max(wall, 1e-9)),
        "pmis_per_s_wall": round(res.pmis_injected / max(wall, 1e-9), 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instructions", type=int, default=2_000_000)
    args = ap.parse_args(argv)
    if args.instructions < 100_000:
        ap.error(f"--instructions must be >= 100000; got {args.instructions}")
    runs = [one(d, c, e, era, args.instructions) for d, c, e, eras in RUNS for era in eras]
    ok = all(r["pmis_injected"] > 0 and not r["crashed"] for r in runs)
    print(json.dumps({"benchmark": "fullstack", "python": platform.python_version(),
                      "period": PERIOD, "runs": runs, "all_ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
