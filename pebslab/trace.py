"""One structured log of everything that happens in a simulated system.

pebslab only. Every layer appends events; notebooks filter and plot them.
Storage is a growable numpy structured array (cheap appends, vectorised
filters); ``info`` strings live in a side list indexed by row.
"""

from __future__ import annotations

import hashlib

import numpy as np

KINDS = (
    "VMENTRY", "VMEXIT", "MSR_READ", "MSR_WRITE", "GP", "CPUID", "PIN", "UNPIN",
    "OVERFLOW", "PEBS_WRITE", "PEBS_FAULT", "PEBS_DROP", "PMI", "PMI_INJECT", "RECLAIM",
    "SWAPIN", "EPT_VIOLATION", "GUEST_CRASH", "HOST_FAULT", "TIMER", "AUTOLOAD",
    "AUTOLOAD_FULL", "THROTTLE", "DRAIN", "SAMPLE", "MIGRATE", "DIRTY_LOG", "NOTE",
    "EPT_ZAP",
)
KIND_ID = {k: i for i, k in enumerate(KINDS)}

TRACE_DTYPE = np.dtype([
    ("kind", np.uint8),
    ("time", np.uint64),    # TSC of the vCPU (or host) when it happened
    ("vcpu", np.int16),     # -1: host / not vCPU-specific
    ("msr", np.uint32),
    ("value", np.uint64),
    ("gva", np.uint64),
    ("gpa", np.uint64),
    ("hpa", np.uint64),
    ("frame", np.int64),
    ("cost", np.uint32),    # cycles this step cost (VM exits, handlers)
])


class Trace:
    """An append-only event log with filters.

    pebslab only (DESIGN section 2): kind, time, vcpu, msr, value, gva, gpa,
    hpa, frame, cost and a free-text ``info`` per event.
    """

    def __init__(self, capacity: int = 1024):
        self._a = np.zeros(capacity, TRACE_DTYPE)
        self._n = 0
        self._info: list[str] = []
        self.enabled = True

    def add(self, kind: str, time: int = 0, *, vcpu: int = -1, msr: int = 0, value: int = 0,
            gva: int = 0, gpa: int = 0, hpa: int = 0, frame: int = -1, cost: int = 0,
            info: str = "") -> None:
        """Append one event."""
        if not self.enabled:
            return
        try:
            k = KIND_ID[kind]
        except KeyError:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}") from None
        if self._n == len(self._a):
            self._a = np.concatenate([self._a, np.zeros(len(self._a), TRACE_DTYPE)])
        r = self._a[self._n]
        r["kind"] = k
        r["time"] = time & 0xFFFFFFFFFFFFFFFF
        r["vcpu"] = vcpu
        r["msr"] = msr
        r["value"] = value & 0xFFFFFFFFFFFFFFFF
        r["gva"] = gva & 0xFFFFFFFFFFFFFFFF
        r["gpa"] = gpa & 0xFFFFFFFFFFFFFFFF
        r["hpa"] = hpa & 0xFFFFFFFFFFFFFFFF
        r["frame"] = frame
        r["cost"] = cost
        self._info.append(info)
        self._n += 1

    def __len__(self) -> int:
        return self._n

    @property
    def array(self) -> np.ndarray:
        """All events as a structured array (a view; do not modify)."""
        return self._a[: self._n]

    def of(self, *kinds: str) -> np.ndarray:
        """The events of the given kinds, in order."""
        for k in kinds:
            if k not in KIND_ID:
                raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {k!r}")
        ids = [KIND_ID[k] for k in kinds]
        a = self.array
        return a[np.isin(a["kind"], ids)]

    def info_of(self, *kinds: str) -> list[str]:
        """The info strings of the events of the given kinds."""
        ids = {KIND_ID[k] for k in kinds}
        a = self.array
        return [self._info[i] for i in range(self._n) if a["kind"][i] in ids]

    def counts(self) -> dict[str, int]:
        """How many events of each kind (only kinds that occurred)."""
        ks, ns = np.unique(self.array["kind"], return_counts=True)
        return {KINDS[k]: int(n) for k, n in zip(ks, ns)}

    def rows(self, *kinds: str, limit: int | None = None) -> list[dict]:
        """Events as dicts (kind name and info included), for tables."""
        a = self.array
        ids = {KIND_ID[k] for k in kinds} if kinds else None
        out = []
        for i in range(self._n):
            if ids is not None and a["kind"][i] not in ids:
                continue
            d = {name: int(a[name][i]) for name in TRACE_DTYPE.names}
            d["kind"] = KINDS[a["kind"][i]]
            d["info"] = self._info[i]
            out.append(d)
            if limit is not None and len(out) >= limit:
                break
        return out

    def format(self, *kinds: str, limit: int = 20) -> str:
        """A short, deterministic text rendering of events."""
        lines = []
        for d in self.rows(*kinds, limit=limit):
            extra = f" msr={d['msr']:#x}" if d["msr"] else ""
            extra += f" value={d['value']:#x}" if d["value"] else ""
            lines.append(f"{d['time']:>12} {d['kind']:<14}{extra} {d['info']}".rstrip())
        return "\n".join(lines)

    def digest(self) -> str:
        """A hash of every event (for determinism checks)."""
        h = hashlib.sha256(self.array.tobytes())
        for s in self._info:
            h.update(s.encode())
        return h.hexdigest()[:16]
