"""pebslab.viz.nextgen: adaptive layouts, the reclaimed-page run, the design table.

Expected values: FACTS a.3 (adaptive groups and sizes: 32 + 32*MEMINFO +
144*GP + 256*XMM + 24*n*LBR, n = DATA_CFG[31:24] + 1, groups in that order);
the seed (MAX_PINNED_PAGES 17; Silvermont cannot take a fault in the assist);
FACTS c.2 (EPT-friendly PEBS: no pinning, violations exit and are handled);
FACTS g.1 (reclaim zaps the EPT entry of every page it passes, pinned or
not; the extra reference keeps only the frame), so under ``patch`` the
assist's first record, into buffer page 0, takes the EPT violation a
Silvermont cannot deliver.
"""

from __future__ import annotations

import itertools

import pytest

from pebslab.viz import nextgen as N


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


@pytest.mark.parametrize("m,g,x,n", list(itertools.product((0, 1), (0, 1), (0, 1), (0, 1, 8, 32))))
def test_layout_rows_follow_the_size_rule(m, g, x, n):
    cfg = m | g << 1 | x << 2 | ((8 | (n - 1) << 24) if n else 0)
    rows = N.layout_rows(cfg)
    names = [r[0] for r in rows]
    want = ["basic"] + [nm for nm, on in (("meminfo", m), ("gprs", g), ("xmm", x), ("lbr", n))
                        if on]
    assert names == want
    off = 0
    for _name, o, size in rows:
        assert o == off
        off += size
    assert off == 32 + 32 * m + 144 * g + 256 * x + 24 * n


def test_adaptive_layout_title_and_basic_fallback():
    fig = N.adaptive_layout(meminfo=True, gp=True, xmm=False, lbr=True, lbr_entries=4)
    title = fig.axes[0].get_title()
    assert "0x300000b" in title and f"record {32 + 32 + 144 + 96} bytes" in title
    assert f"holds {65536 // 304} records" in title
    fig = N.adaptive_layout(meminfo=True, gp=True, adaptive_bit=False)
    assert "record 32 bytes" in fig.axes[0].get_title()


@pytest.mark.parametrize("kw", [{}, dict(meminfo=False), dict(xmm=True, lbr=True, lbr_entries=256),
                                dict(lbr=True, lbr_entries=1, adaptive_bit=False)])
def test_adaptive_layout_settings(kw):
    assert N.adaptive_layout(**kw).axes


def test_reclaimed_buffer_page_patch_crashes_icelake_recovers():
    p = N.reclaim_run("patch")
    assert p["cpu"] == "silvermont" and p["crashed"]
    # FACTS g.1: the pinned buffer page 0 keeps its frame but loses its EPT
    # entry, so the very first record faults: nothing written, one violation.
    assert p["records"] == 0 and p["pebs_faults"] == 1
    assert p["pinned"] == 17                         # the pins (frames) are all still held
    q = N.reclaim_run("patch", remap=False)          # the remap no longer matters
    assert q["crashed"] and q["records"] == 0
    i = N.reclaim_run("icelake")
    assert i["cpu"] == "icelake" and not i["crashed"] and i["pinned"] == 0
    assert i["pebs_faults"] >= 2                     # buffer pages 0 and 1 faulted back in
    kinds = {e["kind"] for e in i["events"]}
    assert {"PEBS_FAULT", "SWAPIN", "PEBS_WRITE", "PMI_INJECT"} <= kinds
    assert all(e["time"] >= 0 for e in i["events"])


def test_reclaim_timeline_draws_both_rows():
    fig = N.reclaim_timeline(remap=False, instructions=300_000)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == ["icelake on icelake", "patch on silvermont"]


@pytest.mark.slow       # ~30 s in pure Python; runs in `make test`'s numba pass
def test_compare_designs_answers():
    rows = {r["design"]: r for r in N.compare_designs()}
    assert rows["patch"]["msrs_no_pebs"] == "yes"
    assert {rows[d]["msrs_no_pebs"] for d in ("review", "fixed", "icelake")} == {"no"}
    assert rows["patch"]["pinned_16"] == rows["review"]["pinned_16"] == 17
    assert rows["icelake"]["pinned_16"] == 0
    for key in ("reclaim", "remap", "buffer_32"):
        assert rows["patch"][key] == "crash" and rows["icelake"][key] == "yes", key
        assert rows["fixed"][key] == "yes", key
    records = {r["records"] for r in rows.values()}
    assert len(records) == 1 and records.pop() > 0   # same workload and period everywhere
    text = N.comparison_table()
    assert text.splitlines()[0].split() == ["patch", "review", "fixed", "icelake"]


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="lbr_entries must be in 1..256"):
        N.adaptive_layout(lbr_entries=0)
    with pytest.raises(TypeError, match="gp must be True or False"):
        N.adaptive_layout(gp=1)
    with pytest.raises(ValueError, match="design must be one of"):
        N.reclaim_run("v2")
    with pytest.raises(TypeError, match="designs must be a non-empty tuple"):
        N.compare_designs("patch")


def test_explorers_run_at_their_defaults():
    for name, (fn, kw) in N.EXPLORERS.items():
        assert fn(**kw).axes, name
