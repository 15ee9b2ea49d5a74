"""The simulated Intel core: retire instructions, count, overflow, PEBS assist, PMI.

pebslab only: this is the "silicon". :func:`core_run` is the numba run loop
(DESIGN sections 2-3 and 5); :class:`Core` wraps its register file with
named MSR accesses that apply the hardware's rules (counter width, sign
extension of the legacy counter alias, reserved bits -> #GP).

Model, in one paragraph. A workload is a trace of instructions executed in a
cycle. Each retired instruction produces a small vector of event counts
(cycles, instructions, loads, ...). A GP counter counts the event its
IA32_PERFEVTSELx selects when EN and its GLOBAL_CTRL bit are set and the
privilege filter (USR/OS) matches the instruction's CPL; CMASK/INV/EDGE are
applied per cycle, with an instruction's events arriving in its last cycle
(the cycle events tick once in every cycle), see :func:`_count_inc`.
A counter that wraps past 2**width - 1 sets its GLOBAL_STATUS bit. If PEBS is
enabled for it (and the model allows PEBS there) a PEBS assist runs after the
instruction retires (trap-like): the record goes to ``pebs_index`` through the
guest page tables and EPT, the index advances, the counter reloads from
``pebs_event_reset``, and reaching the interrupt threshold sets bit 62 and
raises a PMI at once. Otherwise, with INT set, a PMI arrives after a seeded
skid of a few instructions.

The loop steps one instruction at a time only where something can happen:
a stretch in which no counter can wrap, no skid ends and no timer fires is
retired at once from per-workload prefix sums (:func:`event_prefix`), with
the same result; ``Core.fast_forward = False`` turns that off.

``Core.run(..., jit=False)`` runs the same source as plain Python: the loop
and every helper it calls (``.py_func`` of each, rebound together by
:func:`python_twin`), the reference the tests compare the compiled loop with.
"""

from __future__ import annotations

import sys
import types

import numpy as np

from .._jit import njit
from .errors import GuestFault
from . import msr as M
from .mmu import XLATE_EPT, XLATE_OK, XLATE_PF, tlb_new, translate
from .models import (EV_BR_MISP, EV_BRANCHES, EV_CYCLES, EV_INST, EV_LLC_MISS, EV_LLC_REF,
                     EV_LOADS, EV_NONE, EV_REF_CYCLES, EV_STORES, N_EVENTS, CpuModel,
                     get_model)

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
R_LBR_FROM = 39
R_LBR_TO = 40
R_NLOG = 41             # entries used in the event log
R_PEBS_DROPPED = 42     # records not written because the buffer was full
R_TIMER_DEADLINE = 43   # TSC at which a host timer tick forces an exit (0: none)
R_PMI_CAUSE = 44        # GLOBAL bits whose overflow scheduled the pending PMI
R_CPL = 45              # CPL of the last retired instruction
R_ASSISTS = 46          # PEBS records written since reset
R_PMI_COUNT = 47
NREGS = 64

# ---- model parameter slots (params is an int64 array) ----------------------
P_NGP, P_NFIXED, P_WIDTH, P_PEBS_FMT, P_PEBS_MASK, P_PEBS_FIXED_MASK, P_PEBS_EPT, \
    P_SKID_MIN, P_SKID_MAX, P_PEBS_TRAP, P_REC_SIZE, P_HAS_TSX, P_FAST_FORWARD = range(13)
NPARAMS = 16

# ---- exit reasons ------------------------------------------------------------
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

# Workload instruction kinds (kept equal to pebslab.workloads.KIND_*)
KIND_ALU, KIND_LOAD, KIND_STORE, KIND_BRANCH, KIND_DIV = 0, 1, 2, 3, 4

LLC_REF_LATENCY = 40    # ASSUMPTION: a load at least this slow reached the LLC

# DS area offsets (FACTS a.1)
DS_PEBS_BASE, DS_PEBS_INDEX, DS_PEBS_MAX, DS_PEBS_THRESH, DS_PEBS_RESET = 0x20, 0x28, 0x30, 0x38, 0x40
DS_FIXED_RESET_SLOT = 8  # fixed counter i uses reset slot 8+i (formats < 5)

RFLAGS_IN_RECORD = 0x246  # ASSUMPTION: a plausible RFLAGS (IF, ZF, PF, bit 1)


# =============================================================================
# numba kernels
# =============================================================================

@njit(cache=True)
def _splitmix(x):
    """One step of splitmix64 over a uint64 counter (the model's only randomness)."""
    z = x + U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


@njit(cache=True)
def _bit(i):
    return U64(1) << U64(i)


@njit(cache=True)
def _log(log, regs, kind, a, b, c, d):
    n = np.int64(regs[R_NLOG])
    if n < log.shape[0]:
        log[n, 0] = kind
        log[n, 1] = np.int64(regs[R_TSC])
        log[n, 2] = a
        log[n, 3] = b
        log[n, 4] = c
        log[n, 5] = d
        regs[R_NLOG] = U64(n + 1)


@njit(cache=True)
def _as_i64(x):
    """Reinterpret a uint64 as int64 (for the int64 log)."""
    if x >= U64(0x8000000000000000):
        return np.int64(x - U64(0x8000000000000000)) + np.int64(-9223372036854775808)
    return np.int64(x)


@njit(cache=True)
def _count_inc(n, n_each, cycles, cmask, inv, edge, prev):
    """Apply CMASK/INV/EDGE to one instruction; return (increment, new edge state).

    Per-cycle view (SDM Vol. 3B, IA32_PERFEVTSELx): the instruction takes
    ``cycles`` cycles; ``n`` events arrive in its last cycle and ``n_each``
    in each cycle before it (0 for most events; 1 for the cycle events,
    which tick once every cycle). With CMASK = 0 the counter adds every
    event and the SDM says INV is then ignored; EDGE is ignored too
    (ASSUMPTION: the SDM defines edge detect on the CMASK condition only).
    With CMASK > 0 each cycle whose event count is >= CMASK (< CMASK with
    INV) adds 1; with EDGE only a cycle where that condition becomes true
    after a cycle where it was false adds 1 (``prev``: the condition in the
    previous counted cycle).
    """
    if cmask == 0:
        return n + n_each * (cycles - 1), prev
    cond0 = (n_each >= cmask) != inv
    cond1 = (n >= cmask) != inv
    if edge:
        inc = 0
        state = prev
        if cycles > 1:
            if cond0 and not state:
                inc += 1
            state = cond0
        if cond1 and not state:
            inc += 1
        return inc, cond1
    inc = 0
    if cond0:
        inc += cycles - 1
    if cond1:
        inc += 1
    return inc, cond1


@njit(cache=True)
def _event_last(ev, kind, lat, llc, misp):
    """Events of internal id ``ev`` an instruction signals in its last cycle.

    pebslab only: the per-instruction activity vector of the model, one
    entry at a time (the cycle events add one in every cycle: see
    _count_inc; their last-cycle share is this 1).
    """
    if ev == EV_INST or ev == EV_CYCLES or ev == EV_REF_CYCLES:
        return 1
    if ev == EV_LOADS:
        return 1 if kind == KIND_LOAD else 0
    if ev == EV_STORES:
        return 1 if kind == KIND_STORE else 0
    if ev == EV_BRANCHES:
        return 1 if kind == KIND_BRANCH else 0
    if ev == EV_BR_MISP:
        return 1 if (kind == KIND_BRANCH and misp != 0) else 0
    if ev == EV_LLC_MISS:
        return 1 if (kind == KIND_LOAD and llc != 0) else 0
    if ev == EV_LLC_REF:
        return 1 if (kind == KIND_LOAD and (llc != 0 or lat >= LLC_REF_LATENCY)) else 0
    return 0


@njit(cache=True)
def _guest_rw_u64(mem, ept, cr3, tlb, gva, value, write):
    """Read (write=False) or write one u64 at a guest virtual address, as the assist does.

    Returns (code, gpa, hpa, info, value_read); gpa and hpa are int64 as
    translate returns them, ``gva`` and the values are uint64. Supervisor
    access. An access that straddles two pages translates each byte.
    """
    code, gpa, hpa, info = translate(mem, ept, cr3, gva, write, False, tlb)
    if code != XLATE_OK:
        return code, gpa, hpa, info, U64(0)
    base = np.int64(hpa)
    if 4096 - (base & 4095) < 8:
        out = U64(0)
        for k in range(8):
            c2, g2, h2, i2 = translate(mem, ept, cr3, gva + U64(k), write, False, tlb)
            if c2 != XLATE_OK:
                return c2, g2, h2, i2, U64(0)
            if write:
                mem[np.int64(h2)] = np.uint8((value >> U64(8 * k)) & U64(0xFF))
            else:
                out |= U64(mem[np.int64(h2)]) << U64(8 * k)
        return XLATE_OK, gpa, hpa, info, out
    if write:
        for k in range(8):
            mem[base + k] = np.uint8((value >> U64(8 * k)) & U64(0xFF))
        return XLATE_OK, gpa, hpa, info, U64(0)
    out = U64(0)
    for k in range(8):
        out |= U64(mem[base + k]) << U64(8 * k)
    return XLATE_OK, gpa, hpa, info, out


@njit(cache=True)
def _data_source(latency, llc_miss):
    """Data-source encoding for the record (ASSUMPTION: 1 L1, 3 L2, 4 LLC hit, 8 DRAM)."""
    if llc_miss:
        return U64(8)
    if latency <= 4:
        return U64(1)
    if latency <= 12:
        return U64(3)
    return U64(4)


@njit(cache=True)
def _pebs_assist(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                 w_cycles, w_llc, nxt):
    """Write one PEBS record for the pending counters; return an exit reason or -1.

    On a translation failure the record is abandoned; with EPT-friendly PEBS
    an EPT violation leaves the assist pending (retried after the exit).
    """
    pending = regs[R_PEBS_PENDING]
    evt = np.int64(regs[R_PEBS_EVT])
    cr3 = regs[R_CR3]
    ds = regs[R_DS_AREA]
    fmt = params[P_PEBS_FMT]
    width = params[P_WIDTH]
    cmask = (U64(1) << U64(width)) - U64(1)

    # 1. read the DS fields the assist needs (buffer base, index, max, threshold)
    index = U64(0)
    absmax = U64(0)
    thresh = U64(0)
    for k in range(4):
        gva = ds + U64(DS_PEBS_BASE + 8 * k)
        code, gpa, hpa, info, v = _guest_rw_u64(mem, ept, cr3, tlb, gva, U64(0), False)
        if code != XLATE_OK:
            return _pebs_fault(regs, params, log, gva, gpa, code, info)
        if k == 1:
            index = v
        elif k == 2:
            absmax = v
        elif k == 3:
            thresh = v

    kind = w_kind[evt]
    is_load = kind == KIND_LOAD
    is_mem = is_load or kind == KIND_STORE
    # 2. build the record
    n = 0
    if fmt >= 4:
        cfg = regs[R_PEBS_DATA_CFG] & U64(0xFF00000F)
        adaptive = False
        for j in range(8):
            if (pending >> U64(j)) & U64(1):
                if (regs[R_EVTSEL0 + j] >> U64(34)) & U64(1):
                    adaptive = True
        for j in range(4):
            if (pending >> U64(32 + j)) & U64(1):
                if (regs[R_FIXED_CTR_CTRL] >> U64(32 + 4 * j)) & U64(1):
                    adaptive = True
        # FACTS a.3: the low bits of word 0 are 0 when no producing counter
        # asked for an adaptive record, else the value of MSR_PEBS_DATA_CFG
        groups = cfg if adaptive else U64(0)
        nlbr = np.int64((cfg >> U64(24)) & U64(0xFF)) + 1
        size = 32
        if groups & U64(1):
            size += 32
        if groups & U64(2):
            size += 144
        if groups & U64(4):
            size += 256
        if groups & U64(8):
            size += 24 * nlbr
        # basic group
        rec[0] = (U64(size) << U64(48)) | groups
        rec[1] = w_ip[evt]
        rec[2] = pending
        rec[3] = regs[R_TSC]
        n = 4
        if groups & U64(1):
            rec[n] = w_addr[evt]
            rec[n + 1] = _data_source(w_lat[evt], w_llc[evt]) if is_load else U64(0)
            rec[n + 2] = U64(w_lat[evt]) if is_load else U64(0)
            rec[n + 3] = U64(0)
            n += 4
        if groups & U64(2):
            # flags, ip, ax, cx, dx, bx, sp, bp, si, di, r8..r15
            rec[n] = U64(RFLAGS_IN_RECORD)
            rec[n + 1] = w_ip[nxt]
            rec[n + 2] = U64(evt)
            rec[n + 3] = U64(w_lat[evt])
            rec[n + 4] = regs[R_TSC] & U64(0xFFFFFFFF)
            rec[n + 5] = w_addr[evt]
            rec[n + 6] = U64(0x7FFC0000F000)
            rec[n + 7] = U64(0)
            rec[n + 8] = U64(0)
            rec[n + 9] = U64(0)
            for k in range(8):
                rec[n + 10 + k] = U64(0)
            n += 18
        if groups & U64(4):
            for k in range(32):
                rec[n + k] = U64(0)
            n += 32
        if groups & U64(8):
            for k in range(nlbr):
                rec[n + 3 * k] = regs[R_LBR_FROM] if k == 0 else U64(0)
                rec[n + 3 * k + 1] = regs[R_LBR_TO] if k == 0 else U64(0)
                rec[n + 3 * k + 2] = U64(0)
            n += 3 * nlbr
    else:
        trap = params[P_PEBS_TRAP] != 0
        rec[0] = U64(RFLAGS_IN_RECORD)
        rec[1] = w_ip[nxt] if trap else w_ip[evt]
        rec[2] = U64(evt)                           # ax
        rec[3] = w_addr[evt]                        # bx
        rec[4] = U64(w_lat[evt])                    # cx
        rec[5] = regs[R_TSC] & U64(0xFFFFFFFF)      # dx
        rec[6] = U64(0)                             # si
        rec[7] = U64(0)                             # di
        rec[8] = U64(0)                             # bp
        rec[9] = U64(0x7FFC0000F000)                # sp
        for k in range(8):
            rec[10 + k] = U64(0)                    # r8..r15
        n = 18
        if fmt >= 1:
            if fmt >= 3:
                rec[18] = pending                   # applicable counters
            else:
                rec[18] = regs[R_GLOBAL_STATUS]     # GLOBAL_STATUS before the assist
            rec[19] = w_addr[evt] if is_mem else U64(0)                 # dla
            rec[20] = _data_source(w_lat[evt], w_llc[evt]) if is_load else U64(0)
            rec[21] = U64(w_lat[evt]) if is_load else U64(0)            # lat
            n = 22
        if fmt >= 2:
            rec[22] = w_ip[evt]                     # real_ip: the eventing IP
            rec[23] = U64(0)                        # tsx_tuning
            n = 24
        if fmt >= 3:
            rec[24] = regs[R_TSC]
            n = 25
    size = 8 * n

    # 3. write it at pebs_index unless the buffer is full
    if index + U64(size) > absmax:
        regs[R_PEBS_DROPPED] += U64(1)
        _log(log, regs, LOG_PEBS_DROP, _as_i64(index), _as_i64(absmax), size, _as_i64(pending))
    else:
        first_hpa = np.int64(0)
        for k in range(n):
            gva = index + U64(8 * k)
            code, gpa, hpa, info, v = _guest_rw_u64(mem, ept, cr3, tlb, gva, rec[k], True)
            if code != XLATE_OK:
                return _pebs_fault(regs, params, log, gva, gpa, code, info)
            if k == 0:
                first_hpa = np.int64(hpa)
        gva = ds + U64(DS_PEBS_INDEX)
        code, gpa, hpa, info, v = _guest_rw_u64(mem, ept, cr3, tlb, gva, index + U64(size), True)
        if code != XLATE_OK:
            return _pebs_fault(regs, params, log, gva, gpa, code, info)
        regs[R_ASSISTS] += U64(1)
        _log(log, regs, LOG_PEBS_WRITE, _as_i64(index), first_hpa, size, _as_i64(pending))
        index = index + U64(size)

    # 4. reload the counters from the DS reset slots
    for j in range(12):
        gbit = j if j < 8 else 32 + (j - 8)
        if (pending >> U64(gbit)) & U64(1):
            gva = ds + U64(DS_PEBS_RESET + 8 * j)
            code, gpa, hpa, info, v = _guest_rw_u64(mem, ept, cr3, tlb, gva, U64(0), False)
            if code != XLATE_OK:
                return _pebs_fault(regs, params, log, gva, gpa, code, info)
            slot = R_PMC0 + j if j < 8 else R_FIXED0 + (j - 8)
            regs[slot] = v & cmask
    regs[R_PEBS_PENDING] = U64(0)

    # 5. threshold: bit 62 and a PMI right away
    if index >= thresh:
        regs[R_GLOBAL_STATUS] |= _bit(62)
        return EXIT_PMI
    return -1


@njit(cache=True)
def _pebs_fault(regs, params, log, gva, gpa, code, info):
    regs[R_EXIT_GVA] = gva
    regs[R_EXIT_GPA] = U64(gpa)
    regs[R_EXIT_INFO] = U64(code * 256 + info)
    _log(log, regs, LOG_PEBS_FAULT, _as_i64(gva), np.int64(gpa), np.int64(code), np.int64(info))
    if code == XLATE_EPT and params[P_PEBS_EPT] != 0:
        return EXIT_EPT_VIOLATION      # EPT-friendly PEBS: the assist stays pending
    regs[R_PEBS_PENDING] = U64(0)      # the record is lost
    return EXIT_PEBS_FAULT


@njit(cache=True)
def _schedule_pmi(regs, params, gbit):
    """An INT counter overflowed: start the skid countdown (if none runs) and note the cause.

    The countdown is skid + 1 because the run loop decrements it once after
    the overflowing instruction itself; the PMI is taken after ``skid``
    more instructions retire, skid uniform in [skid_min, skid_max].
    """
    if regs[R_SKID] == U64(0):
        span = params[P_SKID_MAX] - params[P_SKID_MIN] + 1
        regs[R_PRNG] += U64(1)
        r = _splitmix(regs[R_PRNG])
        regs[R_SKID] = U64(params[P_SKID_MIN] + 1) + r % U64(span)
    regs[R_PMI_CAUSE] |= _bit(gbit)


@njit(cache=True)
def _overflow(regs, params, log, slot, gbit, v, cmask_w, i, ip, arm_pebs, pmi):
    """Counter ``gbit`` (GLOBAL bit layout) wrapped: status bit, log row, PEBS or PMI."""
    regs[slot] = v & cmask_w
    regs[R_GLOBAL_STATUS] |= _bit(gbit)
    _log(log, regs, LOG_OVERFLOW, gbit, i, ip, 0)
    if arm_pebs:
        if regs[R_PEBS_PENDING] == U64(0):
            regs[R_PEBS_EVT] = U64(i)
        regs[R_PEBS_PENDING] |= _bit(gbit)
    elif pmi:
        _schedule_pmi(regs, params, gbit)


@njit(cache=True)
def _assist_exit(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                 w_cycles, w_llc, nxt):
    """Run the pending PEBS assist; return the exit reason it forces, or -1."""
    r = _pebs_assist(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                     w_cycles, w_llc, nxt)
    if r >= 0:
        if r == EXIT_PMI:
            _log(log, regs, LOG_PMI, _as_i64(regs[R_GLOBAL_STATUS]), nxt,
                 _as_i64(w_ip[nxt]), np.int64(1) << 62)
            regs[R_PMI_COUNT] += U64(1)
        regs[R_EXIT_REASON] = U64(r)
    return r


@njit(cache=True)
def event_prefix(w_kind, w_cpl, w_cycles, w_lat, w_llc, w_misp):
    """Prefix sums of every event over a workload, per privilege filter; and the LBR index.

    pebslab only (the simulator's fast-forward table). ``pre[ev, r, p]`` is
    what a CMASK = 0 counter of event ``ev`` adds over instructions 0..p-1
    when it counts in rings ``r + 1`` (1: CPL 0 only, 2: CPL > 0 only, 3:
    both); ``pre[EV_CYCLES, 2]`` is the TSC's advance. ``lbr_last[p]`` is
    the last instruction at or before ``p`` that updates the LBR (a branch,
    or the last instruction, which jumps back to the first), or -1.
    Built from the same per-instruction rule as the stepping loop.
    """
    L = w_kind.shape[0]
    pre = np.zeros((N_EVENTS, 3, L + 1), np.int64)
    lbr_last = np.empty(L, np.int64)
    last = -1
    for q in range(L):
        kind = w_kind[q]
        cyc = np.int64(w_cycles[q])
        ring = 1 if w_cpl[q] == 0 else 2
        if kind == KIND_BRANCH or q == L - 1:
            last = q
        lbr_last[q] = last
        for ev in range(N_EVENTS):
            inc = 0
            if ev != EV_NONE:
                each = 1 if (ev == EV_CYCLES or ev == EV_REF_CYCLES) else 0
                inc = _event_last(ev, kind, w_lat[q], w_llc[q], w_misp[q]) + each * (cyc - 1)
            for r in range(3):
                pre[ev, r, q + 1] = pre[ev, r, q] + (inc if ((r + 1) & ring) else 0)
    return pre, lbr_last


@njit(cache=True)
def _span(row, i, kmax, room):
    """Largest k <= kmax with row[i + k] - row[i] <= room (row is non-decreasing)."""
    base = row[i]
    if row[i + kmax] - base <= room:
        return kmax
    lo = 0                  # row[i + lo] - base <= room always holds (0 <= room)
    hi = kmax               # row[i + hi] - base > room
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if row[i + mid] - base <= room:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True)
def core_run(regs, params, evmap, w_ip, w_kind, w_cpl, w_addr, w_lat, w_cycles, w_llc,
             w_misp, mem, ept, tlb, log, rec, budget, pre, lbr_last):
    """Run up to ``budget`` instructions; return the exit reason.

    pebslab only: the guest's instructions retiring on the physical core in
    VMX non-root operation. All state is in the arrays; nothing else changes.

    The control MSRs (event selects, FIXED_CTR_CTRL, GLOBAL_CTRL,
    PEBS_ENABLE) cannot change while the loop runs (only software writes
    them, between runs), so they are decoded once, into small per-counter
    arrays of the counters that can count at all; the per-instruction work
    is then a short loop over those.

    Fast-forward (``params[P_FAST_FORWARD]``, on by default): when every
    counting GP counter has CMASK = 0, the loop finds with ``pre`` (see
    :func:`event_prefix`) how many of the next instructions retire with
    nothing to report -- no counter wraps, the skid countdown does not
    reach 0, the TSC stays below the timer deadline, the trace does not
    wrap -- and retires them at once, with the same register state the
    instruction-by-instruction loop would leave. The instruction where
    something happens is then stepped normally.
    """
    L = w_ip.shape[0]
    ngp = params[P_NGP]
    nfixed = params[P_NFIXED]
    width = params[P_WIDTH]
    cmask_w = (U64(1) << U64(width)) - U64(1)
    pebs_ok = U64(params[P_PEBS_MASK]) | (U64(params[P_PEBS_FIXED_MASK]) << U64(32))
    gctrl = regs[R_GLOBAL_CTRL]
    pebs_en = regs[R_PEBS_ENABLE]
    all_ones = U64(0xFFFFFFFFFFFFFFFF)

    # --- decode the controls once: the "hardware decoder"
    # GP counter k of the active list: counter index, event id, rings it
    # counts in (bit 0: CPL 0, bit 1: CPL > 0), CMASK, INV, EDGE, simple
    # (CMASK = 0), PEBS armed, PMI on overflow.
    g_idx = np.zeros(8, np.int64)
    g_ev = np.zeros(8, np.int64)
    g_ring = np.zeros(8, np.int64)
    g_cmask = np.zeros(8, np.int64)
    g_inv = np.zeros(8, np.bool_)
    g_edge = np.zeros(8, np.bool_)
    g_simple = np.zeros(8, np.bool_)
    g_pebs = np.zeros(8, np.bool_)
    g_int = np.zeros(8, np.bool_)
    ng = 0
    for j in range(ngp):
        sel = regs[R_EVTSEL0 + j]
        if not ((sel >> U64(22)) & U64(1)) or not ((gctrl >> U64(j)) & U64(1)):
            continue
        if (sel >> U64(32)) & U64(1):
            continue        # IN_TX: counts only inside transactions, and the model has none
        ev = EV_NONE
        evp = False
        code = np.int64(sel & U64(0xFFFF))
        for r in range(evmap.shape[0]):
            if evmap[r, 0] == code:
                ev = evmap[r, 1]
                evp = evmap[r, 2] != 0
                break
        ring = 0
        if (sel >> U64(17)) & U64(1):
            ring |= 1
        if (sel >> U64(16)) & U64(1):
            ring |= 2
        if ring == 0:
            continue
        g_idx[ng] = j
        g_ev[ng] = ev
        g_ring[ng] = ring
        g_cmask[ng] = np.int64((sel >> U64(24)) & U64(0xFF))
        g_inv[ng] = ((sel >> U64(23)) & U64(1)) != U64(0)
        g_edge[ng] = ((sel >> U64(18)) & U64(1)) != U64(0)
        g_simple[ng] = g_cmask[ng] == 0
        g_pebs[ng] = (((pebs_en >> U64(j)) & U64(1)) != U64(0)
                      and ((pebs_ok >> U64(j)) & U64(1)) != U64(0) and evp)
        g_int[ng] = ((sel >> U64(20)) & U64(1)) != U64(0)
        ng += 1
    ff = params[P_FAST_FORWARD] != 0
    for k in range(ng):
        if not g_simple[k]:
            ff = False          # CMASK/EDGE counters have per-cycle state: step them
    # fixed counters: 0 instructions, 1 cycles, 2 ref cycles, 3 slots (4 per cycle)
    f_idx = np.zeros(4, np.int64)
    f_ring = np.zeros(4, np.int64)
    f_pebs = np.zeros(4, np.bool_)
    f_int = np.zeros(4, np.bool_)
    nf = 0
    fctrl = regs[R_FIXED_CTR_CTRL]
    for j in range(nfixed):
        bits = (fctrl >> U64(4 * j)) & U64(0xF)
        if not ((gctrl >> U64(32 + j)) & U64(1)) or (bits & U64(3)) == U64(0):
            continue
        f_idx[nf] = j
        f_ring[nf] = np.int64(bits & U64(3))
        f_pebs[nf] = (((pebs_en >> U64(32 + j)) & U64(1)) != U64(0)
                      and ((pebs_ok >> U64(32 + j)) & U64(1)) != U64(0))
        f_int[nf] = (bits & U64(8)) != U64(0)
        nf += 1

    deadline = regs[R_TIMER_DEADLINE]
    log_limit = log.shape[0] - LOG_SLACK
    regs[R_EXIT_GVA] = U64(0)
    regs[R_EXIT_GPA] = U64(0)
    regs[R_EXIT_INFO] = U64(0)

    # a PEBS assist left pending by an EPT exit is completed first
    if regs[R_PEBS_PENDING] != U64(0):
        r0 = _assist_exit(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                          w_cycles, w_llc, np.int64(regs[R_RIP]))
        if r0 >= 0:
            return r0

    i = np.int64(regs[R_RIP])
    done = np.int64(0)
    # TSC and the retired count live in locals (written through to regs every
    # instruction, so helpers and the caller see them; only this loop changes them)
    tsc = regs[R_TSC]
    retired = regs[R_RETIRED]
    ff_min = 2 if ff else budget + 1    # shortest stretch worth fast-forwarding
    cyc_row = pre[EV_CYCLES, 2]
    while done < budget:
        if np.int64(regs[R_NLOG]) > log_limit:
            regs[R_EXIT_REASON] = U64(EXIT_LOG_FULL)
            return EXIT_LOG_FULL
        # --- fast-forward over instructions where nothing can happen
        if budget - done >= ff_min and regs[R_PEBS_PENDING] == U64(0):
            kmax = min(budget - done, L - i)
            skid = np.int64(regs[R_SKID])
            if skid != 0:
                kmax = min(kmax, skid - 1)
            if kmax > 0 and deadline != U64(0):
                if deadline <= tsc:
                    kmax = 0
                elif deadline - tsc <= U64(1 << 62):
                    kmax = _span(cyc_row, i, kmax, np.int64(deadline - tsc) - 1)
            for k in range(ng):
                if kmax <= 0:
                    break
                slot = R_PMC0 + g_idx[k]
                kmax = _span(pre[g_ev[k], g_ring[k] - 1], i, kmax,
                             np.int64(cmask_w - regs[slot]))
            for k in range(nf):
                if kmax <= 0:
                    break
                j = f_idx[k]
                room = np.int64(cmask_w - regs[R_FIXED0 + j])
                if j == 0:
                    kmax = _span(pre[EV_INST, f_ring[k] - 1], i, kmax, room)
                elif j == 3:
                    kmax = _span(pre[EV_CYCLES, f_ring[k] - 1], i, kmax, room // 4)
                else:
                    kmax = _span(pre[EV_CYCLES, f_ring[k] - 1], i, kmax, room)
            if kmax >= ff_min:
                e = i + kmax
                tsc += U64(cyc_row[e] - cyc_row[i])
                retired += U64(kmax)
                regs[R_TSC] = tsc
                regs[R_RETIRED] = retired
                regs[R_CPL] = U64(w_cpl[e - 1])
                q = lbr_last[e - 1]
                if q >= i:
                    regs[R_LBR_FROM] = w_ip[q]
                    regs[R_LBR_TO] = w_ip[q + 1 if q + 1 < L else 0]
                for k in range(ng):
                    row = pre[g_ev[k], g_ring[k] - 1]
                    regs[R_PMC0 + g_idx[k]] += U64(row[e] - row[i])
                for k in range(nf):
                    j = f_idx[k]
                    row = pre[EV_INST if j == 0 else EV_CYCLES, f_ring[k] - 1]
                    d = row[e] - row[i]
                    regs[R_FIXED0 + j] += U64(4 * d if j == 3 else d)
                if skid != 0:
                    regs[R_SKID] = U64(skid - kmax)
                i = e if e < L else 0
                regs[R_RIP] = U64(i)
                done += kmax
                continue
        # --- one instruction
        done += 1
        kind = w_kind[i]
        cyc = np.int64(w_cycles[i])
        cpl = np.int64(w_cpl[i])
        tsc += U64(cyc)
        retired += U64(1)
        regs[R_TSC] = tsc
        regs[R_RETIRED] = retired
        regs[R_CPL] = U64(cpl)
        nxt = i + 1
        if nxt >= L:
            nxt = 0
        if kind == KIND_BRANCH or nxt == 0:
            regs[R_LBR_FROM] = w_ip[i]
            regs[R_LBR_TO] = w_ip[nxt]
        ring = 1 if cpl == 0 else 2

        # --- GP counters
        for k in range(ng):
            if not (g_ring[k] & ring):
                continue
            ev = g_ev[k]
            if ev == EV_INST:
                e1 = 1
            elif ev == EV_NONE:
                e1 = 0
            else:
                e1 = _event_last(ev, kind, w_lat[i], w_llc[i], w_misp[i])
            each = 1 if (ev == EV_CYCLES or ev == EV_REF_CYCLES) else 0
            if g_simple[k]:
                inc = e1 + each * (cyc - 1)
            else:
                j = g_idx[k]
                b = U64(1) << U64(j)
                prev = (regs[R_EDGE_PREV] & b) != U64(0)
                inc, state = _count_inc(e1, each, cyc, g_cmask[k], g_inv[k], g_edge[k], prev)
                if state:
                    regs[R_EDGE_PREV] |= b
                else:
                    regs[R_EDGE_PREV] &= all_ones ^ b
            if inc == 0:
                continue
            slot = R_PMC0 + g_idx[k]
            v = regs[slot] + U64(inc)
            if v > cmask_w:
                _overflow(regs, params, log, slot, g_idx[k], v, cmask_w, i,
                          _as_i64(w_ip[i]), g_pebs[k], g_int[k])
            else:
                regs[slot] = v
        # --- fixed counters
        for k in range(nf):
            if not (f_ring[k] & ring):
                continue
            j = f_idx[k]
            if j == 0:
                inc = 1
            elif j == 3:
                inc = 4 * cyc
            else:
                inc = cyc
            slot = R_FIXED0 + j
            v = regs[slot] + U64(inc)
            if v > cmask_w:
                _overflow(regs, params, log, slot, 32 + j, v, cmask_w, i,
                          _as_i64(w_ip[i]), f_pebs[k], f_int[k])
            else:
                regs[slot] = v
        regs[R_RIP] = U64(nxt)

        # --- PEBS assist (trap-like: after the instruction retired)
        if regs[R_PEBS_PENDING] != U64(0):
            r1 = _assist_exit(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr,
                              w_lat, w_cycles, w_llc, nxt)
            if r1 >= 0:
                return r1
        # --- interrupt-based PMI after its skid
        if regs[R_SKID] != U64(0):
            regs[R_SKID] -= U64(1)
            if regs[R_SKID] == U64(0):
                _log(log, regs, LOG_PMI, _as_i64(regs[R_GLOBAL_STATUS]), nxt,
                     _as_i64(w_ip[nxt]), _as_i64(regs[R_PMI_CAUSE]))
                regs[R_PMI_CAUSE] = U64(0)
                regs[R_PMI_COUNT] += U64(1)
                regs[R_EXIT_REASON] = U64(EXIT_PMI)
                return EXIT_PMI
        if deadline != U64(0) and tsc >= deadline:
            regs[R_EXIT_REASON] = U64(EXIT_TIMER)
            return EXIT_TIMER
        i = nxt
    regs[R_EXIT_REASON] = U64(EXIT_BUDGET)
    return EXIT_BUDGET


# =============================================================================
# Python side
# =============================================================================

def model_params(model: CpuModel) -> np.ndarray:
    """Pack a CPU model into the int64 parameter array the run loop reads."""
    p = np.zeros(NPARAMS, np.int64)
    p[P_NGP] = model.n_gp
    p[P_NFIXED] = model.n_fixed
    p[P_WIDTH] = model.width
    p[P_PEBS_FMT] = model.pebs_format
    p[P_PEBS_MASK] = model.pebs_counter_mask
    p[P_PEBS_FIXED_MASK] = model.pebs_fixed_mask
    p[P_PEBS_EPT] = int(model.pebs_ept)
    p[P_SKID_MIN] = model.skid_min
    p[P_SKID_MAX] = model.skid_max
    p[P_PEBS_TRAP] = int(bool(model.perf_capabilities & M.PERF_CAP_PEBS_TRAP))
    p[P_REC_SIZE] = model.pebs_record_size
    p[P_HAS_TSX] = int(model.has_tsx)
    p[P_FAST_FORWARD] = 1
    return p


def event_map(model: CpuModel) -> np.ndarray:
    """The model's event table as int64 rows (event|umask<<8, EV_* kind, pebs-capable)."""
    rows = [(ev.event | ev.umask << 8, ev.kind, int(ev.pebs)) for ev in model.events]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def is_canonical(addr: int) -> bool:
    """True if a 64-bit address is canonical for 48-bit linear addresses."""
    top = addr >> 47
    return top == 0 or top == (1 << 17) - 1


_TWIN = None


def python_twin():
    """Return :func:`core_run` as plain Python, with every helper it calls plain Python too.

    pebslab only. ``core_run.py_func`` alone would still call the compiled
    helpers (``_pebs_assist``, ``translate``, ...), which hand back Python
    ints instead of numpy scalars; here each numba function of this module
    and of :mod:`pebslab.hw.mmu` is rebuilt from its ``.py_func`` code over
    one namespace, so the whole run loop is the interpreted reference.
    Under ``NUMBA_DISABLE_JIT=1`` the functions already are plain Python.
    """
    global _TWIN
    if _TWIN is not None:
        return _TWIN
    if not hasattr(core_run, "py_func"):      # NUMBA_DISABLE_JIT=1
        _TWIN = core_run
        return _TWIN
    from . import mmu
    spaces = {}
    rebuilt = {}
    for mod in (mmu, sys.modules[__name__]):
        ns = dict(vars(mod))
        spaces[mod.__name__] = ns
        for name, obj in vars(mod).items():
            py = getattr(obj, "py_func", None)
            if py is not None and getattr(py, "__module__", None) == mod.__name__:
                rebuilt[id(obj)] = types.FunctionType(py.__code__, ns, py.__name__,
                                                      py.__defaults__, py.__closure__)
    for ns in spaces.values():
        for name, obj in list(ns.items()):
            if id(obj) in rebuilt:
                ns[name] = rebuilt[id(obj)]
    _TWIN = rebuilt[id(core_run)]
    return _TWIN


class Core:
    """One logical CPU of a given model: its PMU registers and its run loop.

    pebslab only. ``rdmsr``/``wrmsr`` are what the *hardware* does when the
    host kernel (or the VMX MSR-load lists) access the real MSRs; what a guest
    sees goes through KVM instead (pebslab.kvm.pmu).
    """

    GP_MSRS = None

    def __init__(self, cpu="silvermont", seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.model = get_model(cpu)
        self.regs = np.zeros(NREGS, np.uint64)
        self.params = model_params(self.model)
        self.evmap = event_map(self.model)
        self.regs[R_PRNG] = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK64)
        self.log = np.zeros((LOG_CAPACITY, LOG_COLS), np.int64)
        self.rec = np.zeros(1024, np.uint64)
        self.tlb = tlb_new()
        self.jit = True
        # Retire uneventful stretches at once (see core_run); False steps every
        # instruction, the reference the fast path is tested against.
        self.fast_forward = True
        self._prefix_cache = {}

    # --- register access ----------------------------------------------------
    @property
    def width_mask(self) -> int:
        return (1 << self.model.width) - 1

    def _slot(self, index: int) -> tuple[int, str]:
        m = self.model
        if M.MSR_IA32_PERFCTR0 <= index < M.MSR_IA32_PERFCTR0 + m.n_gp:
            return R_PMC0 + index - M.MSR_IA32_PERFCTR0, "pmc_legacy"
        if M.MSR_IA32_PMC0 <= index < M.MSR_IA32_PMC0 + m.n_gp:
            if not m.perf_capabilities & M.PERF_CAP_FW_WRITES:
                return -1, ""
            return R_PMC0 + index - M.MSR_IA32_PMC0, "pmc_full"
        if M.MSR_P6_EVNTSEL0 <= index < M.MSR_P6_EVNTSEL0 + m.n_gp:
            return R_EVTSEL0 + index - M.MSR_P6_EVNTSEL0, "evtsel"
        if M.MSR_CORE_PERF_FIXED_CTR0 <= index < M.MSR_CORE_PERF_FIXED_CTR0 + m.n_fixed:
            return R_FIXED0 + index - M.MSR_CORE_PERF_FIXED_CTR0, "fixed"
        table = {
            M.MSR_CORE_PERF_FIXED_CTR_CTRL: (R_FIXED_CTR_CTRL, "fixed_ctrl"),
            M.MSR_CORE_PERF_GLOBAL_CTRL: (R_GLOBAL_CTRL, "global_ctrl"),
            M.MSR_CORE_PERF_GLOBAL_STATUS: (R_GLOBAL_STATUS, "global_status"),
            M.MSR_CORE_PERF_GLOBAL_OVF_CTRL: (-1, "ovf_ctrl"),
            M.MSR_IA32_PEBS_ENABLE: (R_PEBS_ENABLE, "pebs_enable"),
            M.MSR_IA32_DS_AREA: (R_DS_AREA, "ds_area"),
            M.MSR_IA32_PERF_CAPABILITIES: (-1, "perf_cap"),
        }
        if index == M.MSR_PEBS_DATA_CFG and m.pebs_format >= 4:
            return R_PEBS_DATA_CFG, "data_cfg"
        return table.get(index, (-1, ""))

    def valid_bits(self, kind: str, idx: int | None = None) -> int:
        """Writable bits of an MSR kind on this model (everything else #GPs).

        For ``"evtsel"``, ``idx`` is the GP counter: IN_TXCP (bit 33) exists
        only on IA32_PERFEVTSEL2 (FACTS b.2; KVM's ``pmc->idx == 2`` check).
        """
        m = self.model
        if kind == "evtsel":
            v = 0xFFFFFFFF
            if m.has_tsx:
                v |= M.HSW_IN_TX
                if idx == 2:
                    v |= M.HSW_IN_TX_CHECKPOINTED
            if m.adaptive:
                v |= M.ICL_EVENTSEL_ADAPTIVE
            return v
        if kind == "fixed_ctrl":
            v = 0
            for i in range(m.n_fixed):
                v |= 0xF << (4 * i)
                if m.adaptive:
                    v |= 1 << (32 + 4 * i)
            return v
        if kind in ("global_ctrl", "ovf_ctrl"):
            v = m.counter_mask
            if kind == "ovf_ctrl":
                v |= M.GLOBAL_STATUS_BUFFER_OVF | M.GLOBAL_STATUS_COND_CHG
            return v
        if kind == "pebs_enable":
            if m.adaptive:
                return m.pebs_counter_mask | m.pebs_fixed_mask << 32
            return m.pebs_counter_mask | m.pebs_counter_mask << M.PEBS_LL_EN_SHIFT
        if kind == "data_cfg":
            return M.KVM_PEBS_DATA_CFG_VALID
        return (1 << 64) - 1

    def rdmsr(self, index: int) -> int:
        """Read a PMU MSR as the hardware returns it; unknown MSRs raise #GP."""
        _check_msr_index(index)
        slot, kind = self._slot(index)
        if kind == "perf_cap":
            return self.model.perf_capabilities
        if kind == "ovf_ctrl":
            return 0
        if slot < 0:
            raise GuestFault("#GP", msr=index, reason="no such MSR on " + self.model.name)
        return int(self.regs[slot])

    def wrmsr(self, index: int, value: int) -> None:
        """Write a PMU MSR with the hardware's rules; reserved bits raise #GP."""
        _check_msr_index(index)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"value must be an int; got {type(value).__name__}")
        if not 0 <= value <= MASK64:
            raise ValueError(f"value must be in 0..2**64-1; got {value}")
        slot, kind = self._slot(index)
        if kind in ("perf_cap", "global_status") or (slot < 0 and kind != "ovf_ctrl"):
            raise GuestFault("#GP", msr=index, value=value,
                             reason="read-only" if kind else "no such MSR on " + self.model.name)
        if kind == "pmc_legacy":
            # legacy alias: bits 31:0 written, sign-extended to the counter width
            low = value & 0xFFFFFFFF
            if low & 0x80000000:
                low |= ~0xFFFFFFFF
            self.regs[slot] = np.uint64(low & self.width_mask)
            return
        if kind in ("pmc_full", "fixed"):
            if value & ~self.width_mask:
                raise GuestFault("#GP", msr=index, value=value,
                                 reason=f"bits above the {self.model.width}-bit counter width")
            self.regs[slot] = np.uint64(value)
            return
        if kind == "ds_area":
            if not is_canonical(value):
                raise GuestFault("#GP", msr=index, value=value, reason="non-canonical address")
            self.regs[slot] = np.uint64(value)
            return
        idx = index - M.MSR_P6_EVNTSEL0 if kind == "evtsel" else None
        bad = value & ~self.valid_bits(kind, idx)
        if bad:
            raise GuestFault("#GP", msr=index, value=value, reason=f"reserved bits {bad:#x}")
        if kind == "ovf_ctrl":
            self.regs[R_GLOBAL_STATUS] = np.uint64(int(self.regs[R_GLOBAL_STATUS]) & ~value)
            return
        self.regs[slot] = np.uint64(value)

    # --- running --------------------------------------------------------------
    def run(self, workload, budget: int, mem: np.ndarray, ept: np.ndarray,
            jit: bool | None = None) -> int:
        """Run ``budget`` instructions of ``workload`` over guest memory; return the exit reason.

        ``mem`` is host physical memory (uint8) and ``ept`` the running VM's EPT.
        With ``jit=False`` the same loop runs as plain Python (:func:`python_twin`).
        ``self.fast_forward`` (default True) lets the loop retire uneventful
        stretches at once; the result is the same either way.
        """
        if not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 0:
            raise ValueError(f"budget must be a non-negative int; got {budget!r}")
        if not isinstance(mem, np.ndarray) or mem.dtype != np.uint8 or mem.ndim != 1:
            raise TypeError("mem must be a 1-D numpy uint8 array (host physical memory)")
        if not isinstance(ept, np.ndarray) or ept.dtype != np.uint64 or ept.ndim != 1:
            raise TypeError("ept must be a 1-D numpy uint64 array (one entry per guest frame)")
        w = workload
        if len(w) == 0:
            raise ValueError("workload must have at least one instruction")
        if int(self.regs[R_RIP]) >= len(w):
            self.regs[R_RIP] = np.uint64(0)
        use_jit = self.jit if jit is None else jit
        fn = core_run if use_jit else python_twin()
        pre, lbr_last = self._prefix(w, fn)
        self.params[P_FAST_FORWARD] = int(bool(self.fast_forward))
        with np.errstate(over="ignore"):
            return int(fn(self.regs, self.params, self.evmap, w.ip, w.kind, w.cpl, w.addr,
                          w.latency, w.cycles, w.llc_miss, w.br_misp, mem, ept, self.tlb,
                          self.log, self.rec, int(budget), pre, lbr_last))

    def _prefix(self, w, fn):
        """The fast-forward table of workload ``w`` (built once per workload and loop).

        Built by the same flavour of code as the loop that uses it (compiled,
        or the plain-Python twin's ``event_prefix``). Workloads are immutable,
        so the workload object itself is the cache key (one per flavour).
        """
        key = fn is core_run
        hit = self._prefix_cache.get(key)
        if hit is not None and hit[0] is w:
            return hit[1], hit[2]
        build = event_prefix if key else fn.__globals__.get("event_prefix", event_prefix)
        with np.errstate(over="ignore"):
            pre, lbr_last = build(w.kind, w.cpl, w.cycles, w.latency, w.llc_miss, w.br_misp)
        self._prefix_cache[key] = (w, pre, lbr_last)
        return pre, lbr_last

    def take_log(self) -> np.ndarray:
        """Return (and clear) the hardware event log rows written since the last call."""
        n = int(self.regs[R_NLOG])
        out = self.log[:n].copy()
        self.regs[R_NLOG] = np.uint64(0)
        return out

    def flush_tlb(self) -> None:
        """Invalidate every cached translation (INVLPG-all / CR3 reload / INVEPT)."""
        self.tlb[:, 0] = -1

    @property
    def rip(self) -> int:
        return int(self.regs[R_RIP])

    @property
    def tsc(self) -> int:
        return int(self.regs[R_TSC])

    def counter(self, idx: int) -> int:
        """Value of GP counter ``idx`` or fixed counter ``idx - 32``."""
        if 0 <= idx < self.model.n_gp:
            return int(self.regs[R_PMC0 + idx])
        if 32 <= idx < 32 + self.model.n_fixed:
            return int(self.regs[R_FIXED0 + idx - 32])
        raise ValueError(f"idx must be a GP counter 0..{self.model.n_gp - 1} or a fixed "
                         f"counter 32..{31 + self.model.n_fixed}; got {idx!r}")


def _check_msr_index(index) -> None:
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"msr index must be an int; got {type(index).__name__}")
    if not 0 <= index < 1 << 32:
        raise ValueError(f"msr index must be in 0..0xffffffff; got {index}")
