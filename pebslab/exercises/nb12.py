"""Checkers for notebook 12 (what came next).

pebslab only. Three exercises:

* ``ex12_data_cfg`` (warm-up): compose a MSR_PEBS_DATA_CFG value from the
  groups wanted. Expected values from the bit layout in FACTS a.3 (bit 0
  MEMINFO, 1 GP, 2 XMMS, 3 LBRS, bits 31:24 = LBR entries - 1).
* ``ex12_walk_records`` (apply): walk a buffer of adaptive records whose
  sizes differ (counters with and without their adaptive bit) and return
  (offset, size, ip) per record, as the driver's drain loop does. Expected
  from :func:`pebslab.hw.pebs.walk_adaptive` on buffers built with
  :func:`pebslab.hw.pebs.encode`.
* ``ex12_assist_faults`` (investigate): under EPT-friendly PEBS (the
  ``icelake`` design), classify the EPT violations the PEBS assist took
  after host reclaim: guest page tables, DS area, buffer. Expected from
  the same run's trace, classified by the checker.
"""

from __future__ import annotations

import numpy as np

from ._base import Result
from .nb11 import judge
from ..hw import pebs as PEBS

PAGE = 4096
_GROUP_BITS = (("MEMINFO", 0), ("GP", 1), ("XMMS", 2), ("LBRS", 3))


# -----------------------------------------------------------------------------
# warm-up: a DATA_CFG value
# -----------------------------------------------------------------------------

def _expected_cfg(meminfo, gp, xmm, lbr_entries) -> int:
    # FACTS a.3: bits 0..3 select the groups; bits 31:24 hold the LBR count - 1
    cfg = int(meminfo) | int(gp) << 1 | int(xmm) << 2
    if lbr_entries:
        cfg |= 1 << 3 | (lbr_entries - 1) << 24
    return cfg


def _groups(cfg: int) -> str:
    names = [n for n, b in _GROUP_BITS if cfg >> b & 1]
    s = "+".join(names) or "basic only"
    if cfg >> 3 & 1:
        s += f" with {((cfg >> 24) & 0xFF) + 1} LBR entries"
    return s


def ex12_data_cfg(candidate, *, strict: bool = False, quiet: bool = False) -> Result:
    """Check ``data_cfg(meminfo, gp, xmm, lbr_entries) -> int``."""
    args = ((False, False, False, 0), (True, False, False, 0), (False, True, False, 0),
            (True, True, True, 0), (False, False, False, 1), (False, False, False, 32),
            (True, True, False, 16), (False, False, True, 256))
    cases = [(f"meminfo={a[0]}, gp={a[1]}, xmm={a[2]}, lbr_entries={a[3]}", a) for a in args]
    notes = []

    def verdict(i, a, got):
        want = _expected_cfg(*a)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            return (f"{want:#x}", f"{type(got).__name__} {got!r}")
        got = int(got)
        if got == want:
            return None
        if a[3] and got >> 24 == a[3]:
            notes.append("count")
            return (f"{want:#x} ({_groups(want)})",
                    f"{got:#x}: bits 31:24 (and up) hold {a[3]}")
        if got < 0 or got & ~PEBS.PEBS_DATACFG_MODELLED_MASK:
            notes.append("reserved")
            return (f"{want:#x} ({_groups(want)})",
                    f"{got:#x}: sets bits outside 3:0 and 31:24, which KVM's "
                    f"pebs_data_cfg_rsvd makes a guest #GP on")
        if a[3] and (got >> 24 & 0xFF) == a[3] & 0xFF:
            notes.append("count")
        elif (got & 0xF) != (want & 0xF):
            notes.append("groups")
        size_w = PEBS.adaptive_record_size(want)
        size_g = PEBS.adaptive_record_size(got)
        return (f"{want:#x} ({_groups(want)}, {size_w}-byte records)",
                f"{got:#x} ({_groups(got)}, {size_g}-byte records)")

    def hint_of(failed):
        if "count" in notes:
            return ("an 8-bit field cannot say 256, yet 256 LBR entries are allowed: what does "
                    "the field count from?")
        if "reserved" in notes:
            return "only bits 3:0 (the groups) and 31:24 (the LBR count) exist in this model"
        if "groups" in notes:
            return "one bit per group, in the order MEMINFO, GP, XMMS, LBRS, from bit 0"
        return "is the LBRS bit (bit 3) set exactly when you ask for LBR entries?"

    return judge("ex12_data_cfg", candidate, cases, verdict, hint_of=hint_of, strict=strict,
                 quiet=quiet)


# -----------------------------------------------------------------------------
# apply: walk a buffer of adaptive records of different sizes
# -----------------------------------------------------------------------------

_IP_BASE = 0x401000


def _buffer(cfgs, seed: int) -> bytes:
    """Records back to back, one per DATA_CFG in ``cfgs``, seeded IPs."""
    rng = np.random.default_rng(seed)
    out = b""
    for cfg in cfgs:
        ip = _IP_BASE + int(rng.integers(0, 0x4000))
        rec = {"basic": {"ip": ip, "applicable_counters": 1, "tsc": int(rng.integers(1, 1 << 40))}}
        if cfg & PEBS.PEBS_DATACFG_GP:
            rec["gprs"] = {"ip": ip + 3, "ax": int(rng.integers(0, 1 << 32))}
        out += PEBS.encode([rec], 4, data_cfg=cfg)
    return out


def _expected_walk(raw: bytes) -> list[tuple[int, int, int]]:
    out = []
    for off, _cfg, size in PEBS.walk_adaptive(raw):
        ip = int.from_bytes(raw[off + 8:off + 16], "little")
        out.append((off, size, ip))
    return out


_LBR4 = PEBS.PEBS_DATACFG_LBRS | 3 << PEBS.PEBS_DATACFG_LBR_SHIFT
_LBR32 = PEBS.PEBS_DATACFG_LBRS | 31 << PEBS.PEBS_DATACFG_LBR_SHIFT
_WALK_CASES = (
    ("four basic records (no adaptive bit)", (0, 0, 0, 0)),
    ("three MEMINFO+GP records", (3, 3, 3)),
    ("basic and GP+4 LBR records mixed (two counters, one adaptive)",
     (0, 2 | _LBR4, 0, 0, 2 | _LBR4, 0)),
    ("XMM+32 LBR records after a basic one", (0, 4 | _LBR32, 4 | _LBR32)),
    ("every group, then basic", (0xF | _LBR4, 0, 1)),
    ("an empty buffer", ()),
)


def _as_rows(got):
    try:
        rows = [tuple(int(x) for x in r) for r in got]
    except (TypeError, ValueError):
        return None
    if not all(len(r) == 3 for r in rows):
        return None
    return rows


def ex12_walk_records(candidate, *, strict: bool = False, quiet: bool = False) -> Result:
    """Check ``walk_records(raw) -> [(offset, size, ip), ...]`` on mixed-size buffers."""
    bufs = [_buffer(cfgs, seed=i) for i, (_d, cfgs) in enumerate(_WALK_CASES)]
    cases = [(f"{d} ({len(b)} bytes)", (b,)) for (d, _c), b in zip(_WALK_CASES, bufs)]
    notes = []

    def verdict(i, args, got):
        want = _expected_walk(bufs[i])
        rows = _as_rows(got)
        if rows is None:
            return ("a list of (offset, size, ip) tuples", f"{type(got).__name__} {got!r}"[:80])
        if rows == want:
            return None
        for n, (w, g) in enumerate(zip(want, rows)):
            if w != g:
                what = ("size" if w[1] != g[1] else "offset" if w[0] != g[0] else "ip")
                notes.append(what)
                return (f"record {n}: offset {w[0]:#x}, size {w[1]}, ip {w[2]:#x}",
                        f"record {n}: offset {g[0]:#x}, size {g[1]}, ip {g[2]:#x}")
        notes.append("count")
        return (f"{len(want)} records", f"{len(rows)} records")

    def hint_of(failed):
        if "size" in notes:
            return ("the size of a record is written in the record itself: look at the top bits "
                    "of its first u64")
        if "ip" in notes:
            return "basic.ip is the second u64 of every record, whatever groups follow"
        if "count" in notes:
            return ("stop exactly at the end of the buffer; an empty buffer has no records")
        return "each record starts where the previous one ended"

    return judge("ex12_walk_records", candidate, cases, verdict, hint_of=hint_of,
                 strict=strict, quiet=quiet)


# -----------------------------------------------------------------------------
# investigate: what does the assist fault on under EPT-friendly PEBS?
# -----------------------------------------------------------------------------

_FAULT_SETUPS = (
    ("all guest memory reclaimed (nothing pinned), then run", dict(touch_ds=False, buf_pages=16)),
    ("reclaimed, the guest reads its DS area, then run", dict(touch_ds=True, buf_pages=16)),
    ("reclaimed with a 2-page buffer, then run", dict(touch_ds=False, buf_pages=2)),
)
KEYS = ("page tables", "DS area", "buffer")


def _fault_scenario(touch_ds: bool, buf_pages: int):
    from ..viz.nextgen import _setup
    host, vm, guest, st = _setup("icelake", "icelake", buf_pages=buf_pages,
                                 threshold_pages=min(4, buf_pages), period=13)
    host.reclaim(10_000)
    if touch_ds:
        st.debug_store()
    from ..viz.nextgen import _hot
    vm.run(_hot(), 300_000)        # ~360 records of 32 bytes: into buffer page 2
    return vm, st


def _classify(vm, st) -> dict:
    guest = st.guest
    rows = [r for r in vm.trace.rows("SWAPIN", "EPT_VIOLATION") if "PEBS assist" in r["info"]]
    ds_gfns = {guest.mm.translate(st.ds) >> 12,
               guest.mm.translate(st.ds + PEBS.DS_SIZE - 1) >> 12}
    base, n = st.buf_region
    buf_gfns = {guest.mm.translate(base + i * PAGE) >> 12 for i in range(n)}
    out = dict.fromkeys(KEYS, 0)
    for r in rows:
        gfn = int(r["gpa"]) >> 12
        key = "DS area" if gfn in ds_gfns else "buffer" if gfn in buf_gfns else "page tables"
        out[key] += 1
    return out


def ex12_assist_faults(candidate, *, strict: bool = False, quiet: bool = False) -> Result:
    """Check ``assist_faults(vm, st) -> {'page tables': n, 'DS area': n, 'buffer': n}``."""
    runs = [_fault_scenario(**kw) for _d, kw in _FAULT_SETUPS]
    expected = [_classify(*_fault_scenario(**kw)) for _d, kw in _FAULT_SETUPS]
    cases = [(d, run) for (d, _kw), run in zip(_FAULT_SETUPS, runs)]
    notes = []

    def verdict(i, args, got):
        want = expected[i]
        if not isinstance(got, dict):
            return (repr(want), f"{type(got).__name__} {got!r}"[:80])
        g = {k: got.get(k) for k in KEYS}
        if g == want:
            return None
        wrong = [k for k in KEYS if g[k] != want[k]]
        notes.extend(wrong)
        if set(got) - set(KEYS):
            notes.append("keys")
        return (repr(want), repr(dict(got)))

    def hint_of(failed):
        if "keys" in notes:
            return f"use exactly the keys {KEYS}"
        if "page tables" in notes:
            return ("the assist translates DS and buffer addresses through the guest's own page "
                    "tables: the faulting GPAs that are neither DS nor buffer pages are those")
        if "buffer" in notes or "DS area" in notes:
            return ("only the faults of the PEBS assist count (their trace info says so); guest "
                    "software's own faults, e.g. while you translate addresses, do not")
        return "compare each faulting GPA with guest.mm.translate() of the DS area and buffer"

    return judge("ex12_assist_faults", candidate, cases, verdict, hint_of=hint_of,
                 strict=strict, quiet=quiet)
