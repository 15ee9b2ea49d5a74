"""Tests for the figures of notebook 02: pebslab.viz.pebs.

Expected values come from FACTS.md section a: the legacy record sizes
(a.2: 144, 176, 192, 200 bytes; real_ip, the eventing IP, at 0xB0 from
format 2), the adaptive groups (a.3: basic 32, meminfo 32, gprs 144, xmm
256, 24 bytes per LBR entry; basic.ip is the eventing IP), the interrupt
threshold (a.4: a PMI when pebs_index reaches pebs_interrupt_threshold),
and precise_ip (a.6: :p reports the trap-like IP of the next instruction,
:pp the eventing IP). Skid bounds are the models' documented ASSUMPTION
(pebslab.hw.models SKID_MIN..SKID_MAX instructions).
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pebslab import workloads as WL  # noqa: E402
from pebslab.hw.models import SKID_MAX, SKID_MIN  # noqa: E402
from pebslab.viz import pebs as V  # noqa: E402

LBR8 = 0x8 | (7 << 24)          # LBR group with 8 entries


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --- record_layout -------------------------------------------------------------

@pytest.mark.parametrize("fmt, size", [(0, 144), (1, 176), (2, 192), (3, 200), (4, 32)])
def test_cells_tile_the_record_exactly(fmt, size):
    cells = V.layout_cells(fmt)
    pos = 0
    for off, length, _name, _group, _role in cells:
        assert off == pos, f"gap or overlap at {off:#x}"
        pos += length
    assert pos == size


@pytest.mark.parametrize("cfg, size", [(0x1, 64), (0x2, 176), (0x4, 288), (0x3, 208),
                                       (LBR8, 32 + 8 * 24), (0xF | (31 << 24), 464 + 32 * 24)])
def test_adaptive_cells_tile_the_record(cfg, size):
    cells = V.layout_cells(4, cfg)
    assert sum(c[1] for c in cells) == size
    assert [c[0] for c in cells] == sorted(c[0] for c in cells)


@pytest.mark.parametrize("fmt, where", [(2, 0xB0), (3, 0xB0), (4, 0x08)])
def test_the_eventing_ip_is_marked_where_facts_put_it(fmt, where):
    ev = [c for c in V.layout_cells(fmt, 0x2 if fmt == 4 else 0) if c[4] == "eventing"]
    assert len(ev) == 1 and ev[0][0] == where and ev[0][1] == 8


@pytest.mark.parametrize("fmt", [0, 1])
def test_formats_0_and_1_have_no_eventing_ip(fmt):
    roles = {c[2]: c[4] for c in V.layout_cells(fmt)}
    assert "eventing" not in roles.values()
    assert roles["ip"] == "next"


def test_gprs_ip_is_the_next_instruction_in_adaptive_records():
    roles = {c[2]: (c[0], c[4]) for c in V.layout_cells(4, 0x2)}
    assert roles["gprs.ip"] == (32 + 8, "next")


def test_long_lbr_groups_are_merged_into_one_block():
    cells = V.layout_cells(4, 0x8 | (255 << 24))         # 256 entries
    names = [c[2] for c in cells]
    assert "lbr[0].from" in names and "lbr[1].info" in names
    block = [c for c in cells if c[2].startswith("lbr[2..")]
    assert len(block) == 1 and block[0][1] == 254 * 24


@pytest.mark.parametrize("fmt, cfg", [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (4, 0xF),
                                      (4, 0xFF00000F), (2, 0xF)])
def test_record_layout_draws_every_format(fmt, cfg):
    fig = V.record_layout(fmt, cfg)
    assert isinstance(fig, Figure)
    title = fig.axes[0].get_title()
    assert f"format {fmt}" in title
    if fmt != 4 and cfg:
        assert "ignored" in title


@pytest.mark.parametrize("kw, exc, word", [({"fmt": 5}, ValueError, "fmt"),
                                           ({"fmt": "2"}, TypeError, "fmt"),
                                           ({"data_cfg": 0x10}, ValueError, "data_cfg"),
                                           ({"data_cfg": -1}, ValueError, "data_cfg")])
def test_record_layout_rejects_bad_arguments(kw, exc, word):
    with pytest.raises(exc, match=word):
        V.record_layout(**kw)


# --- assist_timeline -----------------------------------------------------------------

def test_assist_series_defaults_follow_the_threshold():
    s = V.assist_series()
    writes = len(s["write_times"])
    # INST_RETIRED.ANY_P with period 10007 over 200,000 instructions: 19 overflows
    assert writes == 200_000 // 10007
    # a PMI each time pebs_index reaches base + 4 records (FACTS a.4)
    assert len(s["pmi_times"]) == writes // 4
    assert s["samples"] == 4 * len(s["pmi_times"])
    assert s["pending"] == writes % 4
    assert s["records"].max() == 4 and s["record_size"] == 192
    # every PMI comes at the moment of the 4th write
    assert set(s["pmi_times"]) <= set(s["write_times"][3::4])


@pytest.mark.parametrize("cpu, size", [("silvermont", 192), ("haswell", 192),
                                       ("skylake", 200), ("icelake", 32)])
def test_assist_series_record_size_per_model(cpu, size):
    s = V.assist_series(period=5003, threshold_records=2, instructions=30_000, cpu=cpu)
    assert s["record_size"] == size
    assert len(s["pmi_times"]) == len(s["write_times"]) // 2


def test_assist_timeline_defaults_and_small_extremes():
    assert isinstance(V.assist_timeline(), Figure)
    fig = V.assist_timeline(period=1_000_000, threshold_records=64, instructions=1_000)
    assert "0 records written" in fig.axes[0].get_title()
    assert isinstance(V.assist_timeline(period=1_000, threshold_records=1,
                                        instructions=20_000, cpu="icelake"), Figure)


@pytest.mark.slow
def test_assist_timeline_largest_run():
    s = V.assist_series(period=1_000, threshold_records=1, instructions=1_000_000)
    assert len(s["write_times"]) == 1000 and len(s["pmi_times"]) == 1000


@pytest.mark.parametrize("kw, word", [({"period": 999}, "period"),
                                      ({"threshold_records": 0}, "threshold_records"),
                                      ({"instructions": 2_000_000}, "instructions"),
                                      ({"cpu": "core2"}, "cpu")])
def test_assist_series_rejects_bad_arguments(kw, word):
    with pytest.raises(ValueError, match=word):
        V.assist_series(**kw)


# --- precision_compare ---------------------------------------------------------------

def test_precision_llc_miss_three_ways():
    d = V.precision_data()
    w = WL.hot_loop()
    hot = int(np.flatnonzero(w.llc_miss)[0])
    assert d["hot_ip"] == int(w.ip[hot]) and d["next_offset"] == int(w.length[hot])
    pp, p, none = d["modes"][":pp"], d["modes"][":p"], d["modes"][""]
    assert pp["n"] == p["n"] == none["n"] > 50
    assert pp["exact"] == 1.0                       # the eventing IP
    assert p["next"] == 1.0                         # trap-like: the next instruction
    # interrupt-based: after the hot load, 1 + skid instructions later (never on it)
    idx = {int(ip): i for i, ip in enumerate(w.ip)}
    later = {idx[d["hot_ip"] + int(o)] - hot for o in none["offsets"]}
    assert later <= set(range(1 + SKID_MIN, 2 + SKID_MAX))
    assert none["exact"] == 0.0


@pytest.mark.parametrize("event", V.PRECISION_EVENTS)
def test_precision_compare_every_event(event):
    fig = V.precision_compare(event=event, instructions=40_000)
    assert isinstance(fig, Figure) and len(fig.axes) == 3


def test_precision_compare_no_samples_is_drawn_not_raised():
    fig = V.precision_compare(event="llc_miss", period=1_000_000, instructions=10_000)
    assert isinstance(fig, Figure)


def test_precision_refuses_a_flood_of_samples():
    with pytest.raises(ValueError, match="period must be at least"):
        V.precision_data(event="cycles", period=1)


@pytest.mark.parametrize("kw, exc, word", [({"event": "branches"}, ValueError, "event"),
                                           ({"cpu": 3}, TypeError, "cpu"),
                                           ({"period": -1}, ValueError, "period"),
                                           ({"instructions": 10}, ValueError, "instructions")])
def test_precision_rejects_bad_arguments(kw, exc, word):
    with pytest.raises(exc, match=word):
        V.precision_data(**kw)


# --- the explorer table ---------------------------------------------------------------

def test_explorers_run_at_their_defaults():
    assert set(V.EXPLORERS) == {"record_layout", "assist_timeline", "precision_compare"}
    for name, (fn, kwargs) in V.EXPLORERS.items():
        assert isinstance(fn(**kwargs), Figure), name
        plt.close("all")
