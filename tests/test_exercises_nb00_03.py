"""The checkers of notebooks 00-03 name what is wrong in a learner's answer.

Expected values inside the checkers come from the model's own runs (the
kvm_pmu_msr of review VMs, traces, pinned pages); these tests check that a
right answer passes and that typical wrong answers fail with a hint that
names the mistake.
"""

from __future__ import annotations

from pebslab.exercises import check


def _first(rows, kind, start=0):
    return next((r for r in rows[start:] if r["kind"] == kind), None)


def test_ex00_delivery_right_and_wrong():
    def right(rows):
        k = next((i for i, r in enumerate(rows) if r["kind"] == "PEBS_WRITE"), None)
        if k is None:
            return None
        d = _first(rows, "DRAIN", k)
        return None if d is None else d["time"] - rows[k]["time"]

    assert check.ex00_delivery(right, quiet=True).ok

    def at_injection(rows):
        w, i = _first(rows, "PEBS_WRITE"), _first(rows, "PMI_INJECT")
        return None if w is None or i is None else i["time"] - w["time"]

    res = check.ex00_delivery(at_injection, quiet=True)
    assert not res.ok and "PMI_INJECT" in res.hint

    def first_drain_anywhere(rows):
        w, d = _first(rows, "PEBS_WRITE"), _first(rows, "DRAIN")
        return None if w is None or d is None else d["time"] - w["time"]

    res = check.ex00_delivery(first_drain_anywhere, quiet=True)
    assert not res.ok and "first DRAIN of the whole trace" in res.hint


def test_ex00_gate_names_the_missing_bit():
    # the review's rule: host capability and DS, DTES64, PDCM in the guest CPUID
    assert check.ex00_gate(lambda h, f: h and {"DS", "DTES64", "PDCM"} <= set(f), quiet=True).ok
    res = check.ex00_gate(lambda h, f: h, quiet=True)            # the patch as posted
    assert not res.ok and "patch as posted" in res.hint
    res = check.ex00_gate(lambda h, f: h and "DS" in f, quiet=True)
    assert not res.ok and "DTES64" in res.hint and "PDCM" in res.hint
    res = check.ex00_gate(lambda h, f: {"DS", "DTES64", "PDCM"} <= set(f), quiet=True)
    assert not res.ok and "perf_pebs_virtualization" in res.hint


def test_ex00_pins_expected_values_follow_the_designs():
    # the patch pins the 64 KiB buffer and the DS page: 17 frames (the cover text's "64K+1")
    res = check.ex00_pins(lambda d, c: 17 if (d, c) == ("patch", "silvermont") else -1,
                          quiet=True)
    assert res.passed == 1
