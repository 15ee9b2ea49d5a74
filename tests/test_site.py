"""The rendered site (make book) in Chromium: every page loads from 127.0.0.1 and nowhere else.

For every page of ``build/book/_build/html``: it loads over http://127.0.0.1,
shows no traceback, every image loads and has alt text, every widget
renders, every internal link and resource answers, and the browser makes
**zero** requests to any other host (counted; CDNs are how a site usually
breaks offline). Every precomputed explorer answers a moved control: the
visible state changes to the one drawn for the new value. A screenshot of
each page goes to ``build/site-shots/`` (a CI artifact; not committed), with
``summary.json`` (pages, requests, requests to other hosts).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("PEBSLAB_SITE_DIR", ROOT / "build" / "book" / "_build" / "html"))
SHOTS = Path(os.environ.get("PEBSLAB_SITE_SHOTS", ROOT / "build" / "site-shots"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = [pytest.mark.browser, pytest.mark.site]

if os.environ.get("NUMBA_DISABLE_JIT") == "1":
    pytest.skip("the site test runs once, in the numba pass", allow_module_level=True)


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"site test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright import sync_api
except ImportError:
    _unavailable("playwright is not installed (pip install -e '.[test]')")

import browser_support as bs  # noqa: E402

if _reason := bs.chromium_available():
    _unavailable(_reason)
if not (SITE / "intro.html").is_file():
    _unavailable(f"no built site at {SITE}: run `make book` first")

#: every page a reader can reach: the site's own HTML, not the vendored libraries'
PAGES = sorted(str(p.relative_to(SITE)) for p in SITE.rglob("*.html")
               if p.relative_to(SITE).parts[0] not in ("_static", "_sources", "widgets", "mathjax",
                                                       "_images"))
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Error displaying widget|"
                       r"\b\w+Error: .*(line \d+|not defined)")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_Quiet, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


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


@pytest.fixture(scope="module")
def summary():
    data = {"pages": {}, "links": set()}
    yield data
    SHOTS.mkdir(parents=True, exist_ok=True)
    out = {k: v for k, v in data.items() if k != "links"}
    out["requests_total"] = sum(p["requests"] for p in data["pages"].values())
    out["requests_other_hosts"] = sum(len(p["other_hosts"]) for p in data["pages"].values())
    (SHOTS / "summary.json").write_text(json.dumps(out, indent=2, sort_keys=True))


# JS: the state of every precomputed explorer on the page
EXPLORERS_JS = """
() => [...document.querySelectorAll('.pebslab-static-explorer')].map((ex, i) => {
  const visible = [...ex.querySelectorAll('.pebslab-state')].filter(e => e.offsetParent !== null);
  return {i, controls: ex.querySelectorAll('.pebslab-static-control').length,
          visible: visible.map(e => e.dataset.state)};
})
"""


def _visible_states(page, i):
    return page.evaluate(EXPLORERS_JS)[i]["visible"]


def _move_first_control(page, i) -> str:
    """Move explorer i's first control to another value; return what was done."""
    ex = page.locator(".pebslab-static-explorer").nth(i)
    ctl = ex.locator(".pebslab-static-control").first
    ctl.scroll_into_view_if_needed()
    buttons = ctl.locator("button")
    if buttons.count():
        for k in range(buttons.count()):
            if "mod-active" not in (buttons.nth(k).get_attribute("class") or ""):
                buttons.nth(k).click()
                return f"clicked {buttons.nth(k).inner_text()!r}"
    select = ctl.locator("select")
    if select.count():
        options = select.locator("option")
        cur = select.input_value()
        for k in range(options.count()):
            v = options.nth(k).get_attribute("value")
            if v != cur:
                select.select_option(value=v)
                return f"selected {options.nth(k).inner_text()!r}"
    handle = ctl.locator(".noUi-handle").first
    handle.focus()
    at_end = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    key = "Home" if at_end else "ArrowRight"
    handle.press(key)
    return f"pressed {key} on the slider"


@pytest.mark.parametrize("path", PAGES)
def test_page(path, server, browser, summary):
    base_host = urllib.parse.urlsplit(server).netloc
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    requests, others, failed = [], [], []

    def route(r):
        u = urllib.parse.urlsplit(r.request.url)
        if u.scheme in ("data", "blob", "about") or u.netloc == base_host:
            r.continue_()
        else:
            others.append(r.request.url)
            r.abort()

    ctx.route("**/*", route)
    page = ctx.new_page()
    page.on("request", lambda req: requests.append(req.url))
    page.on("websocket", lambda ws: others.append(ws.url))
    page.on("response", lambda resp: resp.status >= 400 and failed.append(f"{resp.status} {resp.url}"))
    page.on("requestfailed", lambda req: urllib.parse.urlsplit(req.url).netloc == base_host
            and failed.append(f"failed {req.url}"))
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(f"{server}/{path}", wait_until="load")
        page.wait_for_load_state("networkidle")
        n_views = page.locator('script[type="application/vnd.jupyter.widget-view+json"]').count()
        if n_views:
            # the html-manager renders each view into a div.widget-subarea placed just before
            # its <script type=".../widget-view+json">
            page.wait_for_function(
                """() => [...document.querySelectorAll(
                      'script[type="application/vnd.jupyter.widget-view+json"]')].every(s => {
                    const d = s.previousElementSibling;
                    return d && d.classList.contains('widget-subarea') && d.children.length > 0
                        && d.getBoundingClientRect().height > 0; })""",
                timeout=60_000)
        text = page.inner_text("body")
        assert not TRACEBACK.search(text), f"{path}: traceback or error text on the page: " \
            f"{TRACEBACK.search(text).group(0)!r}"
        imgs = page.evaluate("""() => [...document.images].map(im => ({
            src: im.currentSrc.slice(0, 120), alt: (im.getAttribute('alt') || '').trim(),
            ok: im.complete && im.naturalWidth > 0, shown: im.offsetParent !== null}))""")
        for im in imgs:
            assert im["alt"], f"{path}: an image without alt text: {im['src']}"
            assert not re.fullmatch(r"[\w./-]+\.(png|svg|jpg)", im["alt"]), \
                f"{path}: alt text is a file name: {im['alt']}"
            if im["shown"]:
                assert im["ok"], f"{path}: image does not load: {im['src']}"
        links = page.evaluate("""() => [...document.querySelectorAll('a[href]')].map(a => a.href)""")
        for href in links:
            u = urllib.parse.urlsplit(href)
            if u.netloc == base_host:
                summary["links"].add(urllib.parse.urlunsplit(u._replace(fragment="", query="")))

        explorers = page.evaluate(EXPLORERS_JS)
        for ex in explorers:
            assert len(ex["visible"]) == 1, \
                f"{path}: explorer {ex['i']} shows {len(ex['visible'])} states, not one"
            if ex["controls"]:
                before = ex["visible"][0]
                how = _move_first_control(page, ex["i"])
                page.wait_for_timeout(150)
                after = _visible_states(page, ex["i"])
                assert len(after) == 1 and after[0] != before, \
                    f"{path}: explorer {ex['i']} did not answer ({how}): still {after}"
        SHOTS.mkdir(parents=True, exist_ok=True)
        first = page.locator(".pebslab-static-explorer").first
        if first.count():
            first.scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / (path.replace("/", "__").removesuffix(".html") + ".png")))
        assert not failed, f"{path}: broken resources: {failed[:5]}"
        assert not errors, f"{path}: JavaScript errors: {errors[:3]}"
    finally:
        summary["pages"][path] = {"requests": len(requests), "other_hosts": sorted(set(others)),
                                  "explorers": len(page.evaluate(EXPLORERS_JS)) if not page.is_closed() else 0}
        ctx.close()
    assert others == [], f"{path}: {len(others)} request(s) to other hosts: {sorted(set(others))[:5]}"


def test_internal_links_resolve(server, summary):
    """Every same-site link seen on any page answers 200 (runs after the pages)."""
    if not summary["pages"]:
        pytest.skip("no page was visited")
    broken = []
    for url in sorted(summary["links"]):
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                if r.status != 200:
                    broken.append(f"{r.status} {url}")
        except urllib.error.HTTPError as e:
            broken.append(f"{e.code} {url}")
    assert not broken, f"broken internal links: {broken[:10]}"


def test_zero_requests_to_other_hosts(summary):
    """The count over the whole site (also in summary.json): zero."""
    if not summary["pages"]:
        pytest.skip("no page was visited")
    n = sum(len(p["other_hosts"]) for p in summary["pages"].values())
    total = sum(p["requests"] for p in summary["pages"].values())
    print(f"site: {len(summary['pages'])} pages, {total} requests, {n} to other hosts")
    assert total > 0 and n == 0


def test_cheatsheet_prints_on_one_page(server, browser):
    """The cheat sheet's print stylesheet fits it on one A4 page (the PDF is kept as an artifact)."""
    ctx = browser.new_context()
    page = ctx.new_page()
    others = []
    base_host = urllib.parse.urlsplit(server).netloc
    page.on("request", lambda r: urllib.parse.urlsplit(r.url).netloc not in (base_host, "")
            and others.append(r.url))
    try:
        page.goto(f"{server}/cheatsheet.html", wait_until="networkidle")
        page.emulate_media(media="print")
        SHOTS.mkdir(parents=True, exist_ok=True)
        pdf = page.pdf(path=str(SHOTS / "cheatsheet.pdf"), format="A4", print_background=True,
                       prefer_css_page_size=True)
    finally:
        ctx.close()
    pages = len(re.findall(rb"/Type\s*/Page(?!s)", pdf))
    assert pages == 1, f"the cheat sheet prints on {pages} pages, not one"
    assert not [u for u in others if not u.startswith("data:")]
