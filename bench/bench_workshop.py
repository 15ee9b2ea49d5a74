"""Numbers a workshop needs; print JSON.

* ``first_explorer``: in a fresh Python process with the numba cache as
  ``make lab``/Binder leave it (warm), the time of each explorer's first
  call at its defaults (what displaying it costs) and of its first *moved*
  control (target < 1 s); and the same for one explorer with an empty cache
  (what a learner would wait without the warm-up).
* ``kernel_rss_mib``: the resident memory of a kernel that ran each notebook
  top to bottom (``--notebooks``; slower): what one attendee costs a
  JupyterHub, before the server's own share.

Usage: python bench/bench_workshop.py [--notebooks] [--write book/measured_workshop.md]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import importlib
from pebslab.figures import EXPLORER_GRIDS
mod = importlib.import_module("pebslab.viz." + sys.argv[1])
fn, defaults = mod.EXPLORERS[sys.argv[2]]
t1 = time.perf_counter()
fn(**defaults); plt.close("all")
td = time.perf_counter()
moved = dict(defaults)
OTHER = {"design": "fixed", "cpu": "haswell", "which": "buffer", "flow": "pebs",
         "msr": "DS_AREA", "event": "cycles", "hide_pebs_cpuid": True, "period": 20011}
t2 = t3 = None
for k, vals in EXPLORER_GRIDS.get(fn.__name__, {}).items():
    if k not in defaults:
        continue
    for cand in [v for v in (vals or []) if v != defaults[k]] or [OTHER.get(k)]:
        if cand is None or cand == defaults[k]:
            continue
        t2 = time.perf_counter()
        try:
            fn(**{**defaults, k: cand}); plt.close("all")
        except (ValueError, TypeError):
            continue
        t3 = time.perf_counter()
        moved[k] = cand
        break
    if t3 is not None:
        break
if t3 is None:                      # no control to move: time a second call at defaults
    t2 = time.perf_counter()
    fn(**defaults); plt.close("all")
    t3 = time.perf_counter()
print(json.dumps({"import_s": round(t1 - t0, 3), "default_s": round(td - t1, 3),
                  "first_move_s": round(t3 - t2, 3), "moved": {k: repr(v) for k, v in moved.items()
                                                              if v != defaults[k]}}))
"""


def _probe(module: str, name: str, cache: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    env.pop("NUMBA_DISABLE_JIT", None)
    r = subprocess.run([sys.executable, "-c", PROBE, module, name], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def first_explorer() -> dict:
    import importlib
    import pkgutil

    import pebslab.viz as viz
    from pebslab import setup_check
    cache = os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    os.environ["NUMBA_CACHE_DIR"] = cache
    setup_check.warm(progress=False)            # what make lab / postBuild do at install
    out = {}
    for m in sorted(pkgutil.iter_modules(viz.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"pebslab.viz.{m.name}")
        for name in getattr(mod, "EXPLORERS", {}):
            out[f"{m.name}.{name}"] = _probe(m.name, name, cache)
    with tempfile.TemporaryDirectory() as cold:
        cold_run = _probe("pmu", "skid_histogram", cold)
    worst = max(v["first_move_s"] for v in out.values())
    return {"warm_cache": out, "worst_first_move_s": worst, "target_s": 1.0,
            "ok": worst < 1.0, "cold_cache_pmu.skid_histogram": cold_run}


def kernel_rss() -> dict:
    import nbformat
    from nbclient import NotebookClient
    out = {}
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        client = NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(nb_path.parent)}})
        with client.setup_kernel():
            for i, cell in enumerate(nb.cells):
                client.execute_cell(cell, i)
            pid = client.km.provisioner.process.pid
            status = Path(f"/proc/{pid}/status").read_text()
            rss_kib = int(next(ln.split()[1] for ln in status.splitlines()
                               if ln.startswith("VmRSS:")))
            out[nb_path.stem] = round(rss_kib / 1024, 1)
    return {"kernel_rss_mib": out, "max_mib": max(out.values())}


def server_rss() -> dict:
    """RSS of an idle JupyterLab server (what each attendee's single-user server costs)."""
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=tmp, JUPYTER_CONFIG_DIR=tmp)
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.token=bench", "--allow-root",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             f"--ServerApp.root_dir={ROOT / 'notebooks'}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=bench", timeout=2).read()
                    break
                except OSError:
                    time.sleep(0.5)
            time.sleep(2)
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss_kib = int(next(ln.split()[1] for ln in status.splitlines()
                               if ln.startswith("VmRSS:")))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"server_rss_mib": round(rss_kib / 1024, 1)}


def markdown(res: dict) -> str:
    """The measured numbers as the Markdown the instructor guide includes."""
    fe = res["first_explorer"]
    lines = ["<!-- written by: python bench/bench_workshop.py --notebooks --write "
             "book/measured_workshop.md -->", "",
             "| measured | value |", "|---|---|"]
    if "kernel_rss_mib" in res:
        worst = max(res["kernel_rss_mib"], key=res["kernel_rss_mib"].get)
        lines.append(f"| kernel after running a whole notebook (largest: {worst}) | "
                     f"{res['max_mib']:.0f} MiB |")
        lines.append("| kernel, per notebook | " + ", ".join(
            f"{k[:2]}: {v:.0f}" for k, v in res["kernel_rss_mib"].items()) + " MiB |")
    if "server_rss_mib" in res:
        lines.append(f"| one idle JupyterLab server | {res['server_rss_mib']:.0f} MiB |")
        if "kernel_rss_mib" in res:
            per = res["max_mib"] + res["server_rss_mib"]
            lines.append(f"| **per attendee** (kernel + server) | **{per:.0f} MiB**; "
                         f"100 attendees: {per * 100 / 1024:.0f} GiB |")
    lines.append(f"| first moved explorer, warm numba cache (worst of {len(fe['warm_cache'])}) | "
                 f"{fe['worst_first_move_s']:.2f} s |")
    cold = fe["cold_cache_pmu.skid_histogram"]
    lines.append(f"| the same with an empty numba cache (skid explorer, import + first view) | "
                 f"{cold['import_s'] + cold['default_s']:.1f} s |")
    return "\n".join(lines) + "\n"


def main() -> None:
    res = {"first_explorer": first_explorer()}
    if "--notebooks" in sys.argv:
        res.update(kernel_rss())
        res.update(server_rss())
    print(json.dumps(res, indent=2))
    if "--write" in sys.argv:
        Path(sys.argv[sys.argv.index("--write") + 1]).write_text(markdown(res))


if __name__ == "__main__":
    t = time.perf_counter()
    main()
