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
