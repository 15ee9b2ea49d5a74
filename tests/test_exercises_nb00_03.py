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


def test_ex01_count_names_the_mistake():
    def right(sel, nu, nk):
        if sel >> 32:
            return "#GP"
        if not sel >> 22 & 1:
            return 0
        return (nu if sel >> 16 & 1 else 0) + (nk if sel >> 17 & 1 else 0)

    assert check.ex01_count(right, quiet=True).ok
    res = check.ex01_count(lambda s, nu, nk: right(s & 0xFFFFFFFF, nu, nk), quiet=True)
    assert not res.ok and "reserved" in res.hint
    swapped = lambda s, nu, nk: right((s & ~0x30000) | (s >> 1 & 0x10000) | (s << 1 & 0x20000),  # noqa: E731
                                      nu, nk)
    res = check.ex01_count(swapped, quiet=True)
    assert not res.ok and "USR (bit 16)" in res.hint


def test_ex01_offsets_separates_skid_from_the_next_instruction():
    right = lambda s: list(range(min(1, s) + 1, s + 2))  # noqa: E731
    assert check.ex01_offsets(right, quiet=True).ok
    res = check.ex01_offsets(lambda s: list(range(min(1, s), s + 1)), quiet=True)
    assert not res.ok and "next instruction" in res.hint


def test_skid_title_agrees_with_the_bars():
    # the title names the range the bars of skid_histogram occupy: skid + 1 (SKID_MIN..SKID_MAX
    # is the model's ASSUMPTION in pebslab/hw/models.py)
    from pebslab.hw.models import SKID_MAX, SKID_MIN
    from pebslab.viz.pmu import skid_data, skid_title
    d = skid_data()
    lo, hi = int(d["offsets"].min()), int(d["offsets"].max())
    assert (lo, hi) == (SKID_MIN + 1, SKID_MAX + 1)
    assert f"{lo}..{hi}" in skid_title(d["skid_min"], d["skid_max"], 1, 1)


def test_ex02_until_pmi_and_hexdump_name_the_mistake():
    right = lambda i, t, s: (t - i + s - 1) // s  # noqa: E731
    assert check.ex02_until_pmi(right, quiet=True).ok
    res = check.ex02_until_pmi(lambda i, t, s: right(i, t, s) - 1, quiet=True)
    assert not res.ok and "one short" in res.hint

    def parse(text, order="little", swap=False):
        data = bytearray()
        for line in text.splitlines():
            data += bytes(int(h, 16) for h in line.split(":", 1)[1].split("|")[0].split())
        f = lambda o: int.from_bytes(data[o:o + 8], order)  # noqa: E731
        ip, eip = (0xB0, 0x08) if swap else (0x08, 0xB0)
        return {"flags": f(0), "ip": f(ip), "status": f(0x90), "eventing_ip": f(eip)}

    assert check.ex02_hexdump(parse, quiet=True).ok
    res = check.ex02_hexdump(lambda t: parse(t, "big"), quiet=True)
    assert not res.ok and "big-endian" in res.hint
    res = check.ex02_hexdump(lambda t: parse(t, swap=True), quiet=True)
    assert not res.ok and "trap-like" in res.hint


def test_ex03_checkers_name_the_mistake():
    # kvm_perf_overflow of the patch (seed document): bit 62 instead of the counter's bit
    right = lambda ovf: sum({(1 << 62) if p else (1 << i) for i, p in ovf})  # noqa: E731
    assert check.ex03_status(right, quiet=True).ok
    also = lambda ovf: right(ovf) | sum(1 << i for i, _p in ovf)  # noqa: E731
    res = check.ex03_status(lambda o: right(o) | also(o), quiet=True)
    assert not res.ok and "INSTEAD" in res.hint

    from pebslab.kvm.pmu import ARCH_EVENTS

    def host_event(sel, strict_raw=True):
        what = 0xFFFF | 1 << 18 | 1 << 23 | 0xFF << 24
        if not sel & (1 << 18 | 1 << 23 | 0xFF << 24):
            for ev, um, hw in ARCH_EVENTS:
                if (ev, um) == (sel & 0xFF, sel >> 8 & 0xFF):
                    return "HARDWARE", hw
        return "RAW", sel & what if strict_raw else sel

    assert check.ex03_host_event(host_event, quiet=True).ok
    res = check.ex03_host_event(lambda s: host_event(s, strict_raw=False), quiet=True)
    assert not res.ok and "RAW config keeps only" in res.hint

    def ignores_cmask(sel):
        for ev, um, hw in ARCH_EVENTS:
            if (ev, um) == (sel & 0xFF, sel >> 8 & 0xFF):
                return "HARDWARE", hw
        return host_event(sel)

    res = check.ex03_host_event(ignores_cmask, quiet=True)
    assert not res.ok and "CMASK" in res.hint
