"""The opening picture of the course: one PEBS record's life in a VM, from a real trace."""

import matplotlib

matplotlib.use("Agg")

import pytest

from pebslab.viz import story

# The chain the 2014 patch builds (seed: commit message and hunks), in causal order.
PATCH_CHAIN = ["MSR_WRITE", "MSR_WRITE", "PIN", "AUTOLOAD", "OVERFLOW", "PEBS_WRITE",
               "PMI", "PMI", "PMI_INJECT", "MSR_READ", "DRAIN"]


def test_patch_on_silvermont_shows_every_step_in_causal_order():
    steps = story.record_life_steps()
    assert [s.kind for s in steps] == PATCH_CHAIN
    times = [s.time for s in steps]
    assert times == sorted(times)
    # the patch pins the DS page plus a 64 KiB buffer: 17 pages (MAX_PINNED_PAGES, "64K+1")
    pin = next(s for s in steps if s.kind == "PIN")
    assert "17 pages" in pin.label
    assert steps[0].label.startswith("WRMSR DS_AREA") and steps[1].label.startswith(
        "WRMSR PEBS_ENABLE")
    assert all(s.src in story.LANES and s.dst in story.LANES for s in steps)


def test_icelake_design_pins_nothing_but_delivers_the_record():
    kinds = [s.kind for s in story.record_life_steps(design="icelake", cpu="icelake")]
    assert "PIN" not in kinds
    assert kinds[-3:] == ["PMI_INJECT", "MSR_READ", "DRAIN"]


def test_same_seed_same_steps():
    assert story.record_life_steps(seed=3) == story.record_life_steps(seed=3)


def test_figure_has_a_lane_per_actor():
    fig = story.record_life()
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert set(story.LANES) <= texts
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("kw, exc", [({"design": "v2"}, ValueError), ({"cpu": "p4"}, ValueError),
                                     ({"seed": -1}, ValueError), ({"seed": 1.5}, TypeError)])
def test_bad_arguments_are_named(kw, exc):
    with pytest.raises(exc, match=next(iter(kw))):
        story.record_life_steps(**kw)
