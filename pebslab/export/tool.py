"""Run the real ``perf`` on exported files, isolated; pebslab's own table to compare.

pebslab only. ``perf_report`` runs the installed ``perf report`` on a
``PerfFiles`` with HOME and the build-id cache in a temporary folder (perf
reads and writes nothing of the user's) and returns its table without the
comment lines (perf ends every report with a random "Tip", which would
make notebook outputs change from run to run). ``overhead_table`` prints
what ``perf report --sort dso,sym`` should show, computed from the samples
alone, so a notebook can put the two side by side. Used in: notebook 08.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np

from .perfdata import PerfFiles

INSTALL_HINT = ("perf is not installed: on Debian `apt-get install linux-perf`, on Ubuntu "
                "`apt-get install linux-tools-generic` (or linux-tools-$(uname -r)), on Fedora "
                "`dnf install perf`")


def perf_path() -> str | None:
    """The perf binary on PATH, or None."""
    return shutil.which("perf")


def run_perf(files: PerfFiles, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``perf ARGS... <files.perf_args()>`` in isolation; return the finished process.

    pebslab only. Raises FileNotFoundError (with how to install perf) where
    perf is absent, and RuntimeError with perf's stderr if perf fails.
    """
    if not isinstance(files, PerfFiles):
        raise TypeError(f"files must be the PerfFiles that export.perf_data returned; got "
                        f"{type(files).__name__}")
    if files.data is None:
        raise ValueError("files describes a pipe-mode export (data=None); run perf on the "
                         "stream yourself: perf report -i - --kallsyms FILE")
    perf = perf_path()
    if perf is None:
        raise FileNotFoundError(INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="pebslab-perf-") as home:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "PAGER": "cat",
               "PERF_BUILDID_DIR": os.path.join(home, ".debug"), "LC_ALL": "C"}
        r = subprocess.run([perf, *args, *files.perf_args()], env=env, capture_output=True,
                           timeout=timeout, cwd=home)
    if r.returncode != 0:
        raise RuntimeError(f"perf {' '.join(args)} failed (exit {r.returncode}): "
                           f"{r.stderr.decode(errors='replace').strip()}")
    return r


def perf_report(files: PerfFiles, sort: str = "dso,sym") -> str:
    """Return ``perf report --stdio --no-children -g none --sort SORT``'s table rows.

    pebslab only. Keeps the "Samples: ... of event ..." line and the rows;
    drops the other comment lines and blank lines.
    """
    if not isinstance(sort, str) or not sort:
        raise ValueError(f"sort must be a non-empty perf sort key list such as 'dso,sym'; "
                         f"got {sort!r}")
    out = run_perf(files, "report", "--stdio", "--no-children", "-g", "none", "--sort", sort)
    keep = []
    for ln in out.stdout.decode(errors="replace").splitlines():
        if ln.startswith("# Samples:") or (ln.strip() and not ln.startswith("#")):
            keep.append(ln.rstrip())
    return "\n".join(keep)


def overhead_table(samples) -> str:
    """What ``perf report --sort sym`` should show, from the samples alone.

    pebslab only. One row per function, most samples first (ties by name):
    the share of samples with two decimals (perf's rounding: all samples
    have the same period, so shares of samples are shares of period), then
    ``[k]`` for kernel or ``[.]`` for user code, then the name.
    """
    if not isinstance(samples, np.ndarray) or samples.dtype.names is None \
            or "sym" not in samples.dtype.names or "ip" not in samples.dtype.names:
        raise TypeError("samples must be a structured array with 'ip' and 'sym' fields "
                        "(Recording.samples())")
    if samples.size == 0:
        raise ValueError("samples is empty")
    rows = {}
    for ip, sym in zip(samples["ip"].tolist(), samples["sym"].tolist()):
        key = (sym, ip >= 1 << 63)
        rows[key] = rows.get(key, 0) + 1
    order = sorted(rows.items(), key=lambda kv: (-kv[1], kv[0][0]))
    return "\n".join(f"{100.0 * n / samples.size:9.2f}%  [{'k' if k else '.'}] {sym}"
                     for (sym, k), n in order)
