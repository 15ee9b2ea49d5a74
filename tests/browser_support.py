"""Helpers for tests/test_browser.py: a private JupyterLab server and a Chromium page driving it.

Nothing here touches the network beyond 127.0.0.1: the server binds to the loopback address,
its update check and news feed are off, and Chromium runs with background networking disabled.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = Path(os.environ.get("PEBSLAB_BROWSER_NOTEBOOK_DIR", ROOT / "notebooks")).resolve()
CHROMIUM = os.environ.get("PEBSLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabServer:
    """A JupyterLab server started for the tests, with its own runtime, settings and workspaces."""

    tmp: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(24))
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    # -- REST ------------------------------------------------------------------------------
    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def log_tail(self, n: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    # -- life cycle --------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in ("runtime", "config", "data", "settings", "workspaces", "ipython"):
            (self.tmp / name).mkdir(parents=True, exist_ok=True)
        env.update(
            JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
            JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
            JUPYTER_DATA_DIR=str(self.tmp / "data"),
            JUPYTERLAB_SETTINGS_DIR=str(self.tmp / "settings"),
            JUPYTERLAB_WORKSPACES_DIR=str(self.tmp / "workspaces"),
            IPYTHONDIR=str(self.tmp / "ipython"),
            # The venv's kernels first: its `python3` (registered by the Makefile with
            # `ipykernel install --sys-prefix`) must win over any user-level `python3`.
            JUPYTER_PATH=os.pathsep.join(
                [str(Path(sys.prefix) / "share" / "jupyter")]
                + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
            ),
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        # Run All makes the notebooks dirty; JupyterLab would autosave them into the work tree
        # after 120 s. The test never saves.
        docmanager = self.tmp / "settings" / "@jupyterlab" / "docmanager-extension"
        docmanager.mkdir(parents=True, exist_ok=True)
        (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))
        env.pop("NUMBA_DISABLE_JIT", None)
        env.pop("JUPYTER_TOKEN", None)
        return env

    def start(self, timeout: float = 90.0) -> None:
        ensure_venv_kernel()
        cmd = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.open_browser=False",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={self.token}",
            f"--notebook-dir={NOTEBOOK_DIR}",
            # lets the test drive JupyterLab's own commands (window.jupyterapp), as galata does
            "--LabApp.expose_app_in_browser=True",
            # no calls out of the machine from the server
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if os.getuid() == 0:
            cmd.append("--allow-root")
        self.log_path = self.tmp / "jupyter-lab.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=self.environment(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                self.api("GET", "/api/status", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"jupyter lab did not answer /api/status in {timeout:.0f} s:\n{self.log_tail()}")

    def shutdown_sessions(self) -> None:
        """Close every session (and so every kernel) the browser opened."""
        try:
            for s in self.api("GET", "/api/sessions") or []:
                self.api("DELETE", f"/api/sessions/{s['id']}", timeout=20)
        except Exception:  # noqa: BLE001 - best effort; stop() kills what is left
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:  # the server's own shutdown ends its kernels too
                self.api("POST", "/api/shutdown", timeout=5)
            except Exception:  # noqa: BLE001
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                    try:
                        os.killpg(self.proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        self.proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
        self.proc = None


def ensure_venv_kernel() -> None:
    """Register this interpreter's kernel as `python3` in sys.prefix, as the Makefile does."""
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    if spec.exists():
        argv = json.loads(spec.read_text()).get("argv", [""])
        if Path(argv[0]).resolve() == Path(sys.executable).resolve() or argv[0] == "python":
            return
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3",
         "--display-name", "Python 3 (pebslab)"],
        check=True, stdout=subprocess.DEVNULL,
    )


def chromium_available() -> str | None:
    """None when usable, else the reason it is not."""
    if not Path(CHROMIUM).exists() and shutil.which(CHROMIUM) is None:
        return f"{CHROMIUM} not found (apt-get install chromium)"
    return None


# -- JavaScript run in the page ------------------------------------------------------------------
# All of it goes through window.jupyterapp (exposed by --LabApp.expose_app_in_browser).

JS_APP_READY = """() => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return false;
  const w = app.shell.currentWidget;
  return !!(w && w.content && w.sessionContext && w.context && w.context.isReady);
}"""

JS_KERNEL_INFO = """async () => {
  const w = window.jupyterapp.shell.currentWidget;
  await w.sessionContext.ready;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!k) return null;
  const spec = await k.spec;
  return {name: k.name, status: k.status, argv: spec ? (spec.argv || null) : null,
          display: spec ? spec.display_name : null};
}"""

# Counts the kernel's busy/idle turns, for waiting on a widget callback.
JS_HOOK_KERNEL = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const k = w.sessionContext.session.kernel;
  const st = {idle: 0, busy: 0, status: k.status, last: performance.now()};
  window.__pebs = st;
  k.iopubMessage.connect((_, msg) => {
    if (msg.header.msg_type === 'status') {
      const s = msg.content.execution_state;
      st.status = s; st.last = performance.now();
      if (s === 'idle') st.idle += 1;
      if (s === 'busy') st.busy += 1;
    }
  });
  return true;
}"""

JS_KERNEL_QUIET = """(ms) => {
  const st = window.__pebs;
  return st.status === 'idle' && performance.now() - st.last > ms;
}"""

JS_RESTART_RUN_ALL = """(cmd) => {
  window.__pebsRun = null;
  window.jupyterapp.commands.execute(cmd)
    .then(r => { window.__pebsRun = {ok: r === undefined ? true : !!r}; })
    .catch(e => { window.__pebsRun = {error: String(e)}; });
  return true;
}"""

# The state of every code cell, from the notebook model (what is saved), not from the DOM.
JS_CELLS = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  const out = [];
  nb.widgets.forEach((cell, i) => {
    const m = cell.model;
    if (m.type !== 'code') return;
    const outputs = [];
    for (let j = 0; j < m.outputs.length; j++) {
      const o = m.outputs.get(j).toJSON();
      outputs.push({type: o.output_type, name: o.name || null,
                    text: o.output_type === 'stream' ? String(o.text).slice(0, 4000) : null,
                    ename: o.ename || null, evalue: o.evalue || null,
                    traceback: o.traceback ? o.traceback.join('\\n').slice(0, 4000) : null,
                    mimes: o.data ? Object.keys(o.data) : []});
    }
    out.push({index: i, count: m.executionCount,
              prompt: cell.promptNode ? cell.promptNode.textContent : null,
              source: m.sharedModel.getSource().slice(0, 160), outputs});
  });
  return out;
}"""

JS_QUEUED = """() => {
  const nb = window.jupyterapp.shell.currentWidget.content;
  return nb.widgets.filter(c => c.model.type === 'code' && c.promptNode &&
                           c.promptNode.textContent.includes('*')).length;
}"""
