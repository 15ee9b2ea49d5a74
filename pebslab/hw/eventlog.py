"""The core's hardware event log, decoded once: what each row of ``Core.take_log()`` means.

pebslab only. The numba core appends fixed-width int64 rows (kind, tsc, a,
b, c, d) while it runs; this module names the four payload columns per
kind and makes them unsigned (addresses above 2**63 come back as
negative int64). Both machines turn the decoded events into trace rows:
:class:`pebslab.baremetal.BareMetal` and the KVM run loop
(:mod:`pebslab.kvm.vm`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import core as C

_U64 = (1 << 64) - 1

#: kind code -> (trace kind, names of columns a, b, c, d)
LAYOUT = {
    C.LOG_OVERFLOW: ("OVERFLOW", ("counter", "instr", "ip", "unused")),
    C.LOG_PEBS_WRITE: ("PEBS_WRITE", ("gva", "hpa", "size", "counters")),
    C.LOG_PEBS_FAULT: ("PEBS_FAULT", ("gva", "gpa", "code", "info")),
    C.LOG_PMI: ("PMI", ("status", "instr", "ip", "cause")),
    C.LOG_PEBS_DROP: ("PEBS_DROP", ("index", "abs_max", "size", "counters")),
}


class LogEvent(NamedTuple):
    """One decoded row: ``kind`` (a trace kind name), ``tsc``, and the four
    payload columns as unsigned ints, also reachable by name (``ev["ip"]``)."""

    kind: str
    tsc: int
    a: int
    b: int
    c: int
    d: int

    def __getitem__(self, key):
        if isinstance(key, str):
            names = LAYOUT[KIND_CODE[self.kind]][1]
            return (self.a, self.b, self.c, self.d)[names.index(key)]
        return tuple.__getitem__(self, key)


KIND_CODE = {name: code for code, (name, _cols) in LAYOUT.items()}


def decode(rows: np.ndarray) -> list[LogEvent]:
    """Decode the rows ``Core.take_log()`` returned, in order; unknown kinds are skipped."""
    out = []
    for kind, tsc, a, b, c, d in rows.tolist():
        lay = LAYOUT.get(kind)
        if lay is None:
            continue
        out.append(LogEvent(lay[0], tsc & _U64, a & _U64, b & _U64, c & _U64, d & _U64))
    return out
