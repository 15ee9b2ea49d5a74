"""Counting: which events an instruction signals, how the controls select them, overflow.

pebslab only: the counting half of the simulated core (the PEBS assist is
in :mod:`pebslab.hw.assist`, the run loop in :mod:`pebslab.hw.core`). In
datasheet order:

1. :func:`decode_gp_controls` / :func:`decode_fixed_controls` read
   IA32_PERFEVTSELx, IA32_FIXED_CTR_CTRL, GLOBAL_CTRL and PEBS_ENABLE once
   per run into short per-counter arrays (the controls cannot change while
   the guest runs: only software writes them, between runs);
2. :func:`event_last` is what one retired instruction signals for one
   event, :func:`count_inc` applies CMASK / INV / EDGE to it;
3. :func:`event_prefix` and :func:`span` are the fast-forward table: how
   far the loop can retire instructions at once with no counter wrapping;
4. :func:`overflow` is a counter wrapping: its GLOBAL_STATUS bit, then a
   PEBS assist armed or a PMI scheduled after a seeded skid.
"""

from __future__ import annotations

import numpy as np

from .._jit import njit
from . import msr as M
from .models import (EV_BR_MISP, EV_BRANCHES, EV_CYCLES, EV_INST, EV_LLC_MISS, EV_LLC_REF,
                     EV_LOADS, EV_NONE, EV_REF_CYCLES, EV_STORES, KIND_BRANCH, KIND_LOAD,
                     KIND_STORE, N_EVENTS)
from .regfile import (LOG_OVERFLOW, R_EVTSEL0, R_FIXED_CTR_CTRL, R_GLOBAL_CTRL,
                      R_GLOBAL_STATUS, R_PEBS_ENABLE, R_PEBS_EVT, R_PEBS_PENDING, R_PMI_CAUSE,
                      R_PRNG, R_SKID, U64, bit, log_row)

LLC_REF_LATENCY = 40    # ASSUMPTION: a load at least this slow reached the LLC

# IA32_PERFEVTSELx fields (SDM Vol. 3B, "IA32_PERFEVTSELx MSRs"; FACTS b.2),
# as uint64 so numba never mixes signed and unsigned
_SEL_CODE = U64(M.ARCH_PERFMON_EVENTSEL_EVENT | M.ARCH_PERFMON_EVENTSEL_UMASK)
_SEL_USR = U64(M.ARCH_PERFMON_EVENTSEL_USR)
_SEL_OS = U64(M.ARCH_PERFMON_EVENTSEL_OS)
_SEL_EDGE = U64(M.ARCH_PERFMON_EVENTSEL_EDGE)
_SEL_INT = U64(M.ARCH_PERFMON_EVENTSEL_INT)
_SEL_EN = U64(M.ARCH_PERFMON_EVENTSEL_ENABLE)
_SEL_INV = U64(M.ARCH_PERFMON_EVENTSEL_INV)
_SEL_CMASK = U64(M.ARCH_PERFMON_EVENTSEL_CMASK)
_SEL_CMASK_SHIFT = U64(M.ARCH_PERFMON_EVENTSEL_CMASK_SHIFT)
_SEL_IN_TX = U64(M.HSW_IN_TX)
# IA32_FIXED_CTR_CTRL: 4 bits per counter (FACTS b.3)
_FIX_STRIDE = M.INTEL_FIXED_BITS_STRIDE
_FIX_FIELD = U64(0xF)
_FIX_OS = U64(M.INTEL_FIXED_0_KERNEL)
_FIX_USR = U64(M.INTEL_FIXED_0_USER)
_FIX_PMI = U64(M.INTEL_FIXED_0_ENABLE_PMI)

# ASSUMPTION: what the core does with an IA32_PEBS_ENABLE bit for a counter
# its model has no PEBS on (e.g. bit 1 or LL_EN_PMC0, bit 32, on Silvermont:
# SDM 18.6.1.1 gives it PEBS on IA32_PMC0 only and no load-latency facility;
# FACTS g.3). The SDM calls such bits reserved without saying what the
# hardware does (the WRMSR reference: software should write reserved bits
# as read). The model: WRMSR of such a value is a #GP (Core.wrmsr), and when
# the register holds one anyway -- the 2014 patch accepts 0xf0000000f from a
# Silvermont guest and VM entry loads it through the MSR-load list -- the
# bit is ignored: that counter counts and overflows as without PEBS (a PMI
# if its INT bit is set), no record is written, no latency is measured.
PEBS_ENABLE_IGNORES_OTHER_BITS = True

# The rings a counter counts in, as the bit set the loop tests an
# instruction's ring against: bit 0 CPL 0 (OS), bit 1 CPL > 0 (USR).
RING_OS = 1
RING_USR = 2

# Fixed counters: what each counts (FACTS b.3; fixed counter 3, TOPDOWN.SLOTS,
# counts SLOTS_PER_CYCLE per cycle: ASSUMPTION, a 4-wide machine)
FIXED_EVENTS = (EV_INST, EV_CYCLES, EV_REF_CYCLES, EV_CYCLES)
SLOTS_PER_CYCLE = 4
FIXED_SCALE = (1, 1, 1, SLOTS_PER_CYCLE)
FIXED_EACH = (0, 1, 1, 1)     # every_cycle() of FIXED_EVENTS: all but instructions


@njit(cache=True, inline="always")
def is_set(value, mask):
    """True if any bit of the uint64 ``mask`` is set in ``value``."""
    return (value & mask) != U64(0)


# =============================================================================
# 1. decode the controls
# =============================================================================

# Rows of the decoded-controls tables (int64 arrays, one column per active
# counter; see decode_gp_controls / decode_fixed_controls).
C_IDX = 0       # counter index (GP: i of PMCi; fixed: i of FIXED_CTRi)
C_EV = 1        # internal event id (EV_*)
C_RING = 2      # rings it counts in: RING_OS | RING_USR
C_CMASK = 3     # CMASK (GP only)
C_INV = 4       # INV (GP only)
C_EDGE = 5      # EDGE (GP only)
C_PEBS = 6      # an overflow arms the PEBS assist
C_INT = 7       # an overflow (without PEBS) raises a PMI after the skid
C_EACH = 8      # 1 if the event ticks in every cycle of an instruction (see every_cycle)
C_SCALE = 9     # events per signal: 1, SLOTS_PER_CYCLE for TOPDOWN.SLOTS
C_ROWS = 10


@njit(cache=True)
def decode_gp_controls(regs, params, evmap, t):
    """Decode the event selects of the GP counters that can count at all.

    Fills the int64 table ``t`` (C_ROWS x 8): column k < n (rows C_*) is
    one active counter; returns n. A counter is active when EN and its GLOBAL_CTRL bit are
    set, it counts in some ring, and IN_TX is clear (IN_TX counts only
    inside transactions, and the model has none). PEBS is armed when its
    PEBS_ENABLE bit is set, the model has PEBS on that counter (see
    PEBS_ENABLE_IGNORES_OTHER_BITS) and the event is PEBS-capable.
    """
    t[:, :] = 0
    gctrl = regs[R_GLOBAL_CTRL]
    pebs_en = regs[R_PEBS_ENABLE]
    pebs_ok = U64(params.pebs_gp_mask) if PEBS_ENABLE_IGNORES_OTHER_BITS else ~U64(0)
    n = 0
    for j in range(params.n_gp):
        sel = regs[R_EVTSEL0 + j]
        if not is_set(sel, _SEL_EN) or not is_set(gctrl, bit(j)):
            continue
        if is_set(sel, _SEL_IN_TX):
            continue
        ring = 0
        if is_set(sel, _SEL_OS):
            ring |= RING_OS
        if is_set(sel, _SEL_USR):
            ring |= RING_USR
        if ring == 0:
            continue
        ev = EV_NONE
        ev_pebs = False
        code = np.int64(sel & _SEL_CODE)
        for r in range(evmap.shape[0]):
            if evmap[r, 0] == code:
                ev = evmap[r, 1]
                ev_pebs = evmap[r, 2] != 0
                break
        t[C_IDX, n] = j
        t[C_EV, n] = ev
        t[C_RING, n] = ring
        t[C_CMASK, n] = np.int64((sel & _SEL_CMASK) >> _SEL_CMASK_SHIFT)
        t[C_INV, n] = is_set(sel, _SEL_INV)
        t[C_EDGE, n] = is_set(sel, _SEL_EDGE)
        t[C_PEBS, n] = is_set(pebs_en, bit(j)) and is_set(pebs_ok, bit(j)) and ev_pebs
        t[C_INT, n] = is_set(sel, _SEL_INT)
        t[C_EACH, n] = every_cycle(ev)
        t[C_SCALE, n] = 1
        n += 1
    return n


@njit(cache=True)
def decode_fixed_controls(regs, params, t):
    """Decode IA32_FIXED_CTR_CTRL for the fixed counters that can count at all.

    Fills ``t`` as decode_gp_controls does (rows C_IDX, C_EV, C_RING,
    C_PEBS, C_INT); returns n. Fixed counter i is active when GLOBAL_CTRL bit 32 + i
    and its OS or USR bit are set; its event is FIXED_EVENTS[i].
    """
    t[:, :] = 0
    gctrl = regs[R_GLOBAL_CTRL]
    pebs_en = regs[R_PEBS_ENABLE]
    pebs_ok = U64(params.pebs_fixed_mask) << U64(M.INTEL_PMC_IDX_FIXED)
    if not PEBS_ENABLE_IGNORES_OTHER_BITS:
        pebs_ok = ~U64(0)
    fctrl = regs[R_FIXED_CTR_CTRL]
    n = 0
    for j in range(params.n_fixed):
        gbit = bit(M.INTEL_PMC_IDX_FIXED + j)
        bits = (fctrl >> U64(_FIX_STRIDE * j)) & _FIX_FIELD
        ring = 0
        if is_set(bits, _FIX_OS):
            ring |= RING_OS
        if is_set(bits, _FIX_USR):
            ring |= RING_USR
        if not is_set(gctrl, gbit) or ring == 0:
            continue
        t[C_IDX, n] = j
        t[C_EV, n] = FIXED_EVENTS[j]
        t[C_RING, n] = ring
        t[C_PEBS, n] = is_set(pebs_en, gbit) and is_set(pebs_ok, gbit)
        t[C_INT, n] = is_set(bits, _FIX_PMI)
        t[C_EACH, n] = every_cycle(FIXED_EVENTS[j])
        t[C_SCALE, n] = FIXED_SCALE[j]
        n += 1
    return n


# =============================================================================
# 2. what an instruction signals, and what a counter adds
# =============================================================================

@njit(cache=True, inline="always")
def event_last(ev, kind, lat, llc, misp):
    """Events of internal id ``ev`` an instruction signals in its last cycle.

    pebslab only: the per-instruction activity vector of the model, one
    entry at a time (the cycle events add one in every cycle: see
    count_inc; their last-cycle share is this 1).
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


@njit(cache=True, inline="always")
def every_cycle(ev):
    """1 for the events that tick in every cycle of an instruction (cycles), else 0."""
    return 1 if (ev == EV_CYCLES or ev == EV_REF_CYCLES) else 0


@njit(cache=True, inline="always")
def count_inc(n, n_each, cycles, cmask, inv, edge, prev):
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


# =============================================================================
# 3. the fast-forward table
# =============================================================================

@njit(cache=True)
def event_prefix(w_kind, w_cpl, w_cycles, w_lat, w_llc, w_misp):
    """Prefix sums of every event over a workload, per privilege filter; and the LBR index.

    pebslab only (the simulator's fast-forward table). ``pre[ev, r, p]`` is
    what a CMASK = 0 counter of event ``ev`` adds over instructions 0..p-1
    when it counts in rings ``r + 1`` (RING_OS, RING_USR, or both);
    ``pre[EV_CYCLES, 2]`` is the TSC's advance. ``lbr_last[p]`` is the last
    instruction at or before ``p`` that updates the LBR (a branch, or the
    last instruction, which jumps back to the first), or -1.
    Built from the same per-instruction rule as the stepping loop.
    """
    L = w_kind.shape[0]
    pre = np.zeros((N_EVENTS, 3, L + 1), np.int64)
    lbr_last = np.empty(L, np.int64)
    last = -1
    for q in range(L):
        kind = w_kind[q]
        cyc = np.int64(w_cycles[q])
        ring = RING_OS if w_cpl[q] == 0 else RING_USR
        if kind == KIND_BRANCH or q == L - 1:
            last = q
        lbr_last[q] = last
        for ev in range(N_EVENTS):
            inc = 0
            if ev != EV_NONE:
                inc = event_last(ev, kind, w_lat[q], w_llc[q], w_misp[q]) \
                    + every_cycle(ev) * (cyc - 1)
            for r in range(3):
                pre[ev, r, q + 1] = pre[ev, r, q] + (inc if ((r + 1) & ring) else 0)
    return pre, lbr_last


@njit(cache=True, inline="always")
def span(row, i, kmax, room):
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


# =============================================================================
# 4. overflow
# =============================================================================

@njit(cache=True)
def splitmix(x):
    """One step of splitmix64 over a uint64 counter (the model's only randomness)."""
    z = x + U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


@njit(cache=True)
def schedule_pmi(regs, params, gbit):
    """An INT counter overflowed: start the skid countdown (if none runs) and note the cause.

    The countdown is skid + 1 because the run loop decrements it once after
    the overflowing instruction itself; the PMI is taken after ``skid``
    more instructions retire, skid uniform in [skid_min, skid_max].
    """
    if regs[R_SKID] == U64(0):
        width = params.skid_max - params.skid_min + 1
        regs[R_PRNG] += U64(1)
        r = splitmix(regs[R_PRNG])
        regs[R_SKID] = U64(params.skid_min + 1) + r % U64(width)
    regs[R_PMI_CAUSE] |= bit(gbit)


@njit(cache=True)
def overflow(regs, params, log, slot, gbit, v, cmask_w, i, ip, arm_pebs, pmi):
    """Counter ``gbit`` (GLOBAL bit layout) wrapped: status bit, log row, PEBS or PMI."""
    regs[slot] = v & cmask_w
    regs[R_GLOBAL_STATUS] |= bit(gbit)
    log_row(log, regs, LOG_OVERFLOW, gbit, i, ip, 0)
    if arm_pebs:
        if regs[R_PEBS_PENDING] == U64(0):
            regs[R_PEBS_EVT] = U64(i)
        regs[R_PEBS_PENDING] |= bit(gbit)
    elif pmi:
        schedule_pmi(regs, params, gbit)
