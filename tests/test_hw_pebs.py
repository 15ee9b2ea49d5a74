"""Tests for pebslab.hw.pebs: DS area and PEBS record layouts.

Expected numbers are written out from FACTS.md section a (a.1 DS area,
a.2 legacy records, a.3 adaptive records), not read back from the code.
"""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pebslab.hw import pebs

# ---------------------------------------------------------------------------
# expected layouts, from FACTS.md
# ---------------------------------------------------------------------------

# a.2: pebs_record_core, format 0
CORE_OFFSETS = {
    "flags": 0x00, "ip": 0x08, "ax": 0x10, "bx": 0x18, "cx": 0x20, "dx": 0x28,
    "si": 0x30, "di": 0x38, "bp": 0x40, "sp": 0x48,
    "r8": 0x50, "r9": 0x58, "r10": 0x60, "r11": 0x68,
    "r12": 0x70, "r13": 0x78, "r14": 0x80, "r15": 0x88,
}
NHM_OFFSETS = {**CORE_OFFSETS, "status": 0x90, "dla": 0x98, "dse": 0xA0, "lat": 0xA8}
HSW_OFFSETS = {**NHM_OFFSETS, "real_ip": 0xB0, "tsx_tuning": 0xB8}
SKL_OFFSETS = {**HSW_OFFSETS, "tsc": 0xC0}
LEGACY = {0: (144, CORE_OFFSETS), 1: (176, NHM_OFFSETS), 2: (192, HSW_OFFSETS), 3: (200, SKL_OFFSETS)}

# a.3: adaptive groups
BASIC_OFFSETS = {"format_size": 0x00, "ip": 0x08, "applicable_counters": 0x10, "tsc": 0x18}
MEMINFO_OFFSETS = {"address": 0x00, "aux": 0x08, "latency": 0x10, "tsx_tuning": 0x18}
GPRS_OFFSETS = {
    "flags": 0x00, "ip": 0x08, "ax": 0x10, "cx": 0x18, "dx": 0x20, "bx": 0x28,
    "sp": 0x30, "bp": 0x38, "si": 0x40, "di": 0x48,
    "r8": 0x50, "r9": 0x58, "r10": 0x60, "r11": 0x68,
    "r12": 0x70, "r13": 0x78, "r14": 0x80, "r15": 0x88,
}
LBR_OFFSETS = {"from": 0x00, "to": 0x08, "info": 0x10}

# a.1: struct debug_store
DS_OFFSETS = {
    "bts_buffer_base": 0x00, "bts_index": 0x08, "bts_absolute_maximum": 0x10,
    "bts_interrupt_threshold": 0x18, "pebs_buffer_base": 0x20, "pebs_index": 0x28,
    "pebs_absolute_maximum": 0x30, "pebs_interrupt_threshold": 0x38,
    "pebs_event_reset": 0x40,
}

MEMINFO, GP, XMMS, LBRS = 1, 2, 4, 8


def offsets(dt):
    return {name: dt.fields[name][1] for name in dt.names}


def assert_all_u64(dt):
    for name in dt.names:
        fdt = dt.fields[name][0]
        base = fdt.subdtype[0] if fdt.subdtype else fdt
        assert base == np.dtype("<u8"), name


# ---------------------------------------------------------------------------
# a.1  DS area
# ---------------------------------------------------------------------------

def test_ds_layout_matches_facts():
    assert offsets(pebs.DS_AREA_DTYPE) == DS_OFFSETS
    assert_all_u64(pebs.DS_AREA_DTYPE)
    assert pebs.DS_AREA_DTYPE.fields["pebs_event_reset"][0].shape == (12,)
    assert pebs.DS_SIZE == 0x40 + 12 * 8 == 160
    assert pebs.DS_SIZE_PATCH == 0x40 + 4 * 8 == 96
    assert pebs.DS_RESET_SLOTS == 12
    assert pebs.MAX_PEBS_EVENTS_FMT4 == 8
    assert pebs.PAGE_SIZE == 4096


def test_ds_offset_constants():
    assert pebs.DS_OFF_PEBS_BUFFER_BASE == 0x20
    assert pebs.DS_OFF_PEBS_INDEX == 0x28
    assert pebs.DS_OFF_PEBS_ABS_MAX == 0x30
    assert pebs.DS_OFF_PEBS_THRESHOLD == 0x38
    assert pebs.DS_OFF_PEBS_RESET == 0x40
    assert pebs.DS_OFF_FIXED_RESET == 0x80


def test_reset_slots_fixed_counters_follow_gp():
    # a.1: format < 5, fixed counter i -> slot 8 + i (byte 0x80 + 8 i)
    assert [pebs.ds_reset_slot(i) for i in range(8)] == list(range(8))
    assert [pebs.ds_reset_slot(32 + i) for i in range(4)] == [8, 9, 10, 11]
    with pytest.raises(ValueError, match="counter_idx"):
        pebs.ds_reset_slot(8)
    with pytest.raises(ValueError, match="counter_idx"):
        pebs.ds_reset_slot(36)


def test_debug_store_bytes_at_facts_offsets():
    reset = tuple(0x1000 + i for i in range(12))
    ds = pebs.DebugStore(pebs_buffer_base=0x7F0000, pebs_index=0x7F00C8,
                         pebs_absolute_maximum=0x7F0FA0, pebs_interrupt_threshold=0x7F00C8,
                         bts_index=5, pebs_event_reset=reset)
    b = ds.to_bytes()
    assert len(b) == 160

    def u64(off):
        return int.from_bytes(b[off:off + 8], "little")

    assert u64(0x08) == 5
    assert u64(0x20) == 0x7F0000
    assert u64(0x28) == 0x7F00C8
    assert u64(0x30) == 0x7F0FA0
    assert u64(0x38) == 0x7F00C8
    assert u64(0x40) == 0x1000
    assert u64(0x80) == 0x1008  # fixed counter 0's slot
    assert u64(0x98) == 0x100B
    assert pebs.DebugStore.from_bytes(b) == ds


def test_debug_store_from_short_and_long_bytes():
    ds = pebs.DebugStore(pebs_index=0x28, pebs_event_reset=tuple(range(1, 13)))
    b = ds.to_bytes()
    header_only = pebs.DebugStore.from_bytes(b[:0x40])
    assert header_only.pebs_index == 0x28
    assert header_only.pebs_event_reset == (0,) * 12
    patch_copy = pebs.DebugStore.from_bytes(b[:pebs.DS_SIZE_PATCH])
    assert patch_copy.pebs_event_reset == (1, 2, 3, 4) + (0,) * 8
    page = np.zeros(4096, dtype=np.uint8)
    page[:160] = np.frombuffer(b, dtype=np.uint8)
    page[160:] = 0xFF
    assert pebs.DebugStore.from_bytes(page) == ds


def test_debug_store_repr_is_hex_and_frozen():
    ds = pebs.DebugStore(pebs_index=0x1000)
    r = repr(ds)
    assert r.startswith("DebugStore(bts_buffer_base=0x0,")
    assert "pebs_index=0x1000" in r
    assert r.count("0x") == 8 + 12
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.pebs_index = 0
    assert dataclasses.replace(ds, pebs_index=0x2000).pebs_index == 0x2000


def test_debug_store_validation():
    with pytest.raises(TypeError, match="pebs_index"):
        pebs.DebugStore(pebs_index="0x10")
    with pytest.raises(ValueError, match="pebs_index"):
        pebs.DebugStore(pebs_index=-1)
    with pytest.raises(ValueError, match="pebs_index"):
        pebs.DebugStore(pebs_index=1 << 64)
    with pytest.raises(ValueError, match="pebs_event_reset.*12.*got 4"):
        pebs.DebugStore(pebs_event_reset=(0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"pebs_event_reset\[3\]"):
        pebs.DebugStore(pebs_event_reset=(0, 0, 0, -5) + (0,) * 8)
    with pytest.raises(ValueError, match="b must hold at least 0x40 bytes.*got 63"):
        pebs.DebugStore.from_bytes(bytes(63))
    with pytest.raises(ValueError, match="b must end on a whole 8-byte"):
        pebs.DebugStore.from_bytes(bytes(0x44))
    with pytest.raises(TypeError, match="b must be bytes"):
        pebs.DebugStore.from_bytes("not bytes")


u64s = st.integers(0, 2**64 - 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(u64s, min_size=20, max_size=20))
def test_debug_store_round_trip(vals):
    ds = pebs.DebugStore(*vals[:8], pebs_event_reset=tuple(vals[8:]))
    assert pebs.DebugStore.from_bytes(ds.to_bytes()) == ds


# ---------------------------------------------------------------------------
# a.2  legacy records
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", [0, 1, 2, 3])
def test_legacy_record_layout(fmt):
    size, expected = LEGACY[fmt]
    dt = pebs.record_dtype(fmt)
    assert dt.itemsize == size
    assert offsets(dt) == expected
    assert_all_u64(dt)
    assert pebs.record_size(fmt) == size


def test_named_legacy_dtypes():
    assert pebs.PEBS_RECORD_CORE_DTYPE.itemsize == 144
    assert pebs.PEBS_RECORD_NHM_DTYPE.itemsize == 176
    assert pebs.PEBS_RECORD_HSW_DTYPE.itemsize == 192
    assert pebs.PEBS_RECORD_SKL_DTYPE.itemsize == 200


def test_fmt4_record_dtype_is_basic_group():
    dt = pebs.record_dtype(4)
    assert dt.itemsize == 32
    assert offsets(dt) == BASIC_OFFSETS


# ---------------------------------------------------------------------------
# a.3  adaptive records
# ---------------------------------------------------------------------------

def test_adaptive_group_layouts():
    assert pebs.PEBS_BASIC_DTYPE.itemsize == 32
    assert offsets(pebs.PEBS_BASIC_DTYPE) == BASIC_OFFSETS
    assert pebs.PEBS_MEMINFO_DTYPE.itemsize == 32
    assert offsets(pebs.PEBS_MEMINFO_DTYPE) == MEMINFO_OFFSETS
    assert pebs.PEBS_GPRS_DTYPE.itemsize == 144
    assert offsets(pebs.PEBS_GPRS_DTYPE) == GPRS_OFFSETS
    assert pebs.PEBS_XMM_DTYPE.itemsize == 256
    assert pebs.PEBS_XMM_DTYPE.fields["xmm"][0].shape == (32,)
    assert pebs.LBR_ENTRY_DTYPE.itemsize == 24
    assert offsets(pebs.LBR_ENTRY_DTYPE) == LBR_OFFSETS
    for dt in (pebs.PEBS_BASIC_DTYPE, pebs.PEBS_MEMINFO_DTYPE, pebs.PEBS_GPRS_DTYPE,
               pebs.PEBS_XMM_DTYPE, pebs.LBR_ENTRY_DTYPE):
        assert_all_u64(dt)


def test_gpr_order_differs_between_legacy_and_adaptive():
    legacy = pebs.PEBS_RECORD_CORE_DTYPE.names[2:10]
    adaptive = pebs.PEBS_GPRS_DTYPE.names[2:10]
    assert legacy == ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")
    assert adaptive == ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di")
    # the same register lands at different offsets
    assert pebs.PEBS_RECORD_CORE_DTYPE.fields["bx"][1] == 0x18
    assert pebs.PEBS_GPRS_DTYPE.fields["bx"][1] == 0x28


def test_datacfg_constants():
    assert pebs.PEBS_DATACFG_MEMINFO == 1
    assert pebs.PEBS_DATACFG_GP == 2
    assert pebs.PEBS_DATACFG_XMMS == 4
    assert pebs.PEBS_DATACFG_LBRS == 8
    assert pebs.PEBS_DATACFG_LBR_SHIFT == 24


@pytest.mark.parametrize("cfg, size", [
    (0, 32),
    (MEMINFO, 64),
    (MEMINFO | GP, 208),
    (XMMS, 32 + 256),
    (LBRS, 32 + 24),                       # (0 >> 24) + 1 = 1 entry
    (LBRS | 31 << 24, 32 + 24 * 32),
    (MEMINFO | GP | XMMS | LBRS | 31 << 24, 32 + 32 + 144 + 256 + 24 * 32),
    (31 << 24, 32),                        # LBR count without LBRS adds nothing
    (LBRS | 255 << 24, 32 + 24 * 256),
])
def test_adaptive_record_size_rule(cfg, size):
    assert pebs.adaptive_record_size(cfg) == size
    assert pebs.adaptive_record_dtype(cfg).itemsize == size
    assert pebs.record_size(4, cfg) == size


def test_adaptive_record_dtype_group_order_and_offsets():
    dt = pebs.adaptive_record_dtype(MEMINFO | GP | XMMS | LBRS | 1 << 24)
    assert dt.names == ("basic", "meminfo", "gprs", "xmm", "lbr")
    assert offsets(dt) == {"basic": 0, "meminfo": 32, "gprs": 64, "xmm": 208, "lbr": 464}
    lbr = dt.fields["lbr"][0]
    assert lbr.subdtype[0] == pebs.LBR_ENTRY_DTYPE and lbr.shape == (2,)
    # groups that are absent leave no gap
    dt = pebs.adaptive_record_dtype(GP | LBRS)
    assert offsets(dt) == {"basic": 0, "gprs": 32, "lbr": 176}
    assert pebs.adaptive_record_dtype(0).names == ("basic",)


# ---------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------

def cfgs():
    return st.builds(lambda g, n: g | n << 24, st.integers(0, 15), st.integers(0, 40))


def adaptive_raw(cfg, payloads):
    """Records of one cfg from random payloads, with a correct format_size word."""
    size = 32 + 32 * (cfg & 1) + 144 * (cfg >> 1 & 1) + 256 * (cfg >> 2 & 1) \
        + 24 * (((cfg >> 24) & 0xFF) + 1) * (cfg >> 3 & 1)
    word0 = (size << 48 | cfg).to_bytes(8, "little")
    return b"".join(word0 + p[8:size] for p in payloads), size


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 3), st.integers(0, 4), st.data())
def test_legacy_round_trip(fmt, n, data):
    size = LEGACY[fmt][0]
    raw = data.draw(st.binary(min_size=n * size, max_size=n * size))
    recs = pebs.decode(raw, fmt)
    assert recs.dtype == pebs.record_dtype(fmt) and recs.shape == (n,)
    assert pebs.encode(recs, fmt) == raw
    again = pebs.decode(pebs.encode(recs, fmt), fmt)
    assert again.tobytes() == recs.tobytes()


@settings(max_examples=60, deadline=None)
@given(cfgs(), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_adaptive_round_trip(cfg, n, seed):
    rng = np.random.default_rng(seed)
    payloads = [rng.bytes(8192) for _ in range(n)]
    raw, _ = adaptive_raw(cfg, payloads)
    recs = pebs.decode(raw, 4, data_cfg=cfg)
    assert recs.dtype == pebs.adaptive_record_dtype(cfg) and recs.shape == (n,)
    assert pebs.encode(recs, 4, cfg) == raw
    # without data_cfg the layout comes from the records themselves
    # (an empty buffer has none to take it from: basic only)
    found = pebs.decode(raw, 4)
    assert found.dtype == pebs.adaptive_record_dtype(cfg if n else 0)
    assert found.tobytes() == raw
    # format_size 0 is filled in by encode
    blank = recs.copy()
    blank["basic"]["format_size"] = 0
    assert pebs.encode(blank, 4, cfg) == raw


def test_encode_from_dicts():
    raw = pebs.encode([{"ip": 0x401000, "real_ip": 0x400FFC, "tsc": 7}, {}], 3)
    assert len(raw) == 400
    assert int.from_bytes(raw[0x08:0x10], "little") == 0x401000
    assert int.from_bytes(raw[0xB0:0xB8], "little") == 0x400FFC
    assert int.from_bytes(raw[0xC0:0xC8], "little") == 7
    assert raw[200:] == bytes(200)

    cfg = MEMINFO | GP | LBRS | 1 << 24
    raw = pebs.encode([{"basic": {"ip": 0xFFFF0}, "gprs": {"bx": 0xB},
                        "lbr": [(1, 2, 3), (4, 5, 6)]}], 4, cfg)
    assert len(raw) == 32 + 32 + 144 + 48
    assert int.from_bytes(raw[0:8], "little") == (len(raw) << 48) | cfg
    assert int.from_bytes(raw[64 + 0x28:64 + 0x30], "little") == 0xB
    rec = pebs.decode(raw, 4)[0]
    assert int(rec["basic"]["ip"]) == 0xFFFF0
    assert [int(x) for x in rec["lbr"][1]] == [4, 5, 6]


def test_decode_mixed_sizes_is_an_error():
    raw = pebs.encode([{}], 4, 0) + pebs.encode([{}], 4, MEMINFO)
    assert pebs.walk_adaptive(raw) == [(0, 0, 32), (32, MEMINFO, 64)]
    with pytest.raises(ValueError, match="different layouts"):
        pebs.decode(raw, 4)
    with pytest.raises(ValueError, match=r"record 1 at offset 0x20.*data_cfg=0x0"):
        pebs.decode(raw, 4, data_cfg=0)
    # same layout, different LBR count bits without LBRS: one layout
    raw = pebs.encode([{}], 4, 0) + pebs.encode([{}], 4, 5 << 24)
    assert pebs.decode(raw, 4).shape == (2,)


def test_decode_size_mismatch_is_an_error():
    # a basic-only record claiming 40 bytes
    raw = ((40 << 48) | 0).to_bytes(8, "little") + bytes(32)
    with pytest.raises(ValueError, match=r"format_size says 40 bytes.*need 32.*WARN"):
        pebs.decode(raw, 4)
    # MEMINFO record claiming only the basic size
    raw = pebs.encode([{}], 4, 0)
    raw = ((32 << 48) | MEMINFO).to_bytes(8, "little") + raw[8:] + bytes(32)
    with pytest.raises(ValueError, match="record 0 at offset 0x0"):
        pebs.walk_adaptive(raw)


def test_decode_truncated_and_bad_lengths():
    with pytest.raises(ValueError, match=r"raw length 150 .* fmt 1 record size 176"):
        pebs.decode(bytes(150), 1)
    with pytest.raises(ValueError, match="raw ends inside record 1"):
        pebs.decode(pebs.encode([{}], 4) + bytes(16), 4)
    raw = pebs.encode([{}], 4, GP)
    with pytest.raises(ValueError, match="raw ends inside record 0"):
        pebs.decode(raw[:100], 4)
    assert pebs.decode(b"", 4).dtype == pebs.adaptive_record_dtype(0)
    assert pebs.decode(b"", 4, data_cfg=GP).dtype == pebs.adaptive_record_dtype(GP)
    assert pebs.decode(b"", 2).shape == (0,)


def test_decode_accepts_uint8_array_and_returns_writable_copy():
    mem = np.zeros(4096, dtype=np.uint8)
    recs = pebs.decode(mem[:144 * 2], 0)
    recs["ip"][0] = 1
    assert mem[8] == 0


# ---------------------------------------------------------------------------
# field_table
# ---------------------------------------------------------------------------

def test_field_table_legacy():
    rows = pebs.field_table(3)
    assert rows[0] == (0x00, 8, "flags")
    assert rows[3] == (0x18, 8, "bx")
    assert rows[-1] == (0xC0, 8, "tsc")
    assert len(rows) == 25
    assert {name: off for off, _, name in rows} == SKL_OFFSETS


def test_field_table_adaptive():
    rows = pebs.field_table(4, MEMINFO | XMMS | LBRS | 1 << 24)
    assert rows[0] == (0, 8, "basic.format_size")
    assert (32, 8, "meminfo.address") in rows
    assert (64, 256, "xmm.xmm[0:32]") in rows
    assert (320, 8, "lbr[0].from") in rows
    assert rows[-1] == (320 + 24 + 16, 8, "lbr[1].info")
    assert sum(size for _, size, _ in rows) == pebs.adaptive_record_size(MEMINFO | XMMS | LBRS | 1 << 24)


# ---------------------------------------------------------------------------
# hexdump
# ---------------------------------------------------------------------------

def test_hexdump_exact():
    data = b"PEBS rec\x00\x01\x7f\xff ok!" + bytes(range(0x41, 0x45))
    assert pebs.hexdump(data, base=0x1000) == (
        "00001000: 50 45 42 53 20 72 65 63 00 01 7f ff 20 6f 6b 21  |PEBS rec.... ok!|\n"
        "00001010: 41 42 43 44                                      |ABCD|"
    )


def test_hexdump_width_and_wide_base():
    assert pebs.hexdump(b"\x00\x41\x42", base=0xFFFF800000001000, width=2) == (
        "ffff800000001000: 00 41  |.A|\n"
        "ffff800000001002: 42     |B|"
    )
    assert pebs.hexdump(b"") == ""
    assert pebs.hexdump(b"A", base=2**32) == "0000000100000000: 41" + " " * 45 + "  |A|"


# ---------------------------------------------------------------------------
# bit-field decoders
# ---------------------------------------------------------------------------

def test_decode_tsx_tuning():
    d = pebs.decode_tsx_tuning((1 << 33) | (1 << 37) | (1 << 39) | 0x1234)
    assert d == {
        "cycles_last_block": 0x1234, "hle_abort": False, "rtm_abort": True,
        "instruction_abort": False, "non_instruction_abort": False, "retry": False,
        "data_conflict": True, "capacity_writes": False, "capacity_reads": True,
    }
    assert all(pebs.decode_tsx_tuning(0xFF00000000)[k] for k in d if k != "cycles_last_block")


def test_decode_dse():
    assert pebs.decode_dse(0x93) == {
        "data_source": 3, "stlb_miss": True, "locked": False,
        "data_blocked": False, "addr_blocked": True,
    }
    assert pebs.decode_dse(0x60) == {
        "data_source": 0, "stlb_miss": False, "locked": True,
        "data_blocked": True, "addr_blocked": False,
    }


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------

def test_bad_fmt():
    with pytest.raises(ValueError) as e:
        pebs.record_dtype(7)
    assert str(e.value) == "fmt must be one of 0, 1, 2, 3, 4; got 7"
    with pytest.raises(TypeError, match="fmt must be one of"):
        pebs.record_dtype("3")
    with pytest.raises(TypeError, match="fmt"):
        pebs.decode(b"", True)
    with pytest.raises(ValueError, match="fmt"):
        pebs.encode([], 5)
    with pytest.raises(ValueError, match="fmt"):
        pebs.field_table(-1)


def test_bad_data_cfg():
    with pytest.raises(ValueError, match=r"data_cfg may only set bits.*0xff00000f.*got 0x10"):
        pebs.adaptive_record_size(1 << 4)
    with pytest.raises(ValueError, match="data_cfg"):
        pebs.adaptive_record_dtype(1 << 40)
    with pytest.raises(TypeError, match="data_cfg"):
        pebs.adaptive_record_size(1.0)
    with pytest.raises(ValueError, match="data_cfg applies only to fmt 4"):
        pebs.encode([], 3, MEMINFO)
    with pytest.raises(ValueError, match="data_cfg applies only to fmt 4"):
        pebs.decode(b"", 1, data_cfg=GP)
    with pytest.raises(ValueError, match="data_cfg applies only to fmt 4"):
        pebs.field_table(2, GP)
    # a record whose group bits include an unmodelled group
    raw = ((48 << 48) | 1 << 4).to_bytes(8, "little") + bytes(40)
    with pytest.raises(ValueError, match="record 0 at offset 0x0.*data groups"):
        pebs.decode(raw, 4)


def test_bad_records_and_raw():
    with pytest.raises(TypeError, match="raw must be bytes"):
        pebs.decode("abc", 0)
    with pytest.raises(TypeError, match="raw must be bytes"):
        pebs.decode(np.zeros(144, dtype=np.int32), 0)
    with pytest.raises(TypeError, match="records must be"):
        pebs.encode(42, 0)
    with pytest.raises(TypeError, match=r"records\[0\] must be a mapping"):
        pebs.encode([1], 0)
    with pytest.raises(ValueError, match="records must have the fmt 1 record dtype"):
        pebs.encode(np.zeros(1, pebs.record_dtype(0)), 1)
    with pytest.raises(ValueError, match=r"records\[0\] has no field 'rip'"):
        pebs.encode([{"rip": 1}], 0)
    with pytest.raises(ValueError, match=r"records\[0\]\.ip"):
        pebs.encode([{"ip": -1}], 0)
    with pytest.raises(TypeError, match=r"records\[0\]\.ip"):
        pebs.encode([{"ip": 1.5}], 0)
    with pytest.raises(ValueError, match=r"records\[0\]\.basic\.format_size must be 0"):
        pebs.encode([{"basic": {"format_size": 1}}], 4)


def test_bad_hexdump_and_decoder_args():
    with pytest.raises(TypeError, match="data must be bytes"):
        pebs.hexdump("text")
    with pytest.raises(ValueError, match="width"):
        pebs.hexdump(b"x", width=0)
    with pytest.raises(ValueError, match="base"):
        pebs.hexdump(b"x", base=-1)
    with pytest.raises(TypeError, match="base"):
        pebs.hexdump(b"x", base="0")
    with pytest.raises(ValueError, match=r"^v must be an int"):
        pebs.decode_dse(-1)
    with pytest.raises(TypeError, match=r"^v must be an int"):
        pebs.decode_tsx_tuning(None)
    with pytest.raises(TypeError, match="counter_idx"):
        pebs.ds_reset_slot(1.0)
