"""figures/ and the static-site explorers (pebslab/figures.py).

The committed figures must be exactly what ``make figures`` draws now: a
change to a pebslab function that moves a figure fails here until the
figures are redrawn. The precomputed explorers must contain one state per
combination of their controls, each drawn from the function with exactly
those arguments, and link every control to every Stack of its level.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pebslab.figures as F

ROOT = Path(__file__).resolve().parents[1]
FIG_DIR = ROOT / "figures"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    F.write_figures(out)
    return out


def test_every_registered_figure_is_committed_and_current(fresh):
    drawn = sorted(p.name for p in fresh.iterdir())
    committed = sorted(p.name for p in FIG_DIR.iterdir())
    missing = sorted(set(drawn) - set(committed))
    extra = sorted(set(committed) - set(drawn))
    assert not missing, f"figures missing from figures/ (run `make figures`): {missing}"
    assert not extra, f"files in figures/ no registry entry draws (remove them): {extra}"
    stale = [n for n in drawn if (fresh / n).read_bytes() != (FIG_DIR / n).read_bytes()]
    assert not stale, f"stale figures (run `make figures`): {stale}"


def test_drawing_twice_gives_the_same_bytes(tmp_path):
    name = "pinning_page_map"
    a = F.write_figures(tmp_path / "a", [name])
    b = F.write_figures(tmp_path / "b", [name])
    assert a == b and len(a) == 1


def test_svgs_have_no_date_and_carry_their_alt_text():
    specs = F.figure_specs()
    for svg in FIG_DIR.glob("*.svg"):
        text = svg.read_text()
        assert "<dc:date>" not in text, svg.name
        assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d", text) is None, f"{svg.name} has a timestamp"
        spec = specs[svg.stem]
        assert len(spec.alt) > 40, f"{svg.name}: alt text too short to say what it shows"
        assert f"<title>{spec.alt.split(',')[0]}" in text.replace("&#39;", "'"), svg.name


def test_every_explorer_default_view_is_registered():
    import importlib
    import pkgutil

    import pebslab.viz as viz
    specs = F.figure_specs()
    fns = {s.function for s in specs.values()}
    for m in pkgutil.iter_modules(viz.__path__):
        mod = importlib.import_module(f"pebslab.viz.{m.name}")
        for name, (fn, _) in getattr(mod, "EXPLORERS", {}).items():
            assert f"{fn.__module__}.{fn.__name__}" in fns, f"{m.name}.{name} has no figure entry"


def test_draw_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="name must be one of"):
        F.draw("no_such_figure")


def test_alt_text_names_titles_and_axes():
    from matplotlib.figure import Figure
    fig = Figure()
    ax = fig.add_subplot()
    ax.set_title("samples per instruction")
    ax.set_xlabel("IP")
    ax.set_ylabel("samples")
    fig.suptitle("skid")
    assert F.alt_text(fig) == "Figure: skid - samples per instruction (x: IP; y: samples)"
    assert F.alt_text(Figure(), "fallback") == "Figure: fallback"


# -- precomputed explorers ---------------------------------------------------------------


def _leaves(w):
    import ipywidgets as W
    if isinstance(w, W.Stack):
        out = []
        for c in w.children:
            out += _leaves(c)
        return out
    return [w]


def test_static_explorer_precomputes_every_combination():
    import ipywidgets as W
    from pebslab.viz import pinning

    box = F.static_explorer(
        pinning.page_map,
        ds_offset=W.IntSlider(value=0, min=0, max=4088, step=8),
        buf_offset=W.IntSlider(value=0, min=0, max=4088, step=8),
        buf_pages=W.IntSlider(value=16, min=1, max=32),
        design=W.Dropdown(options=["patch", "review", "fixed"], value="patch"),
        pressure=W.IntSlider(value=0, min=0, max=2000, step=10),
    )
    controls = [c for c in box.children if "pebslab-static-control" in c._dom_classes]
    stack = next(c for c in box.children if isinstance(c, W.Stack))
    note = box.children[-1].value
    # the registry's grid: ds_offset x buf_pages x design = 2 x 4 x 3 = 24 <= MAX_STATES
    assert [c.description for c in controls][:3] == ["ds_offset", "buf_pages", "design"]
    sizes = [len(c.options) for c in controls]
    n = 1
    for s in sizes:
        n *= s
    leaves = _leaves(stack)
    assert len(leaves) == n <= F.MAX_STATES
    states = [re.search(r'data-state="([^"]+)"', leaf.value).group(1) for leaf in leaves]
    assert len(set(states)) == n
    # the leaf at (ds_offset=4008, buf_pages=17, design=fixed) was drawn with those arguments
    assert any("buf_pages=17" in s and "design=&#x27;fixed&#x27;" in s and "ds_offset=4008" in s
               for s in states)
    assert "Run this notebook live" in note
    # every control is jslinked to every Stack at its level (a Link model per Stack)
    stacks = [stack]
    level_of = {id(stack): 0}
    frontier = [stack]
    while frontier:
        nxt = []
        for st in frontier:
            for ch in st.children:
                if isinstance(ch, W.Stack):
                    level_of[id(ch)] = level_of[id(st)] + 1
                    stacks.append(ch)
                    nxt.append(ch)
        frontier = nxt
    pairs = {(id(lk.source[0]), id(lk.target[0])) for lk in box.links}
    assert all(lk.source[1] == "index" and lk.target[1] == "selected_index" for lk in box.links)
    assert pairs == {(id(controls[level_of[id(st)]]), id(st)) for st in stacks}
    for leaf in leaves:
        assert 'alt="Figure: ' in leaf.value


def test_static_explorer_freezes_what_the_budget_cannot_hold():
    import ipywidgets as W

    def table(a=0, b=0, c=0, d=0):
        return f"{a} {b} {c} {d}"

    box = F.static_explorer(table, a=(0, 10), b=(0, 10), c=(0, 10), d=W.Text("x"))
    controls = [c for c in box.children if "pebslab-static-control" in c._dom_classes]
    leaves = _leaves(next(c for c in box.children if isinstance(c, W.Stack)))
    assert len(leaves) <= F.MAX_STATES
    note = box.children[-1].value
    assert "fixed on this page" in note and "d=x" in note
    assert len(controls) == 3
