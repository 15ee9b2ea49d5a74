"""The checkers of notebooks 04-06 name what is wrong in a typical wrong answer."""

import importlib.util
from pathlib import Path

from pebslab.exercises import check

SOL = Path(__file__).resolve().parent.parent / "solutions"


def _load(name, fn):
    spec = importlib.util.spec_from_file_location(name, SOL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, fn)


# ----------------------------------------------------------------------------- 06

def test_repin_rule_expected_values_follow_the_patch_hunk():
    # The seed's MSR_IA32_PEBS_ENABLE case: release+pin only if data && data != pebs_enable;
    # MSR_IA32_DS_AREA only stores; kvm_pmu_reset is not touched by the patch.
    from pebslab.exercises.nb06 import _repin_cases
    got = {desc: exp for desc, _, exp in _repin_cases()}
    assert got["DS_AREA=A, PEBS_ENABLE=1, DS_AREA=B, PEBS_ENABLE=1"] == "A"
    assert got["DS_AREA=A, PEBS_ENABLE=1, DS_AREA=B, PEBS_ENABLE=0, PEBS_ENABLE=1"] == "B"
    assert got["DS_AREA=A, PEBS_ENABLE=1, RESET"] == "A"
    assert got["DS_AREA=A, PEBS_ENABLE=1, PEBS_ENABLE=0"] is None


def test_repin_that_follows_ds_area_is_told_a_ds_write_only_stores():
    def follows_ds(steps):
        ds, pe = None, 0
        for what, value in steps:
            if what == "DS_AREA":
                ds = value or None
            elif what == "PEBS_ENABLE":
                pe = value
        return ds if pe else None
    res = check.ex06_repin(follows_ds, quiet=True)
    assert not res.ok and "only stores the value" in res.hint


def test_repin_that_unpins_on_reset_is_told_reset_keeps_them():
    right = _load("06_repin", "pinned_area")

    def unpins_on_reset(steps):
        if steps and steps[-1][0] == "RESET":
            return None
        return right(steps)
    res = check.ex06_repin(unpins_on_reset, quiet=True)
    assert not res.ok and "kvm_pmu_reset" in res.hint


def test_wrong_page_layout_within_the_cap_is_refused_with_the_reason():
    res = check.ex06_wrong_page(lambda: dict(ds_offset=0, buf_offset=2048, buf_pages=16),
                                quiet=True)
    assert not res.ok and "MAX_PINNED_PAGES" in res.hint


def test_wrong_page_layout_aligned_is_told_the_loop_reaches_every_page():
    res = check.ex06_wrong_page(lambda: dict(ds_offset=0, buf_offset=0, buf_pages=8),
                                quiet=True)
    assert not res.ok and "reaches every page" in res.hint


def test_wrong_page_layout_bad_shape_is_named():
    res = check.ex06_wrong_page(lambda: (0, 2048, 8), quiet=True)
    assert not res.ok and "dict" in res.hint


# ----------------------------------------------------------------------------- 04

def test_slm_check_that_keeps_the_load_latency_bit_is_told_silvermont_has_none():
    res = check.ex04_slm_pebs_enable(lambda v: (v & ~((1 << 32) | 1)) == 0, quiet=True)
    assert not res.ok and "load-latency" in res.hint
    # exactly the values with bit 32 and nothing outside {0, 32}: 0x100000000, 0x100000001
    assert {d for d, _, _ in res.failed} == {"value=0x100000000", "value=0x100000001"}


def test_driver_view_expected_agrees_with_the_model_guest_driver():
    # what the simulated guest kernel's probe() concludes from the Silvermont patch value
    import pebslab as pl
    from pebslab.exercises.nb04 import driver_view_expected
    host = pl.Host(cpu="silvermont", frames=256, seed=0)
    guest = pl.GuestKernel(host.create_vm(design="patch", memory_pages=32))
    info = guest.perf.probe()
    exp = driver_view_expected(info.perf_capabilities)
    assert exp["pebs"] == info.has_pebs
    assert exp["record_size"] == info.pebs_record_size == 192   # FACTS a.2: hsw record
    assert exp["max_period"] == info.max_period == 2**31 - 1    # no FW_WRITES
    assert exp["pp_ip"] == "eventing_ip"                          # FACTS a.6: fmt >= 2


def test_driver_view_that_ignores_the_trap_bit_is_told_about_the_fixup():
    right = _load("04_driver_view", "driver_view")

    def no_trap(cap):
        out = right(cap)
        if out["pp_ip"] == "lbr_fixup":
            out["pp_ip"] = "as_recorded"
        return out
    res = check.ex04_driver_view(no_trap, quiet=True)
    assert not res.ok and "pp_ip" in res.hint and "trap-like" in res.hint


# ----------------------------------------------------------------------------- 05

def test_walk_that_forgets_the_offset_is_told_the_byte_needs_it():
    right = _load("05_walk", "walk")

    def page_only(cr3, gva, read_u64):
        out = right(cr3, gva, read_u64)
        if len(out) == 5:
            out[-1] &= ~0xFFF
        return out
    res = check.ex05_walk(page_only, quiet=True)
    assert not res.ok and "12-bit offset" in res.hint


def test_walk_that_never_stops_is_told_about_the_present_bit():
    right = _load("05_walk", "walk")

    def no_stop(cr3, gva, read_u64):
        out = right(cr3, gva, read_u64)
        return out + [0] * (5 - len(out))
    res = check.ex05_walk(no_stop, quiet=True)
    assert not res.ok and "not present" in res.hint


def test_walk_expected_values_follow_4_level_paging():
    # SDM 4-level paging: the PML4 entry of a GVA is at CR3 + 8 * bits 47:39
    from pebslab.exercises.nb05 import _walk_cases
    for desc, (cr3, gva, _read), exp in _walk_cases():
        assert exp[0] == (cr3 & ~0xFFF) + 8 * (gva >> 39 & 0x1FF), desc
