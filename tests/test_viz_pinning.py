"""The page-map explorer of notebook 06 (pebslab.viz.pinning).

Expected page counts follow the patch text (seed): the DS area is the
patch's 96-byte struct debug_store, the buffer is [base, absolute_maximum),
pinning stops at MAX_PINNED_PAGES = 17; and FACTS a.2: a format-2 record
(Silvermont) is 192 bytes, so a 16-page buffer holds 341 records.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pebslab.viz import pinning as P  # noqa: E402

DEFAULTS = P.EXPLORERS["page_map"][1]


def teardown_function():
    plt.close("all")


def test_defaults_draw_and_patch_pins_all_data_pages_but_no_page_table():
    fig = P.page_map(**DEFAULTS)
    assert isinstance(fig, Figure) and fig.axes
    pm = P.page_map_data(**DEFAULTS)
    assert len(pm.of("DS area")) == 1 and len(pm.of("PEBS buffer")) == 16
    assert [r.label for r in pm.of("page tables")] == ["PML4", "PDPT", "PD", "PT"]
    assert all(r.state == P.PINNED and r.refcount == 2 for r in pm.data_rows)
    assert all(r.state == P.UNPINNED and r.refcount == 1 for r in pm.of("page tables"))
    # 341 records of 192 bytes end inside the 16th page
    assert pm.absolute_maximum - pm.buffer_base == 341 * 192


@pytest.mark.parametrize("kw", [
    dict(ds_offset=0, buf_offset=0, buf_pages=1, design="patch", pressure=0),
    dict(ds_offset=4088, buf_offset=4088, buf_pages=32, design="patch", pressure=2000),
    dict(ds_offset=4088, buf_offset=4088, buf_pages=32, design="review", pressure=2000),
    dict(ds_offset=4088, buf_offset=4088, buf_pages=32, design="fixed", pressure=2000),
    dict(ds_offset=0, buf_offset=0, buf_pages=1, design="fixed", pressure=2000),
    dict(ds_offset=4000, buf_offset=8, buf_pages=17, design="fixed", pressure=1),
])
def test_extreme_settings_draw(kw):
    assert isinstance(P.page_map(**kw), Figure)
    pm = P.page_map_data(**kw)
    assert pm.summary().count("\n") >= 2
    # a pinned frame is never reclaimed
    assert not any(r.state == P.RECLAIMED and r.refcount > 1 for r in pm.rows)


def test_unaligned_buffer_last_page_is_outside_the_patch_loop():
    pm = P.page_map_data(buf_offset=2048)
    buf = pm.of("PEBS buffer")
    assert len(buf) == 17
    assert [r.in_patch_plan for r in buf] == [True] * 16 + [False]
    assert buf[-1].state == P.UNPINNED
    assert buf[-1].gva == (pm.absolute_maximum - 1) & ~0xFFF


def test_straddling_ds_and_32_pages_patch_pins_17_fixed_refuses():
    kw = dict(ds_offset=4064, buf_offset=2048, buf_pages=32, pressure=2000)
    pm = P.page_map_data(design="patch", **kw)
    assert len(pm.of("DS area")) == 2 and len(pm.of("PEBS buffer")) == 33
    assert sum(r.state == P.PINNED for r in pm.rows) == 17
    # under full pressure every unpinned page is gone
    assert all(r.state == P.RECLAIMED for r in pm.missing)
    assert len(pm.missing) == 35 - 17 + 4
    pf = P.page_map_data(design="fixed", **kw)
    assert not pf.pebs_on and "#GP" in pf.refused
    assert all(r.state == P.IDLE for r in pf.rows)


def test_fixed_pins_data_and_page_tables_and_survives_full_pressure():
    pm = P.page_map_data(buf_offset=2048, design="fixed", pressure=2000)
    assert pm.missing == [] and pm.reclaimed_total > 100
    assert all(r.state == P.PINNED for r in pm.rows)
    assert len(pm.of("page tables")) == 4


def test_review_pins_like_patch():
    a = P.page_map_data(ds_offset=4064, buf_offset=1000, buf_pages=20, design="patch",
                        pressure=500)
    b = P.page_map_data(ds_offset=4064, buf_offset=1000, buf_pages=20, design="review",
                        pressure=500)
    assert [(r.region, r.label, r.state) for r in a.rows] == \
        [(r.region, r.label, r.state) for r in b.rows]


def test_same_arguments_same_result():
    kw = dict(ds_offset=64, buf_offset=2048, buf_pages=16, design="patch", pressure=100)
    assert P.page_map_data(**kw) == P.page_map_data(**kw)


@pytest.mark.parametrize("kw, name", [
    (dict(ds_offset=4), "ds_offset"), (dict(ds_offset=4096), "ds_offset"),
    (dict(buf_offset=-8), "buf_offset"), (dict(buf_pages=0), "buf_pages"),
    (dict(buf_pages=33), "buf_pages"), (dict(pressure=2001), "pressure"),
    (dict(design="icelake"), "design"), (dict(buf_pages=True), "buf_pages"),
])
def test_bad_arguments_name_the_argument(kw, name):
    with pytest.raises((TypeError, ValueError), match=name):
        P.page_map(**kw)
