"""Synthetic programs for the simulated CPU, as numpy arrays.

A workload is a *trace*: the dynamic sequence of instructions one pass of a
program retires. The core runs it cyclically (instruction i is followed by
i + 1, the last by 0), so a trace is one iteration of an endless loop. Each
instruction carries what the PMU model needs: its address, kind, privilege
level, data address and load latency, the cycles it takes to retire, and
whether it missed the LLC or was a mispredicted branch.

Traces are built from small "functions" laid out at fixed addresses, so the
same instruction always has the same IP, and straight-line code is
contiguous: ``ip[i + 1] == ip[i] + length[i]`` unless instruction i is a
branch (calls, returns, jumps, syscall/sysret are all KIND_BRANCH).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# The instruction kinds are the core's (one definition, in pebslab.hw.models).
from .hw.models import (KIND_ALU, KIND_BRANCH, KIND_DIV, KIND_LOAD,  # noqa: F401
                        KIND_NAMES, KIND_STORE)

CPL_KERNEL = 0
CPL_USER = 3

#: Typical load-to-use latencies in cycles (Intel optimization manual
#: orders of magnitude; pebslab's modelling choice, not a measured part).
LAT_L1 = 4
LAT_L2 = 12
LAT_LLC = 40
LAT_DRAM = 250

USER_TEXT = 0x401000
KERNEL_TEXT = 0xFFFFFFFF81000000
HEAP_BASE = 0x5555_5600_0000
USER_DATA = 0x0060_1000
USER_STACK = 0x7FFD_F000_0000
KERNEL_DATA = 0xFFFF_8880_0100_0000

UNKNOWN_SYMBOL = "[unknown]"

_FIELDS = {
    "ip": np.uint64, "kind": np.uint8, "cpl": np.uint8, "addr": np.uint64,
    "latency": np.uint16, "cycles": np.uint16, "llc_miss": np.uint8,
    "br_misp": np.uint8, "length": np.uint8,
}


@dataclass(frozen=True, eq=False)
class Workload:
    """A cyclic instruction trace plus its symbol table.

    pebslab only. Arrays are stored read-only and C-contiguous; all have
    the same length. ``symbols`` is a sorted list of (start_ip, end_ip,
    name), end exclusive, not overlapping.
    """

    ip: np.ndarray
    kind: np.ndarray
    cpl: np.ndarray
    addr: np.ndarray
    latency: np.ndarray
    cycles: np.ndarray
    llc_miss: np.ndarray
    br_misp: np.ndarray
    length: np.ndarray
    symbols: list = field(default_factory=list)
    name: str = "workload"

    def __post_init__(self):
        n = None
        for fname, dt in _FIELDS.items():
            a = getattr(self, fname)
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{fname} must be a numpy array of {np.dtype(dt)}; "
                                f"got {type(a).__name__}")
            if a.dtype != dt or a.ndim != 1:
                raise TypeError(f"{fname} must be a 1-D {np.dtype(dt)} array; "
                                f"got {a.dtype} with shape {a.shape}")
            if n is None:
                n = a.size
            elif a.size != n:
                raise ValueError(f"{fname} has {a.size} entries; ip has {n}: "
                                 f"all arrays must have the same length")
            a = np.ascontiguousarray(a).copy()
            a.setflags(write=False)
            object.__setattr__(self, fname, a)
        if n == 0:
            raise ValueError("a workload needs at least 1 instruction; got 0")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str; got {type(self.name).__name__}")
        self._check_values()
        object.__setattr__(self, "symbols", _check_symbols(self.symbols))
        object.__setattr__(self, "_starts", [s[0] for s in self.symbols])

    def _check_values(self) -> None:
        def bad(mask, what):
            if mask.any():
                i = int(np.flatnonzero(mask)[0])
                raise ValueError(f"instruction {i} (ip {int(self.ip[i]):#x}): {what}")
        kind = self.kind
        bad(kind > KIND_DIV, f"kind must be 0..4 ({', '.join(KIND_NAMES)})")
        bad((self.cpl != CPL_KERNEL) & (self.cpl != CPL_USER), "cpl must be 0 or 3")
        bad(self.cycles < 1, "cycles must be >= 1")
        bad((self.length < 1) | (self.length > 15), "length must be 1..15 bytes")
        bad(self.llc_miss > 1, "llc_miss must be 0 or 1")
        bad(self.br_misp > 1, "br_misp must be 0 or 1")
        mem = (kind == KIND_LOAD) | (kind == KIND_STORE)
        bad(~mem & (self.addr != 0), "addr must be 0 unless the instruction is a load or store")
        bad((kind != KIND_LOAD) & (self.latency != 0), "latency must be 0 unless it is a load")
        bad((kind != KIND_LOAD) & (self.llc_miss != 0), "llc_miss set on a non-load")
        bad((kind != KIND_BRANCH) & (self.br_misp != 0), "br_misp set on a non-branch")
        nxt = np.roll(self.ip, -1)
        fall = self.ip + self.length.astype(np.uint64)
        bad((kind != KIND_BRANCH) & (nxt != fall),
            "a non-branch must fall through to the next instruction (ip + length)")

    def __len__(self) -> int:
        return int(self.ip.size)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Workload):
            return NotImplemented
        return (self.name == other.name and self.symbols == other.symbols
                and all(np.array_equal(getattr(self, f), getattr(other, f)) for f in _FIELDS))

    __hash__ = None

    def symbol_of(self, ip: int) -> str:
        """Return the name of the function containing ``ip``, or '[unknown]'.

        pebslab only (what perf report's symbol resolution does with a
        sample IP).
        """
        if isinstance(ip, (bool, np.bool_)) or not isinstance(ip, (int, np.integer)):
            raise TypeError(f"ip must be an int; got {type(ip).__name__} {ip!r}")
        ip = int(ip)
        k = bisect.bisect_right(self._starts, ip) - 1
        if k >= 0 and ip < self.symbols[k][1]:
            return self.symbols[k][2]
        return UNKNOWN_SYMBOL

    @property
    def total_cycles(self) -> int:
        """Return the cycles one pass of the trace takes."""
        return int(self.cycles.sum(dtype=np.int64))

    def summary(self) -> str:
        """Return a short, deterministic text description of the trace.

        pebslab only.
        """
        n = len(self)
        counts = np.bincount(self.kind, minlength=5)
        kinds = ", ".join(f"{KIND_NAMES[k]} {int(counts[k])}" for k in range(5) if counts[k])
        user = int(np.count_nonzero(self.cpl == CPL_USER))
        lines = [
            f"{self.name}: {n} instructions, {self.total_cycles} cycles per pass "
            f"(IPC {n / self.total_cycles:.3f})",
            f"  kinds: {kinds}",
            f"  user {user}, kernel {n - user}; LLC misses {int(self.llc_miss.sum())}, "
            f"mispredicted branches {int(self.br_misp.sum())}",
        ]
        cyc = self.cycles.astype(np.int64)
        for start, end, name in self.symbols:
            sel = (self.ip >= np.uint64(start)) & (self.ip < np.uint64(end))
            c = int(cyc[sel].sum())
            lines.append(f"  {name:<20} {start:#018x}  {int(sel.sum()):6d} instr "
                         f"{100.0 * c / self.total_cycles:5.1f}% cycles")
        return "\n".join(lines)


def _check_symbols(symbols) -> list:
    """Return symbols as a validated list of (start, end, name) tuples.

    pebslab only.
    """
    if not isinstance(symbols, (list, tuple)):
        raise TypeError(f"symbols must be a list of (start_ip, end_ip, name); "
                        f"got {type(symbols).__name__}")
    out = []
    for k, s in enumerate(symbols):
        if (not isinstance(s, (list, tuple)) or len(s) != 3
                or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                           for v in s[:2]) or not isinstance(s[2], str)):
            raise TypeError(f"symbols[{k}] must be (start_ip: int, end_ip: int, name: str); "
                            f"got {s!r}")
        start, end = int(s[0]), int(s[1])
        if not 0 <= start < end <= 1 << 64:
            raise ValueError(f"symbols[{k}] {s[2]!r}: need 0 <= start < end <= 2**64; "
                             f"got {start:#x}..{end:#x}")
        if out and start < out[-1][1]:
            raise ValueError(f"symbols[{k}] {s[2]!r} starts at {start:#x}, before the "
                             f"previous one ends ({out[-1][1]:#x}): must be sorted, "
                             f"not overlapping")
        out.append((start, end, s[2]))
    return out


# ----------------------------------------------------------------------
# A tiny assembler: functions as op lists, laid out once, expanded into a trace
# ----------------------------------------------------------------------
#
# ops: ("alu", length) | ("div", length) | ("load", length, latency_sampler)
#      | ("store", length) | ("jcc", length, misp_prob)     (not taken)
#      | ("call", callee) | ("ret",) | ("syscall", callee) | ("sysret",)
#      | ("loop", count, [ops], misp_last)                 (back-edge jnz)
#      | ("jmp_top",)                                       (back to entry)

_FIXED_LEN = {"call": 5, "ret": 1, "syscall": 2, "sysret": 3}


class _Asm:
    """Lay functions out at fixed addresses and expand calls into one trace."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.funcs: dict[str, dict] = {}
        self.rows: list[tuple] = []

    def function(self, name: str, base: int, cpl: int, ops: list, data: int) -> None:
        laid, end = self._layout(ops, base)
        self.funcs[name] = {"base": base, "end": end, "cpl": cpl, "ops": laid, "data": data}

    def _layout(self, ops, ip):
        laid = []
        for op in ops:
            if op[0] == "loop":
                body, ip2 = self._layout(op[2], ip)
                disp = ip - (ip2 + 2)
                blen = 2 if -128 <= disp <= 127 else 6
                laid.append(("loop", ip, op[1], body, ip2, blen, op[3]))
                ip = ip2 + blen
                continue
            length = _FIXED_LEN.get(op[0], op[1] if len(op) > 1 else 2)
            if op[0] == "jmp_top":
                length = 5
            laid.append((op, ip, length))
            ip += length
        return laid, ip

    def emit(self, ip, kind, cpl, length, addr=0, lat=0, cycles=1, llc=0, misp=0):
        self.rows.append((ip, kind, cpl, addr, lat, cycles, llc, misp, length))

    def run(self, name: str) -> None:
        """Expand function ``name`` (and everything it calls) into the trace."""
        f = self.funcs[name]
        self._run_ops(f, f["ops"])

    def _run_ops(self, f, laid) -> None:
        cpl, rng = f["cpl"], self.rng
        for item in laid:
            if item[0] == "loop":
                _, _, count, body, jip, blen, misp_last = item
                for it in range(count):
                    self._run_ops(f, body)
                    last = it == count - 1
                    misp = int(last and rng.random() < misp_last)
                    self.emit(jip, KIND_BRANCH, cpl, blen, cycles=1 + 15 * misp, misp=misp)
                continue
            op, ip, length = item
            k = op[0]
            if k == "alu":
                self.emit(ip, KIND_ALU, cpl, length)
            elif k == "div":
                self.emit(ip, KIND_DIV, cpl, length, cycles=26)
            elif k == "load":
                lat = int(op[2](rng))
                addr = f["data"] + 8 * int(rng.integers(0, 512))
                self.emit(ip, KIND_LOAD, cpl, length, addr=addr, lat=lat,
                          cycles=1 if lat <= LAT_L1 else lat, llc=int(lat >= LAT_DRAM))
            elif k == "store":
                addr = f["data"] + 8 * int(rng.integers(0, 512))
                self.emit(ip, KIND_STORE, cpl, length, addr=addr)
            elif k == "jcc":
                misp = int(rng.random() < op[2])
                self.emit(ip, KIND_BRANCH, cpl, length, cycles=1 + 15 * misp, misp=misp)
            elif k in ("call", "syscall"):
                self.emit(ip, KIND_BRANCH, cpl, length, cycles=1 if k == "call" else 30)
                self.run(op[1])
            elif k in ("ret", "sysret"):
                self.emit(ip, KIND_BRANCH, cpl, length, cycles=1 if k == "ret" else 30)
            elif k == "jmp_top":
                self.emit(ip, KIND_BRANCH, cpl, length)
            else:  # pragma: no cover - internal tables only
                raise AssertionError(f"unknown op {k!r}")

    def workload(self, name: str) -> Workload:
        cols = list(zip(*self.rows))
        arrays = {f: np.array(c, dtype=dt) for (f, dt), c in zip(_FIELDS.items(), cols)}
        symbols = sorted((f["base"], f["end"], n) for n, f in self.funcs.items())
        return Workload(**arrays, symbols=symbols, name=name)


def _lat_sampler(values, probs) -> Callable[[np.random.Generator], int]:
    values = np.asarray(values)
    probs = np.asarray(probs, dtype=float)
    return lambda rng: int(values[rng.choice(values.size, p=probs)])


def _seed(seed) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int; got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    return int(seed)


def _int_arg(name, value, lo, hi) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int; got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}; got {value}")
    return int(value)


# ----------------------------------------------------------------------
# Generators
# ----------------------------------------------------------------------

def hot_loop(n: int = 64, hot_index: int = 37, hot_cycles: int = 200, seed: int = 0) -> Workload:
    """A user-mode loop whose cost is one load that misses the LLC.

    pebslab only. ``n`` instructions in function ``hot_loop`` at 0x401000:
    1-cycle ALU ops, L1-hitting loads and stores with seeded x86 lengths
    (2..7 bytes), one LLC-missing load at ``hot_index`` (latency and
    cycles = ``hot_cycles``), and a backward jnz as the last instruction.
    The skid notebook's question: which IP do samples land on?
    """
    n = _int_arg("n", n, 2, 4096)
    hot_index = _int_arg("hot_index", hot_index, 0, n - 2)
    hot_cycles = _int_arg("hot_cycles", hot_cycles, 1, 65535)
    rng = np.random.default_rng(_seed(seed))
    l1 = _lat_sampler([LAT_L1], [1.0])
    ops = []
    for i in range(n - 1):
        if i == hot_index:
            ops.append(("load", 7, lambda _rng: hot_cycles))  # mov rax, [rip+disp32]
            continue
        k = rng.choice(3, p=[0.6, 0.25, 0.15])
        if k == 0:
            ops.append(("alu", int(rng.integers(2, 5))))
        elif k == 1:
            ops.append(("load", int(rng.integers(3, 8)), l1))
        else:
            ops.append(("store", int(rng.integers(3, 8))))
    asm = _Asm(rng)
    asm.function("hot_loop", USER_TEXT, CPL_USER, [("loop", 1, ops, 0.0)], USER_DATA)
    asm.run("hot_loop")
    w = asm.workload("hot_loop")
    # The hot load touches a big array (so it misses); the others hit in L1.
    addr = w.addr.copy()
    addr[hot_index] = HEAP_BASE + 64 * int(rng.integers(0, 1 << 20))
    llc = w.llc_miss.copy()
    llc[hot_index] = 1
    cycles = w.cycles.copy()
    cycles[hot_index] = hot_cycles
    return _replace(w, addr=addr, llc_miss=llc, cycles=cycles)


def pointer_chase(n: int = 256, seed: int = 0) -> Workload:
    """A linked-list walk: dependent loads with a mix of cache-level latencies.

    pebslab only. ``n`` instructions in user function ``chase``: n - 2
    loads ``mov rax, [rax]`` whose addresses are seeded cache lines in a
    64 MiB heap range and whose latencies are drawn (seeded) from L1 4,
    L2 12, LLC 40, DRAM 250 cycles (DRAM: llc_miss = 1) with probabilities
    0.5, 0.2, 0.2, 0.1; each load's cycles equal its latency (the chain
    serialises them); then ``dec rcx`` and a backward ``jnz``.
    """
    n = _int_arg("n", n, 3, 65536)
    rng = np.random.default_rng(_seed(seed))
    lat = _lat_sampler([LAT_L1, LAT_L2, LAT_LLC, LAT_DRAM], [0.5, 0.2, 0.2, 0.1])
    ops = [("load", 3, lat) for _ in range(n - 2)] + [("alu", 3)]
    asm = _Asm(rng)
    asm.function("chase", USER_TEXT, CPL_USER, [("loop", 1, ops, 0.0)], HEAP_BASE)
    asm.run("chase")
    w = asm.workload("chase")
    loads = w.kind == KIND_LOAD
    addr = w.addr.copy()
    addr[loads] = (np.uint64(HEAP_BASE)
                   + np.uint64(64) * rng.integers(0, 1 << 20, size=int(loads.sum())).astype(np.uint64))
    cycles = w.cycles.copy()
    cycles[loads] = w.latency[loads]
    return _replace(w, addr=addr, cycles=cycles)


def multi_function(seed: int = 0) -> Workload:
    """A small program: user functions calling each other and a read() syscall.

    pebslab only. ``main`` calls ``parse`` (a loop of loads and
    data-dependent branches, some mispredicted, calling ``hash_update``,
    which is ALU work plus one DIV), then enters the kernel with syscall:
    ``sys_read`` calls ``copy_user_generic`` (loads that sometimes miss
    the LLC, and stores) and returns with sysret; the exit branch of each
    loop is always mispredicted, as a predictor would on leaving a loop; then ``main`` calls
    ``memcpy_small`` and jumps back to its start. User code lives at
    0x401000.., kernel code at 0xffffffff81xxxxxx with cpl 0.
    """
    rng = np.random.default_rng(_seed(seed))
    l1l2 = _lat_sampler([LAT_L1, LAT_L2], [0.8, 0.2])
    parse_lat = _lat_sampler([LAT_L1, LAT_L2, LAT_LLC], [0.7, 0.2, 0.1])
    copy_lat = _lat_sampler([LAT_L1, LAT_LLC, LAT_DRAM], [0.5, 0.3, 0.2])
    asm = _Asm(rng)
    asm.function("main", USER_TEXT, CPL_USER, [
        ("alu", 4), ("load", 5, l1l2), ("alu", 3), ("call", "parse"),
        ("alu", 3), ("alu", 5), ("syscall", "sys_read"),
        ("alu", 3), ("store", 4), ("call", "memcpy_small"),
        ("alu", 3), ("jmp_top",),
    ], USER_STACK)
    asm.function("parse", USER_TEXT + 0x200, CPL_USER, [
        ("alu", 4), ("store", 5),
        ("loop", 12, [
            ("load", 4, parse_lat), ("alu", 3), ("alu", 3), ("jcc", 2, 0.2),
            ("load", 5, l1l2), ("alu", 2), ("call", "hash_update"), ("alu", 3),
        ], 1.0),
        ("alu", 4), ("ret",),
    ], USER_DATA)
    asm.function("hash_update", USER_TEXT + 0x400, CPL_USER, [
        ("alu", 3), ("alu", 4), ("alu", 3), ("alu", 4), ("alu", 3),
        ("div", 3), ("alu", 3), ("alu", 4), ("store", 4), ("ret",),
    ], USER_DATA + 0x1000)
    asm.function("memcpy_small", USER_TEXT + 0x600, CPL_USER, [
        ("alu", 3),
        ("loop", 6, [("load", 4, l1l2), ("store", 4), ("alu", 4)], 0.0),
        ("ret",),
    ], USER_DATA + 0x2000)
    asm.function("sys_read", KERNEL_TEXT + 0x2A1000, CPL_KERNEL, [
        ("alu", 4), ("alu", 3), ("load", 7, l1l2), ("jcc", 2, 0.05),
        ("alu", 3), ("call", "copy_user_generic"), ("alu", 3), ("alu", 4), ("sysret",),
    ], KERNEL_DATA)
    asm.function("copy_user_generic", KERNEL_TEXT + 0x5C4000, CPL_KERNEL, [
        ("alu", 3),
        ("loop", 32, [("load", 4, copy_lat), ("store", 4), ("alu", 4)], 1.0),
        ("ret",),
    ], KERNEL_DATA + 0x4000)
    asm.run("main")
    return asm.workload("multi_function")


def _replace(w: Workload, **arrays) -> Workload:
    kw = {f: getattr(w, f) for f in _FIELDS}
    kw.update(arrays)
    return Workload(**kw, symbols=list(w.symbols), name=w.name)


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "hot_loop": hot_loop,
    "pointer_chase": pointer_chase,
    "multi_function": multi_function,
}


def by_name(name: str, **kw) -> Workload:
    """Build the workload called ``name`` with keyword arguments ``kw``.

    pebslab only.
    """
    if name not in WORKLOADS:
        raise ValueError(f"name must be one of {', '.join(map(repr, WORKLOADS))}; got {name!r}")
    return WORKLOADS[name](**kw)
