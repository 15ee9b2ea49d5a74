"""The PEBS assist: the microcode that writes a PEBS record after a counter overflows.

pebslab only: the record-writing half of the simulated core (counting is
in :mod:`pebslab.hw.counting`, the run loop in :mod:`pebslab.hw.core`).
Trap-like, after the overflowing instruction retired, :func:`pebs_assist`
runs these steps (SDM Vol. 3B, "Processor Event Based Sampling"; FACTS a):

1. :func:`read_ds` - read buffer base, index, absolute maximum and interrupt
   threshold from the DS save area (a guest virtual address: every access
   walks the guest page tables and EPT);
2. :func:`legacy_record` (formats 0-3) or :func:`adaptive_record`
   (format 4: basic group + the groups PEBS_DATA_CFG selects);
3. :func:`write_record` - store it at ``pebs_index`` unless that passes
   the absolute maximum, and advance ``pebs_index``;
4. :func:`reload_counters` - each counter that took part reloads from its
   ``pebs_event_reset`` slot;
5. reaching the interrupt threshold sets GLOBAL_STATUS bit 62 and raises a
   PMI at once.

A translation failure abandons the record (:func:`pebs_fault`); with
EPT-friendly PEBS an EPT violation instead exits with the assist still
pending, to be retried after KVM fixed the EPT entry.

Every offset is read from the record dtypes of :mod:`pebslab.hw.pebs` (one
definition of every layout): ``rec`` is filled as u64 words, word k at byte
8k of the record.
"""

from __future__ import annotations

import numpy as np

from .._jit import njit
from . import msr as M
from . import pebs as P
from .mmu import XLATE_EPT, XLATE_OK, translate
from .models import KIND_LOAD, KIND_STORE
from .regfile import (EXIT_EPT_VIOLATION, EXIT_PEBS_FAULT, EXIT_PMI, EXIT_REASON_NONE,
                      LOG_PEBS_DROP, LOG_PEBS_FAULT, LOG_PEBS_WRITE, LOG_PMI, R_ASSISTS, R_CR3,
                      R_DEBUGCTL, R_DS_AREA, R_EVTSEL0, R_EXIT_GPA, R_EXIT_GVA, R_EXIT_INFO,
                      R_EXIT_REASON, R_FIXED0, R_FIXED_CTR_CTRL, R_GLOBAL_STATUS, R_LBR_FROM,
                      R_LBR_TO, R_PMC0, R_PEBS_DATA_CFG, R_PEBS_DROPPED, R_PEBS_EVT,
                      R_PEBS_PENDING, R_PMI_COUNT, R_TSC, U64, as_i64, bit, log_row)

RFLAGS_IN_RECORD = 0x246  # ASSUMPTION: a plausible RFLAGS (IF, ZF, PF, bit 1)
RSP_IN_RECORD = 0x7FFC0000F000  # ASSUMPTION: a plausible user stack pointer


def _word(dtype, name):
    """Index of field ``name`` of a record dtype, counted in u64 words."""
    return dtype.fields[name][1] // 8


# ---- DS save area (FACTS a.1) -------------------------------------------------
DS_PEBS_BUFFER_BASE = P.DS_OFF_PEBS_BUFFER_BASE
DS_PEBS_INDEX = P.DS_OFF_PEBS_INDEX
DS_PEBS_ABS_MAX = P.DS_OFF_PEBS_ABS_MAX
DS_PEBS_THRESHOLD = P.DS_OFF_PEBS_THRESHOLD
DS_PEBS_RESET = P.DS_OFF_PEBS_RESET
DS_RESET_SLOTS = P.DS_RESET_SLOTS
DS_FIXED_RESET_SLOT = P.MAX_PEBS_EVENTS_FMT4   # fixed counter i reloads from slot 8 + i

# ---- legacy records, formats 0-3 (FACTS a.2): words of the largest layout -----
_LEG = P.PEBS_RECORD_SKL_DTYPE
LEG_FLAGS, LEG_IP, LEG_AX, LEG_BX, LEG_CX, LEG_DX, LEG_SI, LEG_DI, LEG_BP, LEG_SP = (
    _word(_LEG, n) for n in ("flags", "ip", "ax", "bx", "cx", "dx", "si", "di", "bp", "sp"))
LEG_STATUS, LEG_DLA, LEG_DSE, LEG_LAT, LEG_REAL_IP, LEG_TSX, LEG_TSC = (
    _word(_LEG, n) for n in ("status", "dla", "dse", "lat", "real_ip", "tsx_tuning", "tsc"))
#: words of a record of format 0, 1, 2, 3
LEG_WORDS = tuple(P.record_dtype(f).itemsize // 8 for f in range(4))

# ---- adaptive records, format 4 (FACTS a.3) -----------------------------------
BASIC_FORMAT_SIZE, BASIC_IP, BASIC_APPLICABLE, BASIC_TSC = (
    _word(P.PEBS_BASIC_DTYPE, n) for n in ("format_size", "ip", "applicable_counters", "tsc"))
BASIC_WORDS = P.PEBS_BASIC_DTYPE.itemsize // 8
MEM_ADDRESS, MEM_AUX, MEM_LATENCY, MEM_TSX = (
    _word(P.PEBS_MEMINFO_DTYPE, n) for n in ("address", "aux", "latency", "tsx_tuning"))
MEMINFO_WORDS = P.PEBS_MEMINFO_DTYPE.itemsize // 8
_G = P.PEBS_GPRS_DTYPE
GPR_FLAGS, GPR_IP, GPR_AX, GPR_CX, GPR_DX, GPR_BX, GPR_SP = (
    _word(_G, n) for n in ("flags", "ip", "ax", "cx", "dx", "bx", "sp"))
GPRS_WORDS = _G.itemsize // 8
XMM_WORDS = P.PEBS_XMM_DTYPE.itemsize // 8
LBR_FROM, LBR_TO, LBR_INFO = (_word(P.LBR_ENTRY_DTYPE, n) for n in ("from", "to", "info"))
LBR_WORDS = P.LBR_ENTRY_DTYPE.itemsize // 8

_CFG_MODELLED = U64(P.PEBS_DATACFG_MODELLED_MASK)
_CFG_MEMINFO = U64(M.PEBS_DATACFG_MEMINFO)
_CFG_GP = U64(M.PEBS_DATACFG_GP)
_CFG_XMMS = U64(M.PEBS_DATACFG_XMMS)
_CFG_LBRS = U64(M.PEBS_DATACFG_LBRS)
_CFG_LBR_SHIFT = U64(M.PEBS_DATACFG_LBR_SHIFT)
_SIZE_SHIFT = U64(P.FORMAT_SIZE_SHIFT)
_SEL_ADAPTIVE = U64(M.ICL_EVENTSEL_ADAPTIVE)
_FIXED_ADAPTIVE = U64(M.ICL_FIXED_0_ADAPTIVE)
_FIXED = M.INTEL_PMC_IDX_FIXED
_DEBUGCTL_LBR = U64(M.DEBUGCTLMSR_LBR)


@njit(cache=True)
def guest_rw_u64(mem, ept, cr3, tlb, gva, value, write):
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
def data_source(latency, llc_miss):
    """Data-source encoding for the record (ASSUMPTION: 1 L1, 3 L2, 4 LLC hit, 8 DRAM)."""
    if llc_miss:
        return U64(8)
    if latency <= 4:
        return U64(1)
    if latency <= 12:
        return U64(3)
    return U64(4)


@njit(cache=True)
def pebs_fault(regs, params, log, gva, gpa, code, info):
    """A DS or buffer access of the assist failed to translate: note it, return the exit."""
    regs[R_EXIT_GVA] = gva
    regs[R_EXIT_GPA] = U64(gpa)
    regs[R_EXIT_INFO] = U64(code * 256 + info)
    log_row(log, regs, LOG_PEBS_FAULT, as_i64(gva), np.int64(gpa), np.int64(code),
            np.int64(info))
    if code == XLATE_EPT and params.pebs_ept:
        return EXIT_EPT_VIOLATION      # EPT-friendly PEBS: the assist stays pending
    regs[R_PEBS_PENDING] = U64(0)      # the record is lost
    return EXIT_PEBS_FAULT


# =============================================================================
# 1. read the DS area
# =============================================================================

@njit(cache=True)
def read_ds(regs, params, mem, ept, tlb, log):
    """Read the PEBS header of the DS area: buffer base, index, absolute maximum, threshold.

    Returns (exit, index, absmax, thresh): exit is EXIT_REASON_NONE, or the
    exit a translation fault forces (then the values are 0).
    """
    ds = regs[R_DS_AREA]
    cr3 = regs[R_CR3]
    index = absmax = thresh = U64(0)
    for off in (DS_PEBS_BUFFER_BASE, DS_PEBS_INDEX, DS_PEBS_ABS_MAX, DS_PEBS_THRESHOLD):
        gva = ds + U64(off)
        code, gpa, hpa, info, v = guest_rw_u64(mem, ept, cr3, tlb, gva, U64(0), False)
        if code != XLATE_OK:
            return pebs_fault(regs, params, log, gva, gpa, code, info), U64(0), U64(0), U64(0)
        if off == DS_PEBS_INDEX:
            index = v
        elif off == DS_PEBS_ABS_MAX:
            absmax = v
        elif off == DS_PEBS_THRESHOLD:
            thresh = v
    return EXIT_REASON_NONE, index, absmax, thresh


# =============================================================================
# 2. build the record
# =============================================================================

@njit(cache=True)
def legacy_record(rec, regs, params, pending, evt, nxt, w_ip, w_kind, w_addr, w_lat, w_llc):
    """Fill ``rec`` with a format 0-3 record; return its length in words.

    Models the record layouts pebs_record_core / _nhm / _hsw / _skl of
    arch/x86/events/intel/ds.c, filled as the assist does: the
    architectural state after the instruction (trap-like PEBS: IP of the
    next instruction; else the eventing IP), then per format the
    applicable-counters / GLOBAL_STATUS word, data address, data source and
    latency (loads; Reserved, so zeros, on Silvermont: SDM Table 18-13), the
    eventing IP and the TSC.
    """
    fmt = params.pebs_format
    n = LEG_WORDS[fmt]
    for k in range(n):
        rec[k] = U64(0)
    kind = w_kind[evt]
    is_load = kind == KIND_LOAD
    rec[LEG_FLAGS] = U64(RFLAGS_IN_RECORD)
    rec[LEG_IP] = w_ip[nxt] if params.pebs_trap else w_ip[evt]
    rec[LEG_AX] = U64(evt)
    rec[LEG_BX] = w_addr[evt]
    rec[LEG_CX] = U64(w_lat[evt])
    rec[LEG_DX] = regs[R_TSC] & U64(0xFFFFFFFF)
    rec[LEG_SP] = U64(RSP_IN_RECORD)
    if fmt >= 1:
        # format 3 reports the applicable counters, older ones GLOBAL_STATUS
        rec[LEG_STATUS] = pending if fmt >= 3 else regs[R_GLOBAL_STATUS]
    if fmt >= 1 and params.pebs_mem_info:     # Silvermont: 0x98-0xA8 Reserved, zeros
        if is_load or kind == KIND_STORE:
            rec[LEG_DLA] = w_addr[evt]
        if is_load:
            rec[LEG_DSE] = data_source(w_lat[evt], w_llc[evt])
            rec[LEG_LAT] = U64(w_lat[evt])
    if fmt >= 2:
        rec[LEG_REAL_IP] = w_ip[evt]            # the eventing IP; tsx_tuning stays 0
    if fmt >= 3:
        rec[LEG_TSC] = regs[R_TSC]
    return n


@njit(cache=True)
def wants_adaptive(regs, pending):
    """True if a counter that produced the record has its Adaptive_Record bit set.

    EVENTSEL bit 34 for GP counter i, FIXED_CTR_CTRL bit 32 + 4i for fixed
    counter i (FACTS a.3).
    """
    for j in range(8):
        if (pending & bit(j)) != U64(0) and (regs[R_EVTSEL0 + j] & _SEL_ADAPTIVE) != U64(0):
            return True
    fctrl = regs[R_FIXED_CTR_CTRL]
    for j in range(4):
        if (pending & bit(_FIXED + j)) != U64(0) \
                and ((fctrl >> U64(4 * j)) & _FIXED_ADAPTIVE) != U64(0):
            return True
    return False


@njit(cache=True)
def adaptive_record(rec, regs, pending, evt, nxt, w_ip, w_kind, w_addr, w_lat, w_llc):
    """Fill ``rec`` with a format-4 record; return its length in words.

    Models the layout setup_pebs_adaptive_sample_data() reads in
    arch/x86/events/intel/ds.c: the basic group (format_size: record size
    in bits 63:48, the groups in the low bits; IP; applicable counters;
    TSC), then the memory-info, GPR, XMM and LBR groups PEBS_DATA_CFG
    selects. FACTS a.3: the group bits are 0, and only the basic group is
    written, when no producing counter asked for an adaptive record.
    ASSUMPTION: with IA32_DEBUGCTL.LBR clear the LBR group is written as
    zeros (nothing enabled LBRs, so no branch -- a host's least of all --
    may reach the record); with it set, entry 0 is the last branch.
    """
    cfg = regs[R_PEBS_DATA_CFG] & _CFG_MODELLED
    groups = cfg if wants_adaptive(regs, pending) else U64(0)
    nlbr = np.int64((cfg >> _CFG_LBR_SHIFT) & U64(0xFF)) + 1
    n = BASIC_WORDS
    if groups & _CFG_MEMINFO:
        n += MEMINFO_WORDS
    if groups & _CFG_GP:
        n += GPRS_WORDS
    if groups & _CFG_XMMS:
        n += XMM_WORDS
    if groups & _CFG_LBRS:
        n += LBR_WORDS * nlbr
    for k in range(n):
        rec[k] = U64(0)
    is_load = w_kind[evt] == KIND_LOAD
    rec[BASIC_FORMAT_SIZE] = (U64(8 * n) << _SIZE_SHIFT) | groups
    rec[BASIC_IP] = w_ip[evt]
    rec[BASIC_APPLICABLE] = pending
    rec[BASIC_TSC] = regs[R_TSC]
    g = BASIC_WORDS
    if groups & _CFG_MEMINFO:
        rec[g + MEM_ADDRESS] = w_addr[evt]
        if is_load:
            rec[g + MEM_AUX] = data_source(w_lat[evt], w_llc[evt])
            rec[g + MEM_LATENCY] = U64(w_lat[evt])
        g += MEMINFO_WORDS
    if groups & _CFG_GP:
        rec[g + GPR_FLAGS] = U64(RFLAGS_IN_RECORD)
        rec[g + GPR_IP] = w_ip[nxt]
        rec[g + GPR_AX] = U64(evt)
        rec[g + GPR_CX] = U64(w_lat[evt])
        rec[g + GPR_DX] = regs[R_TSC] & U64(0xFFFFFFFF)
        rec[g + GPR_BX] = w_addr[evt]
        rec[g + GPR_SP] = U64(RSP_IN_RECORD)
        g += GPRS_WORDS
    if groups & _CFG_XMMS:
        g += XMM_WORDS                          # the model has no vector state: zeros
    if groups & _CFG_LBRS and (regs[R_DEBUGCTL] & _DEBUGCTL_LBR) != U64(0):
        rec[g + LBR_FROM] = regs[R_LBR_FROM]    # entry 0: the last branch; older ones 0
        rec[g + LBR_TO] = regs[R_LBR_TO]
    return n


# =============================================================================
# 3-5. store it, reload the counters, check the threshold
# =============================================================================

@njit(cache=True)
def write_record(regs, params, mem, ept, tlb, log, rec, n, index, absmax, pending):
    """Store the ``n``-word record at ``index`` and advance DS pebs_index.

    A record that would pass the absolute maximum is dropped (counted in
    R_PEBS_DROPPED). Returns (exit, new index); exit is EXIT_REASON_NONE or
    the exit a translation fault forces.
    """
    size = 8 * n
    if index + U64(size) > absmax:
        regs[R_PEBS_DROPPED] += U64(1)
        log_row(log, regs, LOG_PEBS_DROP, as_i64(index), as_i64(absmax), size, as_i64(pending))
        return EXIT_REASON_NONE, index
    cr3 = regs[R_CR3]
    first_hpa = np.int64(0)
    for k in range(n):
        gva = index + U64(8 * k)
        code, gpa, hpa, info, v = guest_rw_u64(mem, ept, cr3, tlb, gva, rec[k], True)
        if code != XLATE_OK:
            return pebs_fault(regs, params, log, gva, gpa, code, info), index
        if k == 0:
            first_hpa = np.int64(hpa)
    gva = regs[R_DS_AREA] + U64(DS_PEBS_INDEX)
    code, gpa, hpa, info, v = guest_rw_u64(mem, ept, cr3, tlb, gva, index + U64(size), True)
    if code != XLATE_OK:
        return pebs_fault(regs, params, log, gva, gpa, code, info), index
    regs[R_ASSISTS] += U64(1)
    log_row(log, regs, LOG_PEBS_WRITE, as_i64(index), first_hpa, size, as_i64(pending))
    return EXIT_REASON_NONE, index + U64(size)


@njit(cache=True)
def reload_counters(regs, params, mem, ept, tlb, log, pending):
    """Reload each counter in ``pending`` from its DS pebs_event_reset slot.

    GP counter i uses slot i, fixed counter i slot 8 + i (FACTS a.1).
    Returns EXIT_REASON_NONE or the exit a translation fault forces.
    """
    ds = regs[R_DS_AREA]
    cr3 = regs[R_CR3]
    cmask_w = (U64(1) << U64(params.width)) - U64(1)
    for j in range(DS_RESET_SLOTS):
        fixed = j >= DS_FIXED_RESET_SLOT
        gbit = _FIXED + (j - DS_FIXED_RESET_SLOT) if fixed else j
        if (pending & bit(gbit)) == U64(0):
            continue
        gva = ds + U64(DS_PEBS_RESET + 8 * j)
        code, gpa, hpa, info, v = guest_rw_u64(mem, ept, cr3, tlb, gva, U64(0), False)
        if code != XLATE_OK:
            return pebs_fault(regs, params, log, gva, gpa, code, info)
        slot = R_FIXED0 + (j - DS_FIXED_RESET_SLOT) if fixed else R_PMC0 + j
        regs[slot] = v & cmask_w
    return EXIT_REASON_NONE


@njit(cache=True)
def pebs_assist(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                w_llc, nxt):
    """Write one PEBS record for the pending counters; return an exit reason or -1.

    The steps of the module docstring. On a translation failure the record
    is abandoned; with EPT-friendly PEBS an EPT violation leaves the assist
    pending (retried after the exit).
    """
    pending = regs[R_PEBS_PENDING]
    evt = np.int64(regs[R_PEBS_EVT])
    r, index, absmax, thresh = read_ds(regs, params, mem, ept, tlb, log)
    if r != EXIT_REASON_NONE:
        return r
    if params.pebs_format >= 4:
        n = adaptive_record(rec, regs, pending, evt, nxt, w_ip, w_kind, w_addr, w_lat, w_llc)
    else:
        n = legacy_record(rec, regs, params, pending, evt, nxt, w_ip, w_kind, w_addr, w_lat,
                          w_llc)
    r, index = write_record(regs, params, mem, ept, tlb, log, rec, n, index, absmax, pending)
    if r != EXIT_REASON_NONE:
        return r
    r = reload_counters(regs, params, mem, ept, tlb, log, pending)
    if r != EXIT_REASON_NONE:
        return r
    regs[R_PEBS_PENDING] = U64(0)
    if index >= thresh:
        regs[R_GLOBAL_STATUS] |= bit(M.GLOBAL_STATUS_BUFFER_OVF_BIT)
        return EXIT_PMI
    return EXIT_REASON_NONE


@njit(cache=True)
def assist_exit(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                w_llc, nxt):
    """Run the pending PEBS assist; return the exit reason it forces, or -1."""
    r = pebs_assist(regs, params, mem, ept, tlb, log, rec, w_ip, w_kind, w_addr, w_lat,
                    w_llc, nxt)
    if r >= 0:
        if r == EXIT_PMI:
            log_row(log, regs, LOG_PMI, as_i64(regs[R_GLOBAL_STATUS]), nxt,
                    as_i64(w_ip[nxt]), np.int64(1) << M.GLOBAL_STATUS_BUFFER_OVF_BIT)
            regs[R_PMI_COUNT] += U64(1)
        regs[R_EXIT_REASON] = U64(r)
    return r
