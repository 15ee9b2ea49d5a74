"""How host perf drives the real PMU: program events, read counts, take PMIs, switch MSRs.

The scheduling of events onto counters is in :mod:`pebslab.host.perf`; this
module is the hardware side of the Intel driver: writing event selects and
counter presets (arch/x86/events/core.c x86_perf_event_set_period,
__x86_pmu_enable_event; intel_pmu_enable_fixed in events/intel/core.c),
folding hardware deltas into event counts (x86_perf_event_update), the
PMI handler (intel_pmu_handle_irq) and the MSR list KVM switches at VM
entry/exit (intel_guest_get_msrs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..hw import core as C
from ..hw import msr as M
from .perf import PERF_TYPE_HARDWARE, PerfEvent, HostPerf

#: perf's generic hardware events -> Intel architectural encodings
#: (intel_perfmon_event_map in arch/x86/events/intel/core.c).
INTEL_PERFMON_EVENT_MAP = {
    0: 0x003C,   # cpu-cycles
    1: 0x00C0,   # instructions
    2: 0x4F2E,   # cache-references
    3: 0x412E,   # cache-misses
    4: 0x00C4,   # branch-instructions
    5: 0x00C5,   # branch-misses
    6: 0x013C,   # bus-cycles
    9: 0x0300,   # ref-cycles (fixed counter only on Intel)
}

#: Where the host's own DS save area sits: a per-CPU kernel address in the
#: cpu_entry_area (FACTS a.4). ASSUMPTION: this exact address.
HOST_DS_AREA = 0xFFFFFE0000001000

#: one fixed counter's bits of FIXED_CTR_CTRL (at 4*i): OS, USR, AnyThread, PMI, and the
#: adaptive-record bit 32
_FIXED_FIELD = 0xF | M.ICL_FIXED_0_ADAPTIVE


def hw_config(ev: PerfEvent) -> int:
    """The event-select value host perf writes for an event (without EN/INT)."""
    a = ev.attr
    if a.type == PERF_TYPE_HARDWARE:
        cfg = INTEL_PERFMON_EVENT_MAP.get(int(a.config), 0)
    else:
        cfg = int(a.config) & 0xFFFFFFFF & ~(M.ARCH_PERFMON_EVENTSEL_ENABLE
                                             | M.ARCH_PERFMON_EVENTSEL_INT
                                             | M.ARCH_PERFMON_EVENTSEL_USR
                                             | M.ARCH_PERFMON_EVENTSEL_OS)
        cfg |= int(a.config) & (M.HSW_IN_TX | M.HSW_IN_TX_CHECKPOINTED)
    if not a.exclude_user:
        cfg |= M.ARCH_PERFMON_EVENTSEL_USR
    if not a.exclude_kernel:
        cfg |= M.ARCH_PERFMON_EVENTSEL_OS
    return cfg


@dataclass
class HwState:
    """Per-event hardware bookkeeping: the counter value last seen."""

    last: int = 0


def program_event(core: C.Core, ev: PerfEvent) -> None:
    """Write an event's control bits and period preset to its hardware counter.

    Models x86_perf_event_set_period() + __x86_pmu_enable_event() /
    intel_pmu_enable_fixed(): the counter gets (-period) & mask, the event
    select gets EN and (for sampling events) INT. PEBS events get no INT
    (intel_pmu_pebs_enable clears it).
    """
    idx = ev.hw_idx
    if idx < 0:
        return
    mask = core.width_mask
    period = int(ev.attr.sample_period)
    preset = (-period) & mask if period else 0
    sampling = period > 0 and not ev.attr.precise_ip
    if idx < C.R_FIXED0 - C.R_PMC0:   # GP counter
        sel = hw_config(ev) | M.ARCH_PERFMON_EVENTSEL_ENABLE
        if sampling:
            sel |= M.ARCH_PERFMON_EVENTSEL_INT
        if ev.attr.precise_ip and ev.attr.adaptive:
            sel |= M.ICL_EVENTSEL_ADAPTIVE
        core.regs[C.R_EVTSEL0 + idx] = np.uint64(sel)
        core.regs[C.R_PMC0 + idx] = np.uint64(preset)
    else:
        f = idx - M.INTEL_PMC_IDX_FIXED
        bits = (0 if ev.attr.exclude_kernel else M.INTEL_FIXED_0_KERNEL) | \
               (0 if ev.attr.exclude_user else M.INTEL_FIXED_0_USER) | \
               (M.INTEL_FIXED_0_ENABLE_PMI if sampling else 0) | \
               (M.ICL_FIXED_0_ADAPTIVE if ev.attr.precise_ip and ev.attr.adaptive else 0)
        ctrl = int(core.regs[C.R_FIXED_CTR_CTRL]) & ~(_FIXED_FIELD << (4 * f))
        core.regs[C.R_FIXED_CTR_CTRL] = np.uint64(ctrl | bits << (4 * f))
        core.regs[C.R_FIXED0 + f] = np.uint64(preset)
    ev.hw = HwState(last=preset)


def unprogram_event(core: C.Core, idx: int) -> None:
    """Disable a hardware counter (x86_pmu_disable_event)."""
    if idx < 0:
        return
    if idx < M.INTEL_PMC_IDX_FIXED:
        core.regs[C.R_EVTSEL0 + idx] = np.uint64(0)
        core.regs[C.R_PMC0 + idx] = np.uint64(0)
    else:
        f = idx - M.INTEL_PMC_IDX_FIXED
        core.regs[C.R_FIXED_CTR_CTRL] = np.uint64(int(core.regs[C.R_FIXED_CTR_CTRL])
                                                  & ~(_FIXED_FIELD << (4 * f)))
        core.regs[C.R_FIXED0 + f] = np.uint64(0)


def event_update(core: C.Core, ev: PerfEvent) -> int:
    """Fold the counter's progress since the last look into ``ev.count``; return the delta.

    Models x86_perf_event_update(): delta = (now - prev) modulo the width.
    """
    if ev.hw_idx < 0 or not hasattr(ev, "hw"):
        return 0
    now = core.counter(ev.hw_idx)
    delta = (now - ev.hw.last) & core.width_mask
    ev.count += delta
    ev.hw.last = now
    return delta


def rearm(core: C.Core, ev: PerfEvent) -> None:
    """Reload a sampling counter with its period after an overflow (x86_perf_event_set_period)."""
    if ev.hw_idx < 0 or not ev.attr.sample_period:
        return
    preset = (-int(ev.attr.sample_period)) & core.width_mask
    if ev.hw_idx < M.INTEL_PMC_IDX_FIXED:
        core.regs[C.R_PMC0 + ev.hw_idx] = np.uint64(preset)
    else:
        core.regs[C.R_FIXED0 + ev.hw_idx - M.INTEL_PMC_IDX_FIXED] = np.uint64(preset)
    ev.hw.last = preset


def counter_bit(idx: int) -> int:
    return 1 << idx


@dataclass(frozen=True)
class PerfGuestSwitchMsr:
    """One MSR to switch at VM entry/exit (struct perf_guest_switch_msr)."""

    msr: int
    host: int
    guest: int


def intel_guest_get_msrs(perf: HostPerf, *, host_pebs_disables_guest: bool = False,
                         cross_mapped: int = 0) -> list[PerfGuestSwitchMsr]:
    """The PMU MSRs whose values must differ between host and guest.

    Models intel_guest_get_msrs() in arch/x86/events/intel/core.c as the
    2014 series extended it (its patches 1-3 are not archived; FACTS e):
    GLOBAL_CTRL keeps host-only events out of the guest and KVM's events out
    of the host; PEBS_ENABLE carries the host's PEBS counters in the host and
    the guest-owned precise events in the guest. The two knobs are the later
    upstream rules (FACTS c.3): host PEBS use disables guest PEBS, and
    cross-mapped counters lose guest PEBS.
    """
    intel_ctrl = 0
    guest_mask = 0      # events that count only in the guest (KVM's, exclude_host)
    host_mask = 0       # events that count only in the host (exclude_guest)
    pebs_host = 0
    pebs_guest = 0
    for ev in perf.events():
        if ev.hw_idx < 0 or not ev.enabled:
            continue
        bit = counter_bit(ev.hw_idx)
        intel_ctrl |= bit
        if ev.attr.exclude_host:
            guest_mask |= bit
        if ev.attr.exclude_guest:
            host_mask |= bit
        if ev.attr.precise_ip:
            if ev.guest_owned:
                pebs_guest |= bit
            else:
                pebs_host |= bit
    guest_ctrl = intel_ctrl & ~host_mask
    if host_pebs_disables_guest and pebs_host:
        pebs_guest = 0
    pebs_guest &= ~cross_mapped
    guest_ctrl &= ~(cross_mapped & pebs_guest_mask(perf))
    return [
        PerfGuestSwitchMsr(M.MSR_CORE_PERF_GLOBAL_CTRL, intel_ctrl & ~guest_mask, guest_ctrl),
        PerfGuestSwitchMsr(M.MSR_IA32_PEBS_ENABLE, pebs_host, pebs_guest),
    ]


def pebs_guest_mask(perf: HostPerf) -> int:
    """Hardware counters holding guest-owned precise events."""
    m = 0
    for ev in perf.events():
        if ev.hw_idx >= 0 and ev.guest_owned and ev.attr.precise_ip:
            m |= counter_bit(ev.hw_idx)
    return m


def intel_pmu_handle_irq(core: C.Core, perf: HostPerf, ip: int, trace=None) -> int:
    """The host's PMI (NMI) handler: update, re-arm and call the overflowed events.

    Models intel_pmu_handle_irq() in arch/x86/events/intel/core.c with the
    2014 series' guest-owned events: each overflowed counter's event is
    updated, re-armed and its overflow handler called (for KVM's events:
    kvm_perf_overflow[_intr]); counters with PEBS enabled are left to bit
    62, which calls one guest-owned precise event's handler (no host drain:
    the records are in the guest's buffer). ``ip`` is the interrupted IP;
    ``trace(kind, **kw)`` receives notes. Returns the GLOBAL_STATUS bits
    handled (and cleared).
    """
    status = int(core.regs[C.R_GLOBAL_STATUS])
    pebs_bits = int(core.regs[C.R_PEBS_ENABLE]) | pebs_guest_mask(perf)
    handled = 0
    for bit in range(62):
        if not status >> bit & 1:
            continue
        handled |= 1 << bit
        if pebs_bits >> bit & 1 and bit < M.INTEL_PMC_IDX_FIXED:
            continue
        ev = perf.by_idx(bit) if (bit < perf.n_gp or M.INTEL_PMC_IDX_FIXED <= bit
                                  < M.INTEL_PMC_IDX_FIXED + perf.n_fixed) else None
        if ev is None or ev.attr.precise_ip:
            continue
        event_update(core, ev)
        rearm(core, ev)
        ev.overflow(ip)
    if status & M.GLOBAL_STATUS_BUFFER_OVF:
        handled |= M.GLOBAL_STATUS_BUFFER_OVF
        for ev in perf.events():
            if ev.hw_idx >= 0 and ev.attr.precise_ip:
                event_update(core, ev)
                if ev.guest_owned:
                    ev.overflow(ip)
                    break
                if trace is not None:
                    trace("NOTE", info="host PEBS buffer threshold (host drain not modeled)")
    core.regs[C.R_GLOBAL_STATUS] = np.uint64(status & ~handled)
    return handled
