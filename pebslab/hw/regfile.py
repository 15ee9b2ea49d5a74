"""The simulated core's state: register file slots, exit reasons, the event log.

pebslab only. The run loop keeps all its state in plain numpy arrays so that
numba can compile it: ``regs`` (uint64, one slot per register below) and
``log`` (int64 rows of what the hardware did, for the software layers to
decode). This module names the slots and rows, and holds the three tiny
helpers every part of the loop uses.
"""

from __future__ import annotations

import numpy as np

from .._jit import njit

U64 = np.uint64
MASK64 = (1 << 64) - 1

# ---- register file slots (regs is a uint64 array) ---------------------------
R_PMC0 = 0              # 8 GP counters
R_FIXED0 = 8            # 4 fixed counters
R_EVTSEL0 = 12          # 8 event selects
R_FIXED_CTR_CTRL = 20
R_GLOBAL_CTRL = 21
R_GLOBAL_STATUS = 22
R_PEBS_ENABLE = 23
R_DS_AREA = 24
R_PEBS_DATA_CFG = 25
R_CR3 = 26
R_TSC = 27
R_RIP = 28              # index of the next instruction in the workload
R_PRNG = 29             # counter of the counter-based PRNG
R_SKID = 30             # pending PMI countdown (0: none)
R_RETIRED = 31          # instructions retired since reset
R_EDGE_PREV = 32        # EDGE detect: condition state per GP counter (bit i)
R_EXIT_REASON = 33
R_EXIT_GPA = 34
R_EXIT_GVA = 35
R_EXIT_INFO = 36
R_PEBS_PENDING = 37     # counters (GLOBAL bit layout) whose PEBS assist is due
R_PEBS_EVT = 38         # workload index of the instruction that armed it
R_LBR_FROM = 39         # the last branch: its source IP ...
R_LBR_TO = 40           # ... and its target IP
R_NLOG = 41             # entries used in the event log
R_PEBS_DROPPED = 42     # records not written because the buffer was full
R_TIMER_DEADLINE = 43   # TSC at which a host timer tick forces an exit (0: none)
R_PMI_CAUSE = 44        # GLOBAL bits whose overflow scheduled the pending PMI
R_CPL = 45              # CPL of the last retired instruction
R_ASSISTS = 46          # PEBS records written since reset
R_PMI_COUNT = 47
R_DEBUGCTL = 48         # IA32_DEBUGCTL (the core models its LBR bit)
NREGS = 64

# ---- exit reasons (what core_run returns) ------------------------------------
EXIT_REASON_NONE = -1   # inside the loop: no exit (yet)
EXIT_BUDGET = 0
EXIT_PMI = 1
EXIT_EPT_VIOLATION = 2
EXIT_PEBS_FAULT = 3
EXIT_TIMER = 4
EXIT_LOG_FULL = 5
EXIT_NAMES = ("BUDGET", "PMI", "EPT_VIOLATION", "PEBS_FAULT", "TIMER", "LOG_FULL")

# ---- event log (int64 rows: kind, tsc, a, b, c, d) ---------------------------
LOG_OVERFLOW = 1        # a=counter (GLOBAL bit), b=instr index, c=ip, d=0
LOG_PEBS_WRITE = 2      # a=record gva, b=record hpa, c=size, d=applicable counters
LOG_PEBS_FAULT = 3      # a=gva, b=gpa, c=xlate code, d=xlate info
LOG_PMI = 4             # a=GLOBAL_STATUS, b=instr index of the interrupted IP, c=ip, d=cause
LOG_PEBS_DROP = 5       # a=pebs_index, b=abs max, c=size, d=applicable
LOG_COLS = 6
LOG_CAPACITY = 4096
# Exit with EXIT_LOG_FULL while at least this many rows are free. One
# instruction logs at most 15 rows: 12 overflows (8 GP + 4 fixed counters),
# a PEBS write or drop, a fault while reloading, and one PMI.
LOG_SLACK = 16


__all__ = [name for name in dir() if name.startswith(("R_", "EXIT_", "LOG_"))] + [
    "NREGS", "MASK64", "U64"]


@njit(cache=True)
def bit(i):
    """The uint64 with only bit ``i`` set (a GLOBAL_* bit of counter ``i``)."""
    return U64(1) << U64(i)


@njit(cache=True)
def as_i64(x):
    """Reinterpret a uint64 as int64 (for the int64 log)."""
    if x >= U64(0x8000000000000000):
        return np.int64(x - U64(0x8000000000000000)) + np.int64(-9223372036854775808)
    return np.int64(x)


@njit(cache=True)
def log_row(log, regs, kind, a, b, c, d):
    """Append one row (kind, TSC now, a, b, c, d) to the event log if it has room."""
    n = np.int64(regs[R_NLOG])
    if n < log.shape[0]:
        log[n, 0] = kind
        log[n, 1] = np.int64(regs[R_TSC])
        log[n, 2] = a
        log[n, 3] = b
        log[n, 4] = c
        log[n, 5] = d
        regs[R_NLOG] = U64(n + 1)
