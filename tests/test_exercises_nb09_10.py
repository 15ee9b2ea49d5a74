"""The checkers of notebooks 09 and 10 name what is wrong in a wrong answer.

(The reference solutions pass their checkers in tests/test_solutions.py.)
Wrong answers here are the mistakes the notebooks anticipate: the ascending
MSR order under the patch, a compatibility check that forgets counters, the
patch's own pins as the pages dirty logging leaves writable.
"""

import pytest

from pebslab.exercises import check


def _pinned_gfns(vcpu):
    return [int(vcpu.host_mm.gfn[h]) for h in vcpu.pmu.pinned_pages]


def test_ex10_restore_order_names_both_dependencies():
    res = check.ex10_restore_order(lambda msrs: sorted(msrs), quiet=True)
    assert res.passed == 0 and len(res.failed) == 3
    why = res.failed[0][2]
    assert "PEBS_ENABLE (entry 12) is written before DS_AREA (entry 13)" in why
    assert "created at entry 10 (GLOBAL_CTRL)" in why and "'counting'" in why


def test_ex10_restore_order_ds_first_fixes_only_the_pins():
    res = check.ex10_restore_order(
        lambda msrs: [0x600] + [m for m in sorted(msrs) if m != 0x600], quiet=True)
    assert res.passed == 0
    assert all("not pinned" not in why and "not precise" in why for _, _, why in res.failed)


def test_ex10_restore_order_rejects_a_list_that_drops_an_msr():
    res = check.ex10_restore_order(lambda msrs: [m for m in msrs if m != 0xC2], quiet=True)
    assert "leaves out IA32_PERFCTR1" in res.failed[0][2]


def test_ex10_compatible_names_the_missing_code():
    res = check.ex10_compatible(
        lambda g, d: {"format"} if g["pebs_format"] != d["pebs_format"] else set(), quiet=True)
    assert not res.ok and "you miss gp_counters" in res.hint and "fewer GP counters" in res.hint


def test_ex10_compatible_flags_a_pebs_counter_when_pebs_is_off():
    def sloppy(g, d):
        return {"pebs_counter"} if not d["pebs_counter_mask"] & 1 else set()
    res = check.ex10_compatible(sloppy, quiet=True)
    assert any("PEBS_ENABLE=0x0" in desc for desc, _, _ in res.failed)


def test_ex10_keep_writable_the_patch_pins_are_not_enough():
    res = check.ex10_keep_writable(_pinned_gfns, quiet=True)
    assert res.passed == 1
    whys = " | ".join(why for _, _, why in res.failed)
    assert "the guest crashed: the PEBS assist wrote gfn 0x7 (the buffer)" in whys
    assert "you leave out gfn" in whys                    # the straddling DS case, cut at 17


def test_ex10_keep_writable_everything_is_too_much():
    res = check.ex10_keep_writable(lambda v: list(range(256)), quiet=True)
    assert res.passed == 0 and "a page PEBS never writes" in res.failed[0][2]


@pytest.mark.parametrize("name", ["ex10_restore_order", "ex10_compatible", "ex10_keep_writable",
                                  "ex09_first_warning", "ex09_handler_exits",
                                  "ex09_max_exit_cost"])
def test_a_crashing_candidate_is_a_wrong_answer_not_an_error(name):
    def boom(*args):
        raise KeyError("oops")
    res = getattr(check, name)(boom, quiet=True)
    assert not res.ok and "KeyError" in str(res.failed[0][2])


# ----------------------------------------------------------------------------
# notebook 09
# ----------------------------------------------------------------------------

def _first_warning_off_by(k):
    from pebslab.host import perf as HP

    def fn(ns):
        st = HP.ThrottleState.initial()
        for i in range(5000):
            st = HP.perf_sample_event_took(st, ns)
            if st.warnings:
                return i + k
        return None
    return fn


def test_ex09_first_warning_names_early_or_late():
    res = check.ex09_first_warning(_first_warning_off_by(1), quiet=True)
    assert not res.ok and "late by 1 samples" in res.hint


def test_ex09_first_warning_greater_or_equal_is_wrong_at_the_boundary():
    res = check.ex09_first_warning(lambda ns: 0 if ns >= 2500 else None, quiet=True)
    assert any("2,500 ns" in desc for desc, _, _ in res.failed)


def test_ex09_handler_exits_names_the_first_wrong_exit():
    res = check.ex09_handler_exits(lambda era: [("wr", 0x38F), ("wr", 0x390)], quiet=True)
    assert not res.ok and "exit 2 should be rd" in res.hint


def test_ex09_max_exit_cost_too_high_and_too_low():
    high = check.ex09_max_exit_cost(lambda c, r, linux: 800 if c == r == 0 else None,
                                    quiet=True)
    assert any("the guest warns" in str(got) for _, _, got in high.failed)
    low = check.ex09_max_exit_cost(lambda c, r, linux: 10 if c == r == 0 else None, quiet=True)
    assert any("you can go higher" in str(got) for _, _, got in low.failed)
