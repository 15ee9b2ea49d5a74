"""The course as a new user meets it: JupyterLab in a real browser.

For every notebook in notebooks/: open it in JupyterLab (Chromium driven by playwright),
"Restart Kernel and Run All Cells", wait for every cell, then require

* no error output anywhere (cell errors, tracebacks on stderr, also inside widget outputs),
* every widget view rendered (no "Error displaying widget", no "Loading widget..." left),
* and then move every widget: each slider to both ends (keyboard End, Home, as a person
  would with the handle focused), each dropdown through each option, each checkbox and
  toggle both ways, waiting after each change for the kernel's callback and the new
  output, and again no error output.

In the messages, `cell N` is the 0-based position in the notebook's cell list (markdown
cells included), as in `nb["cells"][N]`.

Needs /usr/bin/chromium (Debian's `chromium`; `.ci/run` installs it) and the `playwright`
package (in the `test` extra); the module skips itself, with the reason, without them.
It never downloads a browser (no `playwright install`), and everything binds to 127.0.0.1.

Environment knobs: PEBSLAB_BROWSER_RUN_TIMEOUT (s, default 240) for one Run All,
PEBSLAB_BROWSER_SHOTS (folder, default <tmp>/pebslab-browser) for the screenshots,
PEBSLAB_BROWSER_WIDGET_BUDGET (s, default 120) per notebook for moving widgets, after
which dropdowns are tried at their last option only, PEBSLAB_BROWSER_VERBOSE=1 to print
every widget change (run pytest with -s), PEBSLAB_BROWSER_NOTEBOOK_DIR to try another
folder of notebooks (default notebooks/).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import pytest

pytestmark = pytest.mark.browser

if os.environ.get("NUMBA_DISABLE_JIT") == "1":
    pytest.skip(
        "browser test runs once, in the numba pass; skipped under NUMBA_DISABLE_JIT=1",
        allow_module_level=True,
    )

# In CI (.ci/run installs chromium, the `test` extra brings playwright) a missing piece is a
# failure, not a quiet skip; elsewhere the module skips with the reason.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright import sync_api
except ImportError:
    _unavailable("playwright is not installed (pip install -e '.[test]')")

import browser_support as bs  # noqa: E402  (tests/ is on sys.path under pytest)

if _reason := bs.chromium_available():
    _unavailable(_reason)

NOTEBOOKS = sorted(p.name for p in bs.NOTEBOOK_DIR.glob("*.ipynb"))
RUN_TIMEOUT_MS = int(float(os.environ.get("PEBSLAB_BROWSER_RUN_TIMEOUT", "240")) * 1000)
CALLBACK_TIMEOUT_MS = 60_000
SHOTS = Path(os.environ.get("PEBSLAB_BROWSER_SHOTS", Path(tempfile.gettempdir()) / "pebslab-browser"))
VERBOSE = os.environ.get("PEBSLAB_BROWSER_VERBOSE") == "1"  # print every widget change (with -s)
WIDGET_BUDGET_S = float(os.environ.get("PEBSLAB_BROWSER_WIDGET_BUDGET", "120"))  # per notebook
MAX_OPTIONS = 24  # a dropdown with more options is sampled: both ends and evenly between

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception)\b", re.M)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = bs.LabServer(tmp=tmp_path_factory.mktemp("jupyterlab"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=bs.CHROMIUM, args=bs.CHROMIUM_ARGS, headless=True)
    except Exception as e:  # noqa: BLE001
        pw.stop()
        _unavailable(f"chromium at {bs.CHROMIUM} does not start under playwright: {e}")
    try:
        yield b
    finally:
        b.close()
        pw.stop()


# ------------------------------------------------------------------------------------- helpers
def _clean(text: str | None) -> str:
    return ANSI.sub("", text or "")


def _tail(text: str, n: int = 12) -> str:
    return "\n".join(_clean(text).rstrip().splitlines()[-n:])


JS_DOM_PROBLEMS = """() => {
  const nb = document.querySelector('.jp-NotebookPanel .jp-Notebook');
  const cells = Array.from(nb.querySelectorAll('.jp-Cell'));
  const where = el => { const c = el.closest('.jp-Cell'); return c ? cells.indexOf(c) : -1; };
  const res = {stderr: [], widgetErrors: [], loading: 0, emptyViews: [], emptyInteracts: []};
  // errors in cell outputs are read from the notebook model (check_cells); here: widget outputs
  nb.querySelectorAll('.widget-output .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    .forEach(el => res.stderr.push({cell: where(el), text: el.textContent.slice(0, 4000)}));
  nb.querySelectorAll('.jp-OutputArea-output').forEach(el => {
    const t = el.textContent || '';
    if (t.includes('Error displaying widget')) res.widgetErrors.push({cell: where(el), text: t.slice(0, 400)});
    if (t.includes('Loading widget...')) res.loading += 1;
  });
  nb.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.widget-view+json"]')
    .forEach(el => {
      if (!el.querySelector('.jupyter-widgets, .lm-Widget')) res.emptyViews.push(where(el));
    });
  // the same picture twice in one cell (a figure both returned/displayed and shown by the
  // inline backend): what a person sees as a duplicated plot
  res.duplicates = [];
  cells.forEach((c, i) => {
    const srcs = Array.from(c.querySelectorAll('.jp-OutputArea-output img'))
      .map(im => im.getAttribute('src') || '').filter(s => s.length > 200);
    if (new Set(srcs).size < srcs.length) res.duplicates.push({cell: i, images: srcs.length});
  });
  nb.querySelectorAll('.widget-interact').forEach(el => {
    const out = el.querySelector('.widget-output');
    if (out && !out.querySelector('.jp-OutputArea-output')) res.emptyInteracts.push(where(el));
  });
  return res;
}"""

# Marks every control with data-pebs-ctl and describes it.
JS_CONTROLS = """() => {
  const nb = document.querySelector('.jp-NotebookPanel .jp-Notebook');
  const cells = Array.from(nb.querySelectorAll('.jp-Cell'));
  const ctls = [];
  // textContent, not innerText: cells off screen are not laid out (content-visibility)
  const txt = el => (el ? el.textContent : '').replace(/\u200b/g, '').trim();
  const label = (box) => {
    if (!box) return '';
    for (const l of box.querySelectorAll(':scope > .widget-label, :scope > label, .widget-label-basic span'))
      if (txt(l)) return txt(l);
    return '';
  };
  const add = (el, kind, box, extra) => {
    const id = ctls.length;
    el.setAttribute('data-pebs-ctl', String(id));
    const c = el.closest('.jp-Cell');
    ctls.push(Object.assign({id, kind, cell: c ? cells.indexOf(c) : -1, label: label(box)}, extra || {}));
  };
  nb.querySelectorAll('.widget-slider').forEach(box => {
    box.querySelectorAll('.noUi-handle').forEach(h => add(h, 'slider', box, {
      min: h.getAttribute('aria-valuemin'), max: h.getAttribute('aria-valuemax')}));
    box.querySelectorAll('input[type=range]').forEach(r => add(r, 'range', box));
  });
  nb.querySelectorAll('input[type=range]:not([data-pebs-ctl])').forEach(r => add(r, 'range', r.parentElement));
  nb.querySelectorAll('.widget-dropdown select, .widget-select select').forEach(s =>
    add(s, 'select', s.closest('.widget-dropdown, .widget-select'),
        {options: Array.from(s.options).map(o => o.text), multiple: s.multiple, selected: s.selectedIndex}));
  nb.querySelectorAll('.widget-checkbox input[type=checkbox]').forEach(c =>
    add(c, 'checkbox', c.closest('.widget-checkbox'), {label2: txt(c.parentElement)}));
  nb.querySelectorAll('.widget-toggle-button').forEach(b => add(b, 'toggle', b.parentElement, {label2: txt(b)}));
  nb.querySelectorAll('.widget-toggle-buttons').forEach(g =>
    add(g, 'togglebuttons', g, {options: Array.from(g.querySelectorAll('button')).map(b => txt(b))}));
  nb.querySelectorAll('.widget-radio-box').forEach(g =>
    add(g, 'radio', g.closest('.widget-radio') || g,
        {options: Array.from(g.querySelectorAll('label')).map(l => txt(l))}));
  nb.querySelectorAll('.widget-text input, .widget-textarea textarea, .widget-inline-hbox input[type=number]')
    .forEach(t => add(t, 'text', t.closest('.widget-inline-hbox') || t.parentElement, {value: t.value}));
  nb.querySelectorAll('button.widget-button').forEach(b => add(b, 'button', null, {label2: txt(b)}));
  return ctls;
}"""

# The visible value of a control (slider readout, chosen option, check state, pressed toggle).
JS_VALUE = """(id) => {
  const el = document.querySelector(`[data-pebs-ctl="${id}"]`);
  if (!el) return null;
  if (el.classList.contains('noUi-handle')) {
    const box = el.closest('.widget-slider');
    const r = box && box.querySelector('.widget-readout');
    return (r ? r.textContent : '') + '|' + el.getAttribute('aria-valuenow');
  }
  if (el.tagName === 'SELECT') return String(el.selectedIndex);
  if (el.type === 'checkbox') return String(el.checked);
  if (el.type === 'range') return el.value;
  if (el.classList.contains('widget-toggle-button')) return String(el.classList.contains('mod-active'));
  if (el.classList.contains('widget-toggle-buttons'))
    return String(Array.from(el.querySelectorAll('button')).findIndex(b => b.classList.contains('mod-active')));
  if (el.classList.contains('widget-radio-box'))
    return String(Array.from(el.querySelectorAll('input')).findIndex(i => i.checked));
  return el.value === undefined ? el.textContent : el.value;
}"""

# Marks the outputs currently shown in the control's cell, to see that new ones arrive.
JS_MARK_OUTPUTS = """(id) => {
  const el = document.querySelector(`[data-pebs-ctl="${id}"]`);
  const cell = el && el.closest('.jp-Cell');
  if (!cell) return 0;
  const outs = cell.querySelectorAll('.widget-output .jp-OutputArea-output');
  outs.forEach(o => o.setAttribute('data-pebs-old', '1'));
  return outs.length;
}"""

JS_NEW_OUTPUTS = """(id) => {
  const el = document.querySelector(`[data-pebs-ctl="${id}"]`);
  const cell = el && el.closest('.jp-Cell');
  if (!cell) return {fresh: 0, images: 0, total: 0};
  const outs = Array.from(cell.querySelectorAll('.widget-output .jp-OutputArea-output'));
  const fresh = outs.filter(o => !o.hasAttribute('data-pebs-old'));
  return {fresh: fresh.length, total: outs.length,
          images: fresh.filter(o => o.querySelector('img, svg')).length};
}"""


class _KernelGone(Exception):
    pass


class NotebookSession:
    """One notebook opened in JupyterLab in its own browser context and workspace."""

    def __init__(self, lab, browser, name: str):
        self.lab, self.name = lab, name
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.context.set_default_timeout(30_000)
        self.page = self.context.new_page()
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on(
            "console",
            lambda m: self.console_errors.append(m.text) if m.type == "error" else None,
        )
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.seen: set = set()

    def close(self):
        try:
            self.context.close()
        finally:
            self.lab.shutdown_sessions()

    # -- opening and running ---------------------------------------------------------------
    def open(self):
        ws = "pebs-" + re.sub(r"[^A-Za-z0-9]", "-", Path(self.name).stem)
        self.page.goto(self.lab.url(f"/lab/workspaces/{ws}/tree/{quote(self.name)}"))
        self.page.wait_for_function(bs.JS_APP_READY, timeout=90_000)
        path = self.page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path")
        assert path == self.name, f"JupyterLab opened {path!r}, not {self.name!r}"
        self.page.wait_for_function(
            """() => { const s = window.jupyterapp.shell.currentWidget.sessionContext;
                       return s.session && s.session.kernel && s.session.kernel.status === 'idle'; }""",
            timeout=90_000,
        )
        info = self.page.evaluate(bs.JS_KERNEL_INFO)
        assert info and info["name"] == "python3", f"{self.name}: kernel is {info}, not python3"
        argv0 = (info.get("argv") or [""])[0]
        assert argv0 in ("python", "{python}") or Path(argv0).resolve() == Path(sys.executable).resolve(), (
            f"{self.name}: the python3 kernel runs {argv0}, not the venv's {sys.executable}"
        )

    def restart_and_run_all(self):
        page = self.page
        cmd = page.evaluate(
            """() => ['notebook:restart-run-all', 'runmenu:restart-and-run-all']
                       .find(c => window.jupyterapp.commands.hasCommand(c)) || null"""
        )
        assert cmd, "JupyterLab has no restart-and-run-all command"
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
        page.evaluate(bs.JS_RESTART_RUN_ALL, cmd)
        # the "Restart Kernel?" dialog a person confirms
        accept = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        try:
            accept.wait_for(state="visible", timeout=15_000)
            accept.click()
        except sync_api.TimeoutError:
            pass  # no dialog (already confirmed/skipped by settings): the run goes on
        t0 = time.monotonic()
        page.wait_for_function("() => window.__pebsRun !== null", timeout=RUN_TIMEOUT_MS, polling=250)
        result = page.evaluate("() => window.__pebsRun")
        page.wait_for_function("() => { const k = window.jupyterapp.shell.currentWidget"
                               ".sessionContext.session.kernel; return k && k.status === 'idle'; }",
                               timeout=RUN_TIMEOUT_MS)
        self.notes.append(f"run all: {time.monotonic() - t0:.1f} s")
        if "error" in result:
            self.problems.append(f"Restart and Run All failed: {result['error']}")

    # -- checks ------------------------------------------------------------------------------
    def check_cells(self):
        for c in self.page.evaluate(bs.JS_CELLS):
            head = c["source"].splitlines()[0] if c["source"].strip() else "<empty>"
            where = f"cell {c['index']} ({head!r})"
            if not c["source"].strip():
                continue
            if c["count"] is None or (c["prompt"] and "*" in c["prompt"]):
                self.problems.append(f"{where}: not executed (prompt {c['prompt']!r})")
            for o in c["outputs"]:
                if o["type"] == "error":
                    self.problems.append(
                        f"{where}: {o['ename']}: {_clean(o['evalue'])}\n{_tail(o['traceback'] or '')}"
                    )
                elif o["type"] == "stream" and o["name"] == "stderr":
                    text = _clean(o["text"])
                    if ERROR_TEXT.search(text):
                        self.problems.append(f"{where}: stderr\n{_tail(text)}")
                    else:
                        self.notes.append(f"{where}: stderr: {text.strip()[:300]}")

    def wait_widgets_rendered(self):
        try:
            self.page.wait_for_function(
                """() => !Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
                          .some(el => (el.textContent || '').includes('Loading widget...'))""",
                timeout=30_000,
            )
        except sync_api.TimeoutError:
            pass  # reported by check_dom

    def check_dom(self, when: str, seen: set | None = None):
        d = self.page.evaluate(JS_DOM_PROBLEMS)
        seen = set() if seen is None else seen
        for s in d["stderr"]:
            key = (s["cell"], s["text"])
            if key in seen:
                continue
            seen.add(key)
            if ERROR_TEXT.search(s["text"]):
                self.problems.append(f"{when}: cell {s['cell']} shows an error:\n{_tail(s['text'])}")
            else:
                self.notes.append(f"{when}: cell {s['cell']} stderr: {s['text'].strip()[:300]}")
        def once(key, message):
            if key not in seen:
                seen.add(key)
                self.problems.append(message)

        for w in d["widgetErrors"]:
            once(("widget-error", w["cell"]), f"{when}: cell {w['cell']}: {w['text'].strip()}")
        if d["loading"]:
            once(("loading",), f"{when}: {d['loading']} widget view(s) still 'Loading widget...'")
        for c in d["emptyViews"]:
            once(("empty-view", c), f"{when}: cell {c}: a widget view rendered nothing")
        for dup in d["duplicates"]:
            once(("dup", dup["cell"]),
                 f"{when}: cell {dup['cell']} shows the same figure twice ({dup['images']} images, "
                 f"some identical): a figure both returned/displayed and shown again by the "
                 f"inline backend (viz.explore avoids it)")
        for c in d["emptyInteracts"]:
            once(("empty-interact", c), f"{when}: cell {c}: an interact's output is empty")
        return seen

    def screenshot(self, tag: str) -> Path:
        SHOTS.mkdir(parents=True, exist_ok=True)
        path = SHOTS / f"{Path(self.name).stem}-{tag}.png"
        for sel in (".jp-Notebook .widget-interact", ".jp-Notebook .jupyter-widgets"):
            first = self.page.locator(sel).first
            if first.count():
                # off-screen cells use content-visibility: their size is only an estimate until
                # painted, so scroll, let the browser lay them out, and scroll again
                for _ in range(3):
                    first.scroll_into_view_if_needed()
                    self.page.wait_for_timeout(400)
                first.evaluate("el => el.scrollIntoView({block: 'start'})")
                self.page.wait_for_timeout(400)
                break
        self.page.screenshot(path=str(path))
        return path

    # -- moving the widgets -------------------------------------------------------------------
    def _settle(self, idle_before: int, changed: bool):
        page = self.page
        if changed:
            page.wait_for_function("(n) => window.__pebs.idle > n", arg=idle_before,
                                   timeout=CALLBACK_TIMEOUT_MS, polling=50)
        page.wait_for_function(bs.JS_KERNEL_QUIET, arg=250, timeout=CALLBACK_TIMEOUT_MS, polling=50)

    def _act(self, ctl: dict, what: str, action):
        """Do one user action on a control, wait for the kernel's answer, check the output."""
        page, cid = self.page, ctl["id"]
        desc = f"cell {ctl['cell']} {ctl['kind']} {ctl['label'] or ctl.get('label2') or ''!r} {what}"
        before = page.evaluate(JS_VALUE, cid)
        had = page.evaluate(JS_MARK_OUTPUTS, cid)
        idle = page.evaluate("() => window.__pebs.idle")
        t0 = time.monotonic()
        action()
        after = page.evaluate(JS_VALUE, cid)
        changed = after != before
        try:
            self._settle(idle, changed)
        except sync_api.TimeoutError:
            self.problems.append(f"{desc}: no answer from the kernel in {CALLBACK_TIMEOUT_MS // 1000} s")
            raise _KernelGone from None
        dt = time.monotonic() - t0
        self.timings.append((dt, desc))
        if VERBOSE:
            print(f"    {dt:5.2f} s  {desc}: {before!r} -> {after!r}")
        if ctl["kind"] == "select" and not ctl["multiple"]:
            now = page.evaluate(JS_VALUE, cid)
            if now == "-1":
                once_key = ("blank-after", cid)
                if once_key not in self.seen:
                    self.seen.add(once_key)
                    self.problems.append(
                        f"{desc}: the dropdown is blank after the kernel answered (its value is "
                        f"None: ipywidgets 8 reads a None value as 'no selection', so an option "
                        f"whose value is None cannot stay selected)")
        if changed and had and before != "-1":  # from a blank dropdown: reported above
            new = page.evaluate(JS_NEW_OUTPUTS, cid)
            if not new["fresh"]:
                self.problems.append(f"{desc}: value {before!r} -> {after!r} but the output did not update")
        self.seen = self.check_dom(desc, self.seen)
        return changed

    def move_widgets(self):
        try:
            self._move_widgets()
        except _KernelGone:
            self.problems.append("stopped moving widgets: the kernel no longer answers")

    def _move_widgets(self):
        page = self.page
        page.evaluate(bs.JS_HOOK_KERNEL)
        self.timings: list[tuple[float, str]] = []
        t_start = time.monotonic()
        sampled = False
        ctls = page.evaluate(JS_CONTROLS)
        kinds = {}
        for c in ctls:
            kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
        self.notes.append(f"controls: {kinds}")
        if VERBOSE:
            for c in ctls:
                print(f"    control {c}"[:200])
        for ctl in ctls:
            if ctl["kind"] == "select" and not ctl["multiple"] and ctl["selected"] == -1:
                self.problems.append(
                    f"cell {ctl['cell']} dropdown {ctl['label']!r} shows no choice (blank) after Run "
                    f"All although its options are {ctl['options']}: its value is None (e.g. "
                    f"`value=None`, or a (label, None) option), which ipywidgets 8 reads as 'no "
                    f"selection'"
                )
            loc = page.locator(f'[data-pebs-ctl="{ctl["id"]}"]')
            if not loc.count():
                self.problems.append(f"cell {ctl['cell']} {ctl['kind']} {ctl['label']!r}: vanished")
                continue
            loc.scroll_into_view_if_needed()
            kind = ctl["kind"]
            if kind in ("slider", "range"):
                for key in ("End", "Home"):
                    moved = self._act(ctl, f"-> {key}", lambda k=key: (loc.focus(), loc.press(k)))
                    if not moved and key == "End":
                        # already at the end is fine; not moving at all is not
                        v = page.evaluate(JS_VALUE, ctl["id"])
                        if kind == "slider" and ctl.get("max") and not v.endswith("|" + str(ctl["max"])) \
                                and not v.endswith("|" + str(float(ctl["max"]))):
                            self.problems.append(
                                f"cell {ctl['cell']} slider {ctl['label']!r}: End did not move it ({v})")
            elif kind == "select":
                n = len(ctl["options"])
                start = int(page.evaluate(JS_VALUE, ctl["id"]))
                order = [(start + k) % n for k in range(1, n + 1)]  # ends on the original choice
                if time.monotonic() - t_start > WIDGET_BUDGET_S:
                    order, sampled = [(start - 1) % n, start], True  # the last option, and back
                elif n > MAX_OPTIONS:
                    keep = {0, n - 1, start} | {round(i * (n - 1) / (MAX_OPTIONS - 1)) for i in range(MAX_OPTIONS)}
                    order = [i for i in order if i in keep]
                for i in order:
                    self._act(ctl, f"= {ctl['options'][i]!r}", lambda i=i: loc.select_option(index=i))
            elif kind in ("checkbox", "toggle"):
                for _ in range(2):
                    self._act(ctl, "clicked", lambda: loc.click())
            elif kind in ("togglebuttons", "radio"):
                buttons = loc.locator("button" if kind == "togglebuttons" else "input")
                n = buttons.count()
                start = int(page.evaluate(JS_VALUE, ctl["id"]))
                for i in [(max(start, 0) + k) % n for k in range(1, n + 1)]:
                    self._act(ctl, f"= {ctl['options'][i]!r}", lambda i=i: buttons.nth(i).click())
            elif kind == "text":
                # what a person might type by mistake: reported (a warning), not a failure; then
                # the original value again, which must show a clean output
                orig = ctl["value"]
                kept = self.problems
                self.problems = []
                self._act(ctl, "typed 'hello'", lambda: (loc.fill("hello"), loc.press("Enter")))
                for p in self.problems:
                    self.notes.append(f"typing nonsense shows a traceback (not a failure): {p}")
                self.problems = kept
                self._act(ctl, f"typed {orig!r}", lambda: (loc.fill(orig), loc.press("Enter")))
            elif kind == "button":
                self._act(ctl, "clicked", lambda: loc.click())
        if sampled:
            self.notes.append(f"over {WIDGET_BUDGET_S:.0f} s: later dropdowns tried at their last option only")
        if self.timings:
            slow = max(self.timings)
            total = sum(t for t, _ in self.timings)
            self.notes.append(f"{len(self.timings)} widget changes in {total:.1f} s; slowest {slow[0]:.1f} s ({slow[1]})")


# ---------------------------------------------------------------------------------------- test
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_as_a_new_user(lab, browser, name):
    s = NotebookSession(lab, browser, name)
    try:
        s.open()
        s.restart_and_run_all()
        s.check_cells()
        s.wait_widgets_rendered()
        s.seen = s.check_dom("after run all")
        shot = s.screenshot("run-all")
        s.notes.append(f"screenshot: {shot}")
        if not any("Restart and Run All failed" in p for p in s.problems):
            s.move_widgets()  # the widgets that exist, even if something above went wrong
        if s.page_errors or s.console_errors:
            s.notes.append(f"browser console: {len(s.page_errors)} page errors, "
                           f"{len(s.console_errors)} console errors")
            if VERBOSE:
                s.notes.extend((s.page_errors + s.console_errors)[:20])
        widget_js = [e for e in s.page_errors + s.console_errors if "widget" in e.lower()]
        for e in widget_js:
            s.problems.append(f"browser console: {e[:400]}")
    finally:
        s.close()
    print(f"\n{name}:\n  " + "\n  ".join(s.notes))
    for n in s.notes:
        if "stderr" in n or "typing nonsense" in n:
            warnings.warn(f"{name}: {n}", stacklevel=1)
    assert not s.problems, f"{name}: what a new user would hit:\n\n" + "\n\n".join(s.problems)
