"""Tests for pebslab.hw.core: the simulated core's counting, MSRs, PMI, PEBS assist.

The core is driven directly: a few pages of physical memory, guest page
tables built by pebslab.guest.mm.GuestMM, and an identity EPT (entry g =
g << 12 | R|W|X) the tests punch holes into. Expected values come from the
SDM rules quoted in FACTS.md (sections a and b) and from the workload's own
arrays (which instructions ran, their cycles and CPL), never from a
previous run's output.
"""

import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pebslab.hw.errors import GuestFault
from pebslab.guest.mm import GuestMM
from pebslab.hw import core as C
from pebslab.hw import msr as M
from pebslab.hw import pebs
from pebslab.hw.mmu import PAGE_SIZE, XLATE_EPT, XLATE_PF
from pebslab.hw.models import EV_CYCLES, EV_INST, EV_LOADS, MODELS, SKID_MAX, get_model
from pebslab import workloads as W

NOJIT = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"
MODEL_NAMES = ("silvermont", "haswell", "skylake", "icelake")

WIDTH = 48                    # FACTS b.8: PMC_DEFAULT_WIDTH; every model here has 48
WMASK = (1 << WIDTH) - 1

# MSR numbers written out from FACTS b.1 (not read from pebslab.hw.msr)
PERFCTR0, A_PMC0, EVTSEL0 = 0xC1, 0x4C1, 0x186
FIXED_CTR0, FIXED_CTR_CTRL = 0x309, 0x38D
GLOBAL_STATUS, GLOBAL_CTRL, GLOBAL_OVF_CTRL = 0x38E, 0x38F, 0x390
PERF_CAPABILITIES, PEBS_ENABLE, PEBS_DATA_CFG, DS_AREA = 0x345, 0x3F1, 0x3F2, 0x600
DEBUGCTL, DEBUGCTL_LBR = 0x1D9, 1 << 0          # IA32_DEBUGCTL and its LBR bit (SDM 17.4.1)

# IA32_PERFEVTSELx bits (FACTS b.2)
USR, OS, EDGE, INT, EN, INV = 1 << 16, 1 << 17, 1 << 18, 1 << 20, 1 << 22, 1 << 23
IN_TX, IN_TXCP, ADAPTIVE = 1 << 32, 1 << 33, 1 << 34
# event encodings (architectural events, CPUID.0AH EBX order)
INST_RETIRED = 0xC0
CYCLES = 0x3C
REF_CYCLES = 0x013C
# FACTS b.3: per fixed counter 4 bits: OS, USR, AnyThread, PMI; adaptive at 32 + 4i
F_OS, F_USR, F_PMI = 1, 2, 8


def evtsel(code, *flags, cmask=0):
    v = code | cmask << 24 | EN
    for f in flags:
        v |= f
    return v


# -----------------------------------------------------------------------------
# a tiny machine: memory, identity EPT, guest page tables, one core
# -----------------------------------------------------------------------------

class _Phys:
    """Guest physical memory == host memory (identity EPT), as GuestMM needs it."""

    def __init__(self, rig):
        self.rig = rig

    @property
    def pages(self):
        return self.rig.mem.size // PAGE_SIZE

    def read(self, gpa, n):
        return self.rig.mem[gpa:gpa + n].tobytes()

    def write(self, gpa, data):
        self.rig.mem[gpa:gpa + len(data)] = np.frombuffer(bytes(data), np.uint8)

    def flush_tlb(self):
        self.rig.core.flush_tlb()


class Rig:
    def __init__(self, cpu="skylake", seed=0, frames=64):
        self.core = C.Core(cpu, seed=seed)
        self.model = self.core.model
        self.mem = np.zeros(frames * PAGE_SIZE, np.uint8)
        g = np.arange(frames, dtype=np.uint64)
        self.ept = (g << np.uint64(12)) | np.uint64(7)
        self.mm = GuestMM(_Phys(self))
        self.core.regs[C.R_CR3] = np.uint64(self.mm.cr3)
        self.ds = None
        self.buf = None

    def run(self, w, n, jit=None):
        return self.core.run(w, n, self.mem, self.ept, jit=jit)

    def wr(self, msr, value):
        self.core.wrmsr(msr, value)

    def rd(self, msr):
        return self.core.rdmsr(msr)

    @property
    def retired(self):
        return int(self.core.regs[C.R_RETIRED])

    @property
    def status(self):
        return int(self.core.regs[C.R_GLOBAL_STATUS])

    def setup_ds(self, buf_pages=1, records=None, thresh_records=None, reset=None,
                 rec_size=None):
        """A DS area page and a buffer; absmax/threshold counted in records."""
        size = rec_size or self.model.pebs_record_size
        self.ds = self.mm.alloc(1)
        self.buf = self.mm.alloc(buf_pages)
        nrec = records if records is not None else buf_pages * PAGE_SIZE // size
        absmax = self.buf + nrec * size
        thresh = absmax if thresh_records is None else self.buf + thresh_records * size
        self.write_ds(pebs.DebugStore(
            pebs_buffer_base=self.buf, pebs_index=self.buf, pebs_absolute_maximum=absmax,
            pebs_interrupt_threshold=thresh,
            pebs_event_reset=tuple(reset or (0,) * pebs.DS_RESET_SLOTS)))
        self.wr(DS_AREA, self.ds)

    def read_ds(self):
        return pebs.DebugStore.from_bytes(self.mm.read(self.ds, pebs.DS_SIZE))

    def write_ds(self, store):
        self.mm.write(self.ds, store.to_bytes())

    def reset_index(self):
        self.write_ds(dataclasses.replace(self.read_ds(), pebs_index=self.buf))

    def records(self, fmt=None):
        d = self.read_ds()
        raw = self.mm.read(self.buf, d.pebs_index - self.buf)
        return pebs.decode(raw, self.model.pebs_format if fmt is None else fmt)

    def gpa(self, gva):
        return self.mm.translate(gva)

    def ept_hole(self, gpa):
        self.ept[gpa >> 12] = 0
        self.core.flush_tlb()

    def ept_fill(self, gpa):
        g = gpa >> 12
        self.ept[g] = np.uint64((g << 12) | 7)
        self.core.flush_tlb()


def straight(kinds, cycles=None, cpl=3, addr=None, lat=None, llc=None):
    """A user (or kernel) loop of 4-byte instructions; the last one is forced to a branch."""
    n = len(kinds)
    kinds = list(kinds)
    kinds[-1] = W.KIND_BRANCH
    cycles = [1] * n if cycles is None else list(cycles)
    cpls = [cpl] * n if isinstance(cpl, int) else list(cpl)
    base = W.USER_TEXT if cpls[0] == 3 else W.KERNEL_TEXT
    ip = np.array([base + 4 * i for i in range(n)], np.uint64)
    kind = np.array(kinds, np.uint8)
    mem_op = (kind == W.KIND_LOAD) | (kind == W.KIND_STORE)
    a = np.where(mem_op, np.uint64(W.USER_DATA) + 8 * np.arange(n, dtype=np.uint64),
                 np.uint64(0)) if addr is None else np.array(addr, np.uint64)
    la = np.where(kind == W.KIND_LOAD, 4, 0).astype(np.uint16) if lat is None \
        else np.array(lat, np.uint16)
    return W.Workload(
        ip=ip, kind=kind, cpl=np.array(cpls, np.uint8), addr=a, latency=la,
        cycles=np.array(cycles, np.uint16),
        llc_miss=np.zeros(n, np.uint8) if llc is None else np.array(llc, np.uint8),
        br_misp=np.zeros(n, np.uint8), length=np.full(n, 4, np.uint8),
        symbols=[(int(ip[0]), int(ip[-1]) + 4, "loop")], name="straight")


def u64(x):
    """A log cell (int64) as the uint64 it holds (kernel addresses are negative int64)."""
    return int(x) & ((1 << 64) - 1)


def ran(w, start, n):
    """Workload indices of the n instructions run from index start (cyclic)."""
    return (start + np.arange(n)) % len(w)


def fmt_model(fmt, base="haswell", **kw):
    """A model like ``base`` but reporting PEBS format ``fmt`` (for formats 0 and 1)."""
    m = MODELS[base]
    cap = (m.perf_capabilities & ~M.PERF_CAP_PEBS_FORMAT) | fmt << 8
    return dataclasses.replace(m, name=f"{base}-fmt{fmt}", pebs_format=fmt,
                               perf_capabilities=cap, **kw)


MF = W.multi_function(seed=0)


# =============================================================================
# counting
# =============================================================================

@pytest.mark.parametrize("en,gbit,counts", [(1, 1, True), (0, 1, False), (1, 0, False),
                                            (0, 0, False)])
def test_counting_needs_en_and_global_ctrl(en, gbit, counts):
    r = Rig("skylake")
    r.wr(EVTSEL0, INST_RETIRED | USR | OS | (EN if en else 0))
    r.wr(GLOBAL_CTRL, gbit)
    n = 1000
    assert r.run(MF, n) == C.EXIT_BUDGET
    assert r.rd(PERFCTR0) == (n if counts else 0)


def test_fixed_counter_needs_its_global_ctrl_bit():
    r = Rig("skylake")
    r.wr(FIXED_CTR_CTRL, F_OS | F_USR)           # fixed counter 0
    r.wr(GLOBAL_CTRL, 1 << 33)                   # but only fixed counter 1 enabled
    r.run(MF, 500)
    assert r.rd(FIXED_CTR0) == 0
    r.wr(GLOBAL_CTRL, 1 << 32)
    r.run(MF, 500)
    assert r.rd(FIXED_CTR0) == 500


@pytest.mark.parametrize("flags,ring", [((USR,), "user"), ((OS,), "kernel"),
                                        ((USR, OS), "all"), ((), "none")])
def test_usr_os_filter_follows_instruction_cpl(flags, ring):
    # SDM: USR counts at CPL 1-3, OS at CPL 0; multi_function has both phases
    r = Rig("haswell")
    r.wr(EVTSEL0, evtsel(INST_RETIRED, *flags))
    r.wr(EVTSEL0 + 1, evtsel(CYCLES, *flags))
    r.wr(GLOBAL_CTRL, 0b11)
    n = 2 * len(MF) + 123
    r.run(MF, n)
    idx = ran(MF, 0, n)
    sel = {"user": MF.cpl[idx] == 3, "kernel": MF.cpl[idx] == 0,
           "all": np.ones(n, bool), "none": np.zeros(n, bool)}[ring]
    assert 0 < int((MF.cpl[idx] == 0).sum()) < n          # the workload has both rings
    assert r.rd(PERFCTR0) == int(sel.sum())
    assert r.rd(PERFCTR0 + 1) == int(MF.cycles[idx][sel].astype(np.int64).sum())


@pytest.mark.parametrize("cpu", MODEL_NAMES)
def test_instructions_and_cycles_exact(cpu):
    r = Rig(cpu)
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS))
    r.wr(EVTSEL0 + 1, evtsel(CYCLES, USR, OS))
    r.wr(GLOBAL_CTRL, 0b11)
    n = 3 * len(MF) + 7
    tsc0 = r.core.tsc
    r.run(MF, n)
    cycles = int(MF.cycles[ran(MF, 0, n)].astype(np.int64).sum())
    assert r.retired == n
    assert r.rd(PERFCTR0) == n
    assert r.rd(PERFCTR0 + 1) == cycles
    assert r.core.tsc - tsc0 == cycles
    assert r.core.rip == n % len(MF)


def test_ref_cycles_equal_cycles():
    # models.py: the model runs at the TSC rate, so reference cycles == core cycles
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(REF_CYCLES, USR, OS))
    r.wr(GLOBAL_CTRL, 1)
    r.run(MF, 777)
    assert r.rd(PERFCTR0) == int(MF.cycles[ran(MF, 0, 777)].astype(np.int64).sum())


@pytest.mark.parametrize("cpu", ["skylake", "icelake"])
@pytest.mark.parametrize("bits", [F_OS, F_USR, F_OS | F_USR, 0])
def test_fixed_counters_and_their_os_usr_bits(cpu, bits):
    r = Rig(cpu)
    nf = r.model.n_fixed
    ctrl = 0
    for i in range(nf):
        ctrl |= bits << (4 * i)
    r.wr(FIXED_CTR_CTRL, ctrl)
    r.wr(GLOBAL_CTRL, ((1 << nf) - 1) << 32)
    n = 2 * len(MF) + 55
    r.run(MF, n)
    idx = ran(MF, 0, n)
    cpl = MF.cpl[idx]
    sel = np.zeros(n, bool)
    if bits & F_OS:
        sel |= cpl == 0
    if bits & F_USR:
        sel |= cpl == 3
    cyc = int(MF.cycles[idx][sel].astype(np.int64).sum())
    assert r.rd(FIXED_CTR0) == int(sel.sum())           # INST_RETIRED.ANY
    assert r.rd(FIXED_CTR0 + 1) == cyc                  # CPU_CLK_UNHALTED.CORE
    assert r.rd(FIXED_CTR0 + 2) == cyc                  # CPU_CLK_UNHALTED.REF (TSC rate)
    if nf == 4:
        # ASSUMPTION in core.py: TOPDOWN.SLOTS counts 4 slots per cycle
        assert r.rd(FIXED_CTR0 + 3) == 4 * cyc


# ---- CMASK / INV / EDGE: an independent per-cycle reference ----------------------

def per_cycle_reference(w, n, ev, cmask, inv, edge):
    """Count per the SDM, cycle by cycle (instructions' events in their last cycle).

    SDM Vol. 3B 18.2.1.1: with CMASK != 0 a cycle counts 1 when its event count is
    >= CMASK (< CMASK with INV); EDGE counts false->true transitions; with CMASK = 0
    INV is ignored (and, core.py's ASSUMPTION, EDGE too).
    """
    total, prev = 0, False
    for i in ran(w, 0, n):
        c = int(w.cycles[i])
        for k in range(c):
            last = k == c - 1
            if ev == "cycles":
                e = 1
            elif ev == "inst":
                e = int(last)
            else:                        # loads
                e = int(last and w.kind[i] == W.KIND_LOAD)
            if cmask == 0:
                total += e
                continue
            cond = (e >= cmask) != inv
            total += int(cond and not prev) if edge else int(cond)
            prev = cond
    return total


EV_CODE = {"inst": INST_RETIRED, "cycles": CYCLES, "loads": 0x81D0}


def test_inst_retired_inv_cmask16_counts_every_cycle():
    # at most 1 instruction retires per cycle: "< 16 retired" is true in every cycle
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS, INV, cmask=16))
    r.wr(GLOBAL_CTRL, 1)
    r.run(MF, 1000)
    assert r.rd(PERFCTR0) == int(MF.cycles[ran(MF, 0, 1000)].astype(np.int64).sum())


def test_inv_is_ignored_when_cmask_is_zero():
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS, INV))
    r.wr(GLOBAL_CTRL, 1)
    r.run(MF, 1000)
    assert r.rd(PERFCTR0) == 1000


def test_cmask_edge_on_known_trace():
    # cycles per instruction: 1, 3, 1, 1, 5, 2 (6 instructions, 13 cycles)
    w = straight([W.KIND_ALU] * 6, cycles=[1, 3, 1, 1, 5, 2])
    cases = {
        # (flags, cmask): expected, worked out by hand per cycle
        ((), 1): 6,                 # cycles with >= 1 retirement: one per instruction
        ((INV,), 1): 13 - 6,        # stall cycles
        ((INV, EDGE), 1): 3,        # stall episodes: before instr 1, 4, 5
        ((EDGE,), 1): 4,            # retiring runs: cycles 0, 3-5, 10, 12
    }
    # cycle trace (R = an instruction retires, s = stall): R s s R R R s s s s R s R
    for (flags, cm), want in cases.items():
        r = Rig("skylake")
        r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS, *flags, cmask=cm))
        r.wr(GLOBAL_CTRL, 1)
        r.run(w, 6)
        assert r.rd(PERFCTR0) == want, (flags, cm)
        assert want == per_cycle_reference(w, 6, "inst", cm, INV in flags, EDGE in flags)


def test_cycles_event_with_cmask_counts_per_cycle():
    # the cycle event ticks once per cycle: CMASK=1 -> every cycle, CMASK=2 -> none
    w = straight([W.KIND_ALU] * 5, cycles=[2, 7, 1, 3, 4])
    for cm, inv, want in ((1, False, 17), (2, False, 0), (2, True, 17)):
        r = Rig("skylake")
        r.wr(EVTSEL0, evtsel(CYCLES, USR, OS, *((INV,) if inv else ()), cmask=cm))
        r.wr(GLOBAL_CTRL, 1)
        r.run(w, 5)
        assert r.rd(PERFCTR0) == want


@settings(max_examples=40 if not NOJIT else 10, deadline=None)
@given(cyc=st.lists(st.integers(1, 6), min_size=2, max_size=24),
       loads=st.lists(st.booleans(), min_size=24, max_size=24),
       ev=st.sampled_from(["inst", "cycles", "loads"]), cmask=st.integers(0, 3),
       inv=st.booleans(), edge=st.booleans(), reps=st.integers(1, 3))
def test_cmask_inv_edge_match_per_cycle_reference(cyc, loads, ev, cmask, inv, edge, reps):
    kinds = [W.KIND_LOAD if ld else W.KIND_ALU for ld in loads[:len(cyc)]]
    w = straight(kinds, cycles=cyc)
    n = reps * len(w) + 1
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(EV_CODE[ev], USR, OS, *((INV,) if inv else ()),
                         *((EDGE,) if edge else ()), cmask=cmask))
    r.wr(GLOBAL_CTRL, 1)
    r.run(w, n)
    assert r.rd(PERFCTR0) == per_cycle_reference(w, n, ev, cmask, inv, edge)


def test_edge_state_carries_across_runs():
    w = straight([W.KIND_ALU] * 6, cycles=[1, 3, 1, 1, 5, 2])
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS, INV, EDGE, cmask=1))
    r.wr(GLOBAL_CTRL, 1)
    for _ in range(12):
        r.run(w, 1)
    assert r.rd(PERFCTR0) == per_cycle_reference(w, 12, "inst", 1, True, True)


def test_in_tx_counts_nothing_in_txcp_alone_counts_normally():
    # the model has no transactions: IN_TX (count only inside one) -> 0;
    # IN_TXCP (drop aborted transactions' counts) changes nothing outside them
    r = Rig("haswell")
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS, IN_TX))
    r.wr(EVTSEL0 + 2, evtsel(INST_RETIRED, USR, OS, IN_TXCP))
    r.wr(GLOBAL_CTRL, 0b101)
    r.run(MF, 300)
    assert r.rd(PERFCTR0) == 0
    assert r.rd(PERFCTR0 + 2) == 300


def test_unimplemented_event_counts_nothing():
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(0x77AA, USR, OS))
    r.wr(GLOBAL_CTRL, 1)
    r.run(MF, 300)
    assert r.rd(PERFCTR0) == 0


def test_branch_and_load_events():
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(0xC4, USR, OS))        # BR_INST_RETIRED.ALL_BRANCHES
    r.wr(EVTSEL0 + 1, evtsel(0xC5, USR, OS))    # BR_MISP_RETIRED.ALL_BRANCHES
    r.wr(EVTSEL0 + 2, evtsel(0x81D0, USR, OS))  # MEM_INST_RETIRED.ALL_LOADS
    r.wr(EVTSEL0 + 3, evtsel(0x82D0, USR, OS))  # MEM_INST_RETIRED.ALL_STORES
    r.wr(GLOBAL_CTRL, 0xF)
    n = len(MF) + 99
    r.run(MF, n)
    idx = ran(MF, 0, n)
    k = MF.kind[idx]
    assert r.rd(PERFCTR0) == int((k == W.KIND_BRANCH).sum())
    assert r.rd(PERFCTR0 + 1) == int(((k == W.KIND_BRANCH) & (MF.br_misp[idx] == 1)).sum())
    assert r.rd(PERFCTR0 + 2) == int((k == W.KIND_LOAD).sum())
    assert r.rd(PERFCTR0 + 3) == int((k == W.KIND_STORE).sum())


# =============================================================================
# width, aliases, reserved bits
# =============================================================================

def test_gp_counter_wraps_at_width_and_sets_status_bit():
    r = Rig("skylake")
    r.wr(EVTSEL0 + 1, evtsel(INST_RETIRED, USR, OS))
    r.wr(A_PMC0 + 1, (1 << WIDTH) - 5)
    r.wr(GLOBAL_CTRL, 0b10)
    r.run(MF, 4)
    assert r.rd(PERFCTR0 + 1) == WMASK and r.status == 0
    r.run(MF, 6)
    assert r.rd(PERFCTR0 + 1) == 5
    assert r.status == 1 << 1
    log = r.core.take_log()
    ovf = log[log[:, 0] == C.LOG_OVERFLOW]
    assert ovf.shape[0] == 1 and ovf[0, 2] == 1 and ovf[0, 3] == 4     # counter 1, instr 4
    assert u64(ovf[0, 4]) == int(MF.ip[4])


@pytest.mark.parametrize("i", [0, 1, 2])
def test_fixed_counter_overflow_sets_bit_32_plus_i(i):
    r = Rig("skylake")
    r.wr(FIXED_CTR_CTRL, (F_OS | F_USR) << (4 * i))
    r.wr(FIXED_CTR0 + i, WMASK)
    r.wr(GLOBAL_CTRL, 1 << (32 + i))
    r.run(MF, 1)
    assert r.status == 1 << (32 + i)
    inc = 1 if i == 0 else int(MF.cycles[0])
    assert r.rd(FIXED_CTR0 + i) == (WMASK + inc) & WMASK


def test_legacy_alias_sign_extends_bit_31():
    # FACTS b.8: the 0xC1 alias takes bits 31:0, sign-extended to the counter width
    r = Rig("skylake")
    r.wr(PERFCTR0, 0xFFFFFFF0)
    assert r.rd(PERFCTR0) == 0xFFFFFFFFFFF0
    r.wr(PERFCTR0, 0x7FFFFFF0)
    assert r.rd(PERFCTR0) == 0x7FFFFFF0
    r.wr(PERFCTR0, 0x123_4567_89AB)                 # bits above 31 are not written
    assert r.rd(PERFCTR0) == 0x4567_89AB


def test_full_width_alias_needs_fw_writes_and_gps_above_width():
    r = Rig("haswell")                               # PERF_CAPABILITIES.FW_WRITES set
    assert r.rd(PERF_CAPABILITIES) & (1 << 13)
    r.wr(A_PMC0, 0x8000_1234_5678)
    assert r.rd(PERFCTR0) == 0x8000_1234_5678 == r.rd(A_PMC0)
    with pytest.raises(GuestFault) as e:
        r.wr(A_PMC0, 0xFFFFFF0123456789)              # KUT check_gp_counters_write_width
    assert e.value.vector == "#GP" and e.value.msr == A_PMC0
    assert r.rd(A_PMC0) == 0x8000_1234_5678          # unchanged
    s = Rig("silvermont")                            # no FW_WRITES: no 0x4C1 at all
    assert not s.rd(PERF_CAPABILITIES) & (1 << 13)
    with pytest.raises(GuestFault):
        s.wr(A_PMC0, 1)
    with pytest.raises(GuestFault):
        s.rd(A_PMC0)


def test_counter_msrs_exist_only_up_to_the_model_counts():
    r = Rig("silvermont")                            # 2 GP, 3 fixed
    r.wr(PERFCTR0 + 1, 5)
    for msr in (PERFCTR0 + 2, EVTSEL0 + 2, FIXED_CTR0 + 3):
        with pytest.raises(GuestFault):
            r.rd(msr)
        with pytest.raises(GuestFault):
            r.wr(msr, 0)
    i = Rig("icelake")
    i.wr(PERFCTR0 + 7, 5)
    i.wr(FIXED_CTR0 + 3, 5)


@pytest.mark.parametrize("cpu,msr,value,ok", [
    ("silvermont", EVTSEL0, IN_TX, False),           # no TSX
    ("haswell", EVTSEL0, IN_TX, True),
    ("haswell", EVTSEL0, IN_TXCP, False),            # IN_TXCP only on counter 2 (FACTS b.2)
    ("haswell", EVTSEL0 + 2, IN_TXCP, True),
    ("skylake", EVTSEL0, ADAPTIVE, False),
    ("icelake", EVTSEL0, ADAPTIVE, True),
    ("icelake", EVTSEL0, 1 << 35, False),
    ("skylake", EVTSEL0, 0xFFFFFFFF, True),
    ("silvermont", GLOBAL_CTRL, 0b11 | 0b111 << 32, True),
    ("silvermont", GLOBAL_CTRL, 1 << 2, False),
    ("skylake", GLOBAL_CTRL, 1 << 35, False),
    ("icelake", GLOBAL_CTRL, 0xFF | 0xF << 32, True),
    ("icelake", GLOBAL_CTRL, 1 << 8, False),
    ("silvermont", PEBS_ENABLE, 1, True),
    ("silvermont", PEBS_ENABLE, 1 << 1, False),      # PEBS only on PMC0 (FACTS a.7)
    ("silvermont", PEBS_ENABLE, 1 << 32, False),     # no load latency on SLM (FACTS g.3)
    ("haswell", PEBS_ENABLE, 1 << 32, True),         # LL_EN_PMC0 (FACTS b.5)
    ("skylake", PEBS_ENABLE, 0xF | 0xF << 32, True),
    ("skylake", PEBS_ENABLE, 1 << 63, False),
    ("icelake", PEBS_ENABLE, 0xFF | 0xF << 32, True),  # extended PEBS: fixed counters
    ("icelake", PEBS_ENABLE, 1 << 36, False),
    ("skylake", FIXED_CTR_CTRL, 0xFFF, True),
    ("skylake", FIXED_CTR_CTRL, 0xF000, False),      # no fixed counter 3
    ("skylake", FIXED_CTR_CTRL, 1 << 32, False),     # adaptive bit only with baseline
    ("icelake", FIXED_CTR_CTRL, 0xFFFF | 0x1111 << 32, True),
    ("icelake", FIXED_CTR_CTRL, 1 << 33, False),
    ("icelake", PEBS_DATA_CFG, 0xFF00000F, True),
    ("icelake", PEBS_DATA_CFG, 1 << 4, False),       # KVM mask ~0xff00000f (FACTS a.3)
    ("icelake", PEBS_DATA_CFG, 1 << 32, False),
    ("skylake", PEBS_DATA_CFG, 0, False),            # only with format 4
    ("skylake", GLOBAL_OVF_CTRL, 0xF | 0x7 << 32 | 3 << 62, True),
    ("skylake", GLOBAL_OVF_CTRL, 1 << 4, False),
])
def test_reserved_bits_gp(cpu, msr, value, ok):
    r = Rig(cpu)
    if ok:
        r.wr(msr, value)
        if msr != GLOBAL_OVF_CTRL:
            assert r.rd(msr) == value
    else:
        with pytest.raises(GuestFault) as e:
            r.wr(msr, value)
        assert e.value.vector == "#GP" and e.value.msr == msr and e.value.value == value


@pytest.mark.parametrize("cpu, msr, value, faults", [
    ("silvermont", DS_AREA, 0x0000_8000_0000_0000, True),      # non-canonical (FACTS g.4)
    ("silvermont", DS_AREA, 0xFFFF_8880_0000_1000, False),
    ("silvermont", PEBS_ENABLE, 0xF0000000F, True),           # what the patch accepts (g.3)
    ("silvermont", PEBS_ENABLE, 1, False),
    ("skylake", PEBS_ENABLE, 0xF0000000F, False),
    ("skylake", GLOBAL_STATUS, 0, True),                      # read-only
])
def test_wrmsr_fault_is_the_check_without_the_write(cpu, msr, value, faults):
    # SDM 26.4 (FACTS g.4): a VM-entry MSR-load entry fails where WRMSR would #GP;
    # wrmsr_fault answers that question and changes nothing
    r = Rig(cpu)
    before = r.core.regs.copy()
    why = r.core.wrmsr_fault(msr, value)
    assert (why is not None) == faults
    np.testing.assert_array_equal(r.core.regs, before)
    if faults:
        with pytest.raises(GuestFault, match=why.split()[0]):
            r.wr(msr, value)
    else:
        r.wr(msr, value)
        assert r.rd(msr) == value


def test_perf_capabilities_and_global_status_are_read_only():
    r = Rig("icelake")
    assert r.rd(PERF_CAPABILITIES) == r.model.perf_capabilities
    for msr in (PERF_CAPABILITIES, GLOBAL_STATUS):
        with pytest.raises(GuestFault, match="read-only"):
            r.wr(msr, 0)


def test_ovf_ctrl_clears_status_bits():
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS))
    r.wr(EVTSEL0 + 1, evtsel(INST_RETIRED, USR, OS))
    r.wr(FIXED_CTR_CTRL, F_OS | F_USR)
    for msr in (PERFCTR0, PERFCTR0 + 1):
        r.wr(msr, 0xFFFFFFFF)                         # -1: overflows on the next event
    r.wr(FIXED_CTR0, WMASK)
    r.wr(GLOBAL_CTRL, 0b11 | 1 << 32)
    r.run(MF, 1)
    assert r.status == 0b11 | 1 << 32
    assert r.rd(GLOBAL_OVF_CTRL) == 0
    r.wr(GLOBAL_OVF_CTRL, 1 << 1)
    assert r.status == 0b01 | 1 << 32
    r.wr(GLOBAL_OVF_CTRL, 1 | 1 << 32 | 1 << 62)
    assert r.status == 0


@pytest.mark.parametrize("addr,ok", [(0, True), (0x7FFF_FFFF_F000, True),
                                     (0xFFFF_8000_0000_0000, True),
                                     (0x0000_8000_0000_0000, False),
                                     (0xFFFF_7FFF_FFFF_F000, False)])
def test_ds_area_must_be_canonical(addr, ok):
    r = Rig("skylake")
    if ok:
        r.wr(DS_AREA, addr)
        assert r.rd(DS_AREA) == addr
    else:
        with pytest.raises(GuestFault, match="non-canonical"):
            r.wr(DS_AREA, addr)


def test_msr_api_misuse():
    r = Rig("skylake")
    with pytest.raises(GuestFault, match="no such MSR"):
        r.rd(0x10)
    with pytest.raises(TypeError, match="msr index"):
        r.rd("0xC1")
    with pytest.raises(ValueError, match="msr index"):
        r.wr(1 << 32, 0)
    with pytest.raises(ValueError, match="value"):
        r.wr(PERFCTR0, -1)
    with pytest.raises(TypeError, match="value"):
        r.wr(PERFCTR0, 1.0)
    with pytest.raises(ValueError, match="seed"):
        C.Core("skylake", seed=-1)
    with pytest.raises(ValueError, match="cpu must be one of"):
        C.Core("pentium4")
    with pytest.raises(ValueError, match="idx"):
        r.core.counter(4)
    assert r.core.counter(32) == 0


def test_run_argument_checks():
    r = Rig("skylake")
    with pytest.raises(ValueError, match="budget"):
        r.run(MF, -1)
    with pytest.raises(TypeError, match="mem"):
        r.core.run(MF, 1, r.mem.astype(np.int8), r.ept)
    with pytest.raises(TypeError, match="ept"):
        r.core.run(MF, 1, r.mem, r.ept.astype(np.int64))


# =============================================================================
# PMI and skid
# =============================================================================

def skids(cpu="skylake", seed=0, n=30, period=100, fixed=False):
    """Arm an INT counter to overflow after ``period`` instructions, n times; return the skids."""
    r = Rig(cpu, seed=seed)
    w = MF
    if fixed:
        r.wr(FIXED_CTR_CTRL, F_OS | F_USR | F_PMI)
        ctr, gbit = FIXED_CTR0, 32
    else:
        r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS, INT))
        ctr, gbit = A_PMC0, 0
    r.wr(GLOBAL_CTRL, 1 << gbit)
    out = []
    for _ in range(n):
        r.wr(ctr, (1 << WIDTH) - period)
        start_ret, start_rip = r.retired, r.core.rip
        assert r.run(w, 10 * period) == C.EXIT_PMI
        assert r.status & (1 << gbit)
        skid = r.retired - start_ret - period
        log = r.core.take_log()
        ovf = log[log[:, 0] == C.LOG_OVERFLOW]
        pmi = log[log[:, 0] == C.LOG_PMI]
        assert ovf.shape[0] == 1 and pmi.shape[0] == 1
        evt = (start_rip + period - 1) % len(w)
        assert ovf[0, 3] == evt
        interrupted = (evt + skid + 1) % len(w)
        assert pmi[0, 3] == interrupted == r.core.rip       # the interrupted IP
        assert u64(pmi[0, 4]) == int(w.ip[interrupted])
        assert pmi[0, 5] == 1 << gbit                      # cause
        r.wr(GLOBAL_OVF_CTRL, 1 << gbit)
        out.append(skid)
    assert int(r.core.regs[C.R_PMI_COUNT]) == n
    return out


@pytest.mark.parametrize("fixed", [False, True])
def test_pmi_arrives_within_skid_bounds(fixed):
    m = get_model("skylake")
    s = skids(fixed=fixed)
    assert all(m.skid_min <= x <= m.skid_max for x in s)
    assert len(set(s)) > 1                               # seeded, not constant


def test_skid_is_seeded():
    assert skids(seed=7) == skids(seed=7)
    assert skids(seed=7) != skids(seed=8)


@pytest.mark.parametrize("k", [0, 3])
def test_fixed_skid_model(k):
    m = dataclasses.replace(get_model("skylake"), name=f"skid{k}", skid_min=k, skid_max=k)
    assert set(skids(cpu=m, n=5)) == {k}


def test_no_int_no_pmi():
    r = Rig("skylake")
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS))
    r.wr(A_PMC0, WMASK - 9)
    r.wr(GLOBAL_CTRL, 1)
    assert r.run(MF, 1000) == C.EXIT_BUDGET
    assert r.status == 1 and int(r.core.regs[C.R_PMI_COUNT]) == 0


def test_pmi_pending_survives_run_boundary():
    m = dataclasses.replace(get_model("skylake"), name="skid5", skid_min=5, skid_max=5)
    r = Rig(m)
    r.wr(EVTSEL0, evtsel(INST_RETIRED, USR, OS, INT))
    r.wr(A_PMC0, WMASK)
    r.wr(GLOBAL_CTRL, 1)
    assert r.run(MF, 3) == C.EXIT_BUDGET           # overflow at instr 0, 2 of 5 skid
    assert r.run(MF, 100) == C.EXIT_PMI
    assert r.retired == 6


# =============================================================================
# PEBS assist
# =============================================================================

def arm_pebs(r, period, counter=0, event=INST_RETIRED, adaptive=False, extra=0):
    """PEBS on GP counter ``counter`` (or fixed counter counter-32) with reload -period."""
    reset = (-period) & WMASK
    if counter >= 32:
        i = counter - 32
        ctrl = r.rd(FIXED_CTR_CTRL) | (F_OS | F_USR) << (4 * i)
        if adaptive:
            ctrl |= 1 << (32 + 4 * i)
        r.wr(FIXED_CTR_CTRL, ctrl)
        r.wr(FIXED_CTR0 + i, reset)
    else:
        r.wr(EVTSEL0 + counter, evtsel(event, USR, OS, *((ADAPTIVE,) if adaptive else ()))
             | extra)
        assert period < 1 << 31
        r.wr(PERFCTR0 + counter, reset & 0xFFFFFFFF)    # sign-extended to -period
    r.wr(PEBS_ENABLE, r.rd(PEBS_ENABLE) | 1 << counter)
    r.wr(GLOBAL_CTRL, r.rd(GLOBAL_CTRL) | 1 << counter)
    d = r.read_ds()
    slots = list(d.pebs_event_reset)
    slots[pebs.ds_reset_slot(counter)] = reset
    r.write_ds(dataclasses.replace(d, pebs_event_reset=tuple(slots)))


FORMAT_MODELS = {0: fmt_model(0), 1: fmt_model(1), 2: "haswell", 3: "skylake", 4: "icelake"}
SIZES = {0: 144, 1: 176, 2: 192, 3: 200, 4: 32}       # FACTS a.2 / a.3


@pytest.mark.parametrize("fmt", [0, 1, 2, 3, 4])
def test_pebs_record_written_through_page_tables(fmt):
    r = Rig(FORMAT_MODELS[fmt])
    assert r.model.pebs_record_size == SIZES[fmt]
    r.setup_ds(buf_pages=2)
    P = 37
    arm_pebs(r, P)
    w = MF
    assert r.run(w, P) == C.EXIT_BUDGET                # the assist ran after the last one
    evt, nxt = (P - 1) % len(w), P % len(w)
    tsc = int(w.cycles[:P].astype(np.int64).sum())
    d = r.read_ds()
    assert d.pebs_index == r.buf + SIZES[fmt]          # advanced by one record
    assert r.rd(PERFCTR0) == (-P) & WMASK              # reloaded from pebs_event_reset[0]
    assert int(r.core.regs[C.R_ASSISTS]) == 1
    assert int(r.core.regs[C.R_SKID]) == 0             # PEBS, not an interrupt
    rec = r.records()
    assert rec.shape == (1,)
    # the bytes are in guest memory at the buffer's GPA (GuestMM allocates contiguously)
    raw = r.mem[r.gpa(r.buf):r.gpa(r.buf) + SIZES[fmt]].tobytes()
    assert raw == rec.tobytes()
    log = r.core.take_log()
    wr = log[log[:, 0] == C.LOG_PEBS_WRITE]
    assert wr.shape[0] == 1 and u64(wr[0, 2]) == r.buf and wr[0, 3] == r.gpa(r.buf)
    assert wr[0, 4] == SIZES[fmt] and wr[0, 5] == 1
    if fmt == 4:
        b = rec["basic"][0]
        assert int(b["format_size"]) == 32 << 48       # no adaptive bit: basic only
        assert int(b["ip"]) == int(w.ip[evt])          # eventing IP (FACTS a.6)
        assert int(b["applicable_counters"]) == 1
        assert int(b["tsc"]) == tsc
        return
    # formats 0..3: trap-like models record the next IP (FACTS a.6 / b.6)
    assert int(rec["ip"][0]) == int(w.ip[nxt])
    assert int(rec["flags"][0]) & 0x2                  # RFLAGS bit 1 is always 1
    if fmt >= 1:
        if fmt >= 3:
            assert int(rec["status"][0]) == 1          # applicable counters (SDM fmt 3)
        else:
            assert int(rec["status"][0]) & 1           # GLOBAL_STATUS before the assist
    if fmt >= 2:
        assert int(rec["real_ip"][0]) == int(w.ip[evt])
    if fmt >= 3:
        assert int(rec["tsc"][0]) == tsc


@pytest.mark.parametrize("cpu", ["haswell", "skylake"])
def test_pebs_load_record_has_address_and_latency(cpu):
    r = Rig(cpu)
    r.setup_ds()
    w = W.pointer_chase(n=64, seed=3)
    load_ev = r.model.event("MEM_UOPS_RETIRED.ALL_LOADS" if cpu == "haswell"
                            else "MEM_INST_RETIRED.ALL_LOADS")
    P = 10
    arm_pebs(r, P, event=load_ev.event | load_ev.umask << 8)
    r.run(w, 40)
    loads = np.flatnonzero(w.kind == W.KIND_LOAD)
    evt = loads[P - 1]                       # the P-th load
    rec = r.records()[0]
    assert int(rec["real_ip"]) == int(w.ip[evt])
    assert int(rec["dla"]) == int(w.addr[evt])
    assert int(rec["lat"]) == int(w.latency[evt])


def test_silvermont_record_fields_0x98_to_0xa8_are_reserved_zeros():
    # FACTS g.3 / SDM 18.6.1.1, Table 18-13: 192 bytes; 0x90 GLOBAL_STATUS;
    # 0x98, 0xA0, 0xA8 Reserved (no data address, source, latency); 0xB0
    # EventingRIP; 0xB8 Reserved; trap-like: the IP at 0x08 is the next one
    r = Rig("silvermont")
    r.setup_ds()
    w = W.pointer_chase(n=64, seed=3)
    load_ev = r.model.event("MEM_UOPS_RETIRED.ALL_LOADS")
    P = 10
    arm_pebs(r, P, event=load_ev.event | load_ev.umask << 8)
    r.run(w, 40)
    loads = np.flatnonzero(w.kind == W.KIND_LOAD)
    evt = loads[P - 1]
    assert int(w.addr[evt]) != 0 and int(w.latency[evt]) != 0   # there was something to leak
    raw = r.mm.read(r.buf, 192)
    assert raw[0x98:0xB0] == bytes(0x18)
    assert raw[0xB8:0xC0] == bytes(8)
    assert int.from_bytes(raw[0xB0:0xB8], "little") == int(w.ip[evt])
    assert int.from_bytes(raw[0x08:0x10], "little") == int(w.ip[(evt + 1) % len(w)])
    assert int.from_bytes(raw[0x90:0x98], "little") & 1          # PMC0's overflow bit


def test_silvermont_has_no_load_latency_bits():
    # FACTS g.3: no load-latency facility on Silvermont, so LL_EN_PMC0 (PEBS_ENABLE
    # bit 32, FACTS b.5) is reserved there; Haswell has it
    sl, hw = Rig("silvermont"), Rig("haswell")
    with pytest.raises(GuestFault):
        sl.wr(PEBS_ENABLE, 1 << 32)
    hw.wr(PEBS_ENABLE, 1 << 32 | 1)
    assert hw.rd(PEBS_ENABLE) == 1 << 32 | 1


@pytest.mark.parametrize("value", [0b11, 1 << 32 | 0b11, 0xF0000000F])
def test_silvermont_ignores_pebs_enable_bits_it_lacks(value):
    # The 2014 patch lets a Silvermont guest set any of 0xf0000000f (FACTS g.3);
    # VM entry loads the value into the register. ASSUMPTION (counting.py,
    # PEBS_ENABLE_IGNORES_OTHER_BITS): only PMC0's bit (SDM 18.6.1.1) arms PEBS.
    r = Rig("silvermont")
    r.setup_ds()
    arm_pebs(r, 25)                                    # PMC0: INST_RETIRED, PEBS
    r.wr(EVTSEL0 + 1, evtsel(INST_RETIRED, USR, OS, INT))
    r.wr(PERFCTR0 + 1, (-40) & 0xFFFFFFFF)
    r.wr(GLOBAL_CTRL, 0b11)
    r.core.regs[C.R_PEBS_ENABLE] = np.uint64(value)    # as the MSR-load list does
    assert r.run(MF, 60) == C.EXIT_PMI                  # PMC1 overflowed at 40: a PMI, no PEBS
    assert 40 < r.retired <= 40 + SKID_MAX
    log = r.core.take_log()
    writes = log[log[:, 0] == C.LOG_PEBS_WRITE]
    assert writes[:, 5].tolist() == [1]                 # one record, for PMC0 (at 25) alone
    assert r.records().shape == (1,)
    assert log[log[:, 0] == C.LOG_PMI][:, 5].tolist() == [0b10]   # the PMI is PMC1's
    assert r.status & 0b10


def test_non_trap_pebs_records_the_eventing_ip():
    m = dataclasses.replace(get_model("skylake"), name="skl-fault-like",
                            perf_capabilities=get_model("skylake").perf_capabilities
                            & ~M.PERF_CAP_PEBS_TRAP)
    r = Rig(m)
    r.setup_ds()
    arm_pebs(r, 20)
    r.run(MF, 20)
    rec = r.records()[0]
    assert int(rec["ip"]) == int(rec["real_ip"]) == int(MF.ip[19])


def test_pebs_reload_and_several_records():
    r = Rig("skylake")
    r.setup_ds(buf_pages=4)
    P = 50
    arm_pebs(r, P)
    n = 7 * P + 3
    r.run(MF, n)
    rec = r.records()
    assert rec.shape == (7,)
    for k in range(7):
        assert int(rec["real_ip"][k]) == int(MF.ip[((k + 1) * P - 1) % len(MF)])
    assert r.rd(PERFCTR0) == ((-P) + 3) & WMASK
    assert r.read_ds().pebs_index == r.buf + 7 * 200


def test_pebs_threshold_sets_bit_62_and_exits_with_pmi():
    r = Rig("skylake")
    r.setup_ds(buf_pages=2, thresh_records=2)
    P = 30
    arm_pebs(r, P)
    assert r.run(MF, 10 * P) == C.EXIT_PMI
    assert r.retired == 2 * P                          # right after the 2nd assist
    assert r.status & (1 << 62)
    log = r.core.take_log()
    pmi = log[log[:, 0] == C.LOG_PMI]
    assert pmi.shape[0] == 1 and pmi[0, 5] == 1 << 62
    assert r.read_ds().pebs_index == r.buf + 2 * 200


def test_pebs_buffer_full_drops_the_record():
    r = Rig("skylake")
    r.setup_ds(records=1, thresh_records=5)            # absmax after 1 record; no PMI
    P = 30
    arm_pebs(r, P)
    r.run(MF, 2 * P)
    assert int(r.core.regs[C.R_ASSISTS]) == 1
    assert int(r.core.regs[C.R_PEBS_DROPPED]) == 1
    assert r.read_ds().pebs_index == r.buf + 200       # unchanged by the drop
    assert r.mm.read(r.buf + 200, 200) == bytes(200)   # nothing written past absmax
    assert r.rd(PERFCTR0) == (-P) & WMASK              # the counter still reloads
    log = r.core.take_log()
    assert (log[:, 0] == C.LOG_PEBS_DROP).sum() == 1


def test_silvermont_pebs_only_on_pmc0():
    r = Rig("silvermont")
    assert r.model.pebs_counter_mask == 1
    r.setup_ds()
    arm_pebs(r, 25)
    r.run(MF, 25)
    assert r.records().shape == (1,)
    with pytest.raises(GuestFault):
        r.wr(PEBS_ENABLE, 0b10)


def test_pebs_on_a_non_pebs_event_gives_no_record():
    r = Rig("skylake")
    r.setup_ds()
    arm_pebs(r, 25, event=CYCLES)                      # CPU_CLK_UNHALTED is not PEBS-capable
    r.run(MF, 500)
    assert int(r.core.regs[C.R_ASSISTS]) == 0
    assert r.status & 1


# ---- format 4: adaptive records ---------------------------------------------------

MEMINFO, GPRS, XMMS, LBRS = 1, 2, 4, 8


@pytest.mark.parametrize("cfg", [0, MEMINFO, GPRS, XMMS, LBRS, MEMINFO | GPRS | XMMS | LBRS,
                                 LBRS | 2 << 24, MEMINFO | GPRS | XMMS | LBRS | 31 << 24])
def test_adaptive_record_groups_follow_data_cfg(cfg):
    r = Rig("icelake")
    size = (32 + 32 * bool(cfg & MEMINFO) + 144 * bool(cfg & GPRS) + 256 * bool(cfg & XMMS)
            + 24 * (((cfg >> 24) & 0xFF) + 1) * bool(cfg & LBRS))   # FACTS a.3 size rule
    r.setup_ds(buf_pages=4)
    r.wr(PEBS_DATA_CFG, cfg)
    r.wr(DEBUGCTL, DEBUGCTL_LBR)                # LBRs on: the LBR group holds the last branch
    P = 41
    arm_pebs(r, P, adaptive=True)
    r.run(MF, 2 * P)
    raw = r.mm.read(r.buf, r.read_ds().pebs_index - r.buf)
    walked = pebs.walk_adaptive(raw)
    assert [(o, c, s) for o, c, s in walked] == [(0, cfg, size), (size, cfg, size)]
    word0 = int.from_bytes(raw[:8], "little")
    assert word0 >> 48 == size and word0 & ((1 << 48) - 1) == cfg
    rec = pebs.decode(raw, 4)[0]
    evt, nxt = P - 1, P
    assert int(rec["basic"]["ip"]) == int(MF.ip[evt])
    assert int(rec["basic"]["applicable_counters"]) == 1
    assert int(rec["basic"]["tsc"]) == int(MF.cycles[:P].astype(np.int64).sum())
    if cfg & GPRS:
        assert int(rec["gprs"]["ip"]) == int(MF.ip[nxt])        # the off-by-one IP
    if cfg & MEMINFO:
        assert int(rec["meminfo"]["address"]) == int(MF.addr[evt])
    if cfg & LBRS:
        branches = np.flatnonzero(MF.kind[:P] == W.KIND_BRANCH)
        last = branches[-1]
        assert int(rec["lbr"][0]["from"]) == int(MF.ip[last])
        assert int(rec["lbr"][0]["to"]) == int(MF.ip[last + 1])


@pytest.mark.parametrize("fast", [True, False])
def test_lbr_group_is_zeros_while_debugctl_lbr_is_clear(fast):
    # issue 9 item 4: nothing enabled LBRs, so no branch may reach the record;
    # set DEBUGCTL.LBR and entry 0 is the last branch (FACTS a.3 LBR group)
    r = Rig("icelake")
    r.core.fast_forward = fast
    r.setup_ds(buf_pages=4)
    cfg = LBRS | 3 << 24                        # four LBR entries
    r.wr(PEBS_DATA_CFG, cfg)
    P = 41
    arm_pebs(r, P, adaptive=True)
    assert r.rd(DEBUGCTL) == 0                  # reset value
    r.run(MF, P)
    r.wr(DEBUGCTL, DEBUGCTL_LBR)
    r.run(MF, P)
    recs = pebs.decode(r.mm.read(r.buf, r.read_ds().pebs_index - r.buf), 4, data_cfg=cfg)
    assert len(recs) == 2
    off = recs[0]["lbr"]
    assert all(int(off[k][f]) == 0 for k in range(4) for f in ("from", "to", "info"))
    on = recs[1]["lbr"]
    last = np.flatnonzero(MF.kind[:2 * P] == W.KIND_BRANCH)
    last = last[last >= P][-1]                  # the last branch since LBRs went on
    assert (int(on[0]["from"]), int(on[0]["to"])) == (int(MF.ip[last]), int(MF.ip[last + 1]))
    assert all(int(on[k][f]) == 0 for k in (1, 2, 3) for f in ("from", "to", "info"))


@pytest.mark.parametrize("cpu, value, ok", [
    ("silvermont", DEBUGCTL_LBR, True),
    ("silvermont", 1 << 2 | DEBUGCTL_LBR, False),   # bits 5:2 reserved (SDM Figure 17-3)
    ("silvermont", 1 << 14, False),                 # FREEZE_WHILE_SMM needs PERF_CAPABILITIES bit 12
    ("skylake", 1 << 14 | 1 << 11 | DEBUGCTL_LBR, True),
    ("icelake", 1 << 63, False),                    # 63:16 reserved
    ("haswell", 1 << 15, True),                     # RTM_DEBUG on a TSX part
    ("silvermont", 1 << 15, False),
])
def test_debugctl_is_a_register(cpu, value, ok):
    r = Rig(cpu)
    if ok:
        r.wr(DEBUGCTL, value)
        assert r.rd(DEBUGCTL) == value
    else:
        with pytest.raises(GuestFault):
            r.wr(DEBUGCTL, value)
        assert r.rd(DEBUGCTL) == 0


def test_adaptive_bit_clear_gives_basic_record_even_with_data_cfg():
    r = Rig("icelake")
    r.setup_ds()
    r.wr(PEBS_DATA_CFG, MEMINFO | GPRS)
    arm_pebs(r, 30, adaptive=False)
    r.run(MF, 30)
    raw = r.mm.read(r.buf, r.read_ds().pebs_index - r.buf)
    assert pebs.walk_adaptive(raw) == [(0, 0, 32)]


def test_adaptive_fixed_counter_pebs():
    # FACTS b.3 / b.5: extended PEBS on fixed counter 0, adaptive bit 32, reset slot 8
    r = Rig("icelake")
    r.setup_ds()
    r.wr(PEBS_DATA_CFG, GPRS)
    P = 33
    arm_pebs(r, P, counter=32, adaptive=True)
    assert r.read_ds().pebs_event_reset[8] == (-P) & WMASK
    r.run(MF, P)
    rec = pebs.decode(r.mm.read(r.buf, 32 + 144), 4)[0]
    assert int(rec["basic"]["applicable_counters"]) == 1 << 32
    assert int(rec["basic"]["format_size"]) == (176 << 48) | GPRS
    assert r.rd(FIXED_CTR0) == (-P) & WMASK


def test_one_record_for_counters_overflowing_together():
    r = Rig("icelake")
    r.setup_ds()
    arm_pebs(r, 20, counter=0)
    arm_pebs(r, 20, counter=3)
    arm_pebs(r, 20, counter=32)
    r.run(MF, 20)
    raw = r.mm.read(r.buf, r.read_ds().pebs_index - r.buf)
    assert len(raw) == 32
    rec = pebs.decode(raw, 4)[0]
    assert int(rec["basic"]["applicable_counters"]) == 1 | 1 << 3 | 1 << 32


@pytest.mark.parametrize("adaptive_counters, want_groups", [
    ((), 0),                         # nobody asked: basic record, group field 0
    ((0,), MEMINFO | GPRS),          # one of the producers asked: DATA_CFG
    ((3,), MEMINFO | GPRS),
    ((32,), MEMINFO | GPRS),         # fixed counter 0: FIXED_CTR_CTRL bit 32
    ((0, 3, 32), MEMINFO | GPRS),
])
def test_record_is_adaptive_when_a_producing_counter_asks(adaptive_counters, want_groups):
    # FACTS a.3: the low bits of word 0 are "0 if none of the counters that produced
    # it had their Adaptive_Record bit set, otherwise the value of MSR_PEBS_DATA_CFG"
    # (EVENTSEL bit 34; FIXED_CTR_CTRL bit 32 + 4i); the size follows the groups
    r = Rig("icelake")
    r.setup_ds()
    r.wr(PEBS_DATA_CFG, MEMINFO | GPRS)
    for c in (0, 3, 32):
        arm_pebs(r, 20, counter=c, adaptive=c in adaptive_counters)
    r.run(MF, 20)
    raw = r.mm.read(r.buf, r.read_ds().pebs_index - r.buf)
    size = 32 + (32 + 144 if want_groups else 0)
    assert pebs.walk_adaptive(raw) == [(0, want_groups, size)]
    assert int.from_bytes(raw[16:24], "little") == 1 | 1 << 3 | 1 << 32


def test_a_non_adaptive_counter_alone_writes_a_basic_record_next_to_an_adaptive_one():
    # per counter, not per core: GP0 asks, GP1 does not; they overflow apart
    r = Rig("icelake")
    r.setup_ds()
    r.wr(PEBS_DATA_CFG, GPRS)
    arm_pebs(r, 20, counter=0, adaptive=True)
    arm_pebs(r, 30, counter=1, adaptive=False)
    r.run(MF, 30)
    raw = r.mm.read(r.buf, r.read_ds().pebs_index - r.buf)
    assert pebs.walk_adaptive(raw) == [(0, GPRS, 32 + 144), (32 + 144, 0, 32)]


# ---- faults during the assist ------------------------------------------------------

@pytest.mark.parametrize("what", ["ds", "buffer"])
@pytest.mark.parametrize("cpu", MODEL_NAMES)
def test_unmapped_ds_or_buffer_is_a_pebs_fault(cpu, what):
    r = Rig(cpu)
    r.setup_ds()
    arm_pebs(r, 25)
    r.mm.unmap(r.ds if what == "ds" else r.buf)
    assert r.run(MF, 1000) == C.EXIT_PEBS_FAULT
    assert r.retired == 25
    assert int(r.core.regs[C.R_PEBS_PENDING]) == 0          # the record is lost
    assert int(r.core.regs[C.R_ASSISTS]) == 0
    code = int(r.core.regs[C.R_EXIT_INFO]) >> 8
    assert code == XLATE_PF
    log = r.core.take_log()
    f = log[log[:, 0] == C.LOG_PEBS_FAULT]
    assert f.shape[0] == 1 and f[0, 4] == XLATE_PF
    target = r.ds if what == "ds" else r.buf
    assert u64(f[0, 2]) & ~0xFFF == target
    # the run goes on; the next overflow faults again (nothing was reloaded)
    assert r.run(MF, 10) == C.EXIT_BUDGET


@pytest.mark.parametrize("cpu", ["silvermont", "haswell", "skylake"])
def test_ept_hole_under_buffer_loses_the_record_without_pebs_ept(cpu):
    r = Rig(cpu)
    r.setup_ds()
    arm_pebs(r, 25)
    hole = r.gpa(r.buf)
    r.ept_hole(hole)
    assert r.run(MF, 1000) == C.EXIT_PEBS_FAULT
    assert int(r.core.regs[C.R_EXIT_GPA]) == hole
    assert int(r.core.regs[C.R_EXIT_INFO]) >> 8 == XLATE_EPT
    assert int(r.core.regs[C.R_PEBS_PENDING]) == 0
    r.ept_fill(hole)
    r.run(MF, 0)
    assert int(r.core.regs[C.R_ASSISTS]) == 0               # lost for good
    assert r.read_ds().pebs_index == r.buf


@pytest.mark.parametrize("where", ["buffer", "ds", "page_table"])
def test_ept_hole_on_icelake_exits_and_the_assist_is_retried(where):
    r = Rig("icelake")
    assert r.model.pebs_ept
    r.setup_ds()
    r.wr(PEBS_DATA_CFG, GPRS)
    P = 25
    arm_pebs(r, P, adaptive=True)
    if where == "buffer":
        hole = r.gpa(r.buf)
    elif where == "ds":
        hole = r.gpa(r.ds)
    else:
        hole = r.mm.entries(r.buf)[-1][1] & ~0xFFF         # the buffer's PT page
    r.ept_hole(hole)
    assert r.run(MF, 1000) == C.EXIT_EPT_VIOLATION
    assert int(r.core.regs[C.R_EXIT_GPA]) & ~0xFFF == hole
    assert int(r.core.regs[C.R_PEBS_PENDING]) == 1          # still pending
    assert r.retired == P
    tsc = r.core.tsc
    # KVM fixes the hole; on re-entry the assist completes before anything retires
    r.ept_fill(hole)
    assert r.run(MF, 0) == C.EXIT_BUDGET
    assert r.retired == P and int(r.core.regs[C.R_ASSISTS]) == 1
    assert int(r.core.regs[C.R_PEBS_PENDING]) == 0
    rec = pebs.decode(r.mm.read(r.buf, 176), 4)[0]           # not lost
    assert int(rec["basic"]["ip"]) == int(MF.ip[P - 1])
    assert int(rec["gprs"]["ip"]) == int(MF.ip[P])
    assert int(rec["basic"]["tsc"]) == tsc
    assert r.rd(PERFCTR0) == (-P) & WMASK


# =============================================================================
# other exits
# =============================================================================

@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("inside", [1, 0])
def test_timer_exit_at_deadline(inside, fast):
    r = Rig("skylake")
    r.core.fast_forward = fast
    cyc = MF.cycles.astype(np.int64)
    end = np.cumsum(cyc)                          # TSC after each instruction
    j = 100 + int(np.flatnonzero(cyc[100:] > 1)[0])
    deadline = int(end[j]) - inside               # reached inside / at the end of instr j
    r.core.regs[C.R_TIMER_DEADLINE] = np.uint64(deadline)
    assert r.run(MF, 10_000) == C.EXIT_TIMER
    assert r.retired == j + 1
    assert r.core.tsc == end[j] and end[j - 1] < deadline
    assert int(r.core.regs[C.R_EXIT_REASON]) == C.EXIT_TIMER


def test_log_full_exit_keeps_every_row():
    # all 12 icelake counters reload to -1: every instruction overflows 12 counters
    # and writes one record: 13 rows per instruction
    r = Rig("icelake", frames=128)
    r.setup_ds(buf_pages=64)
    for c in list(range(8)) + [32, 33, 34, 35]:
        arm_pebs(r, 1, counter=c)
    total = 0
    rows = []
    exits = []
    while total < 1000:
        before = r.retired
        exits.append(r.run(MF, 1000 - total))
        total += r.retired - before
        assert int(r.core.regs[C.R_NLOG]) <= C.LOG_CAPACITY
        rows.append(r.core.take_log())
        if exits[-1] == C.EXIT_PMI:
            r.reset_index()
    assert C.EXIT_LOG_FULL in exits
    log = np.concatenate(rows)
    assert (log[:, 0] == C.LOG_OVERFLOW).sum() == 12 * 1000
    assert (log[:, 0] == C.LOG_PEBS_WRITE).sum() == 1000


def test_one_instruction_never_overruns_the_log():
    # start a step with as few free rows as the loop allows: its 13 rows must all fit
    r = Rig("icelake")
    r.setup_ds(buf_pages=4)
    for c in list(range(8)) + [32, 33, 34, 35]:
        arm_pebs(r, 1, counter=c)
    start = C.LOG_CAPACITY - C.LOG_SLACK
    r.core.regs[C.R_NLOG] = np.uint64(start)
    assert r.run(MF, 1) == C.EXIT_BUDGET
    n = int(r.core.regs[C.R_NLOG])
    assert n == start + 13 <= C.LOG_CAPACITY
    rows = r.core.log[start:n]
    assert (rows[:, 0] == C.LOG_OVERFLOW).sum() == 12
    assert rows[-1, 0] == C.LOG_PEBS_WRITE
    assert r.run(MF, 1) == C.EXIT_LOG_FULL and r.retired == 1


# =============================================================================
# numba and plain Python agree
# =============================================================================

def drive(cpu, seed, p0, p1, p2, jit, n=3000, hole=False):
    """A PEBS + PMI + skid session; return everything that must not depend on jit."""
    r = Rig(cpu, seed=seed)
    m = r.model
    # with a hole under the buffer's 2nd page, let the records run into it
    r.setup_ds(buf_pages=2, thresh_records=None if hole else 4)
    if m.adaptive:
        r.wr(PEBS_DATA_CFG, MEMINFO | GPRS | LBRS | 3 << 24)
    r.wr(DEBUGCTL, DEBUGCTL_LBR)
    arm_pebs(r, p0, counter=0, adaptive=m.adaptive)
    r.wr(EVTSEL0 + 1, evtsel(CYCLES, USR, OS, INT))
    r.wr(PERFCTR0 + 1, (-p1) & 0xFFFFFFFF)
    r.wr(FIXED_CTR_CTRL, r.rd(FIXED_CTR_CTRL) | (F_OS | F_USR | F_PMI) << 4)
    r.wr(FIXED_CTR0 + 1, (-p2) & WMASK)
    if m.adaptive:
        arm_pebs(r, p0 + 7, counter=32, adaptive=True)
    r.wr(GLOBAL_CTRL, r.rd(GLOBAL_CTRL) | 0b11 | 1 << 33)
    hole_gpa = r.gpa(r.buf + PAGE_SIZE)
    if hole:
        r.ept_hole(hole_gpa)
    exits, logs = [], []
    w = MF
    while r.retired < n:
        e = r.run(w, n - r.retired, jit=jit)
        exits.append(e)
        logs.append(r.core.take_log())
        if e == C.EXIT_PMI:
            st_ = r.status
            if st_ & 1 << 62:
                r.reset_index()
            if st_ & 0b10:
                r.wr(PERFCTR0 + 1, (-p1) & 0xFFFFFFFF)
            if st_ & 1 << 33:
                r.wr(FIXED_CTR0 + 1, (-p2) & WMASK)
            r.wr(GLOBAL_OVF_CTRL, st_)
        elif e == C.EXIT_EPT_VIOLATION:
            r.ept_fill(int(r.core.regs[C.R_EXIT_GPA]))
    return (r.core.regs.copy(), r.mem.copy(), np.concatenate(logs), exits)


def assert_same(a, b):
    regs_a, mem_a, log_a, ex_a = a
    regs_b, mem_b, log_b, ex_b = b
    assert ex_a == ex_b
    np.testing.assert_array_equal(regs_a, regs_b)
    np.testing.assert_array_equal(log_a, log_b)
    assert np.array_equal(mem_a, mem_b)


SKIP_NOJIT = pytest.mark.skipif(
    NOJIT, reason="NUMBA_DISABLE_JIT=1: the compiled loop is the Python loop, nothing to compare")


@SKIP_NOJIT
@pytest.mark.parametrize("cpu", MODEL_NAMES)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p0=st.integers(15, 400), p1=st.integers(40, 3000),
       p2=st.integers(200, 5000))
def test_numba_and_python_agree(cpu, seed, p0, p1, p2):
    jit = drive(cpu, seed, p0, p1, p2, True)
    py = drive(cpu, seed, p0, p1, p2, False)
    assert_same(jit, py)
    exits = set(jit[3])
    assert C.EXIT_PMI in exits
    assert int(jit[0][C.R_ASSISTS]) >= 1


@SKIP_NOJIT
@pytest.mark.parametrize("cpu", MODEL_NAMES)
def test_numba_and_python_agree_with_an_ept_hole(cpu):
    jit = drive(cpu, 5, 20, 500, 900, True, hole=True)
    py = drive(cpu, 5, 20, 500, 900, False, hole=True)
    assert_same(jit, py)
    want = C.EXIT_EPT_VIOLATION if get_model(cpu).pebs_ept else C.EXIT_PEBS_FAULT
    assert want in jit[3]


def _called_globals(fn, seen):
    """Every global function ``fn`` calls, transitively (through co_names)."""
    if id(fn) in seen:
        return
    seen[id(fn)] = fn
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        codes += [c for c in code.co_consts if isinstance(c, type(code))]
        for name in code.co_names:
            obj = fn.__globals__.get(name)
            if callable(obj) and not isinstance(obj, type) and hasattr(obj, "__globals__"):
                _called_globals(obj, seen)
            elif obj is not None and hasattr(obj, "py_func"):
                seen[id(obj)] = obj           # a dispatcher: reported by the caller


@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1: there is no compiled loop to tell apart")
def test_python_twin_calls_no_compiled_helper():
    from numba.core.dispatcher import Dispatcher
    twin = C.python_twin()
    assert twin is C.python_twin()
    assert isinstance(C.core_run, Dispatcher)
    seen = {}
    _called_globals(twin, seen)
    compiled = sorted(getattr(f, "__name__", repr(f)) for f in seen.values()
                      if isinstance(f, Dispatcher))
    assert compiled == []
    names = {f.__name__ for f in seen.values()}
    # the walk reached the far ends of the loop: the assist, the MMU, the counting rules
    assert {"pebs_assist", "translate", "_walk", "count_inc", "splitmix"} <= names


# =============================================================================
# fast-forward: retiring an uneventful stretch at once == stepping through it
# =============================================================================

WORKLOADS = {"multi_function": MF, "hot_loop": W.hot_loop(n=64, seed=2),
             "pointer_chase": W.pointer_chase(n=128, seed=4)}


@st.composite
def sessions(draw):
    cpu = draw(st.sampled_from(MODEL_NAMES))
    m = get_model(cpu)
    gp = []
    for j in range(m.n_gp):
        if not draw(st.booleans()):
            continue
        ev = draw(st.sampled_from(m.events))
        rings = draw(st.sampled_from([(USR,), (OS,), (USR, OS)]))
        cmask = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
        flags = rings + ((INV,) if cmask and draw(st.booleans()) else ()) \
            + ((EDGE,) if cmask and draw(st.booleans()) else ())
        pebs_ok = (m.pebs_counter_mask >> j) & 1 and ev.pebs and cmask == 0
        use_pebs = bool(pebs_ok and draw(st.booleans()))
        use_int = draw(st.booleans())
        period = draw(st.integers(1, 3000))
        gp.append((j, evtsel(ev.event | ev.umask << 8, *flags, *((INT,) if use_int else ()),
                             cmask=cmask), use_pebs, period))
    fixed = []
    for i in range(m.n_fixed):
        bits = draw(st.integers(0, 0xF)) & ~4
        if bits & 3:
            use_pebs = bool((m.pebs_fixed_mask >> i) & 1 and draw(st.booleans()))
            fixed.append((i, bits, use_pebs, draw(st.integers(1, 5000))))
    return dict(cpu=cpu, seed=draw(st.integers(0, 1000)), gp=gp, fixed=fixed,
                w=draw(st.sampled_from(sorted(WORKLOADS))),
                runs=draw(st.lists(st.integers(0, 2500), min_size=1, max_size=6)),
                timer=draw(st.sampled_from([0, 0, 97, 1500])),
                thresh=draw(st.sampled_from([1, 3, None])),
                hole=draw(st.booleans()), lbr=draw(st.booleans()))


def play(cfg, fast, jit=True):
    r = Rig(cfg["cpu"], seed=cfg["seed"])
    r.core.fast_forward = fast
    m = r.model
    r.setup_ds(buf_pages=2, thresh_records=cfg["thresh"])
    if m.adaptive:
        r.wr(PEBS_DATA_CFG, GPRS | MEMINFO | LBRS)
    if cfg.get("lbr"):
        r.wr(DEBUGCTL, DEBUGCTL_LBR)
    ctrl, fctrl, pebs_en = 0, 0, 0
    reset = [0] * pebs.DS_RESET_SLOTS
    for j, sel, use_pebs, period in cfg["gp"]:
        r.wr(EVTSEL0 + j, sel | (ADAPTIVE if m.adaptive and use_pebs else 0))
        r.wr(PERFCTR0 + j, (-period) & 0xFFFFFFFF)
        ctrl |= 1 << j
        if use_pebs:
            pebs_en |= 1 << j
            reset[j] = (-period) & WMASK
    for i, bits, use_pebs, period in cfg["fixed"]:
        fctrl |= bits << (4 * i)
        r.wr(FIXED_CTR0 + i, (-period) & WMASK)
        ctrl |= 1 << (32 + i)
        if use_pebs:
            pebs_en |= 1 << (32 + i)
            reset[8 + i] = (-period) & WMASK
    r.write_ds(dataclasses.replace(r.read_ds(), pebs_event_reset=tuple(reset)))
    r.wr(FIXED_CTR_CTRL, fctrl)
    r.wr(PEBS_ENABLE, pebs_en)
    r.wr(GLOBAL_CTRL, ctrl)
    if cfg["hole"]:
        r.ept_hole(r.gpa(r.buf + PAGE_SIZE))
    w = WORKLOADS[cfg["w"]]
    exits, logs = [], []
    for n in cfg["runs"]:
        for slot in list(range(C.R_PMC0, C.R_PMC0 + 8)) + list(range(C.R_FIXED0, C.R_FIXED0 + 4)):
            assert int(r.core.regs[slot]) <= WMASK
        goal = r.retired + n
        for _ in range(200):
            if cfg["timer"]:
                r.core.regs[C.R_TIMER_DEADLINE] = np.uint64(r.core.tsc + cfg["timer"])
            e = r.run(w, goal - r.retired, jit=jit)
            exits.append(e)
            logs.append(r.core.take_log())
            if e == C.EXIT_PMI:
                if r.status & 1 << 62:
                    r.reset_index()
                r.wr(GLOBAL_OVF_CTRL, r.status)
            elif e == C.EXIT_EPT_VIOLATION:
                r.ept_fill(int(r.core.regs[C.R_EXIT_GPA]))
            if r.retired >= goal and e == C.EXIT_BUDGET:
                break
    return r.core.regs.copy(), r.mem.copy(), np.concatenate(logs), exits


@settings(max_examples=60 if not NOJIT else 8, deadline=None)
@given(cfg=sessions())
def test_fast_forward_matches_stepping(cfg):
    assert_same(play(cfg, True), play(cfg, False))


@pytest.mark.parametrize("cpu", MODEL_NAMES)
def test_fast_forward_matches_stepping_in_python(cpu):
    cfg = dict(cpu=cpu, seed=3, gp=[(0, evtsel(INST_RETIRED, USR, OS), True, 211),
                                    (1, evtsel(CYCLES, USR, INT), False, 700)],
               fixed=[(1, F_OS | F_PMI, False, 900)], w="multi_function",
               runs=[1000, 5, 1200] if not NOJIT else [400, 5, 300], timer=1500, thresh=3,
               hole=True)
    assert_same(play(cfg, True, jit=False), play(cfg, False, jit=False))
    if not NOJIT:           # under NUMBA_DISABLE_JIT=1 jit=True is the same Python loop
        assert_same(play(cfg, True, jit=False), play(cfg, True, jit=True))


@pytest.mark.parametrize("start", [WMASK - 4 * 700, WMASK - 4 * 700 - 3])
def test_fast_forward_slots_counter(start):
    # TOPDOWN.SLOTS adds 4 per cycle: the stretch must stop before it wraps
    cfg = dict(cpu="icelake", seed=0, gp=[], fixed=[(3, F_OS | F_USR | F_PMI, False,
                                                      WMASK + 1 - start)],
               w="multi_function", runs=[3000], timer=0, thresh=None, hole=False)
    fast, slow = play(cfg, True), play(cfg, False)
    assert_same(fast, slow)
    assert C.EXIT_PMI in fast[3]


def test_fast_forward_is_used():
    r = Rig("skylake")
    r.setup_ds(buf_pages=16)
    arm_pebs(r, 10007)
    n = 2_000_000
    r.run(MF, n)
    assert r.retired == n and int(r.core.regs[C.R_ASSISTS]) == n // 10007
    assert r.records().shape == (n // 10007,)


def test_event_prefix_table():
    w = straight([W.KIND_LOAD, W.KIND_ALU, W.KIND_BRANCH, W.KIND_ALU], cycles=[4, 1, 2, 3],
                 cpl=[3, 0, 0, 3])
    pre, lbr_last = C.event_prefix(w.kind, w.cpl, w.cycles, w.latency, w.llc_miss, w.br_misp)
    assert pre.shape == (C.N_EVENTS, 3, 5)
    assert pre[EV_INST, 2].tolist() == [0, 1, 2, 3, 4]
    assert pre[EV_INST, 0].tolist() == [0, 0, 1, 2, 2]        # CPL 0 only
    assert pre[EV_INST, 1].tolist() == [0, 1, 1, 1, 2]        # CPL > 0 only
    assert pre[EV_CYCLES, 2].tolist() == [0, 4, 5, 7, 10]
    assert pre[EV_LOADS, 1].tolist() == [0, 1, 1, 1, 1]
    assert lbr_last.tolist() == [-1, -1, 2, 3]                # instr 3 is the last: it jumps
