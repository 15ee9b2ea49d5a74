"""Checker for notebook 02 (PEBS on bare metal): find the eventing IP in a raw record.

pebslab only. The records are real: each case runs the guest perf driver
on a BareMetal machine of one CPU model (large PEBS, so the records stay in
the buffer), reads the raw bytes PEBS wrote from guest memory, and takes
the right answer from the trace: the IP of the instruction whose event
overflowed the counter (the OVERFLOW row that armed the assist). Format 0
and 1 records are the first 144 / 176 bytes of real format-2 records (the
legacy formats extend one another); they carry no eventing IP.
"""

from __future__ import annotations

import functools

from ..hw import pebs as P
from ._base import run_cases

__all__ = ["ex02_decode", "ex02_until_pmi", "ex02_hexdump"]

# (cpu, event, description of the records) for the runs the cases come from
_RUNS = (
    ("silvermont", "INST_RETIRED.ANY_P:pp", "Silvermont"),
    ("haswell", "MEM_UOPS_RETIRED.ALL_LOADS:pp", "Haswell"),
    ("skylake", "MEM_INST_RETIRED.ALL_LOADS:pp", "Skylake"),
    ("icelake", "MEM_INST_RETIRED.ALL_LOADS:pp", "Ice Lake, basic + meminfo groups"),
    ("icelake", "INST_RETIRED.ANY_P:p", "Ice Lake, basic + gprs groups"),
)
_PER_RUN = 3


def _records(cpu: str, event: str) -> list[tuple[bytes, int, int]]:
    """Run the perf driver on bare metal; return (raw record, fmt, eventing IP) per record."""
    from ..baremetal import BareMetal
    from ..guest.kernel import GuestKernel
    from ..workloads import hot_loop

    machine = BareMetal(cpu, frames=256, seed=0)
    kernel = GuestKernel(machine)
    kernel.perf.record(event, period=997, large_pebs=True)
    start = len(machine.trace)
    machine.run(hot_loop(), 12_000)
    fmt = kernel.perf.info.pebs_format
    ds = kernel.perf.read_ds()
    raw = kernel.read(ds.pebs_buffer_base, ds.pebs_index - ds.pebs_buffer_base)
    if fmt == 4:
        spans = [(off, size) for off, _cfg, size in P.walk_adaptive(raw)]
    else:
        size = P.record_size(fmt)
        spans = [(off, size) for off in range(0, len(raw), size)]
    # the OVERFLOW row just before each PEBS_WRITE names the eventing instruction
    rows = machine.trace.rows("OVERFLOW", "PEBS_WRITE")
    rows = [r for r in rows if r["time"] >= machine.trace.array["time"][start]]
    ips, last = [], None
    for r in rows:
        if r["kind"] == "OVERFLOW":
            last = r["gva"]
        else:
            ips.append(last)
    if len(ips) != len(spans):      # pragma: no cover - the model broke its own trace
        raise AssertionError(f"{cpu}: {len(spans)} records in the buffer but {len(ips)} "
                             "PEBS_WRITE rows in the trace")
    return [(raw[o:o + s], fmt, ip) for (o, s), ip in zip(spans, ips)]


@functools.lru_cache(maxsize=1)
def _cases() -> tuple:
    cases = []
    hsw = None
    for cpu, event, what in _RUNS:
        recs = _records(cpu, event)
        if cpu == "haswell":
            hsw = recs
        for k, (raw, fmt, ip) in enumerate(recs[:_PER_RUN]):
            cases.append((f"fmt {fmt} record {k} from {what} ({event}, {len(raw)} bytes)",
                          (raw, fmt), ip))
    for fmt in (0, 1):
        n = P.record_size(fmt)
        for k, (raw, _fmt, _ip) in enumerate(hsw[:2]):
            cases.append((f"fmt {fmt} record {k} ({n} bytes: the first {n} bytes of a "
                          "Haswell record)", (raw[:n], fmt), None))
    return tuple(cases)


def ex02_decode(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``candidate(raw, fmt) -> int | None``: the eventing IP of one PEBS record.

    pebslab only. Cases are records written by the model on Silvermont and
    Haswell (format 2), Skylake (3), Ice Lake (4, with and without the GPR
    group) and format 0/1 records cut from them; expected answers come from
    the trace (the instruction whose event overflowed the counter).
    """
    return run_cases(
        "ex02_decode", candidate, _cases(),
        hint=("formats 2 and 3 keep the eventing IP in real_ip at offset 0xB0 (the ip at 0x08 "
              "is the trap-like IP of the NEXT instruction); format 4 keeps it in the basic "
              "group's ip at 0x08, whatever groups follow; formats 0 and 1 have no eventing IP, "
              "so return None. Read 8 bytes little-endian: int.from_bytes(raw[o:o+8], 'little')."),
        strict=strict, quiet=quiet)


# ---------------------------------------------------------------------------
# ex02_until_pmi (warm-up): how many records until the next PMI?

# (threshold_records, instructions run before the DS area is read)
_UNTIL_CASES = ((4, 6_000), (4, 15_000), (4, 42_000), (1, 3_000), (6, 25_000), (6, 70_000))


def _until_pmi(threshold_records: int, before: int) -> tuple[tuple, int]:
    """Run manual_pebs, read the DS area, then count the records written up to the next PMI."""
    from ..baremetal import BareMetal
    from ..guest.kernel import GuestKernel
    from ..scenarios import manual_pebs
    from ..workloads import hot_loop

    machine = BareMetal("silvermont", frames=256, seed=0)
    kernel = GuestKernel(machine)
    st = manual_pebs(kernel, period=10007, event=0x00C0, threshold_records=threshold_records)
    work = hot_loop()
    machine.run(work, before)
    d = st.debug_store()
    args = (int(d.pebs_index), int(d.pebs_interrupt_threshold), int(st.record_size))
    mark = len(machine.trace)
    for _ in range(200):
        machine.run(work, 2_000)
        rows = machine.trace.rows()[mark:]
        pmi = next((r for r in rows if r["kind"] == "PMI"), None)
        if pmi is not None:
            n = sum(1 for r in rows if r["kind"] == "PEBS_WRITE" and r["time"] <= pmi["time"])
            return args, n
    raise AssertionError("no PMI within 400,000 instructions")  # pragma: no cover


@functools.lru_cache(maxsize=1)
def _until_cases() -> tuple:
    out = []
    for t, before in _UNTIL_CASES:
        (index, threshold, size), n = _until_pmi(t, before)
        out.append((f"threshold {t} records, DS read after {before} instructions "
                    f"(pebs_index {index:#x}, threshold {threshold:#x}, record {size} bytes)",
                    (index, threshold, size), n))
    return tuple(out)


def ex02_until_pmi(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``records_until_pmi(pebs_index, threshold, record_size) -> int``.

    pebslab only. Each case programs PEBS by hand (manual_pebs, Silvermont),
    runs a while, reads the DS area, then runs on and counts the PEBS_WRITE
    rows of the trace up to and including the record that raised the PMI.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    hint = ""
    try:
        cases = None
        candidate(0x1000, 0x1000 + 4 * 192, 192)
    except NotImplementedError:
        return run_cases("ex02_until_pmi", candidate, [("a first call", (0, 1, 1), 0)],
                         quiet=quiet, strict=strict)
    except Exception:  # noqa: BLE001
        pass
    cases = _until_cases()
    try:
        _d, (i, t, s), n = cases[0]
        got = candidate(i, t, s)
        if got == n - 1:
            hint = ("one short: the PMI comes with the record that makes pebs_index reach the "
                    "threshold, so that record counts too")
        elif got == n + 1:
            hint = "one too many: the record that reaches the threshold is the last one before the PMI"
        elif got == t - i:
            hint = "that is a distance in bytes; divide by the record size"
    except Exception:  # noqa: BLE001
        pass
    return run_cases("ex02_until_pmi", candidate, cases, hint=hint, quiet=quiet, strict=strict)


# ---------------------------------------------------------------------------
# ex02_hexdump (apply): decode a hexdumped Silvermont record by hand

_HEX_FIELDS = {"flags": 0x00, "ip": 0x08, "status": 0x90, "eventing_ip": 0xB0}


@functools.lru_cache(maxsize=1)
def _hexdump_cases() -> tuple:
    from ..baremetal import BareMetal
    from ..guest.kernel import GuestKernel
    from ..workloads import hot_loop, multi_function

    out = []
    for event, work, period in (("MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", hot_loop(), 11),
                                 ("INST_RETIRED.ANY_P:pp", hot_loop(), 997),
                                 ("INST_RETIRED.ANY_P:pp", multi_function(), 1009)):
        machine = BareMetal("silvermont", frames=256, seed=0)
        kernel = GuestKernel(machine)
        kernel.perf.record(event, period=period, large_pebs=True)
        machine.run(work, 20_000)
        ds = kernel.perf.read_ds()
        size = P.record_size(2)
        for k in (0, 2):
            gva = ds.pebs_buffer_base + k * size
            raw = kernel.read(gva, size)
            r = P.decode(raw, fmt=2)[0]
            expected = {"flags": int(r["flags"]), "ip": int(r["ip"]),
                        "status": int(r["status"]), "eventing_ip": int(r["real_ip"])}
            out.append((f"record {k} of {event} every {period} on {work.name} (at {gva:#x})",
                        (P.hexdump(raw, base=gva),), expected))
    return tuple(out)


def _hexdump_hint(candidate) -> str:
    for _d, (text,), exp in _hexdump_cases():
        try:
            got = candidate(text)
        except NotImplementedError:
            return ""
        except Exception as e:  # noqa: BLE001
            return (f"your function raised {type(e).__name__}: {e}. Each line is 'address: "
                    "16 hex bytes  |ascii|': take only the part between ':' and '|'")
        if not isinstance(got, dict):
            return f"return a dict with keys {sorted(_HEX_FIELDS)}"
        missing = sorted(set(_HEX_FIELDS) - set(got))
        if missing:
            return f"your dict lacks {missing}"
        for key in _HEX_FIELDS:
            v, e = got[key], exp[key]
            if v == e:
                continue
            if isinstance(v, int) and v == int.from_bytes(e.to_bytes(8, "little"), "big"):
                return (f"{key}: you read the bytes big-endian; x86 stores the least "
                        "significant byte first")
            if key in ("ip", "eventing_ip") and v == exp["eventing_ip" if key == "ip" else "ip"]:
                return ("ip and eventing_ip are swapped: the record's ip (0x08) is the trap-like "
                        "IP of the next instruction; the eventing IP is at 0xB0")
            return f"{key} is wrong: which offset holds it (the field table above)?"
    return ""


def ex02_hexdump(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``decode_hexdump(text) -> dict``: fields of a Silvermont record from its hex dump.

    pebslab only. ``text`` is ``pl.pebs.hexdump(raw, base=gva)`` of one
    192-byte record the model wrote on Silvermont; the expected fields
    (flags, ip, status, eventing_ip) come from ``pl.pebs.decode(raw, 2)``.
    The Reserved fields (0x98-0xA8, 0xB8) are not asked for.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    try:
        candidate("")
    except NotImplementedError:
        return run_cases("ex02_hexdump", candidate, [("a first call", ("",), {})],
                         quiet=quiet, strict=strict)
    except Exception:  # noqa: BLE001
        pass
    return run_cases("ex02_hexdump", lambda t: candidate(t), _hexdump_cases(),
                     hint=_hexdump_hint(candidate), quiet=quiet, strict=strict)
