"""Benchmark of pebslab.export: export time and file sizes for N samples.

pebslab only. Prints one JSON object (no timed tests: numbers depend on the
machine). Samples are synthetic but realistic: N instruction addresses of
``multi_function`` (user and kernel code, call depth up to 3) drawn with a
seed, increasing times, as ``Recording.samples()`` returns them. Figures
per N (process CPU time, best of ``--repeat``):

* ``perf_data_s``: ``export.perf_data`` with call chains (perf.data + ELF +
  kallsyms written), and ``perf_data_nocc_s`` without call chains;
* ``perf_data_bytes`` / ``perf_data_nocc_bytes``: the perf.data sizes
  (the ELF and kallsyms sizes do not depend on N and are given once);
* ``collapsed_s``, ``flamegraph_s``, ``speedscope_s`` and the speedscope size;
* ``perf_report_s``: wall time of ``perf report --stdio`` on the file,
  where perf is installed (what reading it costs in the real tool).

Usage: ``python bench/bench_export.py [--sizes 1000,10000,100000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pebslab as pl  # noqa: E402
from pebslab import export  # noqa: E402
from pebslab.guest.perf import SAMPLE_DTYPE  # noqa: E402


def synthetic(w, n, seed=0):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, len(w), size=n)
    s = np.zeros(n, dtype=SAMPLE_DTYPE)
    s["ip"], s["cpl"] = w.ip[pos], w.cpl[pos]
    s["addr"], s["latency"] = w.addr[pos], w.latency[pos]
    s["time"] = np.arange(1, n + 1, dtype=np.uint64) * 997
    s["precise"] = 1
    s["sym"] = [w.symbol_of(int(ip)) for ip in s["ip"]]
    return s


def best(fn, repeat):
    t = []
    out = None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn()
        t.append(time.process_time() - t0)
    return min(t), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    w = pl.workloads.multi_function()
    ev = export.EventInfo(name="INST_RETIRED.ANY_P:pp", config=0xC0, precise_ip=2, usr=True,
                          os=True, period=10007)
    perf = shutil.which("perf")
    result = {"workload": w.name, "event": ev.name, "perf": bool(perf), "sizes": {}}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for n in sizes:
            s = synthetic(w, n)
            r = {}
            t, files = best(lambda: export.perf_data(s, d / "g.data", workload=w, event=ev,
                                                     cpu="silvermont"), args.repeat)
            r["perf_data_s"] = round(t, 4)
            r["perf_data_bytes"] = files.size
            r["bytes_per_sample"] = round(files.size / n, 1)
            result["elf_bytes"] = files.elf.stat().st_size
            result["kallsyms_bytes"] = files.kallsyms.stat().st_size
            t, f2 = best(lambda: export.perf_data(s, d / "n.data", workload=w, event=ev,
                                                  callchain=False), args.repeat)
            r["perf_data_nocc_s"] = round(t, 4)
            r["perf_data_nocc_bytes"] = f2.size
            r["collapsed_s"] = round(best(lambda: export.collapsed(s, w), args.repeat)[0], 4)
            r["flamegraph_s"] = round(best(lambda: export.flamegraph(s, w), args.repeat)[0], 4)
            t, p = best(lambda: export.speedscope(s, d / "s.json", w), args.repeat)
            r["speedscope_s"] = round(t, 4)
            r["speedscope_bytes"] = p.stat().st_size
            if perf:
                env = {"PATH": os.environ.get("PATH", ""), "HOME": str(d), "PAGER": "cat",
                       "PERF_BUILDID_DIR": str(d / ".debug")}
                t0 = time.perf_counter()
                subprocess.run([perf, "report", "--stdio", "--no-children", *files.perf_args()],
                               env=env, capture_output=True, check=True, cwd=d)
                r["perf_report_s"] = round(time.perf_counter() - t0, 3)
            result["sizes"][str(n)] = r
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
