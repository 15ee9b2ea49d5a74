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
(the cycle events tick once in every cycle). A counter that wraps past
2**width - 1 sets its GLOBAL_STATUS bit. If PEBS is enabled for it (and the
model allows PEBS there) a PEBS assist runs after the instruction retires
(trap-like): the record goes to ``pebs_index`` through the guest page
tables and EPT, the index advances, the counter reloads from
``pebs_event_reset``, and reaching the interrupt threshold sets bit 62 and
raises a PMI at once. Otherwise, with INT set, a PMI arrives after a seeded
skid of a few instructions.

The parts, in the order a run goes through them:

* :mod:`pebslab.hw.regfile` - the register file slots, exit reasons, log rows;
* :mod:`pebslab.hw.counting` - decode the controls, what an instruction
  signals, CMASK/INV/EDGE, the fast-forward table, overflow and PMI skid;
* :mod:`pebslab.hw.assist` - the PEBS assist (DS area, record, reload);
* this module - the run loop: :func:`fast_forward_span`,
  :func:`retire_stretch`, or one instruction and :func:`count_one`, then the assist, the PMI and
  the timer; and :class:`Core`.

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
from .assist import assist_exit
from .counting import (C_CMASK, C_EACH, C_EDGE, C_EV, C_IDX, C_INT, C_INV, C_PEBS, C_RING,
                       C_ROWS, C_SCALE, FIXED_EACH, FIXED_SCALE, RING_OS, RING_USR, count_inc,
                       decode_fixed_controls, decode_gp_controls, event_last,
                       event_prefix, overflow, span)
from .mmu import is_canonical, tlb_new  # noqa: F401  (is_canonical: one definition, in mmu)
from .models import EV_CYCLES, EV_INST, KIND_BRANCH, N_EVENTS  # noqa: F401
from .models import CoreParams, core_params, get_model  # noqa: F401
# The register file, exit reasons and log rows are part of this module's API
# (``from pebslab.hw import core as C; C.R_TSC``); they are defined in regfile.
from .regfile import *  # noqa: F401,F403
from .regfile import (EXIT_BUDGET, EXIT_LOG_FULL, EXIT_PMI, EXIT_TIMER, LOG_CAPACITY,
                      LOG_COLS, LOG_PMI, LOG_SLACK, MASK64, NREGS, R_CPL, R_EDGE_PREV,
                      R_EVTSEL0, R_EXIT_GPA, R_EXIT_GVA, R_EXIT_INFO, R_EXIT_REASON, R_FIXED0,
                      R_FIXED_CTR_CTRL, R_GLOBAL_CTRL, R_GLOBAL_STATUS, R_LBR_FROM, R_LBR_TO,
                      R_NLOG, R_PEBS_DATA_CFG, R_PEBS_ENABLE, R_PEBS_PENDING, R_PMC0,
                      R_PMI_CAUSE, R_PMI_COUNT, R_PRNG, R_RETIRED, R_RIP, R_SKID,
                      R_TIMER_DEADLINE, R_TSC, R_DS_AREA, U64, as_i64, bit, log_row)
from .regfile import R_DEBUGCTL


# =============================================================================
# the run loop
#
# Speed notes (pebslab only). The helpers run once per instruction or
# stretch take arrays; a real call would pass each array by value and
# reference-count it, ten times the cost of retiring the instruction. So
# they are inlined into core_run (inline="always"), and core_run, which
# allocates nothing (Core hands it every scratch array), is compiled without
# numba's reference counting (_nrt=False).
# =============================================================================

@njit(cache=True, inline="always")
def fast_forward_span(regs, i, kmax, gp, ng, fx, nf, pre, cmask_w, deadline):
    """How many instructions from ``i`` (at most ``kmax``) retire with nothing to report.

    Nothing to report: no counter wraps, the skid countdown does not reach
    0, the TSC stays below the timer deadline. ``pre`` is the workload's
    :func:`event_prefix` table; ``gp`` / ``fx`` the decoded controls of the
    ``ng`` GP and ``nf`` fixed counters that count.
    """
    skid = np.int64(regs[R_SKID])
    if skid != 0:
        kmax = min(kmax, skid - 1)
    tsc = regs[R_TSC]
    if kmax > 0 and deadline != U64(0):
        if deadline <= tsc:
            kmax = 0
        elif deadline - tsc <= U64(1 << 62):
            kmax = span(pre[EV_CYCLES, 2], i, kmax, np.int64(deadline - tsc) - 1)
    for k in range(ng):
        if kmax <= 0:
            break
        room = np.int64(cmask_w - regs[R_PMC0 + gp[C_IDX, k]])
        kmax = span(pre[gp[C_EV, k], gp[C_RING, k] - 1], i, kmax, room)
    for k in range(nf):
        if kmax <= 0:
            break
        j = fx[C_IDX, k]
        room = np.int64(cmask_w - regs[R_FIXED0 + j])
        kmax = span(pre[fx[C_EV, k], fx[C_RING, k] - 1], i, kmax, room // fx[C_SCALE, k])
    return kmax


@njit(cache=True, inline="always")
def retire_stretch(regs, i, k, gp, ng, fx, nf, pre, lbr_last, lbr_on, w_ip, w_cpl):
    """Retire instructions i .. i+k-1 at once, as stepping through them would.

    The caller made sure nothing happens in the stretch (fast_forward_span).
    ``lbr_on``: DEBUGCTL.LBR, the last branch is recorded. Returns the
    index of the next instruction.
    """
    L = w_ip.shape[0]
    e = i + k
    cyc_row = pre[EV_CYCLES, 2]
    regs[R_TSC] += U64(cyc_row[e] - cyc_row[i])
    regs[R_RETIRED] += U64(k)
    regs[R_CPL] = U64(w_cpl[e - 1])
    q = lbr_last[e - 1]
    if lbr_on and q >= i:
        regs[R_LBR_FROM] = w_ip[q]
        regs[R_LBR_TO] = w_ip[q + 1 if q + 1 < L else 0]
    for n in range(ng):
        row = pre[gp[C_EV, n], gp[C_RING, n] - 1]
        regs[R_PMC0 + gp[C_IDX, n]] += U64(row[e] - row[i])
    for n in range(nf):
        j = fx[C_IDX, n]
        row = pre[fx[C_EV, n], fx[C_RING, n] - 1]
        regs[R_FIXED0 + j] += U64(fx[C_SCALE, n] * (row[e] - row[i]))
    skid = np.int64(regs[R_SKID])
    if skid != 0:
        regs[R_SKID] = U64(skid - k)
    return e if e < L else 0


@njit(cache=True, inline="always")
def count_one(regs, params, log, i, kind, cyc, ring, gp, ng, fx, nf, cmask_w, w_ip, w_lat,
              w_llc, w_misp):
    """Add what instruction ``i`` signals to every active counter that counts in ``ring``.

    ``kind`` and ``cyc`` are the instruction's kind and cycles, ``ring``
    RING_OS or RING_USR (its CPL).
    A counter that wraps goes through :func:`overflow` (status bit, PEBS
    armed or PMI scheduled).
    """
    for k in range(ng):
        if not (gp[C_RING, k] & ring):
            continue
        j = gp[C_IDX, k]
        ev = gp[C_EV, k]
        # instructions retired: the common case, without a call (plain Python is slow at calls)
        e1 = 1 if ev == EV_INST else event_last(ev, kind, w_lat[i], w_llc[i], w_misp[i])
        cmask = gp[C_CMASK, k]
        if cmask == 0:
            inc = e1 + gp[C_EACH, k] * (cyc - 1)
        else:
            b = bit(j)
            prev = (regs[R_EDGE_PREV] & b) != U64(0)
            inc, state = count_inc(e1, gp[C_EACH, k], cyc, cmask, gp[C_INV, k] != 0,
                                   gp[C_EDGE, k] != 0, prev)
            if state:
                regs[R_EDGE_PREV] |= b
            else:
                regs[R_EDGE_PREV] &= ~b
        if inc == 0:
            continue
        v = regs[R_PMC0 + j] + U64(inc)
        if v > cmask_w:
            overflow(regs, params, log, R_PMC0 + j, j, v, cmask_w, i, as_i64(w_ip[i]),
                     gp[C_PEBS, k] != 0, gp[C_INT, k] != 0)
        else:
            regs[R_PMC0 + j] = v

    for k in range(nf):
        if not (fx[C_RING, k] & ring):
            continue
        # the fixed events (instructions, cycles, ref cycles, slots) are signalled
        # by every instruction: 1 in its last cycle, plus 1 per earlier cycle if
        # the event ticks every cycle (event_last is 1 for all of them)
        j = fx[C_IDX, k]
        inc = FIXED_SCALE[j] * (1 + FIXED_EACH[j] * (cyc - 1))
        v = regs[R_FIXED0 + j] + U64(inc)
        if v > cmask_w:
            overflow(regs, params, log, R_FIXED0 + j, M.INTEL_PMC_IDX_FIXED + j, v, cmask_w, i,
                     as_i64(w_ip[i]), fx[C_PEBS, k] != 0, fx[C_INT, k] != 0)
        else:
            regs[R_FIXED0 + j] = v


@njit(cache=True)
def deliver_pmi(regs, log, nxt, w_ip):
    """The skid ran out: take the PMI before instruction ``nxt``."""
    log_row(log, regs, LOG_PMI, as_i64(regs[R_GLOBAL_STATUS]), nxt, as_i64(w_ip[nxt]),
            as_i64(regs[R_PMI_CAUSE]))
    regs[R_PMI_CAUSE] = U64(0)
    regs[R_PMI_COUNT] += U64(1)


@njit(cache=True, _nrt=False)
def core_run(regs, params, evmap, w_ip, w_kind, w_cpl, w_addr, w_lat, w_cycles, w_llc,
             w_misp, mem, ept, tlb, log, rec, gp, fx, budget, pre, lbr_last, fast_forward):
    """Run up to ``budget`` instructions; return the exit reason.

    pebslab only: the guest's instructions retiring on the physical core in
    VMX non-root operation. All state is in the arrays; nothing else changes.

    1. Decode the controls once (they cannot change while the loop runs).
    2. Complete a PEBS assist an EPT exit left pending.
    3. Per instruction: exit if the log is nearly full; if ``fast_forward``
       and every counting GP counter has CMASK = 0, retire at once the
       stretch where nothing can happen (:func:`fast_forward_span`,
       :func:`retire_stretch`; the same register state stepping leaves);
       else retire one instruction (TSC, LBR, :func:`count_one`), run a
       PEBS assist it armed, count down the PMI skid, check the deadline.
    """
    L = w_ip.shape[0]
    cmask_w = (U64(1) << U64(params.width)) - U64(1)
    ng = decode_gp_controls(regs, params, evmap, gp)
    nf = decode_fixed_controls(regs, params, fx)
    # the LBR stack records branches only while DEBUGCTL.LBR is set (SDM 17.4.1)
    lbr_on = (regs[R_DEBUGCTL] & U64(M.DEBUGCTLMSR_LBR)) != U64(0)
    ff = fast_forward
    for k in range(ng):
        if gp[C_CMASK, k] != 0:
            ff = False          # CMASK/EDGE counters have per-cycle state: step them
    ff_min = 2 if ff else budget + 1    # shortest stretch worth fast-forwarding
    zero = U64(0)                       # the constants of the per-instruction path, made once
    one = U64(1)
    deadline = regs[R_TIMER_DEADLINE]
    timer = deadline != zero
    log_limit = log.shape[0] - LOG_SLACK
    regs[R_EXIT_GVA] = U64(0)
    regs[R_EXIT_GPA] = U64(0)
    regs[R_EXIT_INFO] = U64(0)

    if regs[R_PEBS_PENDING] != U64(0):
        r = assist_exit(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                        w_llc, np.int64(regs[R_RIP]))
        if r >= 0:
            return r

    i = np.int64(regs[R_RIP])
    done = np.int64(0)
    # TSC and the retired count live in locals, written through to regs every
    # instruction (helpers and the caller read regs; only this loop changes them)
    tsc = regs[R_TSC]
    retired = regs[R_RETIRED]
    while done < budget:
        if np.int64(regs[R_NLOG]) > log_limit:
            regs[R_EXIT_REASON] = U64(EXIT_LOG_FULL)
            return EXIT_LOG_FULL
        if budget - done >= ff_min and regs[R_PEBS_PENDING] == zero:
            k = fast_forward_span(regs, i, min(budget - done, L - i), gp, ng, fx, nf, pre,
                                  cmask_w, deadline)
            if k >= ff_min:
                i = retire_stretch(regs, i, k, gp, ng, fx, nf, pre, lbr_last, lbr_on, w_ip,
                                   w_cpl)
                regs[R_RIP] = U64(i)
                tsc = regs[R_TSC]
                retired = regs[R_RETIRED]
                done += k
                continue
        # --- retire one instruction: TSC, last branch, then count
        done += 1
        kind = w_kind[i]
        cyc = np.int64(w_cycles[i])
        cpl = np.int64(w_cpl[i])
        tsc += U64(cyc)
        retired += one
        regs[R_TSC] = tsc
        regs[R_RETIRED] = retired
        regs[R_CPL] = U64(cpl)
        nxt = i + 1 if i + 1 < L else 0
        if lbr_on and (kind == KIND_BRANCH or nxt == 0):  # the last one jumps to the first
            regs[R_LBR_FROM] = w_ip[i]
            regs[R_LBR_TO] = w_ip[nxt]
        count_one(regs, params, log, i, kind, cyc, RING_OS if cpl == 0 else RING_USR, gp, ng,
                  fx, nf, cmask_w, w_ip, w_lat, w_llc, w_misp)
        regs[R_RIP] = U64(nxt)
        if regs[R_PEBS_PENDING] != zero:        # trap-like: after the instruction retired
            r = assist_exit(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr,
                            w_lat, w_llc, nxt)
            if r >= 0:
                return r
        if regs[R_SKID] != zero:
            regs[R_SKID] -= one
            if regs[R_SKID] == zero:
                deliver_pmi(regs, log, nxt, w_ip)
                regs[R_EXIT_REASON] = U64(EXIT_PMI)
                return EXIT_PMI
        if timer and tsc >= deadline:
            regs[R_EXIT_REASON] = U64(EXIT_TIMER)
            return EXIT_TIMER
        i = nxt
    regs[R_EXIT_REASON] = U64(EXIT_BUDGET)
    return EXIT_BUDGET


# =============================================================================
# Python side
# =============================================================================

def event_map(model) -> np.ndarray:
    """The model's event table as int64 rows (event|umask<<8, EV_* kind, pebs-capable)."""
    rows = [(ev.event | ev.umask << 8, ev.kind, int(ev.pebs)) for ev in model.events]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


#: The modules whose numba functions make up the run loop (python_twin rebuilds them all).
TWIN_MODULES = ("pebslab.hw.mmu", "pebslab.hw.regfile", "pebslab.hw.counting",
                "pebslab.hw.assist", "pebslab.hw.core")

_TWIN = None


def python_twin():
    """Return :func:`core_run` as plain Python, with every helper it calls plain Python too.

    pebslab only. ``core_run.py_func`` alone would still call the compiled
    helpers (``pebs_assist``, ``translate``, ...), which hand back Python
    ints instead of numpy scalars; here each numba function of the
    TWIN_MODULES is rebuilt from its ``.py_func`` code over a copy of its
    module's namespace, and every copy then refers to the rebuilt functions,
    so the whole run loop is the interpreted reference. Under
    ``NUMBA_DISABLE_JIT=1`` the functions already are plain Python.
    """
    global _TWIN
    if _TWIN is not None:
        return _TWIN
    if not hasattr(core_run, "py_func"):      # NUMBA_DISABLE_JIT=1
        _TWIN = core_run
        return _TWIN
    spaces = []
    rebuilt = {}
    for name in TWIN_MODULES:
        mod = sys.modules[name]
        ns = dict(vars(mod))
        spaces.append(ns)
        for obj in vars(mod).values():
            py = getattr(obj, "py_func", None)
            if py is not None and getattr(py, "__module__", None) == name:
                rebuilt[id(obj)] = types.FunctionType(py.__code__, ns, py.__name__,
                                                      py.__defaults__, py.__closure__)
    for ns in spaces:
        for key, obj in list(ns.items()):
            if id(obj) in rebuilt:
                ns[key] = rebuilt[id(obj)]
    _TWIN = rebuilt[id(core_run)]
    return _TWIN


class Core:
    """One logical CPU of a given model: its PMU registers and its run loop.

    pebslab only. ``rdmsr``/``wrmsr`` are what the *hardware* does when the
    host kernel (or the VMX MSR-load lists) access the real MSRs; what a guest
    sees goes through KVM instead (pebslab.kvm.pmu).
    """

    def __init__(self, cpu="silvermont", seed: int = 0):
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.model = get_model(cpu)
        self.regs = np.zeros(NREGS, np.uint64)
        self.params = core_params(self.model)
        self.evmap = event_map(self.model)
        self.regs[R_PRNG] = np.uint64((seed * 0x9E3779B97F4A7C15) & MASK64)
        self.log = np.zeros((LOG_CAPACITY, LOG_COLS), np.int64)
        self.rec = np.zeros(1024, np.uint64)        # the record the assist builds
        # the decoded controls of the GP and fixed counters (see counting.decode_*)
        self.gp_controls = np.zeros((C_ROWS, M.INTEL_PMC_MAX_GENERIC), np.int64)
        self.fixed_controls = np.zeros((C_ROWS, M.INTEL_PMC_MAX_FIXED), np.int64)
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
        if index == M.MSR_IA32_DEBUGCTLMSR:
            return R_DEBUGCTL, "debugctl"
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
            # PEBS_EN bits of the counters with PEBS; LL_EN bits with load latency
            # (not Silvermont); extended PEBS puts the fixed counters at bit 32 + i.
            # Any other bit is reserved: see PEBS_ENABLE_OTHER_BITS.
            if m.adaptive:
                return m.pebs_counter_mask | m.pebs_fixed_mask << 32
            ll = m.pebs_counter_mask << M.PEBS_LL_EN_SHIFT if m.load_latency else 0
            return m.pebs_counter_mask | ll
        if kind == "data_cfg":
            return M.KVM_PEBS_DATA_CFG_VALID
        if kind == "debugctl":
            # ASSUMPTION: the bits of SDM Figure 17-3 (FREEZE_IN_SMM only with
            # PERF_CAPABILITIES.FREEZE_WHILE_SMM, RTM_DEBUG only with TSX) are
            # writable, the rest (5:2, 13, 63:16) #GP.
            # The model acts on LBR alone (the other bits are stored, not modelled).
            v = (M.DEBUGCTLMSR_LBR | M.DEBUGCTLMSR_BTF | M.DEBUGCTLMSR_TR | M.DEBUGCTLMSR_BTS
                 | M.DEBUGCTLMSR_BTINT | M.DEBUGCTLMSR_BTS_OFF_OS | M.DEBUGCTLMSR_BTS_OFF_USR
                 | M.DEBUGCTLMSR_FREEZE_LBRS_ON_PMI | M.DEBUGCTLMSR_FREEZE_PERFMON_ON_PMI)
            if m.perf_capabilities & M.PERF_CAP_FREEZE_WHILE_SMM:
                v |= M.DEBUGCTLMSR_FREEZE_IN_SMM
            if m.has_tsx:
                v |= M.DEBUGCTLMSR_RTM_DEBUG
            return v
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

    def wrmsr_fault(self, index: int, value: int) -> str | None:
        """Why WRMSR(index, value) at CPL 0 would #GP on this core, or None if it would not.

        pebslab only. Also the check VM entry makes for each entry of the
        VM-entry MSR-load list: the entry fails where the same WRMSR would
        #GP (SDM Vol. 3C, 26.4; FACTS g.4). Nothing is written.
        """
        _check_msr_index(index)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"value must be an int; got {type(value).__name__}")
        if not 0 <= value <= MASK64:
            raise ValueError(f"value must be in 0..2**64-1; got {value}")
        slot, kind = self._slot(index)
        if kind in ("perf_cap", "global_status"):
            return "read-only"
        if slot < 0 and kind != "ovf_ctrl":
            return "no such MSR on " + self.model.name
        if kind == "pmc_legacy":
            return None                       # bits 63:32 are ignored, never reserved
        if kind in ("pmc_full", "fixed"):
            if value & ~self.width_mask:
                return f"bits above the {self.model.width}-bit counter width"
            return None
        if kind == "ds_area":
            return None if is_canonical(value) else "non-canonical address"
        idx = index - M.MSR_P6_EVNTSEL0 if kind == "evtsel" else None
        bad = value & ~self.valid_bits(kind, idx)
        return f"reserved bits {bad:#x}" if bad else None

    def wrmsr(self, index: int, value: int) -> None:
        """Write a PMU MSR with the hardware's rules; reserved bits raise #GP (see wrmsr_fault)."""
        why = self.wrmsr_fault(index, value)
        if why is not None:
            raise GuestFault("#GP", msr=index, value=value, reason=why)
        slot, kind = self._slot(index)
        if kind == "pmc_legacy":
            # legacy alias: bits 31:0 written, sign-extended to the counter width
            low = value & 0xFFFFFFFF
            if low & 0x80000000:
                low |= ~0xFFFFFFFF
            self.regs[slot] = np.uint64(low & self.width_mask)
        elif kind == "ovf_ctrl":
            self.regs[R_GLOBAL_STATUS] = np.uint64(int(self.regs[R_GLOBAL_STATUS]) & ~value)
        else:
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
        with np.errstate(over="ignore"):
            return int(fn(self.regs, self.params, self.evmap, w.ip, w.kind, w.cpl, w.addr,
                          w.latency, w.cycles, w.llc_miss, w.br_misp, mem, ept, self.tlb,
                          self.log, self.rec, self.gp_controls, self.fixed_controls,
                          int(budget), pre, lbr_last,
                          bool(self.fast_forward)))

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
