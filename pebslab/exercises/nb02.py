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

__all__ = ["ex02_decode"]

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
