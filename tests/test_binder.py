"""The Binder / repo2docker set-up (binder/), tested without Docker.

repo2docker installs ``binder/requirements.txt`` into the image's Python
(``runtime.txt`` picks it), runs ``binder/postBuild`` once from the
repository's root, and runs every container through ``binder/start``. Docker
cannot run here, so the slow test does the same in a fresh virtual
environment: install the requirements, run postBuild as it is, then start a
learner's process through ``start`` and check that the first explorer finds
every compiled function in the numba cache postBuild warmed (no new cache
file appears), which is what makes it answer at once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        assert m, f"not an exact pin: {line!r} (Binder must install what pyproject.toml pins)"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_requirements_pinned_like_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = _pins(project["dependencies"])
    got = _pins((BINDER / "requirements.txt").read_text().splitlines())
    assert got == want


def test_runtime_matches_requires_python():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-(\d+)\.(\d+)", runtime)
    assert m, f"runtime.txt must read python-X.Y; got {runtime!r}"
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lo = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", floor).groups())
    assert (int(m.group(1)), int(m.group(2))) >= lo


def test_start_sets_cache_and_execs_the_command(tmp_path):
    lines = [ln for ln in (BINDER / "start").read_text().splitlines() if ln.strip()]
    assert lines[-1].strip() == 'exec "$@"'
    assert os.access(BINDER / "start", os.X_OK) and os.access(BINDER / "postBuild", os.X_OK)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["HOME"] = str(tmp_path)
    r = subprocess.run([str(BINDER / "start"), "sh", "-c", 'echo "$NUMBA_CACHE_DIR"; exit 7'],
                       env=env, capture_output=True, text=True)
    # exec: the command's own exit status and output, with the cache postBuild fills
    assert r.returncode == 7
    assert r.stdout.strip() == f"{tmp_path}/.cache/pebslab-numba"


def _cache_files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.suffix in (".nbi", ".nbc")}


FIRST_EXPLORER = """
import matplotlib
matplotlib.use("Agg")
import pebslab as pl
from pebslab.viz import pinning
fig = pinning.page_map(**pinning.EXPLORERS["page_map"][1])
print("figure", type(fig).__name__)
"""


@pytest.mark.slow
def test_postbuild_and_start_in_a_fresh_venv(tmp_path):
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH (make test bootstraps it)")
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "book", ".numba_cache", "__pycache__", "*.egg-info",
        ".pytest_cache", ".hypothesis", "figures"))
    home = tmp_path / "home"
    home.mkdir()
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "VIRTUAL_ENV", "PYTHONPATH", "NUMBA_DISABLE_JIT")}
    env.update(HOME=str(home), PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}")

    def run(cmd, **kw):
        r = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, **kw)
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    run([uv, "venv", "--quiet", "--seed", "--python", sys.executable, str(venv)])
    # repo2docker's first step (it uses pip; uv installs the same pinned wheels faster)
    run([uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         "-r", "binder/requirements.txt"])
    out = run(["bash", "binder/postBuild"]).stdout
    cache = home / ".cache" / "pebslab-numba"
    assert "numba cache warm" in out
    warmed = _cache_files(cache)
    assert warmed, "postBuild left no numba cache"
    # a learner's kernel, started through binder/start, from the notebooks' folder
    r = subprocess.run(["bash", str(repo / "binder" / "start"), "python", "-c", FIRST_EXPLORER],
                       cwd=repo / "notebooks", env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "figure Figure" in r.stdout
    new = _cache_files(cache) - warmed
    assert not new, f"the first explorer compiled functions postBuild did not warm: {sorted(new)}"
