"""pebslab/trace.py: one structured log; the columns and filters notebooks rely on."""

from __future__ import annotations

import numpy as np
import pytest

from pebslab.trace import KINDS, TRACE_DTYPE, Trace


def test_rows_keep_every_column_and_mask_to_64_bits():
    t = Trace(capacity=2)
    t.add("PIN", 5, vcpu=1, gva=-1, gpa=0x1000, hpa=0x2000, frame=2, info="get_page")
    row = t.rows()[0]
    assert row["kind"] == "PIN" and row["time"] == 5 and row["vcpu"] == 1
    assert row["gva"] == (1 << 64) - 1 and row["gpa"] == 0x1000 and row["frame"] == 2
    assert row["info"] == "get_page"
    assert set(TRACE_DTYPE.names) <= set(row)


def test_the_log_grows_past_its_capacity_in_order():
    t = Trace(capacity=2)
    for i in range(5):
        t.add("NOTE", i, info=str(i))
    assert len(t) == 5
    assert [r["time"] for r in t.rows()] == [0, 1, 2, 3, 4]
    assert t.info_of("NOTE") == ["0", "1", "2", "3", "4"]


def test_filters_and_counts():
    t = Trace()
    t.add("PIN", 1)
    t.add("UNPIN", 2)
    t.add("PIN", 3)
    assert list(t.of("PIN")["time"]) == [1, 3]
    assert t.counts() == {"PIN": 2, "UNPIN": 1}
    assert len(t.rows("UNPIN")) == 1 and len(t.rows(limit=2)) == 2


def test_unknown_kinds_are_refused_with_the_list():
    t = Trace()
    with pytest.raises(ValueError, match="kind must be one of VMENTRY"):
        t.add("PINNED")
    with pytest.raises(ValueError, match="got 'X'"):
        t.of("X")


def test_disabled_trace_records_nothing():
    t = Trace()
    t.enabled = False
    t.add("PIN", 1)
    assert len(t) == 0


def test_digest_changes_with_any_column_or_info():
    def one(**kw):
        t = Trace()
        t.add("PIN", 1, **kw)
        return t.digest()
    assert one() == one()
    assert len({one(), one(gva=1), one(info="x"), one(frame=3)}) == 4


def test_format_shows_time_kind_msr_value_and_info():
    t = Trace()
    t.add("MSR_WRITE", 42, msr=0x3F1, value=1, info="MSR_IA32_PEBS_ENABLE")
    line = t.format()
    assert line.split() == ["42", "MSR_WRITE", "msr=0x3f1", "value=0x1", "MSR_IA32_PEBS_ENABLE"]
    assert KINDS.index("MSR_WRITE") == int(t.array["kind"][0])
    assert t.array.dtype == TRACE_DTYPE and isinstance(t.array, np.ndarray)
