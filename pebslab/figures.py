"""Every static figure of the course and the site, and explorers that answer without a kernel.

pebslab only. Two registries live here:

* :data:`FIGURES` - every picture in ``figures/``: name -> the pebslab
  function and arguments that draw it, with its alt text. ``make figures``
  (``python -m pebslab.figures``) redraws them all as deterministic SVG
  (DejaVu Sans from matplotlib, text as paths, fixed ``svg.hashsalt``, no
  date); ``tests/test_figures.py`` fails when a committed figure is stale or
  missing. Each explorer's default view (``EXPLORERS`` in every
  ``pebslab.viz`` module) is registered automatically; a new figure is one
  :class:`FigureSpec` in :data:`EXTRA_FIGURES`.
* :data:`EXPLORER_GRIDS` - for the rendered site: which values of an
  explorer's controls are precomputed when the book is built. On a page
  without a kernel, :func:`static_interact` replaces ``ipywidgets.interact``:
  it draws every combination of a coarse grid at build time and shows the
  states in nested ``ipywidgets.Stack`` containers whose ``selected_index``
  is ``jslink``-ed to each control's ``index``. The widget manager of the
  page (``@jupyter-widgets/html-manager``) switches states in the browser;
  there is no hand-written JavaScript and no dead control: a control that
  is not precomputed is not shown, and the note under the explorer names it
  and its fixed value. A new notebook's explorer works without an entry
  (a generic coarse grid); an entry picks the values worth seeing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import importlib
import io
import json
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, Callable

from pebslab._check import check_choice

__all__ = ["FigureSpec", "FIGURES", "EXTRA_FIGURES", "EXPLORER_GRIDS", "MAX_STATES",
           "figure_specs", "draw", "svg_bytes", "write_figures", "alt_text",
           "static_interact", "install_book_hooks", "main"]

ROOT = Path(__file__).resolve().parent.parent
FIGURES_DIR = ROOT / "figures"

# ---------------------------------------------------------------------------
# Registry of static figures
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One file in ``figures/``: ``name.svg`` = ``module.function(**kwargs)``."""

    name: str
    function: str          # "pebslab.viz.stack.stack_diagram"
    kwargs: dict
    alt: str               # what the picture shows, for readers who cannot see it

    def resolve(self) -> Callable:
        mod, _, fn = self.function.rpartition(".")
        return getattr(importlib.import_module(mod), fn)


#: Figures beyond the explorers' default views (the course's fixed pictures).
EXTRA_FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("record_life", "pebslab.viz.story.record_life", {},
               "Sequence diagram of one PEBS record's life in a Silvermont guest under the "
               "patch, drawn from a real run's trace: the guest writes DS_AREA and "
               "PEBS_ENABLE (VM exits), KVM pins 17 pages, VM entry loads DS_AREA, the "
               "counter overflows, the assist writes the record through GVA, GPA and HPA, "
               "the PMI exits to the host, KVM sets bit 62 and injects a PMI, and the guest "
               "reads GLOBAL_STATUS and drains the buffer."),
    FigureSpec("stack_pmi", "pebslab.viz.stack.stack_diagram", {"flow": "pmi"},
               "The four layers pebslab models (hardware, host kernel, KVM, guest) with the "
               "path of a counter overflow highlighted: the PMI goes to the host, KVM sets the "
               "guest's GLOBAL_STATUS bit and injects a PMI into the guest."),
    FigureSpec("stack_pebs", "pebslab.viz.stack.stack_diagram", {"flow": "pebs"},
               "The four layers pebslab models with the path of a PEBS record highlighted: "
               "the CPU writes the record through the guest page tables and EPT straight "
               "into pinned guest memory."),
    FigureSpec("stack_msr", "pebslab.viz.stack.stack_diagram", {"flow": "msr"},
               "The four layers pebslab models with the path of a guest WRMSR highlighted: "
               "VM exit to KVM, a host perf event, VM entry back to the guest."),
    *(FigureSpec(f"record_layout_fmt{f}", "pebslab.viz.pebs.record_layout",
                 {"fmt": f, "data_cfg": 0},
                 f"Byte layout of a PEBS record of format {f}: each field's offset and size, "
                 "grouped by what it holds.") for f in range(5)),
    FigureSpec("page_map_ds_straddles", "pebslab.viz.pinning.page_map",
               {"ds_offset": 4008, "buf_offset": 0, "buf_pages": 16, "design": "patch",
                "pressure": 0},
               "Guest pages the PEBS assist may touch when the DS area straddles a page "
               "boundary (ds_offset 4008), with which pages the patch pinned."),
    FigureSpec("page_map_buffer_too_long", "pebslab.viz.pinning.page_map",
               {"ds_offset": 0, "buf_offset": 0, "buf_pages": 32, "design": "patch",
                "pressure": 0},
               "Guest pages of a 32-page PEBS buffer: the patch pins at most 17 pages in all, "
               "so the pages past its limit stay unpinned."),
)

_PRETTY = {"fmt": "format"}


def _explorer_specs() -> list[FigureSpec]:
    import pebslab.viz as viz
    out = []
    for m in sorted(pkgutil.iter_modules(viz.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"pebslab.viz.{m.name}")
        for name, (fn, kwargs) in getattr(mod, "EXPLORERS", {}).items():
            doc = (fn.__doc__ or name).strip().splitlines()[0].rstrip(".")
            args = ", ".join(f"{_PRETTY.get(k, k)} {v!r}" for k, v in kwargs.items())
            out.append(FigureSpec(f"{m.name}_{name}", f"{fn.__module__}.{fn.__name__}",
                                  dict(kwargs), f"{doc} (the explorer's default view: {args})."))
    return out


def figure_specs() -> dict[str, FigureSpec]:
    """Every registered figure by name: each explorer's default view, then EXTRA_FIGURES.

    An explorer whose default result is not a matplotlib Figure (a text
    table) is left out: it has no picture to keep.
    """
    specs: dict[str, FigureSpec] = {}
    for s in [*_explorer_specs(), *EXTRA_FIGURES]:
        if s.name in specs:
            raise ValueError(f"figure name {s.name!r} registered twice")
        specs[s.name] = s
    return specs


#: name -> FigureSpec of every file in figures/ (filled on first use).
FIGURES: dict[str, FigureSpec] = {}


def _figures() -> dict[str, FigureSpec]:
    if not FIGURES:
        FIGURES.update(figure_specs())
    return FIGURES


_RC = {
    "font.family": "DejaVu Sans",        # ships inside matplotlib: the same glyphs everywhere
    "svg.fonttype": "path",
    "svg.hashsalt": "pebslab",
    "path.simplify": True,
    "figure.dpi": 100,
    "savefig.dpi": 100,
}
_SVG_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def draw(name: str):
    """Draw registered figure ``name``; return the Figure (or the object the function returns)."""
    specs = _figures()
    check_choice("name", name, list(specs))
    import matplotlib
    with matplotlib.rc_context(_RC):
        return specs[name].resolve()(**specs[name].kwargs)


def svg_bytes(fig, alt: str = "") -> bytes:
    """The SVG of ``fig``, byte-identical for identical figures (no date, fixed ids).

    ``alt`` becomes the SVG's ``<title>``/``<desc>`` so a screen reader says it.
    """
    import matplotlib
    with matplotlib.rc_context(_RC):
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={**_SVG_METADATA,
                                                 "Title": alt or None,
                                                 "Description": alt or None})
    return buf.getvalue()


def write_figures(outdir: str | os.PathLike = FIGURES_DIR, names=None) -> dict[str, str]:
    """(Re)draw figures into ``outdir`` (``NAME.svg`` + ``INDEX.md``); return name -> sha256."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    specs = _figures()
    names = list(specs) if names is None else list(names)
    digests = {}
    rows = []
    for name in names:
        spec = specs[name]
        fig = draw(name)
        if not isinstance(fig, Figure):
            continue
        data = svg_bytes(fig, spec.alt)
        plt.close(fig)
        (out / f"{name}.svg").write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
        args = ", ".join(f"{k}={v!r}" for k, v in spec.kwargs.items())
        rows.append(f"| `{name}.svg` | `{spec.function}({args})` | {spec.alt} |")
    if names == list(specs):
        (out / "INDEX.md").write_text(
            "# figures/\n\nGenerated by `make figures` (`python -m pebslab.figures`) from the "
            "registry in `pebslab/figures.py`; do not edit by hand. "
            "`tests/test_figures.py` fails when one is stale or missing.\n\n"
            "| file | drawn by | alt text |\n|---|---|---|\n" + "\n".join(rows) + "\n")
    return digests


# ---------------------------------------------------------------------------
# Alt text for any figure (site images, precomputed explorer states)
# ---------------------------------------------------------------------------


def alt_text(fig, fallback: str = "") -> str:
    """Say what a Figure shows from its titles and axis labels (for ``<img alt>``)."""
    parts = []
    sup = getattr(fig, "_suptitle", None)
    if sup is not None and sup.get_text().strip():
        parts.append(sup.get_text().strip())
    for ax in fig.axes:
        title = " ".join(t.get_text().strip() for t in (ax.title, ax._left_title, ax._right_title)
                         if t.get_text().strip())
        labels = [lab for lab in (ax.get_xlabel(), ax.get_ylabel()) if lab.strip()]
        piece = title
        if labels:
            piece += (" " if piece else "") + "(" + "; ".join(
                f"{a}: {lab}" for a, lab in zip(("x", "y"), (ax.get_xlabel(), ax.get_ylabel()))
                if lab.strip()) + ")"
        if piece:
            parts.append(piece)
    text = " - ".join(" ".join(p.split()) for p in parts)
    if not text:
        text = fallback or "A figure drawn by pebslab"
    return "Figure: " + text


# ---------------------------------------------------------------------------
# Explorers on the static site
# ---------------------------------------------------------------------------

#: At most this many states are drawn per explorer (each is one PNG on the page).
MAX_STATES = 36

#: explorer function name -> {control: [values to precompute]}. Controls not
#: listed get a generic coarse grid while the budget lasts, then stay fixed
#: at their default value (the note under the explorer says so).
EXPLORER_GRIDS: dict[str, dict[str, list]] = {
    "stack_diagram": {"flow": ["all", "msr", "pmi", "pebs"]},
    "eventsel_explorer": {"event_select": [0x3C, 0xC0, 0xC4], "usr": [True, False],
                          "os": [True, False], "en": [True, False]},
    "skid_histogram": {"skid_max": [0, 8, 32], "event": None, "workload": None},
    "record_layout": {"fmt": [0, 1, 2, 3, 4], "data_cfg": [0x0, 0xF | 7 << 24]},
    "assist_timeline": {"threshold_records": [1, 4, 16], "period": [5007, 10007, 20007],
                        "cpu": None},
    "precision_compare": {"event": None, "cpu": None},
    "pmi_costs": {"design": None, "period": [1009, 10007, 100003]},
    "exit_timeline": {"design": None, "pmi": [0, 1, 2]},
    "msr_write_outcome": {"msr": ["PEBS_ENABLE", "DS_AREA", "PERF_CAPABILITIES", "PEBS_DATA_CFG"],
                          "design": None, "hide_pebs_cpuid": [False, True]},
    "page_walk": {"which": None, "design": None},
    "address_spaces": {"ds_offset": [0, 4008], "buf_offset": [0, 2048], "design": None},
    "page_map": {"ds_offset": [0, 4008], "buf_pages": [4, 16, 17, 32], "design": None},
}


@dataclasses.dataclass
class _Control:
    name: str
    widget: Any            # the widget interact would have made (or a `fixed`)
    values: list           # precomputed values ([default] when fixed)
    labels: list[str]
    default_index: int


def _labels_values(w) -> tuple[list[str], list] | None:
    if hasattr(w, "_options_labels") and hasattr(w, "_options_values"):
        return list(w._options_labels), list(w._options_values)
    return None


def _fmt_value(w, v) -> str:
    fmt = getattr(w, "readout_format", None)
    if fmt and isinstance(v, int) and not isinstance(v, bool):
        try:
            return format(v, fmt.lstrip("{:").rstrip("}") if fmt.startswith("{") else fmt)
        except ValueError:
            pass
    return str(v)


def _controls(fn_name: str, widgets_by_name: dict) -> list[_Control]:
    """Choose the precomputed values of each control within MAX_STATES."""
    from ipywidgets import fixed
    grid = EXPLORER_GRIDS.get(fn_name, {})
    order = [n for n in grid if n in widgets_by_name] + [n for n in widgets_by_name
                                                         if n not in grid]
    out: list[_Control] = []
    states = 1
    for name in order:
        w = widgets_by_name[name]
        if isinstance(w, fixed):
            out.append(_Control(name, w, [w.value], [str(w.value)], 0))
            continue
        default = w.value
        lv = _labels_values(w)
        if name in grid and grid[name] is not None:
            values = list(grid[name])
        elif lv is not None:
            values = lv[1] if (name in grid or len(lv[1]) <= 4) else \
                [default] + [v for v in lv[1] if v != default][:2]
        elif isinstance(default, bool):
            values = [False, True]
        elif isinstance(default, (int, float)) and hasattr(w, "min") and hasattr(w, "max"):
            values = sorted({w.min, default, w.max})
        else:
            values = [default]
        if default not in values:
            values = sorted(set(values) | {default}) if all(
                isinstance(v, (int, float)) for v in values) else [default] + values
        if states * len(values) > MAX_STATES and len(values) > 1:
            # shrink to the default and its neighbours, or freeze
            if states * 2 <= MAX_STATES and name not in grid:
                values = [default, next(v for v in values if v != default)]
            else:
                values = [default]
        states *= len(values)
        if lv is not None:
            lab = dict(zip(map(repr, lv[1]), lv[0]))
            labels = [lab.get(repr(v), str(v)) for v in values]
        else:
            labels = [_fmt_value(w, v) for v in values]
        out.append(_Control(name, w, values, labels, values.index(default)))
    return out


def _underlying(f):
    """The Figure-returning function behind :func:`pebslab.viz.explore`'s wrapper."""
    if getattr(f, "__qualname__", "").endswith("explore.<locals>.show") and f.__closure__:
        import inspect
        inner = inspect.getclosurevars(f).nonlocals.get("fn")
        if inner is not None:
            return inner
    return f


def _render_state(fn, kwargs: dict, dpi: int = 80) -> str:
    """HTML of one explorer state: images with alt text, tables or text."""
    import matplotlib.pyplot as plt
    from IPython.utils.capture import capture_output
    from matplotlib.figure import Figure

    before = set(plt.get_fignums())
    with capture_output() as cap:
        try:
            result = fn(**kwargs)
        except (ValueError, TypeError) as exc:   # a combination the function rejects
            result = None
            print(f"{type(exc).__name__}: {exc}")
    figs = []
    if isinstance(result, Figure):
        figs.append(result)
    figs += [plt.figure(n) for n in sorted(set(plt.get_fignums()) - before)
             if plt.figure(n) is not result]
    parts = []
    if cap.stdout.strip():
        parts.append(f"<pre>{html.escape(cap.stdout)}</pre>")
    for out in cap.outputs:
        data = out.data
        if "image/png" in data:
            parts.append(f'<img src="data:image/png;base64,{data["image/png"]}" '
                         f'alt="A figure drawn by pebslab">')
        elif "text/html" in data:
            parts.append(data["text/html"])
        elif "text/plain" in data:
            parts.append(f"<pre>{html.escape(data['text/plain'])}</pre>")
    for fig in figs:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        alt = html.escape(alt_text(fig), quote=True)
        b64 = base64.b64encode(buf.getvalue()).decode()
        parts.append(f'<img src="data:image/png;base64,{b64}" alt="{alt}" '
                     f'style="max-width:100%">')
        plt.close(fig)
    if result is not None and not isinstance(result, Figure):
        if hasattr(result, "_repr_html_"):
            parts.append(result._repr_html_())
        else:
            parts.append(f"<pre>{html.escape(repr(result))}</pre>")
    return "\n".join(parts) or "<p>(no output)</p>"


def static_explorer(f, **kwargs):
    """The explorer ``interact(f, **kwargs)`` would build, precomputed for a page without a kernel.

    Returns an ``ipywidgets.VBox``: the grid's controls, nested ``Stack``s of
    the states (each control's ``index`` jslinked to the ``selected_index``
    of every Stack at its level) and a note naming what is fixed.
    """
    import ipywidgets as W
    from ipywidgets.widgets.interaction import interactive

    fn = _underlying(f)
    fn_name = getattr(fn, "__name__", "explorer")
    made = {name: interactive.widget_from_abbrev(abbrev, W.interaction.empty)
            for name, abbrev in kwargs.items()}
    for name, w in made.items():
        if w is None:
            raise ValueError(f"cannot make a control for {name}={kwargs[name]!r}")
        if hasattr(w, "description") and not w.description:
            w.description = name
    controls = _controls(fn_name, made)
    moving = [c for c in controls if len(c.values) > 1]
    fixed_ = [c for c in controls if len(c.values) == 1]
    base = {c.name: c.values[0] for c in fixed_}

    widgets_ = []
    for c in moving:
        opts = list(zip(c.labels, range(len(c.values))))
        desc = getattr(c.widget, "description", c.name) or c.name
        style = {"description_width": "initial"}
        if isinstance(c.values[0], (int, float)) and not isinstance(c.values[0], bool) \
                and not _labels_values(c.widget):
            w = W.SelectionSlider(options=opts, value=c.default_index, description=desc,
                                  style=style, continuous_update=True)
        elif len(c.values) <= 3:
            w = W.ToggleButtons(options=opts, value=c.default_index, description=desc,
                                style=style)
        else:
            w = W.Dropdown(options=opts, value=c.default_index, description=desc, style=style)
        w.add_class("pebslab-static-control")
        widgets_.append(w)

    stacks_at: list[list] = [[] for _ in moving]

    def tree(level: int, chosen: tuple):
        if level == len(moving):
            kw = dict(base)
            kw.update({c.name: c.values[i] for c, i in zip(moving, chosen)})
            state = html.escape("|".join(f"{k}={kw[k]!r}" for k in sorted(kw)), quote=True)
            return W.HTML(f'<div class="pebslab-state" data-state="{state}">'
                          f'{_render_state(fn, kw)}</div>')
        st = W.Stack([tree(level + 1, chosen + (i,)) for i in range(len(moving[level].values))],
                     selected_index=moving[level].default_index)
        stacks_at[level].append(st)
        return st

    view = tree(0, ())
    links = [W.jslink((w, "index"), (st, "selected_index"))
             for w, stacks in zip(widgets_, stacks_at) for st in stacks]
    n = 1
    for c in moving:
        n *= len(c.values)
    shown = [c for c in fixed_ if not isinstance(c.widget, W.fixed)]
    note = (f"<div class='pebslab-static-note'><b>Precomputed explorer</b>: the "
            f"{'controls above move' if moving else 'view above is'} through {n} "
            f"state{'s' if n != 1 else ''} drawn when this page was built. "
            "<b>Run this notebook live</b> (<code>make lab</code>, or Binder) to move every "
            "control to any value")
    if shown:
        note += "; fixed on this page: " + ", ".join(
            f"<code>{html.escape(c.name)}={html.escape(_fmt_value(c.widget, c.values[0]))}</code>"
            for c in shown)
    note += ".</div>"
    box = W.VBox([*widgets_, view, W.HTML(note)])
    box.add_class("pebslab-static-explorer")
    box.links = links          # kept alive with the box; the page's widget state holds them
    return box


def static_interact(_f=None, **kwargs):
    """Drop-in for ``ipywidgets.interact`` on the book's kernel: display a precomputed explorer."""
    from IPython.display import display
    if _f is None:
        return lambda f: static_interact(f, **kwargs)
    display(static_explorer(_f, **kwargs))
    return _f


def _fig_metadata_with_alt(orig):
    def fetch(fig):
        md = orig(fig) or {}
        md = dict(md)
        md["image/png"] = {**md.get("image/png", {}), "alt": alt_text(fig)}
        return md
    return fetch


def install_book_hooks() -> None:
    """On the book's kernel: precomputed explorers, and alt text on every inline figure.

    Called by the IPython start-up file the book's Sphinx extension writes
    (``book/_ext/pebslab_book.py``); the live notebooks never call it.
    """
    import ipywidgets
    import ipywidgets.widgets as ww
    import ipywidgets.widgets.interaction as wi
    import matplotlib_inline.backend_inline as bi
    ipywidgets.interact = ww.interact = wi.interact = static_interact
    bi._fetch_figure_metadata = _fig_metadata_with_alt(bi._fetch_figure_metadata)
    from IPython import get_ipython
    ip = get_ipython()
    if ip is not None:
        # `%matplotlib inline` registers the PNG formatter of Figure when a notebook runs it:
        # wrap whatever is registered before each cell so a displayed Figure carries alt text.
        ip.events.register("pre_run_cell", lambda *a: _wrap_png_formatter(ip))


def _wrap_png_formatter(ip) -> None:
    from matplotlib.figure import Figure
    fmt = ip.display_formatter.formatters["image/png"]
    try:
        cur = fmt.lookup_by_type(Figure)
    except KeyError:
        return
    if getattr(cur, "_pebslab_alt", False):
        return

    def png_with_alt(fig):
        data = cur(fig)
        return (data, {"alt": alt_text(fig)}) if data is not None else None

    png_with_alt._pebslab_alt = True
    fmt.for_type(Figure, png_with_alt)


# ---------------------------------------------------------------------------
# make figures
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    """``python -m pebslab.figures [--check] [OUTDIR]``: redraw (or check) figures/."""
    import argparse
    import tempfile
    ap = argparse.ArgumentParser(prog="python -m pebslab.figures", description=main.__doc__)
    ap.add_argument("outdir", nargs="?", default=str(FIGURES_DIR))
    ap.add_argument("--check", action="store_true",
                    help="draw into a temporary folder and compare with OUTDIR")
    a = ap.parse_args(argv)
    if not a.check:
        d = write_figures(a.outdir)
        print(json.dumps({"figures": len(d), "outdir": a.outdir}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        write_figures(tmp)
        bad = [p.name for p in sorted(Path(tmp).iterdir())
               if not (Path(a.outdir) / p.name).exists()
               or (Path(a.outdir) / p.name).read_bytes() != p.read_bytes()]
    print(json.dumps({"stale_or_missing": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
