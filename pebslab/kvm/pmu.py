"""KVM's virtual PMU as of 2014, with the PEBS patch applied.

Models arch/x86/kvm/pmu.c of the 2014 tree plus the hunks of "kvm:
Implement PEBS virtualization": MSR interception (kvm_pmu_msr,
kvm_pmu_get_msr, kvm_pmu_set_msr), guest counters backed by host perf events
(reprogram_counter, reprogram_gp_counter, reprogram_fixed_counter,
reprogram_idx, global_ctrl_changed), the two overflow handlers
(kvm_perf_overflow, kvm_perf_overflow_intr, with bit 62 for precise events)
and kvm_pmu_cpuid_update. Where a design knob changes a behaviour, the knob
is named at that spot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..hw.errors import GuestFault
from ..host import perf as P
from ..hw import msr as M
from ..hw.mmu import is_canonical
from . import pebs_pin
from .designs import pebs_virtualization_supported

KVM_PMC_GP = 0
KVM_PMC_FIXED = 1

# arch_events[] of the 2014 pmu.c: (eventsel, umask, perf generic event)
ARCH_EVENTS = (
    (0x3C, 0x00, P.PERF_COUNT_HW_CPU_CYCLES),
    (0xC0, 0x00, P.PERF_COUNT_HW_INSTRUCTIONS),
    (0x3C, 0x01, P.PERF_COUNT_HW_BUS_CYCLES),
    (0x2E, 0x4F, P.PERF_COUNT_HW_CACHE_REFERENCES),
    (0x2E, 0x41, P.PERF_COUNT_HW_CACHE_MISSES),
    (0xC4, 0x00, P.PERF_COUNT_HW_BRANCH_INSTRUCTIONS),
    (0xC5, 0x00, P.PERF_COUNT_HW_BRANCH_MISSES),
    (0x00, 0x30, P.PERF_COUNT_HW_REF_CPU_CYCLES),
)
# fixed_pmc_events[]: fixed counter i counts arch_events[fixed_pmc_events[i]]
FIXED_PMC_EVENTS = (1, 0, 7)

# the eventsel bits reprogram_gp_counter passes to perf as a raw config
AMD64_RAW_EVENT_MASK = 0xFF | 0xFF00 | M.ARCH_PERFMON_EVENTSEL_EDGE | \
    M.ARCH_PERFMON_EVENTSEL_INV | M.ARCH_PERFMON_EVENTSEL_CMASK
# 2014 kvm_pmu_cpuid_update: reserved eventsel bits (63:32 and ANY)
EVENTSEL_RESERVED_2014 = 0xFFFFFFFF00200000
# 2014 kvm_pmu_set_msr: FIXED_CTR_CTRL reserved bits (AnyThread of counters 0-2, 63:12)
FIXED_CTR_CTRL_RESERVED_2014 = 0xFFFFFFFFFFFFF444
# the PERF_CAPABILITIES bits the patch reports ("Report host PEBS format to guest")
PATCH_PERF_CAP_BITS = M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG | M.PERF_CAP_PEBS_FORMAT
U64_MASK = (1 << 64) - 1


@dataclass
class KvmPmc:
    """One virtual counter (struct kvm_pmc)."""

    idx: int                    # GLOBAL bit: GP i, fixed 32+i
    type: int
    counter: int = 0
    eventsel: int = 0
    perf_event: P.PerfEvent | None = None

    @property
    def name(self) -> str:
        return f"PMC{self.idx}" if self.type == KVM_PMC_GP else f"FIXED{self.idx - 32}"


@dataclass
class KvmPmu:
    """The per-vCPU PMU state (struct kvm_pmu, with the patch's four new fields)."""

    version: int = 0
    nr_arch_gp_counters: int = 0
    nr_arch_fixed_counters: int = 0
    counter_bitmask: tuple = (0, 0)
    fixed_ctr_ctrl: int = 0
    global_ctrl: int = 0
    global_status: int = 0
    global_ovf_ctrl: int = 0
    # --- reserved-bit masks, computed once by kvm_pmu_cpuid_update ---------------
    #: GP event select reserved bits (pmu->reserved_bits)
    reserved_bits: int = EVENTSEL_RESERVED_2014
    global_ctrl_mask: int = U64_MASK
    global_ovf_ctrl_mask: int = U64_MASK
    fixed_ctr_ctrl_mask: int = U64_MASK
    pebs_enable_mask: int = U64_MASK
    pebs_data_cfg_mask: int = U64_MASK
    gp_counters: list = field(default_factory=list)
    fixed_counters: list = field(default_factory=list)
    reprogram_pmi: int = 0
    # --- the patch --------------------------------------------------------------
    pebs_enable: int = 0
    ds_area: int = 0
    pinned_pages: list = field(default_factory=list)   # host frame numbers
    # --- review / icelake -------------------------------------------------------
    pebs_allowed: bool = True
    pebs_data_cfg: int = 0
    perf_capabilities: int = 0
    #: the patch's static host_perf_cap, read by kvm_pmu_init (kept per vCPU
    #: here so two simulated hosts in one process do not share it)
    host_perf_cap: int = 0
    #: what pinning looked at last time (for the `fixed` design's page tracking)
    pin_view: dict = field(default_factory=dict)

    @property
    def num_pinned_pages(self) -> int:
        return len(self.pinned_pages)

    def pmcs(self) -> list[KvmPmc]:
        return list(self.gp_counters) + list(self.fixed_counters)


# -----------------------------------------------------------------------------
# helpers
# -----------------------------------------------------------------------------

def pmc_bitmask(pmu: KvmPmu, pmc: KvmPmc) -> int:
    return pmu.counter_bitmask[pmc.type]


def pmc_enabled(pmu: KvmPmu, pmc: KvmPmc) -> bool:
    """The counter's GLOBAL_CTRL bit (pmc_enabled in pmu.c)."""
    return bool(pmu.global_ctrl >> pmc.idx & 1)


def get_gp_pmc(pmu: KvmPmu, msr: int, base: int) -> KvmPmc | None:
    if base <= msr < base + pmu.nr_arch_gp_counters:
        return pmu.gp_counters[msr - base]
    return None


def get_fixed_pmc(pmu: KvmPmu, msr: int) -> KvmPmc | None:
    base = M.MSR_CORE_PERF_FIXED_CTR0
    if base <= msr < base + pmu.nr_arch_fixed_counters:
        return pmu.fixed_counters[msr - base]
    return None


def fixed_ctrl_field(ctrl: int, idx: int) -> int:
    return ctrl >> (idx * 4) & 0xF


def read_pmc(vcpu, pmc: KvmPmc) -> int:
    """Guest-visible counter value: pmc->counter plus what the perf event counted.

    Models read_pmc() in pmu.c (counter + perf_event_read_value, masked).
    """
    counter = pmc.counter
    ev = pmc.perf_event
    if ev is not None:
        vcpu.host_perf_sync(ev)
        counter += ev.count
    return counter & pmc_bitmask(vcpu.pmu, pmc)


# -----------------------------------------------------------------------------
# the patch's gate: do the PEBS MSRs exist?
# -----------------------------------------------------------------------------

def perf_pebs_virtualization(vcpu) -> bool:
    """Does the host perf code support PEBS virtualization on this CPU?

    Models perf_pebs_virtualization() from patches 1-3 of the 2014 series
    (not archived; FACTS e); the answer is
    :func:`pebslab.kvm.designs.pebs_virtualization_supported`.
    """
    return pebs_virtualization_supported(vcpu.host_cpu, vcpu.design)


def pebs_msrs_visible(vcpu) -> bool:
    """Whether DS_AREA/PEBS_ENABLE/PERF_CAPABILITIES are PMU MSRs for this guest.

    `patch`: host capability only. `review` and later: also the guest CPUID
    (kvm_pmu->pebs_allowed, computed in kvm_pmu_cpuid_update).
    """
    if not perf_pebs_virtualization(vcpu):
        return False
    if vcpu.design.pebs_msrs_gate == "guest_cpuid":
        return vcpu.pmu.pebs_allowed
    return True


def kvm_pmu_msr(vcpu, msr: int) -> bool:
    """True if ``msr`` is a PMU MSR KVM handles for this guest (kvm_pmu_msr)."""
    pmu = vcpu.pmu
    if msr in (M.MSR_IA32_DS_AREA, M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_PERF_CAPABILITIES):
        return pebs_msrs_visible(vcpu)
    if msr == M.MSR_PEBS_DATA_CFG:
        return vcpu.design.data_cfg and pebs_msrs_visible(vcpu) and \
            vcpu.host_cpu.pebs_format >= 4
    if msr in (M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
               M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL):
        return pmu.version > 1
    if fw_writes(vcpu) and get_gp_pmc(pmu, msr, M.MSR_IA32_PMC0):
        return True
    return bool(get_gp_pmc(pmu, msr, M.MSR_IA32_PERFCTR0)
                or get_gp_pmc(pmu, msr, M.MSR_P6_EVNTSEL0)
                or get_fixed_pmc(pmu, msr))


def fw_writes(vcpu) -> bool:
    """Does this guest have the full-width counter alias (upstream, FW_WRITES)?"""
    return vcpu.design.upstream_msr_semantics and \
        bool(vcpu.pmu.perf_capabilities & M.PERF_CAP_FW_WRITES)


def guest_perf_capabilities(vcpu) -> int:
    """The PERF_CAPABILITIES value the guest reads.

    `patch`: "Report host PEBS format to guest": host_perf_cap (read by
    kvm_pmu_init) & (PEBS_TRAP | ARCH_REG | PEBS_FORMAT). `full` (icelake):
    the host value filtered to what KVM supports (LBR format, FW_WRITES,
    BASELINE too); 0 when the guest CPUID lacks PDCM
    (vcpu_get_perf_capabilities in arch/x86/kvm/vmx/pmu_intel.c).
    """
    if vcpu.design.perf_cap_bits == "patch":
        return vcpu.pmu.host_perf_cap & PATCH_PERF_CAP_BITS
    if not vcpu.cpuid_has("PDCM"):
        return 0
    return vcpu.host_cpu.perf_capabilities & (
        M.PERF_CAP_LBR_FMT | PATCH_PERF_CAP_BITS | M.PERF_CAP_FW_WRITES | M.PERF_CAP_PEBS_BASELINE)


# -----------------------------------------------------------------------------
# overflow handlers: called by host perf from its PMI handler
# -----------------------------------------------------------------------------

def kvm_perf_overflow(perf_event: P.PerfEvent, sample_ip: int = 0) -> None:
    """Record a guest counter overflow in the virtual GLOBAL_STATUS (no PMI).

    Models kvm_perf_overflow(); the patch sets bit 62 (buffer overflow)
    instead of the counter's bit when the event is precise.
    """
    pmc, vcpu = perf_event.context
    pmu = vcpu.pmu
    if perf_event.attr.precise_ip:
        pmu.global_status |= M.GLOBAL_STATUS_BUFFER_OVF
    else:
        pmu.global_status |= 1 << pmc.idx


def kvm_perf_overflow_intr(perf_event: P.PerfEvent, sample_ip: int = 0) -> None:
    """Overflow with a PMI for the guest: set the status bit and request injection.

    Models kvm_perf_overflow_intr() (kvm_make_request(KVM_REQ_PMI) then
    kvm_deliver_pmi -> the guest's LVTPC). The patch routes PEBS events here
    too (`intr || pebs`).
    """
    pmc, vcpu = perf_event.context
    kvm_perf_overflow(perf_event, sample_ip)
    if not vcpu.pmu.reprogram_pmi >> pmc.idx & 1:
        vcpu.request_pmi(pmc)


# -----------------------------------------------------------------------------
# reprogramming: guest counter -> host perf event
# -----------------------------------------------------------------------------

def stop_counter(vcpu, pmc: KvmPmc) -> None:
    """Fold the event's count into pmc->counter and release it (stop_counter)."""
    if pmc.perf_event is not None:
        pmc.counter = read_pmc(vcpu, pmc)
        vcpu.host_perf_release(pmc.perf_event)
        pmc.perf_event = None


def reprogram_counter(vcpu, pmc: KvmPmc, type_: int, config: int, exclude_user: bool,
                      exclude_kernel: bool, intr: bool, in_tx: bool, in_tx_cp: bool,
                      pebs: bool, adaptive: bool = False) -> None:
    """Create the host perf event that backs a guest counter.

    Models reprogram_counter() with the patch: sample_period from the
    counter value, precise_ip = 1 for PEBS counters, the interrupting
    handler for `intr || pebs`, and a guest-owned event. ``adaptive``
    (`icelake`): the guest counter's adaptive-record bit, passed to the
    host counter so its records have the layout the guest asked for.
    """
    attr = P.PerfEventAttr(
        type=type_, config=config, exclude_user=bool(exclude_user),
        exclude_kernel=bool(exclude_kernel), exclude_host=True, pinned=True,
        sample_period=(-pmc.counter) & pmc_bitmask(vcpu.pmu, pmc),
        precise_ip=1 if pebs else 0, adaptive=bool(pebs and adaptive),
    )
    if in_tx:
        attr.config |= M.HSW_IN_TX
    if in_tx_cp:
        attr.config |= M.HSW_IN_TX_CHECKPOINTED
    handler = kvm_perf_overflow_intr if (intr or pebs) else kvm_perf_overflow
    ev = vcpu.host_perf_create(attr, handler, (pmc, vcpu), pebs=pebs,
                               fixed=pmc.type == KVM_PMC_FIXED)
    if ev is None:
        vcpu.trace("NOTE", info=f"kvm: pmu event creation failed for {pmc.name}")
        return
    pmc.perf_event = ev
    vcpu.pmu.reprogram_pmi &= ~(1 << pmc.idx)


def find_arch_event(pmu: KvmPmu, event_select: int, unit_mask: int) -> int | None:
    for i, (ev, um, hw) in enumerate(ARCH_EVENTS):
        if ev == event_select and um == unit_mask:
            return hw
    return None


def reprogram_gp_counter(vcpu, pmc: KvmPmc, eventsel: int) -> None:
    """Recreate the perf event of a GP counter for a new event select.

    Models reprogram_gp_counter() with the patch's extra argument: PEBS is
    on for this counter iff its bit is set in pmu->pebs_enable *now*.
    """
    pmu = vcpu.pmu
    pmc.eventsel = eventsel
    stop_counter(vcpu, pmc)
    if not eventsel & M.ARCH_PERFMON_EVENTSEL_ENABLE or not pmc_enabled(pmu, pmc):
        return
    event_select = eventsel & 0xFF
    unit_mask = eventsel >> 8 & 0xFF
    type_ = P.PERF_TYPE_RAW
    config = 0
    if not eventsel & (M.ARCH_PERFMON_EVENTSEL_EDGE | M.ARCH_PERFMON_EVENTSEL_INV
                       | M.ARCH_PERFMON_EVENTSEL_CMASK | M.HSW_IN_TX
                       | M.HSW_IN_TX_CHECKPOINTED):
        hw = find_arch_event(pmu, event_select, unit_mask)
        if hw is not None:
            type_ = P.PERF_TYPE_HARDWARE
            config = hw
    if type_ == P.PERF_TYPE_RAW:
        config = eventsel & AMD64_RAW_EVENT_MASK
    pebs = bool(pmu.pebs_enable >> pmc.idx & 1)
    reprogram_counter(vcpu, pmc, type_, config,
                      not eventsel & M.ARCH_PERFMON_EVENTSEL_USR,
                      not eventsel & M.ARCH_PERFMON_EVENTSEL_OS,
                      bool(eventsel & M.ARCH_PERFMON_EVENTSEL_INT),
                      bool(eventsel & M.HSW_IN_TX),
                      bool(eventsel & M.HSW_IN_TX_CHECKPOINTED), pebs,
                      adaptive=bool(eventsel & M.ICL_EVENTSEL_ADAPTIVE))


def reprogram_fixed_counter(vcpu, pmc: KvmPmc, en_pmi: int, idx: int,
                            adaptive: bool = False) -> None:
    """Recreate the perf event of a fixed counter (reprogram_fixed_counter).

    The patch passes pebs=false here: fixed counters never get PEBS. The
    `icelake` design (extended PEBS) passes the PEBS_ENABLE bit, and the
    counter's adaptive bit (FIXED_CTR_CTRL bit 32+4i).
    """
    pmu = vcpu.pmu
    en = en_pmi & 0x3
    pmi = bool(en_pmi & 0x8)
    stop_counter(vcpu, pmc)
    if not en or not pmc_enabled(pmu, pmc):
        return
    pebs = vcpu.design.fixed_counter_pebs and bool(pmu.pebs_enable >> pmc.idx & 1)
    reprogram_counter(vcpu, pmc, P.PERF_TYPE_HARDWARE,
                      ARCH_EVENTS[FIXED_PMC_EVENTS[idx]][2],
                      not en & 0x2, not en & 0x1, pmi, False, False, pebs, adaptive=adaptive)


def fixed_ctrl_adaptive(ctrl: int, idx: int) -> bool:
    """Fixed counter ``idx``'s adaptive-record bit (ICL_FIXED_0_ADAPTIVE << 4*idx)."""
    return bool(ctrl >> (32 + 4 * idx) & 1)


def reprogram_fixed_counters(vcpu, data: int) -> None:
    """Reprogram each fixed counter whose field of FIXED_CTR_CTRL changed."""
    pmu = vcpu.pmu
    for i in range(pmu.nr_arch_fixed_counters):
        en_pmi = fixed_ctrl_field(data, i)
        adaptive = fixed_ctrl_adaptive(data, i)
        pmc = pmu.fixed_counters[i]
        if fixed_ctrl_field(pmu.fixed_ctr_ctrl, i) == en_pmi and \
                fixed_ctrl_adaptive(pmu.fixed_ctr_ctrl, i) == adaptive:
            continue
        reprogram_fixed_counter(vcpu, pmc, en_pmi, i, adaptive)
    pmu.fixed_ctr_ctrl = data


def reprogram_idx(vcpu, idx: int) -> None:
    pmu = vcpu.pmu
    pmc = global_idx_to_pmc(pmu, idx)
    if pmc is None:
        return
    if pmc.type == KVM_PMC_GP:
        reprogram_gp_counter(vcpu, pmc, pmc.eventsel)
    else:
        fidx = idx - M.INTEL_PMC_IDX_FIXED
        reprogram_fixed_counter(vcpu, pmc, fixed_ctrl_field(pmu.fixed_ctr_ctrl, fidx), fidx,
                                fixed_ctrl_adaptive(pmu.fixed_ctr_ctrl, fidx))


def global_idx_to_pmc(pmu: KvmPmu, idx: int) -> KvmPmc | None:
    if idx < M.INTEL_PMC_IDX_FIXED:
        return pmu.gp_counters[idx] if idx < pmu.nr_arch_gp_counters else None
    f = idx - M.INTEL_PMC_IDX_FIXED
    return pmu.fixed_counters[f] if f < pmu.nr_arch_fixed_counters else None


def _reprogram_bits(vcpu, diff: int) -> None:
    """reprogram_idx() for every set bit of ``diff``."""
    bit = 0
    while diff >> bit:
        if diff >> bit & 1:
            reprogram_idx(vcpu, bit)
        bit += 1


def global_ctrl_changed(vcpu, data: int) -> None:
    """Reprogram every counter whose GLOBAL_CTRL bit flipped (global_ctrl_changed)."""
    pmu = vcpu.pmu
    diff = pmu.global_ctrl ^ data
    pmu.global_ctrl = data
    _reprogram_bits(vcpu, diff)


# -----------------------------------------------------------------------------
# MSR access
# -----------------------------------------------------------------------------

def kvm_pmu_get_msr(vcpu, index: int) -> int:
    """Return the guest's view of a PMU MSR, or raise GuestFault (kvm_pmu_get_msr)."""
    pmu = vcpu.pmu
    if not kvm_pmu_msr(vcpu, index):
        raise GuestFault("#GP", msr=index, reason="not a PMU MSR for this guest")
    if index == M.MSR_CORE_PERF_FIXED_CTR_CTRL:
        return pmu.fixed_ctr_ctrl
    if index == M.MSR_CORE_PERF_GLOBAL_STATUS:
        return pmu.global_status
    if index == M.MSR_CORE_PERF_GLOBAL_CTRL:
        return pmu.global_ctrl
    if index == M.MSR_CORE_PERF_GLOBAL_OVF_CTRL:
        return pmu.global_ovf_ctrl
    if index == M.MSR_IA32_DS_AREA:
        return pmu.ds_area
    if index == M.MSR_IA32_PEBS_ENABLE:
        return pmu.pebs_enable
    if index == M.MSR_IA32_PERF_CAPABILITIES:
        return guest_perf_capabilities(vcpu)
    if index == M.MSR_PEBS_DATA_CFG:
        return pmu.pebs_data_cfg
    pmc = get_gp_pmc(pmu, index, M.MSR_IA32_PERFCTR0) or get_fixed_pmc(pmu, index)
    if pmc is None and fw_writes(vcpu):
        pmc = get_gp_pmc(pmu, index, M.MSR_IA32_PMC0)
    if pmc is not None:
        return read_pmc(vcpu, pmc)
    pmc = get_gp_pmc(pmu, index, M.MSR_P6_EVNTSEL0)
    if pmc is not None:
        return pmc.eventsel
    raise GuestFault("#GP", msr=index)


def kvm_pmu_read_pmc(vcpu, ecx: int) -> int:
    """RDPMC: the counter ECX names, or #GP (kvm_pmu_check_pmc + kvm_pmu_read_pmc).

    Bit 30 of ECX selects the fixed counters, bit 31 the 32-bit fast read;
    an index at or past the guest's counters is a #GP (2014 pmu.c).
    """
    pmu = vcpu.pmu
    fast = bool(ecx >> 31 & 1)
    fixed = bool(ecx >> 30 & 1)
    idx = ecx & ~(3 << 30)
    counters = pmu.fixed_counters if fixed else pmu.gp_counters
    if idx >= len(counters):
        raise GuestFault("#GP", value=ecx, reason=f"RDPMC of {'fixed ' if fixed else ''}counter "
                                                   f"{idx}, which the guest does not have")
    value = read_pmc(vcpu, counters[idx])
    return value & 0xFFFFFFFF if fast else value


def pebs_enable_valid(vcpu) -> int:
    """Bits a guest may set in PEBS_ENABLE (the complement of ``pmu.pebs_enable_mask``)."""
    return ~vcpu.pmu.pebs_enable_mask & U64_MASK


def _gp(index: int, data: int, reason: str):
    return GuestFault("#GP", msr=index, value=data, reason=reason)


def kvm_pmu_set_msr(vcpu, index: int, data: int, host_initiated: bool = False) -> None:
    """Apply a guest (or host-initiated) write to a PMU MSR; raise GuestFault on #GP.

    Models kvm_pmu_set_msr() with the patch's DS_AREA and PEBS_ENABLE cases.
    Each case is "reserved bits -> #GP" (masks from kvm_pmu_cpuid_update)
    plus its side effect.
    """
    pmu = vcpu.pmu
    d = vcpu.design
    if not kvm_pmu_msr(vcpu, index):
        raise _gp(index, data, "not a PMU MSR for this guest")
    if index == M.MSR_CORE_PERF_FIXED_CTR_CTRL:
        if data & pmu.fixed_ctr_ctrl_mask:
            raise _gp(index, data, f"reserved FIXED_CTR_CTRL bits {data & pmu.fixed_ctr_ctrl_mask:#x}")
        if pmu.fixed_ctr_ctrl != data:
            reprogram_fixed_counters(vcpu, data)
        return
    if index == M.MSR_CORE_PERF_GLOBAL_STATUS:
        if not host_initiated:
            raise _gp(index, data, "GLOBAL_STATUS is read-only for the guest")
        pmu.global_status = data
        return
    if index == M.MSR_CORE_PERF_GLOBAL_CTRL:
        if data & pmu.global_ctrl_mask:
            raise _gp(index, data, f"reserved GLOBAL_CTRL bits {data & pmu.global_ctrl_mask:#x}")
        if pmu.global_ctrl != data:
            global_ctrl_changed(vcpu, data)
        return
    if index == M.MSR_CORE_PERF_GLOBAL_OVF_CTRL:
        if data & pmu.global_ovf_ctrl_mask:
            raise _gp(index, data, f"reserved GLOBAL_OVF_CTRL bits "
                                   f"{data & pmu.global_ovf_ctrl_mask:#x}")
        if not host_initiated:
            pmu.global_status &= ~data
        pmu.global_ovf_ctrl = data
        return
    if index == M.MSR_IA32_DS_AREA:
        if d.ds_area_canonical_check and not is_canonical(np.uint64(data)):
            raise _gp(index, data, "non-canonical DS_AREA")
        ds_area_changed(vcpu, data)
        return
    if index == M.MSR_IA32_PEBS_ENABLE:
        if data & pmu.pebs_enable_mask:
            raise _gp(index, data, f"reserved PEBS_ENABLE bits {data & pmu.pebs_enable_mask:#x}")
        pebs_enable_changed(vcpu)(vcpu, data)
        return
    if index == M.MSR_PEBS_DATA_CFG:
        if data & pmu.pebs_data_cfg_mask:
            raise _gp(index, data, f"reserved PEBS_DATA_CFG bits {data & pmu.pebs_data_cfg_mask:#x}")
        pmu.pebs_data_cfg = data
        return
    full = get_gp_pmc(pmu, index, M.MSR_IA32_PMC0) if fw_writes(vcpu) else None
    if full is not None:
        # full-width alias: no sign extension; bits above the width #GP
        if data & ~pmc_bitmask(pmu, full):
            raise _gp(index, data, "bits above the counter width")
        full.counter = (full.counter + data - read_pmc(vcpu, full)) & pmc_bitmask(pmu, full)
        return
    pmc = get_gp_pmc(pmu, index, M.MSR_IA32_PERFCTR0) or get_fixed_pmc(pmu, index)
    if pmc is not None:
        upstream_fixed = d.upstream_msr_semantics and pmc.type == KVM_PMC_FIXED
        if not host_initiated and not upstream_fixed:
            # 2014: guest counter writes are sign-extended from 32 bits
            data = data & 0xFFFFFFFF
            if data & 0x80000000:
                data |= ~0xFFFFFFFF
        pmc.counter = (pmc.counter + data - read_pmc(vcpu, pmc)) & pmc_bitmask(pmu, pmc)
        return
    pmc = get_gp_pmc(pmu, index, M.MSR_P6_EVNTSEL0)
    if pmc is not None:
        if data == pmc.eventsel:
            return
        if d.upstream_msr_semantics and data & M.HSW_IN_TX_CHECKPOINTED and pmc.idx != 2:
            raise _gp(index, data, "IN_TXCP is allowed on counter 2 only")
        if data & pmu.reserved_bits:
            raise _gp(index, data, f"reserved event select bits {data & pmu.reserved_bits:#x}")
        reprogram_gp_counter(vcpu, pmc, data)
        return
    raise _gp(index, data, "reserved bits or read-only MSR")


# -----------------------------------------------------------------------------
# side effects of DS_AREA and PEBS_ENABLE writes
# -----------------------------------------------------------------------------

def ds_area_changed(vcpu, data: int) -> None:
    """Store DS_AREA; under ``repin_on_ds_area_write`` re-pin a live PEBS setup.

    The patch only stores the value (``pmu->ds_area = data``). The `fixed`
    design re-pins when PEBS is on and the value changes, and refuses (#GP,
    old area kept and pinned) what it cannot pin under ``pin_failure="gp"``.
    """
    pmu = vcpu.pmu
    d = vcpu.design
    old = pmu.ds_area
    pmu.ds_area = data
    if not (d.repin_on_ds_area_write and pmu.pebs_enable and data != old):
        return
    pebs_pin.kvm_pmu_release_pin(vcpu)
    if not pebs_pin.pin_for_design(vcpu) and d.pin_failure == "gp":
        pebs_pin.kvm_pmu_release_pin(vcpu)
        pmu.ds_area = old
        pebs_pin.pin_for_design(vcpu)
        raise _gp(M.MSR_IA32_DS_AREA, data, "cannot pin the new DS area and PEBS buffer")


def pebs_enable_changed_patch(vcpu, data: int) -> None:
    """The patch's PEBS_ENABLE hunk, in its shape.

    A new non-zero value releases the pins and pins again
    (kvm_pmu_pebs_pin); 0 releases them; the same value does nothing. The
    counters are not touched: a counter's host event is precise or not from
    when its event select or GLOBAL_CTRL was last written.
    """
    pmu = vcpu.pmu
    if data and data != pmu.pebs_enable:
        pebs_pin.kvm_pmu_release_pin(vcpu)
        pebs_pin.kvm_pmu_pebs_pin(vcpu)
    elif data == 0 and pmu.pebs_enable:
        pebs_pin.kvm_pmu_release_pin(vcpu)
    pmu.pebs_enable = data


def pebs_enable_changed_fixed(vcpu, data: int) -> None:
    """PEBS_ENABLE side effects with the corrections each design knob names.

    pebslab only. ``reprogram_on_pebs_enable``: the counters whose bit
    flips are reprogrammed before the pins change (as upstream KVM does
    with the XOR-diff), so no precise host event outlives its pinned
    memory. ``pin``: the design's pinning ("none": nothing to pin).
    ``pin_failure="gp"``: a failed pin refuses the write, the counters back
    as they were.
    """
    pmu = vcpu.pmu
    d = vcpu.design
    old = pmu.pebs_enable
    flipped = old ^ data if d.reprogram_on_pebs_enable else 0
    if flipped:
        pmu.pebs_enable = data
        _reprogram_bits(vcpu, flipped)
        pmu.pebs_enable = old
    if d.pin != "none":
        if data and data != old:
            pebs_pin.kvm_pmu_release_pin(vcpu)
            if not pebs_pin.pin_for_design(vcpu) and d.pin_failure == "gp":
                pebs_pin.kvm_pmu_release_pin(vcpu)
                if flipped:
                    _reprogram_bits(vcpu, flipped)      # back to the old events
                raise _gp(M.MSR_IA32_PEBS_ENABLE, data,
                          "cannot pin the DS area and PEBS buffer")
        elif data == 0 and old:
            pebs_pin.kvm_pmu_release_pin(vcpu)
    pmu.pebs_enable = data


def pebs_enable_changed(vcpu):
    """The PEBS_ENABLE side-effect function of this vCPU's design.

    The patch's hunk when every knob it reads has the patch's value;
    :func:`pebs_enable_changed_fixed` otherwise.
    """
    d = vcpu.design
    if d.pin == "patch" and not d.reprogram_on_pebs_enable and d.pin_failure == "ignore":
        return pebs_enable_changed_patch
    return pebs_enable_changed_fixed


# -----------------------------------------------------------------------------
# set-up from CPUID; init; reset; destroy
# -----------------------------------------------------------------------------

def pebs_enable_valid_bits(cpu, design, nr_gp: int, nr_fixed: int,
                           baseline: bool | None = None) -> int:
    """PEBS_ENABLE bits a guest may set on ``cpu`` under ``design``.

    `patch`: the posted constant 0xf0000000f. `model`: the CPU's PEBS
    counters among those the guest has (GP bits, and their load-latency
    bits 32+i where the CPU has load latency: not Silvermont, FACTS g.3);
    with ``fixed_counter_pebs`` on a CPU with adaptive PEBS and a guest whose
    PERF_CAPABILITIES has PEBS_BASELINE, the extended-PEBS layout,
    GLOBAL_CTRL's (FACTS b.5; intel_pmu_refresh() frees the fixed bits only
    with BASELINE). ``baseline`` None means "the CPU's".
    """
    if design.pebs_enable_mask == "patch":
        return M.PATCH_PEBS_ENABLE_VALID
    if baseline is None:
        baseline = cpu.adaptive
    gp = cpu.pebs_counter_mask & ((1 << nr_gp) - 1)
    if design.fixed_counter_pebs and cpu.adaptive and baseline:
        fixed = cpu.pebs_fixed_mask & ((1 << nr_fixed) - 1)
        return gp | fixed << M.INTEL_PMC_IDX_FIXED
    if not cpu.load_latency:
        return gp
    return gp | gp << M.PEBS_LL_EN_SHIFT


def kvm_pmu_cpuid_update(vcpu) -> None:
    """Size the vPMU from the guest CPUID and compute every reserved-bit mask once.

    Models kvm_pmu_cpuid_update() of 2014 (intel_pmu_refresh() in
    arch/x86/kvm/vmx/pmu_intel.c later): version, counter counts and widths
    from leaf 0xA, capped to what KVM can back (``design.pmu_version_cap``,
    ``design.max_fixed_counters``, the host's counters); the GP event select
    reserved bits; ``global_ctrl_mask`` (and OVF_CTRL's, which also lets
    bits 62-63 through); ``fixed_ctr_ctrl_mask``; ``pebs_enable_mask``;
    ``pebs_data_cfg_mask``; and ``pebs_allowed`` from the guest CPUID's DS,
    DTES64 and PDCM (Eric Northup's review).
    """
    pmu = vcpu.pmu
    host = vcpu.host_cpu
    d = vcpu.design
    leaf = vcpu.guest_cpuid.pmu()
    pmu.version = min(leaf["version"], host.pmu_version, d.pmu_version_cap)
    pmu.nr_arch_gp_counters = 0
    pmu.nr_arch_fixed_counters = 0
    pmu.counter_bitmask = (0, 0)
    pmu.reserved_bits = EVENTSEL_RESERVED_2014
    pmu.perf_capabilities = guest_perf_capabilities(vcpu)
    # adaptive PEBS only for a guest whose PERF_CAPABILITIES has PEBS_BASELINE
    # (intel_pmu_refresh: the adaptive bits are freed only then; FACTS b.5)
    baseline = d.adaptive_pebs and host.adaptive and \
        bool(pmu.perf_capabilities & M.PERF_CAP_PEBS_BASELINE)
    if pmu.version:
        pmu.nr_arch_gp_counters = min(leaf["num_counters"], host.n_gp)
        gw = min(leaf["bit_width"], host.width)
        fw = 0
        if pmu.version > 1:
            pmu.nr_arch_fixed_counters = min(leaf["num_counters_fixed"], host.n_fixed,
                                             d.max_fixed_counters)
            fw = min(leaf["bit_width_fixed"], host.width)
        pmu.counter_bitmask = ((1 << gw) - 1, (1 << fw) - 1)
        if host.has_tsx:
            pmu.reserved_bits ^= M.HSW_IN_TX | M.HSW_IN_TX_CHECKPOINTED
        if baseline:
            pmu.reserved_bits &= ~M.ICL_EVENTSEL_ADAPTIVE
    nr_gp, nr_fixed = pmu.nr_arch_gp_counters, pmu.nr_arch_fixed_counters
    ctrl = ((1 << nr_gp) - 1) | (((1 << nr_fixed) - 1) << M.INTEL_PMC_IDX_FIXED)
    pmu.global_ctrl_mask = ~ctrl & U64_MASK if pmu.version else U64_MASK
    pmu.global_ovf_ctrl_mask = pmu.global_ctrl_mask & ~(3 << 62)
    fixed_rsvd = FIXED_CTR_CTRL_RESERVED_2014
    if nr_fixed > 3:
        fixed_rsvd &= ~(0xB << 12)
    if baseline:
        for i in range(nr_fixed):
            fixed_rsvd &= ~(M.ICL_FIXED_0_ADAPTIVE << (4 * i))
    pmu.fixed_ctr_ctrl_mask = fixed_rsvd
    pmu.pebs_enable_mask = ~pebs_enable_valid_bits(
        host, d, nr_gp, nr_fixed,
        baseline=bool(pmu.perf_capabilities & M.PERF_CAP_PEBS_BASELINE)) & U64_MASK
    pmu.pebs_data_cfg_mask = ~M.KVM_PEBS_DATA_CFG_VALID & U64_MASK
    pmu.gp_counters = [KvmPmc(i, KVM_PMC_GP) for i in range(nr_gp)]
    pmu.fixed_counters = [KvmPmc(M.INTEL_PMC_IDX_FIXED + i, KVM_PMC_FIXED)
                          for i in range(nr_fixed)]
    pmu.pebs_allowed = all(vcpu.cpuid_has(f) for f in ("DS", "DTES64", "PDCM")) and \
        pmu.version > 0


def kvm_pmu_init(vcpu) -> None:
    """Set up a vCPU's PMU: fresh state, size it from CPUID, read host_perf_cap.

    Models kvm_pmu_init() with the patch's hunk: after
    kvm_pmu_cpuid_update(), if the host CPU has PDCM, rdmsrl_safe() of
    MSR_IA32_PERF_CAPABILITIES into host_perf_cap (0 if the read faults).
    """
    vcpu.pmu = KvmPmu()
    kvm_pmu_cpuid_update(vcpu)
    pmu = vcpu.pmu
    pmu.host_perf_cap = 0
    if vcpu.host_has_pdcm():
        try:
            pmu.host_perf_cap = vcpu.core.rdmsr(M.MSR_IA32_PERF_CAPABILITIES)
        except GuestFault:          # rdmsrl_safe: a faulting read leaves 0
            pmu.host_perf_cap = 0


def kvm_pmu_reset(vcpu) -> None:
    """Stop every counter and clear the control MSRs (kvm_pmu_reset).

    The patch did not touch pebs_enable, ds_area or the pins here; the
    `fixed` design does (``reset_clears_pebs``).
    """
    pmu = vcpu.pmu
    for pmc in pmu.pmcs():
        stop_counter(vcpu, pmc)
        pmc.counter = 0
        pmc.eventsel = 0
    pmu.fixed_ctr_ctrl = pmu.global_ctrl = pmu.global_status = pmu.global_ovf_ctrl = 0
    if vcpu.design.reset_clears_pebs:
        pebs_pin.kvm_pmu_release_pin(vcpu)
        pmu.pebs_enable = 0
        pmu.ds_area = 0
        pmu.pebs_data_cfg = 0


def kvm_pmu_destroy(vcpu) -> None:
    """Tear down the vPMU: reset, then drop the pins (kvm_pmu_destroy with the patch)."""
    kvm_pmu_reset(vcpu)
    pebs_pin.kvm_pmu_release_pin(vcpu)


# -----------------------------------------------------------------------------
# KVM_SET_MSRS of a whole PMU (restore on a migration destination)
# -----------------------------------------------------------------------------

#: MSRs whose host-initiated write only records the value when restore is deferred.
DEFERRED_MSRS = (M.MSR_IA32_DS_AREA, M.MSR_IA32_PEBS_ENABLE, M.MSR_PEBS_DATA_CFG)


def kvm_pmu_set_msr_deferred(vcpu, index: int, data: int) -> None:
    """A host-initiated write of a PEBS MSR that checks and records, nothing more.

    pebslab only: kvm_pmu_set_msr() for DS_AREA, PEBS_ENABLE and
    PEBS_DATA_CFG under a design that defers the side effects (pinning,
    reprogramming) to the end of KVM_SET_MSRS (``restore_defers_pmu``;
    upstream since 68fb4757e867, v6.2). Raises GuestFault where the write
    would #GP; :func:`kvm_pmu_finish_restore` does the rest.
    """
    pmu = vcpu.pmu
    if index not in DEFERRED_MSRS:
        raise ValueError(f"index must be one of {', '.join(hex(m) for m in DEFERRED_MSRS)}; "
                         f"got {index:#x}")
    if not kvm_pmu_msr(vcpu, index):
        raise _gp(index, data, "not a PMU MSR for this guest")
    if index == M.MSR_IA32_DS_AREA:
        if vcpu.design.ds_area_canonical_check and not is_canonical(np.uint64(data)):
            raise _gp(index, data, "non-canonical DS_AREA")
        pmu.ds_area = data
    elif index == M.MSR_IA32_PEBS_ENABLE:
        if data & pmu.pebs_enable_mask:
            raise _gp(index, data, f"reserved PEBS_ENABLE bits {data & pmu.pebs_enable_mask:#x}")
        pmu.pebs_enable = data
    else:
        if data & pmu.pebs_data_cfg_mask:
            raise _gp(index, data, "reserved PEBS_DATA_CFG bits")
        pmu.pebs_data_cfg = data


def kvm_pmu_finish_restore(vcpu) -> bool:
    """Reprogram every counter and re-pin once all MSRs are in (deferred restore).

    pebslab only (kvm_pmu_handle_event after KVM_REQ_PMU, plus the pin the
    patch does on a PEBS_ENABLE write). Returns False if pinning failed.
    """
    pmu = vcpu.pmu
    for pmc in pmu.pmcs():
        reprogram_idx(vcpu, pmc.idx)
    pebs_pin.kvm_pmu_release_pin(vcpu)
    if pmu.pebs_enable and vcpu.design.pin != "none":
        return pebs_pin.pin_for_design(vcpu)
    return True
