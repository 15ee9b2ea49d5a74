"""PEBS byte layouts: the DS save area and the records PEBS writes.

Everything here is a numpy structured dtype with explicit offsets, so
``dtype.fields`` *is* the layout table (see :func:`field_table`). The
numbers come from FACTS.md section a (a.1 DS area, a.2 legacy records,
a.3 adaptive records, a.7 format per generation).

Formats modelled (the ``fmt`` argument, IA32_PERF_CAPABILITIES.PEBS_FMT):

====  ===========================  ==================  ==============
fmt   record                       size                generation
====  ===========================  ==================  ==============
0     ``pebs_record_core``         144 bytes           Core2
1     ``pebs_record_nhm``          176 bytes           Nehalem
2     ``pebs_record_hsw``          192 bytes           Haswell
3     ``pebs_record_skl``          200 bytes           Skylake
4     adaptive (basic + groups)    32 + groups         Ice Lake
====  ===========================  ==================  ==============

Format 5 uses the format-4 record layout (the Linux driver falls through
from case 5 to case 4); pass ``fmt=4`` for it. The newer counter-snapshot
group (DATA_CFG bits 4 and 5) and timed PEBS (retire latency in bits
47:32 of the basic group's first word) are not modelled.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np

from .msr import (PEBS_DATACFG_GP, PEBS_DATACFG_LBR_SHIFT, PEBS_DATACFG_LBRS,
                  PEBS_DATACFG_MEMINFO, PEBS_DATACFG_XMMS)

__all__ = [
    "PAGE_SIZE",
    "MAX_PEBS_EVENTS_FMT4",
    "DS_RESET_SLOTS",
    "DS_AREA_DTYPE",
    "DS_SIZE",
    "DS_SIZE_PATCH",
    "DS_OFF_PEBS_BUFFER_BASE",
    "DS_OFF_PEBS_INDEX",
    "DS_OFF_PEBS_ABS_MAX",
    "DS_OFF_PEBS_THRESHOLD",
    "DS_OFF_PEBS_RESET",
    "DS_OFF_FIXED_RESET",
    "INTEL_PMC_IDX_FIXED",
    "ds_reset_slot",
    "DebugStore",
    "PEBS_RECORD_CORE_DTYPE",
    "PEBS_RECORD_NHM_DTYPE",
    "PEBS_RECORD_HSW_DTYPE",
    "PEBS_RECORD_SKL_DTYPE",
    "PEBS_FORMATS",
    "record_dtype",
    "record_size",
    "PEBS_BASIC_DTYPE",
    "PEBS_MEMINFO_DTYPE",
    "PEBS_GPRS_DTYPE",
    "PEBS_XMM_DTYPE",
    "LBR_ENTRY_DTYPE",
    "PEBS_DATACFG_MEMINFO",
    "PEBS_DATACFG_GP",
    "PEBS_DATACFG_XMMS",
    "PEBS_DATACFG_LBRS",
    "PEBS_DATACFG_LBR_SHIFT",
    "PEBS_DATACFG_MODELLED_MASK",
    "FORMAT_SIZE_SHIFT",
    "FORMAT_GROUP_MASK",
    "adaptive_record_size",
    "adaptive_record_dtype",
    "walk_adaptive",
    "encode",
    "decode",
    "field_table",
    "hexdump",
    "decode_tsx_tuning",
    "decode_dse",
]

PAGE_SIZE = 4096

_U64 = "<u8"
_U64_MAX = (1 << 64) - 1


# ---------------------------------------------------------------------------
# argument checking (pebslab only)
# ---------------------------------------------------------------------------

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_int(name: str, value, lo: int = 0, hi: int = _U64_MAX) -> int:
    """Return ``int(value)`` if it is an integer in [lo, hi], else raise."""
    if not _is_int(value):
        raise TypeError(
            f"{name} must be an int in [{lo:#x}, {hi:#x}]; got {type(value).__name__} {value!r}"
        )
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be an int in [{lo:#x}, {hi:#x}]; got {v:#x}")
    return v


def _check_bytes(name: str, data) -> bytes:
    """Return ``data`` as bytes; accept bytes-like objects and uint8 arrays."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, np.ndarray) and data.dtype == np.uint8:
        return data.tobytes()
    raise TypeError(
        f"{name} must be bytes, bytearray, memoryview or a numpy uint8 array; "
        f"got {type(data).__name__}"
    )


def _struct(fields: Sequence[tuple[str, object, int]], itemsize: int) -> np.dtype:
    """Build a structured dtype from (name, format, offset) rows."""
    return np.dtype(
        {
            "names": [f[0] for f in fields],
            "formats": [f[1] for f in fields],
            "offsets": [f[2] for f in fields],
            "itemsize": itemsize,
        }
    )


def _u64_struct(names: Sequence[str]) -> np.dtype:
    """A packed structure of u64 fields, 8 bytes apart, in the given order."""
    return _struct([(n, _U64, 8 * i) for i, n in enumerate(names)], 8 * len(names))


# ---------------------------------------------------------------------------
# a.1  the DS save area
# ---------------------------------------------------------------------------

#: GP counters with a reset slot; fixed counters follow them (format < 5).
MAX_PEBS_EVENTS_FMT4 = 8
#: Reset slots in the modelled DS area: 8 general-purpose + 4 fixed counters.
DS_RESET_SLOTS = 12
#: Linux's counter index of fixed counter 0 (fixed counter i is index 32 + i).
INTEL_PMC_IDX_FIXED = 32

_DS_SCALARS = (
    "bts_buffer_base",
    "bts_index",
    "bts_absolute_maximum",
    "bts_interrupt_threshold",
    "pebs_buffer_base",
    "pebs_index",
    "pebs_absolute_maximum",
    "pebs_interrupt_threshold",
)

DS_AREA_DTYPE = _struct(
    [(n, _U64, 8 * i) for i, n in enumerate(_DS_SCALARS)]
    + [("pebs_event_reset", (_U64, (DS_RESET_SLOTS,)), 8 * len(_DS_SCALARS))],
    8 * len(_DS_SCALARS) + 8 * DS_RESET_SLOTS,
)
"""The DS save area that IA32_DS_AREA points to (64-bit DS format).

Models struct debug_store in arch/x86/include/asm/intel_ds.h, in the
version with MAX_PEBS_EVENTS_FMT4 = 8 general-purpose and 4 fixed reset
slots (12 slots, 160 bytes). The 2017 header had 8 slots; recent headers
have 48 and put fixed counters at slot 32 + i for format >= 5, which this
model does not cover.
"""

# Byte offsets of the fields the PEBS assist and the driver use, read from
# the dtype above (FACTS a.1: 0x20, 0x28, 0x30, 0x38, reset slots from 0x40).
DS_OFF_PEBS_BUFFER_BASE = DS_AREA_DTYPE.fields["pebs_buffer_base"][1]
DS_OFF_PEBS_INDEX = DS_AREA_DTYPE.fields["pebs_index"][1]
DS_OFF_PEBS_ABS_MAX = DS_AREA_DTYPE.fields["pebs_absolute_maximum"][1]
DS_OFF_PEBS_THRESHOLD = DS_AREA_DTYPE.fields["pebs_interrupt_threshold"][1]
DS_OFF_PEBS_RESET = DS_AREA_DTYPE.fields["pebs_event_reset"][1]
#: Byte offset of fixed counter 0's reset slot (slot 8, format < 5).
DS_OFF_FIXED_RESET = DS_OFF_PEBS_RESET + 8 * MAX_PEBS_EVENTS_FMT4

#: Bytes in the modelled DS area: 0x40 + 12 * 8 = 160.
DS_SIZE = DS_AREA_DTYPE.itemsize

#: Bytes of DS area the 2014 patch copies when it pins the DS page.
#: The patch declares its own ``struct debug_store`` with only 4 reset slots,
#: so it reads 0x40 + 4 * 8 = 0x60 (96) bytes: enough for PMC0..3, which is
#: all Silvermont needs (PEBS on PMC0 only). Source: the struct debug_store
#: the patch adds to arch/x86/kvm/pmu.c (the course's seed document: eight
#: u64 fields and ``pebs_event_reset[4]``).
DS_SIZE_PATCH = 0x60


def ds_reset_slot(counter_idx: int) -> int:
    """Return the pebs_event_reset slot that holds a counter's reload value.

    Models the slot choice in intel_pmu_pebs_enable() in
    arch/x86/events/intel/ds.c for PEBS formats < 5: general-purpose counter
    i uses slot i (i < 8); fixed counter i (Linux index 32 + i) uses slot
    MAX_PEBS_EVENTS_FMT4 + i = 8 + i (i < 4).
    """
    idx = _check_int("counter_idx", counter_idx, 0, INTEL_PMC_IDX_FIXED + 3)
    if idx < MAX_PEBS_EVENTS_FMT4:
        return idx
    if idx >= INTEL_PMC_IDX_FIXED:
        return MAX_PEBS_EVENTS_FMT4 + (idx - INTEL_PMC_IDX_FIXED)
    raise ValueError(
        f"counter_idx must be a GP counter 0..{MAX_PEBS_EVENTS_FMT4 - 1} or a fixed "
        f"counter {INTEL_PMC_IDX_FIXED}..{INTEL_PMC_IDX_FIXED + 3}; got {idx}"
    )


@dataclasses.dataclass(frozen=True, repr=False)
class DebugStore:
    """One DS save area, as the values software and the PEBS assist see.

    Models struct debug_store in arch/x86/include/asm/intel_ds.h (see
    DS_AREA_DTYPE). Immutable: build a changed copy with
    ``dataclasses.replace(ds, pebs_index=...)``. ``to_bytes()`` gives the
    DS_SIZE bytes that sit in guest memory; ``from_bytes()`` reads them back.
    """

    bts_buffer_base: int = 0
    bts_index: int = 0
    bts_absolute_maximum: int = 0
    bts_interrupt_threshold: int = 0
    pebs_buffer_base: int = 0
    pebs_index: int = 0
    pebs_absolute_maximum: int = 0
    pebs_interrupt_threshold: int = 0
    pebs_event_reset: tuple = (0,) * DS_RESET_SLOTS

    def __post_init__(self):
        for name in _DS_SCALARS:
            object.__setattr__(self, name, _check_int(name, getattr(self, name)))
        reset = self.pebs_event_reset
        if isinstance(reset, (str, bytes)) or not isinstance(reset, (Sequence, np.ndarray)):
            raise TypeError(
                f"pebs_event_reset must be a sequence of {DS_RESET_SLOTS} ints; "
                f"got {type(reset).__name__}"
            )
        if len(reset) != DS_RESET_SLOTS:
            raise ValueError(
                f"pebs_event_reset must have {DS_RESET_SLOTS} slots "
                f"({MAX_PEBS_EVENTS_FMT4} GP + 4 fixed); got {len(reset)}"
            )
        object.__setattr__(
            self,
            "pebs_event_reset",
            tuple(_check_int(f"pebs_event_reset[{i}]", v) for i, v in enumerate(reset)),
        )

    def to_bytes(self) -> bytes:
        """Return the DS_SIZE little-endian bytes of this DS area.

        Models the memory image of struct debug_store
        (arch/x86/include/asm/intel_ds.h).
        """
        a = np.zeros((), dtype=DS_AREA_DTYPE)
        for name in _DS_SCALARS:
            a[name] = getattr(self, name)
        a["pebs_event_reset"] = self.pebs_event_reset
        return a.tobytes()

    @classmethod
    def from_bytes(cls, b) -> "DebugStore":
        """Read a DS area from its memory image.

        Models the reads of struct debug_store fields done by the PEBS assist
        and the driver (arch/x86/include/asm/intel_ds.h). ``b`` needs at least
        the 0x40 header bytes; reset slots it does not cover read as 0 (so
        the 0x60 bytes the 2014 patch copies give 4 slots). Bytes beyond
        DS_SIZE are ignored.
        """
        raw = _check_bytes("b", b)
        if len(raw) < DS_OFF_PEBS_RESET:
            raise ValueError(
                f"b must hold at least {DS_OFF_PEBS_RESET:#x} bytes (the DS header); "
                f"got {len(raw)} bytes"
            )
        raw = raw[:DS_SIZE]
        if len(raw) % 8:
            raise ValueError(
                f"b must end on a whole 8-byte reset slot when shorter than {DS_SIZE} "
                f"bytes; got {len(raw)} bytes"
            )
        a = np.frombuffer(raw.ljust(DS_SIZE, b"\0"), dtype=DS_AREA_DTYPE)[0]
        return cls(
            **{name: int(a[name]) for name in _DS_SCALARS},
            pebs_event_reset=tuple(int(v) for v in a["pebs_event_reset"]),
        )

    def __repr__(self) -> str:
        parts = [f"{name}={getattr(self, name):#x}" for name in _DS_SCALARS]
        reset = ", ".join(f"{v:#x}" for v in self.pebs_event_reset)
        parts.append(f"pebs_event_reset=({reset})")
        return f"DebugStore({', '.join(parts)})"


# ---------------------------------------------------------------------------
# a.2  legacy records (formats 0..3)
# ---------------------------------------------------------------------------

_R8_R15 = tuple(f"r{i}" for i in range(8, 16))
_CORE_FIELDS = ("flags", "ip", "ax", "bx", "cx", "dx", "si", "di", "bp", "sp") + _R8_R15

#: Format 0, 144 bytes. Models struct pebs_record_core (arch/x86/events/intel/ds.c).
PEBS_RECORD_CORE_DTYPE = _u64_struct(_CORE_FIELDS)
#: Format 1, 176 bytes: + status 0x90, dla 0x98, dse 0xA0, lat 0xA8.
#: Models struct pebs_record_nhm (arch/x86/events/intel/ds.c).
PEBS_RECORD_NHM_DTYPE = _u64_struct(_CORE_FIELDS + ("status", "dla", "dse", "lat"))
#: Format 2, 192 bytes: + real_ip 0xB0 (eventing IP), tsx_tuning 0xB8.
#: Models struct pebs_record_hsw (arch/x86/events/intel/ds.c).
PEBS_RECORD_HSW_DTYPE = _u64_struct(PEBS_RECORD_NHM_DTYPE.names + ("real_ip", "tsx_tuning"))
#: Format 3, 200 bytes: + tsc 0xC0.
#: Models struct pebs_record_skl (arch/x86/events/intel/ds.c).
PEBS_RECORD_SKL_DTYPE = _u64_struct(PEBS_RECORD_HSW_DTYPE.names + ("tsc",))


# ---------------------------------------------------------------------------
# a.3  adaptive records (format 4)
# ---------------------------------------------------------------------------

#: DATA_CFG bits this model understands: the groups (3:0) and the LBR count
#: (31:24). The same bits KVM lets a guest write (pebs_data_cfg_rsvd =
#: ~0xff00000f in arch/x86/kvm/vmx/pmu_intel.c).
PEBS_DATACFG_MODELLED_MASK = 0xFF00000F

#: format_size >> 48 is the record size in bytes.
FORMAT_SIZE_SHIFT = 48
#: format_size & FORMAT_GROUP_MASK is the DATA_CFG value the record was built with.
FORMAT_GROUP_MASK = (1 << FORMAT_SIZE_SHIFT) - 1

#: Basic group, always present (32 bytes). format_size: bits 47:0 data
#: groups, bits 63:48 record size. Models struct pebs_basic
#: (arch/x86/include/asm/perf_event.h) with word 0 as one u64, as older
#: kernels and kvm-unit-tests read it.
PEBS_BASIC_DTYPE = _u64_struct(("format_size", "ip", "applicable_counters", "tsc"))
#: Memory-info group (32 bytes, DATA_CFG bit 0). Models struct pebs_meminfo
#: (arch/x86/include/asm/perf_event.h); latency is the pre-ADL single u64.
PEBS_MEMINFO_DTYPE = _u64_struct(("address", "aux", "latency", "tsx_tuning"))
#: GPR group (144 bytes, DATA_CFG bit 1). Models struct pebs_gprs
#: (arch/x86/include/asm/perf_event.h). Register order ax, cx, dx, bx, sp,
#: bp, si, di differs from the legacy record's ax, bx, cx, dx, si, di, bp, sp.
PEBS_GPRS_DTYPE = _u64_struct(
    ("flags", "ip", "ax", "cx", "dx", "bx", "sp", "bp", "si", "di") + _R8_R15
)
#: XMM group (256 bytes, DATA_CFG bit 2): two u64 per XMM0..15.
#: Models struct pebs_xmm (arch/x86/include/asm/perf_event.h).
PEBS_XMM_DTYPE = _struct([("xmm", (_U64, (32,)), 0)], 256)
#: One LBR entry (24 bytes); the LBR group (DATA_CFG bit 3) is
#: ((DATA_CFG >> 24) & 0xff) + 1 of them. Models struct lbr_entry
#: (arch/x86/include/asm/perf_event.h).
LBR_ENTRY_DTYPE = _u64_struct(("from", "to", "info"))

_GROUPS = (
    # (DATA_CFG bit, group name in the record dtype, group dtype)
    (PEBS_DATACFG_MEMINFO, "meminfo", PEBS_MEMINFO_DTYPE),
    (PEBS_DATACFG_GP, "gprs", PEBS_GPRS_DTYPE),
    (PEBS_DATACFG_XMMS, "xmm", PEBS_XMM_DTYPE),
)

PEBS_FORMATS = (0, 1, 2, 3, 4)
_LEGACY_DTYPES = {
    0: PEBS_RECORD_CORE_DTYPE,
    1: PEBS_RECORD_NHM_DTYPE,
    2: PEBS_RECORD_HSW_DTYPE,
    3: PEBS_RECORD_SKL_DTYPE,
    4: PEBS_BASIC_DTYPE,
}


def _check_fmt(fmt) -> int:
    allowed = ", ".join(str(f) for f in PEBS_FORMATS)
    if not _is_int(fmt):
        raise TypeError(f"fmt must be one of {allowed}; got {type(fmt).__name__} {fmt!r}")
    if int(fmt) not in PEBS_FORMATS:
        raise ValueError(f"fmt must be one of {allowed}; got {fmt}")
    return int(fmt)


def _check_data_cfg(data_cfg, name: str = "data_cfg") -> int:
    cfg = _check_int(name, data_cfg)
    extra = cfg & ~PEBS_DATACFG_MODELLED_MASK
    if extra:
        raise ValueError(
            f"{name} may only set bits 3:0 (groups) and 31:24 (LBR count), mask "
            f"{PEBS_DATACFG_MODELLED_MASK:#x}; got {cfg:#x} (extra bits {extra:#x}; "
            "counter snapshots, bits 4-5, are not modelled)"
        )
    return cfg


def _layout_key(cfg: int) -> int:
    """DATA_CFG reduced to what decides the layout (LBR count only if LBRS)."""
    if cfg & PEBS_DATACFG_LBRS:
        return cfg & PEBS_DATACFG_MODELLED_MASK
    return cfg & (PEBS_DATACFG_MEMINFO | PEBS_DATACFG_GP | PEBS_DATACFG_XMMS)


def _n_lbr(cfg: int) -> int:
    return ((cfg >> PEBS_DATACFG_LBR_SHIFT) & 0xFF) + 1


def record_dtype(fmt: int) -> np.dtype:
    """Return the structured dtype of one PEBS record of format ``fmt``.

    Models pebs_record_core/nhm/hsw/skl in arch/x86/events/intel/ds.c
    (formats 0..3) and, for format 4, struct pebs_basic in
    arch/x86/include/asm/perf_event.h: the 32-byte group every adaptive
    record starts with (use adaptive_record_dtype() for the full record).
    """
    return _LEGACY_DTYPES[_check_fmt(fmt)]


def record_size(fmt: int, data_cfg: int = 0) -> int:
    """Return the size in bytes of one record of format ``fmt``.

    Models x86_pmu.pebs_record_size as set by intel_ds_init() and
    adaptive_pebs_record_size_update() in arch/x86/events/intel/ds.c.
    ``data_cfg`` applies to format 4 only.
    """
    fmt = _check_fmt(fmt)
    if fmt == 4:
        return adaptive_record_size(data_cfg)
    if _check_int("data_cfg", data_cfg) != 0:
        raise ValueError(f"data_cfg applies only to fmt 4, so must be 0 for fmt {fmt}; got {data_cfg:#x}")
    return _LEGACY_DTYPES[fmt].itemsize


def adaptive_record_size(data_cfg: int) -> int:
    """Return the size of an adaptive PEBS record built with ``data_cfg``.

    Models adaptive_pebs_record_size_update() in arch/x86/events/intel/ds.c:
    32 + 32*MEMINFO + 144*GP + 256*XMMS + 24*n_lbr*LBRS, with
    n_lbr = ((data_cfg >> 24) & 0xff) + 1.
    """
    cfg = _check_data_cfg(data_cfg)
    return adaptive_record_dtype(cfg).itemsize


@functools.lru_cache(maxsize=None)
def _adaptive_dtype_for_key(key: int) -> np.dtype:
    fields = [("basic", PEBS_BASIC_DTYPE, 0)]
    off = PEBS_BASIC_DTYPE.itemsize
    for bit, name, dt in _GROUPS:
        if key & bit:
            fields.append((name, dt, off))
            off += dt.itemsize
    if key & PEBS_DATACFG_LBRS:
        n = _n_lbr(key)
        fields.append(("lbr", (LBR_ENTRY_DTYPE, (n,)), off))
        off += n * LBR_ENTRY_DTYPE.itemsize
    return _struct(fields, off)


def adaptive_record_dtype(data_cfg: int) -> np.dtype:
    """Return the nested structured dtype of an adaptive record for ``data_cfg``.

    Models the record layout setup_pebs_adaptive_sample_data() walks in
    arch/x86/events/intel/ds.c: groups ``basic``, ``meminfo``, ``gprs``,
    ``xmm``, ``lbr`` (a sub-array of LBR_ENTRY_DTYPE), in that order, each
    present only if its DATA_CFG bit is set (basic always).
    """
    cfg = _check_data_cfg(data_cfg)
    return _adaptive_dtype_for_key(_layout_key(cfg))


def walk_adaptive(raw) -> list[tuple[int, int, int]]:
    """Walk a buffer of adaptive records; return (offset, data_cfg, size) per record.

    Models the record walk in intel_pmu_drain_pebs_icl() and
    setup_pebs_adaptive_sample_data() in arch/x86/events/intel/ds.c: each
    record's size is format_size >> 48 and its groups are the low 48 bits.
    Raises ValueError where the driver would WARN (size field disagrees
    with the groups) or a record is cut off by the end of ``raw``.
    """
    buf = _check_bytes("raw", raw)
    out = []
    off = 0
    basic = PEBS_BASIC_DTYPE.itemsize
    while off < len(buf):
        n = len(out)
        if len(buf) - off < basic:
            raise ValueError(
                f"raw ends inside record {n} at offset {off:#x}: {len(buf) - off} bytes left, "
                f"the basic group alone needs {basic}"
            )
        word0 = int.from_bytes(buf[off:off + 8], "little")
        size = word0 >> FORMAT_SIZE_SHIFT
        cfg = word0 & FORMAT_GROUP_MASK
        try:
            _check_data_cfg(cfg, name=f"record {n} data groups (format_size bits 47:0)")
        except ValueError as e:
            raise ValueError(f"record {n} at offset {off:#x}: {e}") from None
        need = adaptive_record_size(cfg)
        if size != need:
            raise ValueError(
                f"record {n} at offset {off:#x}: format_size says {size} bytes "
                f"(bits 63:48) but its data groups {cfg:#x} need {need} bytes; the Linux "
                "driver WARNs on this mismatch while draining (arch/x86/events/intel/ds.c)"
            )
        if off + size > len(buf):
            raise ValueError(
                f"raw ends inside record {n} at offset {off:#x}: it is {size} bytes but only "
                f"{len(buf) - off} are left"
            )
        out.append((off, cfg, size))
        off += size
    return out


# ---------------------------------------------------------------------------
# encode / decode
# ---------------------------------------------------------------------------

def _expected_dtype(fmt: int, data_cfg: int) -> np.dtype:
    if fmt == 4:
        return adaptive_record_dtype(data_cfg)
    return _LEGACY_DTYPES[fmt]


def _fill(rec: np.ndarray, values: Mapping, path: str) -> None:
    """Assign a (possibly nested) mapping of field values into a 0-d record view."""
    names = rec.dtype.names
    for key, val in values.items():
        if key not in names:
            raise ValueError(
                f"{path} has no field {key!r}; fields are {', '.join(names)}"
            )
        sub = rec[key]
        if isinstance(val, Mapping):
            if sub.dtype.names is None:
                raise ValueError(f"{path}.{key} is a plain field; got a mapping for it")
            _fill(sub, val, f"{path}.{key}")
        elif sub.dtype.names is not None:
            # an array of structures (the LBR entries): rows of (from, to, info)
            try:
                sub[...] = val
            except (TypeError, ValueError, OverflowError) as e:
                raise ValueError(
                    f"{path}.{key} takes {sub.shape[0]} (from, to, info) tuples of ints; "
                    f"got {val!r} ({e})"
                ) from None
        elif sub.ndim == 0:
            sub[...] = _check_int(f"{path}.{key}", val)
        else:
            if not isinstance(val, (Sequence, np.ndarray)) or len(val) != sub.size:
                raise ValueError(f"{path}.{key} takes {sub.size} ints; got {val!r}")
            sub[...] = [_check_int(f"{path}.{key}[{i}]", x) for i, x in enumerate(val)]


def _format_size_word(data_cfg: int) -> int:
    return (adaptive_record_size(data_cfg) << FORMAT_SIZE_SHIFT) | data_cfg


def encode(records, fmt: int, data_cfg: int = 0) -> bytes:
    """Return the bytes PEBS would write for ``records``, back to back.

    Models the record stores of the PEBS assist (SDM Vol. 3B, PEBS record
    formats) as the driver in arch/x86/events/intel/ds.c reads them.
    ``records`` is a numpy array of the exact record dtype
    (record_dtype(fmt), or adaptive_record_dtype(data_cfg) for fmt 4), or a
    sequence of mappings field -> value (missing fields are 0; for fmt 4
    nest by group: ``{"basic": {"ip": ...}, "gprs": {...}}``). For fmt 4,
    each record's basic.format_size is filled in as
    (size << 48) | data_cfg when it is 0, and must equal that otherwise.
    """
    fmt = _check_fmt(fmt)
    cfg = _check_data_cfg(data_cfg)
    if fmt != 4 and cfg != 0:
        raise ValueError(f"data_cfg applies only to fmt 4, so must be 0 for fmt {fmt}; got {cfg:#x}")
    dt = _expected_dtype(fmt, cfg)
    if isinstance(records, np.ndarray):
        if records.dtype != dt:
            raise ValueError(
                f"records must have the fmt {fmt} record dtype {dt} "
                f"(data_cfg {cfg:#x}); got dtype {records.dtype}"
            )
        arr = np.ascontiguousarray(records.reshape(-1)).copy()
    elif isinstance(records, Sequence) and not isinstance(records, (str, bytes, bytearray)):
        arr = np.zeros(len(records), dtype=dt)
        for i, r in enumerate(records):
            if not isinstance(r, Mapping):
                raise TypeError(
                    f"records[{i}] must be a mapping of field names to values; "
                    f"got {type(r).__name__}"
                )
            _fill(arr[i:i + 1].reshape(()), r, f"records[{i}]")
    else:
        raise TypeError(
            "records must be a numpy structured array or a sequence of mappings; "
            f"got {type(records).__name__}"
        )
    if fmt == 4 and len(arr):
        want = _format_size_word(cfg)
        fs = arr["basic"]["format_size"]
        bad = np.nonzero((fs != 0) & (fs != np.uint64(want)))[0]
        if len(bad):
            i = int(bad[0])
            raise ValueError(
                f"records[{i}].basic.format_size must be 0 (filled in) or {want:#x} "
                f"(size {want >> FORMAT_SIZE_SHIFT} << 48 | data_cfg {cfg:#x}); got {int(fs[i]):#x}"
            )
        arr["basic"]["format_size"] = want
    return arr.tobytes()


def decode(raw, fmt: int, data_cfg: int | None = None) -> np.ndarray:
    """Return the records in ``raw`` as a structured numpy array.

    Models the record walk of intel_pmu_drain_pebs_core/_nhm/_icl() in
    arch/x86/events/intel/ds.c. Formats 0..3: ``raw`` is a whole number of
    fixed-size records. Format 4: records are walked by their own
    format_size (see walk_adaptive); the result has dtype
    adaptive_record_dtype(cfg) if they all share one layout. Records with
    different layouts raise ValueError; with ``data_cfg`` given, every
    record must have the layout of ``data_cfg``.
    """
    fmt = _check_fmt(fmt)
    buf = _check_bytes("raw", raw)
    if fmt != 4:
        if data_cfg is not None and _check_int("data_cfg", data_cfg) != 0:
            raise ValueError(
                f"data_cfg applies only to fmt 4, so must be None or 0 for fmt {fmt}; got {data_cfg:#x}"
            )
        dt = _LEGACY_DTYPES[fmt]
        if len(buf) % dt.itemsize:
            raise ValueError(
                f"raw length {len(buf)} is not a multiple of the fmt {fmt} record size "
                f"{dt.itemsize}"
            )
        return np.frombuffer(buf, dtype=dt).copy()

    want = None if data_cfg is None else _check_data_cfg(data_cfg)
    recs = walk_adaptive(buf)
    if want is not None:
        key = _layout_key(want)
        for n, (off, cfg, size) in enumerate(recs):
            if _layout_key(cfg) != key:
                raise ValueError(
                    f"record {n} at offset {off:#x} has data groups {cfg:#x} ({size} bytes), "
                    f"which does not match data_cfg={want:#x} "
                    f"({adaptive_record_size(want)} bytes)"
                )
        dt = adaptive_record_dtype(want)
    elif recs:
        off0, cfg0, size0 = recs[0]
        for n, (off, cfg, size) in enumerate(recs):
            if _layout_key(cfg) != _layout_key(cfg0):
                raise ValueError(
                    "raw holds adaptive records with different layouts: record 0 at offset "
                    f"{off0:#x} has data groups {cfg0:#x} ({size0} bytes), record {n} at offset "
                    f"{off:#x} has {cfg:#x} ({size} bytes). A structured array needs one "
                    "layout: pass data_cfg to require one, or use walk_adaptive() and decode "
                    "each record on its own"
                )
        dt = adaptive_record_dtype(cfg0)
    else:
        dt = adaptive_record_dtype(0)
    return np.frombuffer(buf, dtype=dt).copy()


# ---------------------------------------------------------------------------
# layout tables and dumps (for notebooks)
# ---------------------------------------------------------------------------

def _rows(dt: np.dtype, base: int, prefix: str) -> list[tuple[int, int, str]]:
    rows = []
    for name in dt.names:
        fdt, off = dt.fields[name][:2]
        full = f"{prefix}{name}"
        if fdt.subdtype is not None:
            elem, shape = fdt.subdtype
            n = int(np.prod(shape))
            if elem.names is not None:
                for i in range(n):
                    rows += _rows(elem, base + off + i * elem.itemsize, f"{full}[{i}].")
            else:
                rows.append((base + off, fdt.itemsize, f"{full}[0:{n}]"))
        elif fdt.names is not None:
            rows += _rows(fdt, base + off, f"{full}.")
        else:
            rows.append((base + off, fdt.itemsize, full))
    return sorted(rows)


def field_table(fmt: int, data_cfg: int = 0) -> list[tuple[int, int, str]]:
    """Return the record layout as (offset, size, name) rows, by offset.

    pebslab only: a flattened view of record_dtype(fmt) (or, for fmt 4,
    adaptive_record_dtype(data_cfg)) read from ``dtype.fields``. Nested
    groups are named ``group.field``, LBR entries ``lbr[i].field``, and
    plain arrays as one row ``xmm.xmm[0:32]``.
    """
    fmt = _check_fmt(fmt)
    cfg = _check_data_cfg(data_cfg)
    if fmt != 4 and cfg != 0:
        raise ValueError(f"data_cfg applies only to fmt 4, so must be 0 for fmt {fmt}; got {cfg:#x}")
    return _rows(_expected_dtype(fmt, cfg), 0, "")


def hexdump(data, base: int = 0, width: int = 16) -> str:
    """Return a classic hex dump of ``data``: "address: hex bytes  |ascii|" lines.

    pebslab only. Addresses are base + offset, in 8 hex digits, or 16 when
    base is >= 2**32 (or the dump crosses 2**32). Bytes outside printable
    ASCII show as '.'; a short last line is padded so the ASCII column lines
    up. No trailing newline; empty data gives "".
    """
    buf = _check_bytes("data", data)
    base = _check_int("base", base)
    width = _check_int("width", width, 1, 256)
    if base + len(buf) > _U64_MAX + 1:
        raise ValueError(
            f"base + len(data) must not exceed 2**64; got base {base:#x} with {len(buf)} bytes"
        )
    digits = 16 if base + max(len(buf) - 1, 0) >= 1 << 32 else 8
    lines = []
    for off in range(0, len(buf), width):
        chunk = buf[off:off + width]
        hexpart = " ".join(f"{b:02x}" for b in chunk).ljust(3 * width - 1)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{base + off:0{digits}x}: {hexpart}  |{text}|")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# bit-field decoders
# ---------------------------------------------------------------------------

_TSX_FLAGS = (
    (32, "hle_abort"),
    (33, "rtm_abort"),
    (34, "instruction_abort"),
    (35, "non_instruction_abort"),
    (36, "retry"),
    (37, "data_conflict"),
    (38, "capacity_writes"),
    (39, "capacity_reads"),
)


def decode_tsx_tuning(v: int) -> dict:
    """Split a PEBS tsx_tuning word into its fields.

    Models union hsw_tsx_tuning in arch/x86/events/intel/ds.c: bits 31:0
    cycles_last_block, then one flag per bit 32..39 (hle_abort, rtm_abort,
    instruction_abort, non_instruction_abort, retry, data_conflict,
    capacity_writes, capacity_reads). Flags are bools.
    """
    v = _check_int("v", v)
    out = {"cycles_last_block": v & 0xFFFFFFFF}
    for bit, name in _TSX_FLAGS:
        out[name] = bool(v >> bit & 1)
    return out


def decode_dse(v: int) -> dict:
    """Split a load-latency PEBS dse (data source) word into its fields.

    Models union intel_x86_pebs_dse in arch/x86/events/intel/ds.c, load
    view: bits 3:0 data source, bit 4 stlb_miss, 5 locked, 6 data_blocked,
    7 addr_blocked. (Store records read bit 0 as L1D hit instead.)
    """
    v = _check_int("v", v)
    return {
        "data_source": v & 0xF,
        "stlb_miss": bool(v >> 4 & 1),
        "locked": bool(v >> 5 & 1),
        "data_blocked": bool(v >> 6 & 1),
        "addr_blocked": bool(v >> 7 & 1),
    }
