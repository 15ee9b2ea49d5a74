"""Sphinx extension of pebslab's book: offline assets, explorers without a kernel, alt text.

pebslab only.

* Checks that ``book/_vendor`` holds the widget manager and MathJax (``make
  book`` fetches them from npm); the site never loads them from a CDN.
* Gives the kernel that executes the notebooks an IPython start-up file
  calling :func:`pebslab.figures.install_book_hooks`: explorers become
  precomputed (they answer on a page without a kernel) and every inline
  figure carries alt text in its output metadata.
* Makes myst-nb put that alt text on the ``<img>`` it writes, and warns (an
  error under ``-W``) about any image left without alt text.
* ``{pebslab-solutions}``: every file of ``solutions/`` under the title of
  its notebook, so a new notebook's solutions appear without editing.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

BOOK = Path(__file__).resolve().parent.parent
ROOT = BOOK.parent
VENDOR = BOOK / "_vendor"
NEEDED = ("widgets/embed.js", "mathjax/tex-chtml.js")

STARTUP = """\
# Written by book/_ext/pebslab_book.py for the kernel that executes the book's notebooks.
import pebslab.figures as _pebslab_figures
_pebslab_figures.install_book_hooks()
del _pebslab_figures
"""


def _check_vendor(app, config) -> None:
    missing = [p for p in NEEDED if not (VENDOR / p).is_file()]
    if missing:
        raise ExtensionError(
            f"book/_vendor lacks {', '.join(missing)}: build the site with `make book`, which "
            "fetches @jupyter-widgets/html-manager and mathjax from npm (never a CDN)")


def _kernel_startup(app) -> None:
    ipydir = Path(app.outdir).parent / "ipython"
    startup = ipydir / "profile_default" / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    (startup / "00-pebslab-book.py").write_text(STARTUP)
    os.environ["IPYTHONDIR"] = str(ipydir)   # the kernel inherits it


def _patch_mystnb_alt() -> None:
    from myst_nb.core.render import NbElementRenderer
    if getattr(NbElementRenderer.render_image, "_pebslab", False):
        return
    orig = NbElementRenderer.render_image

    def render_image(self, data):
        out = orig(self, data)
        alt = data.output_metadata.get(data.mime_type, {}).get("alt")
        for node in out:
            if isinstance(node, nodes.image) and alt and not node.get("alt"):
                node["alt"] = alt
        return out

    render_image._pebslab = True
    NbElementRenderer.render_image = render_image


def _check_alt(app, doctree, docname) -> None:
    for node in doctree.findall(nodes.image):
        if not (node.get("alt") or "").strip():
            logger.warning(f"image without alt text: {node.get('uri')}", location=node)


def _notebook_titles() -> dict[str, tuple[str, str]]:
    """'06' -> ('06_pinning', first heading of notebooks/06_pinning.ipynb)."""
    out = {}
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        title = nb.stem
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] == "markdown":
                m = re.search(r"^#\s+(.+)$", "".join(cell["source"]), re.M)
                if m:
                    title = m.group(1).strip()
                    break
        out[nb.stem[:2]] = (nb.stem, title)
    return out


def notebook_times() -> list[tuple[str, str, int | None]]:
    """(stem, title, minutes from its **Time** line) of every notebook, in order."""
    out = []
    titles = _notebook_titles()
    for num, (stem, title) in sorted(titles.items()):
        nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
        minutes = None
        for cell in nb["cells"]:
            m = re.search(r"\*\*Time\*\*:?\s*(\d+)\s*min", "".join(cell["source"]))
            if cell["cell_type"] == "markdown" and m:
                minutes = int(m.group(1))
                break
        out.append((stem, title, minutes))
    return out


class ScheduleDirective(SphinxDirective):
    """A table of every notebook's stated time (its **Time** line), with running totals."""

    has_content = False

    def run(self):
        rows = notebook_times()
        table = nodes.table()
        tgroup = nodes.tgroup(cols=4)
        table += tgroup
        for w in (10, 60, 15, 15):
            tgroup += nodes.colspec(colwidth=w)

        def row(*cells, head=False):
            r = nodes.row()
            for c in cells:
                e = nodes.entry()
                e += c if isinstance(c, nodes.Node) else nodes.paragraph(text=str(c))
                r += e
            return r

        thead = nodes.thead()
        thead += row("notebook", "title", "stated time", "running total")
        tgroup += thead
        body = nodes.tbody()
        total = 0
        for stem, title, minutes in rows:
            total += minutes or 0
            body += row(stem[:2], title, f"{minutes} min" if minutes else "not stated",
                        f"{total} min")
        tgroup += body
        for stem, _, _ in rows:
            self.env.note_dependency(str(ROOT / "notebooks" / f"{stem}.ipynb"))
        return [table]


class SolutionsDirective(SphinxDirective):
    """Every file in solutions/, grouped by notebook, with a link to it."""

    has_content = False

    def run(self):
        titles = _notebook_titles()
        result = []
        for path in sorted((ROOT / "solutions").glob("*.py")):
            code = path.read_text()
            num = path.name[:2]
            stem, title = titles.get(num, (None, f"notebook {num}"))
            head = nodes.paragraph()
            head += nodes.strong(text=f"solutions/{path.name}")
            if stem and f"notebooks/{stem}" in self.env.found_docs:
                from sphinx.addnodes import pending_xref
                head += nodes.Text(" - exercise of ")
                ref = pending_xref("", refdomain="std", reftype="doc",
                                   reftarget=f"/notebooks/{stem}", refexplicit=True)
                ref += nodes.inline(text=title)
                head += ref
            check = re.search(r"^#\s*check:\s*(\S+)", code, re.M)
            if check:
                head += nodes.Text(f" (checked by check.{check.group(1)})")
            self.env.note_dependency(str(path))
            block = nodes.literal_block(code, code, language="python")
            result += [head, block]
        return result


class FiguresDirective(SphinxDirective):
    """Every figure of figures/ (pebslab.figures registry) with its alt text and source."""

    has_content = False

    def run(self):
        import pebslab.figures as F
        result = []
        for name, spec in F.figure_specs().items():
            svg = BOOK / "figures" / f"{name}.svg"
            if not svg.is_file():
                continue          # a text explorer has no picture
            self.env.note_dependency(str(svg))
            args = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items())
            para = nodes.paragraph()
            para += nodes.strong(text=name)
            para += nodes.Text(" - ")
            para += nodes.literal(text=f"{spec.function}({args})")
            img = nodes.image(uri=f"figures/{name}.svg", alt=spec.alt)
            img["candidates"] = {"*": f"figures/{name}.svg"}
            result += [para, img, nodes.paragraph(text=spec.alt)]
        return result


def _drop_thebe(app, pagename, templatename, context, doctree) -> None:
    """Remove sphinx-thebe's scripts: the site has no kernel to launch, and they name a CDN.

    Jupyter Book 1 always loads sphinx_thebe, which adds its inline
    configuration twice (a JavaScript error on every page) and a script that
    would fetch thebe from a CDN on demand.
    """
    def is_thebe(js) -> bool:
        name = str(getattr(js, "filename", js) or "")
        body = str(getattr(js, "attributes", {}).get("body", "")) if hasattr(js, "attributes") else ""
        return "thebe" in name or "THEBE_JS_URL" in body

    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [js for js in context[key] if not is_thebe(js)]


def setup(app):
    app.connect("config-inited", _check_vendor)
    app.connect("builder-inited", _kernel_startup)
    app.connect("doctree-resolved", _check_alt)
    app.connect("html-page-context", _drop_thebe, priority=900)
    app.add_directive("pebslab-solutions", SolutionsDirective)
    app.add_directive("pebslab-figures", FiguresDirective)
    app.add_directive("pebslab-schedule", ScheduleDirective)
    _patch_mystnb_alt()
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
