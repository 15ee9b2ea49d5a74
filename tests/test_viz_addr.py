"""pebslab.viz.addr: the page-walk and address-space explorers of notebook 05.

Expected behaviour comes from the x86-64 paging rules (four 9-bit indices,
SDM Vol. 3A ch. 4.5), the patch text (it pins the DS area and buffer pages,
"the host has no way to track" the guest's page tables) and
docs/ARCHITECTURE.md (reclaim clears EPT entries only).
"""

from __future__ import annotations

import matplotlib
import pytest
from matplotlib.figure import Figure

from pebslab.viz import addr

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def test_explorers_run_at_their_defaults():
    for name, (fn, kw) in addr.EXPLORERS.items():
        assert isinstance(fn(**kw), Figure), name


def test_walk_of_the_ds_area_has_four_levels_and_reaches_the_page():
    v = addr.walk_view()
    levels = [r["level"] for r in v["rows"]]
    assert levels == ["PML4", "PDPT", "PD", "PT", "page"] and v["ok"]
    gva = v["gva"]
    assert [r["index"] for r in v["rows"][:4]] == [(gva >> s) & 0x1FF for s in (39, 30, 21, 12)]
    page = v["rows"][-1]
    assert page["gpa"] & 0xFFF == gva & 0xFFF and page["hpa"] & 0xFFF == gva & 0xFFF


def test_unmapped_stops_at_the_pt_and_user_is_lower_half():
    v = addr.walk_view("unmapped")
    assert not v["ok"] and v["rows"][-1]["level"] == "PT"
    assert "not present" in v["rows"][-1]["fault"]
    u = addr.walk_view("user")
    assert u["ok"] and u["gva"] < 1 << 47 and "US" in u["rows"][3]["flags"]


def test_reclaim_breaks_the_cpu_walk_under_patch_but_guest_entry_says_present():
    v = addr.walk_view("ds", reclaim=addr.MEMORY_PAGES)
    assert not v["ok"]
    bad = next(r for r in v["rows"] if "fault" in r)
    assert bad["level"] == "PML4" and bad["fault"].startswith("EPT violation")
    # the guest's own entry, now in host swap, is still present
    assert bad["swapped_entry"] & 1


def test_reclaim_fixed_design_keeps_tables_resident():
    # FACTS g.1: reclaim zaps the EPT entries of pinned pages too; the pins keep the frames
    # (none is swapped out) and `fixed` maps them again before the next VM entry, which
    # these views (taken right after reclaim, no entry in between) do not show.
    # (Was: the walk succeeds and the tables stay mapped, the behaviour item 8 corrects.)
    assert not addr.walk_view("ds", design="fixed", reclaim=addr.MEMORY_PAGES)["ok"]
    d = addr.address_map(design="fixed", reclaim=addr.MEMORY_PAGES)
    assert all(not t["swapped"] and t["hfn"] < 0 and t["hfn_before"] >= 0 for t in d["tables"])
    assert not d["ds_walk_ok"]


def test_address_map_patch_pins_ds_and_buffer_not_tables():
    d = addr.address_map()
    assert [p["label"] for p in d["pages"]] == ["DS", "buf 0", "buf 1", "buf 2", "buf 3"]
    assert all(p["pinned"] for p in d["pages"])
    assert len(d["pinned"]) == 5
    assert [t["label"] for t in d["tables"]] == ["PML4 table", "PDPT table", "PD table",
                                               "PT table"]
    assert not any(t["pinned"] for t in d["tables"])
    d = addr.address_map(reclaim=addr.MEMORY_PAGES)
    # pinned: the frames stay (not swapped), their EPT entries do not (FACTS g.1;
    # was: "reclaim skipped them", the behaviour item 8 corrects)
    assert all(p["hfn"] < 0 and not p["swapped"] for p in d["pages"])
    assert all(t["swapped"] and t["hfn"] < 0 for t in d["tables"])
    assert not d["ds_walk_ok"]


def test_icelake_pins_nothing():
    d = addr.address_map(cpu="icelake", design="icelake", reclaim=addr.MEMORY_PAGES)
    assert d["pinned"] == [] and all(p["swapped"] for p in d["pages"])


@pytest.mark.parametrize("kw", [
    {"ds_offset": 4088, "buf_offset": 4088, "buf_pages": 16, "reclaim": addr.MEMORY_PAGES},
    {"ds_offset": 0, "buf_offset": 0, "buf_pages": 1, "reclaim": 0},
    {"design": "review"}, {"design": "fixed", "reclaim": 7}])
def test_address_spaces_extremes(kw):
    assert isinstance(addr.address_spaces(**kw), Figure)


@pytest.mark.parametrize("which", addr.WHICH)
@pytest.mark.parametrize("offset", [0, 4 * 4096 - 1])
@pytest.mark.parametrize("reclaim", [0, addr.MEMORY_PAGES])
def test_page_walk_extremes(which, offset, reclaim):
    assert isinstance(addr.page_walk(which, offset, reclaim=reclaim), Figure)


@pytest.mark.parametrize("fn, kw, word", [
    (addr.page_walk, {"which": "cr3"}, "which"),
    (addr.page_walk, {"offset": 1 << 14}, "offset"),
    (addr.page_walk, {"design": "v2"}, "design"),
    (addr.page_walk, {"cpu": "haswell"}, "exposes no PEBS"),
    (addr.address_spaces, {"buf_pages": 0}, "buf_pages"),
    (addr.address_spaces, {"ds_offset": 4}, "multiples of 8"),
    (addr.address_spaces, {"reclaim": -1}, "reclaim"),
    (addr.address_spaces, {"design": "icelake"}, "exposes no PEBS")])
def test_bad_arguments(fn, kw, word):
    with pytest.raises(ValueError, match=word):
        fn(**kw)


def test_walk_failure_is_recoverable_only_with_ept_friendly_pebs():
    # FACTS c.2: with EPT-friendly PEBS (Ice Lake server on) an EPT violation of the
    # assist is an ordinary VM exit; without it (Silvermont) the model's assumption is fatal.
    ice = addr.address_map(cpu="icelake", design="icelake", reclaim=addr.MEMORY_PAGES)
    assert not ice["ds_walk_ok"] and ice["ds_walk_recoverable"]
    assert "recovered" in ice["ds_walk"]
    slm = addr.address_map(design="patch", reclaim=addr.MEMORY_PAGES)
    assert not slm["ds_walk_ok"] and not slm["ds_walk_recoverable"]
    assert "fatal" in slm["ds_walk"] and "assumption" in slm["ds_walk"]


def test_icelake_setup_really_recovers_when_run():
    import pebslab as pl
    host, vm, guest, st, _ = addr.setup(cpu="icelake", design="icelake", period=101)
    host.reclaim(addr.MEMORY_PAGES)
    res = vm.run(pl.workloads.hot_loop(), instructions=100_000)
    assert not res.crashed and len(vm.trace.rows("PEBS_WRITE")) > 0


def test_figures_and_cells_share_one_setup():
    # notebook 05 prints GPAs from addr.setup(); the figures must draw the same ones
    host, vm, guest, st, _ = addr.setup()
    d = addr.address_map()
    assert d["pages"][0]["gfn"] == guest.mm.translate(st.ds) >> 12
    assert d["pages"][0]["hfn"] == host.mm.hfn_of(vm.id, d["pages"][0]["gfn"])


def test_fixed_verdict_says_pinned_pages_are_mapped_again_before_entry():
    # FACTS g.1: the pins keep the frames; `fixed` re-establishes their EPT entries
    # before the next VM entry (reload_pinned_ept), so the hole is never seen by the assist
    d = addr.address_map(design="fixed", reclaim=addr.MEMORY_PAGES)
    assert not d["ds_walk_ok"] and d["ds_walk_recoverable"]
    assert "reload_pinned_ept" in d["ds_walk"]
