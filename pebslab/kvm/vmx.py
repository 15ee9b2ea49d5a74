"""VM entry and exit: the VMX MSR autoload lists and the PMU MSRs they switch.

Models the 2014 arch/x86/kvm/vmx.c pieces the patch touches:
``struct msr_autoload`` (entry-load ``guest`` list, exit-load ``host``
list, NR_AUTOLOAD_MSRS = 8 each), add_atomic_switch_msr,
clear_atomic_switch_msr, atomic_switch_perf_msrs and the patch's DS_AREA
hunk in vmx_vcpu_run. Each switch can be turned off by a design knob so a
notebook can show what then goes wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..host import perf_hw
from ..hw.errors import GuestFault
from ..hw import core as C
from ..hw import msr as M

NR_AUTOLOAD_MSRS = 8

#: VM-entry failure due to MSR loading: basic exit reason 34 with bit 31 set
#: (SDM Vol. 3C 26.7; QEMU prints "KVM: entry failed, hardware error 0x80000022").
VMX_EXIT_REASONS_FAILED_VMENTRY = 0x80000000
EXIT_REASON_MSR_LOAD_FAIL = VMX_EXIT_REASONS_FAILED_VMENTRY | 34

#: MSRs that other parts of 2014 KVM may put on the autoload lists (EFER when
#: the CPU lacks the dedicated VMCS control; the others are illustrative).
OTHER_AUTOLOAD_MSRS = (0xC0000080, 0x277, 0xC0000081, 0xC0000082, 0xC0000084, 0xC0000102,
                       0x174, 0x175)

# core register slot of each MSR the lists can carry (others are accepted
# but only book-kept: the model's core has no such register)
_SLOT = {
    M.MSR_CORE_PERF_GLOBAL_CTRL: C.R_GLOBAL_CTRL,
    M.MSR_IA32_PEBS_ENABLE: C.R_PEBS_ENABLE,
    M.MSR_IA32_DS_AREA: C.R_DS_AREA,
    M.MSR_PEBS_DATA_CFG: C.R_PEBS_DATA_CFG,
}


@dataclass
class MsrAutoload:
    """The two VMCS MSR-load lists (struct msr_autoload)."""

    guest: list = field(default_factory=list)   # [msr, value] loaded at VM entry
    host: list = field(default_factory=list)    # [msr, value] loaded at VM exit

    @property
    def nr(self) -> int:
        return len(self.guest)

    def table(self) -> list[tuple[str, int, int]]:
        """(name, guest value, host value) per entry, for notebooks."""
        return [(M.msr_name(g[0]), g[1], h[1]) for g, h in zip(self.guest, self.host)]


def add_atomic_switch_msr(vcpu, msr: int, guest_val: int, host_val: int) -> bool:
    """Put (or update) an MSR on both lists; False if the lists are full.

    Models add_atomic_switch_msr(): update in place if present; otherwise
    append, unless NR_AUTOLOAD_MSRS entries are already used, in which case
    2014 KVM printed a warning once and the MSR was simply not switched.
    """
    m = vcpu.autoload
    for g, h in zip(m.guest, m.host):
        if g[0] == msr:
            g[1] = guest_val
            h[1] = host_val
            return True
    if m.nr >= NR_AUTOLOAD_MSRS:
        vcpu.trace("AUTOLOAD_FULL", msr=msr, value=guest_val,
                   info=f"Not enough msr switch entries. Can't add msr {msr:x}")
        return False
    m.guest.append([msr, guest_val])
    m.host.append([msr, host_val])
    vcpu.trace("AUTOLOAD", msr=msr, value=guest_val, info=f"add {M.msr_name(msr)}")
    return True


def clear_atomic_switch_msr(vcpu, msr: int) -> None:
    """Remove an MSR from both lists (clear_atomic_switch_msr)."""
    m = vcpu.autoload
    for i, g in enumerate(m.guest):
        if g[0] == msr:
            del m.guest[i]
            del m.host[i]
            vcpu.trace("AUTOLOAD", msr=msr, info=f"clear {M.msr_name(msr)}")
            return


def atomic_switch_perf_msrs(vcpu) -> list:
    """Ask perf which PMU MSRs differ between host and guest and switch them.

    Models atomic_switch_perf_msrs(): entries whose host and guest values
    are equal are cleared from the lists, the others added. Design knobs
    ``switch_global_ctrl`` / ``switch_pebs_enable`` leave an MSR out.
    """
    d = vcpu.design
    msrs = perf_hw.intel_guest_get_msrs(
        vcpu.pcpu.perf, host_pebs_disables_guest=d.host_pebs_disables_guest,
        cross_mapped=cross_mapped_mask(vcpu) if d.cross_mapped_disable else 0)
    for s in msrs:
        if s.msr == M.MSR_CORE_PERF_GLOBAL_CTRL and not d.switch_global_ctrl:
            continue
        if s.msr == M.MSR_IA32_PEBS_ENABLE and not d.switch_pebs_enable:
            continue
        if s.host == s.guest:
            clear_atomic_switch_msr(vcpu, s.msr)
        else:
            add_atomic_switch_msr(vcpu, s.msr, s.guest, s.host)
    return msrs


def cross_mapped_mask(vcpu) -> int:
    """Host counters that back a guest PEBS counter of a different index.

    Models intel_pmu_cross_mapped_check() (FACTS c.3).
    """
    mask = 0
    pmu = vcpu.pmu
    for pmc in pmu.pmcs():
        ev = pmc.perf_event
        if ev is not None and ev.hw_idx >= 0 and ev.hw_idx != pmc.idx \
                and pmu.pebs_enable >> pmc.idx & 1:
            mask |= 1 << ev.hw_idx
    return mask


def vmx_prepare_msrs(vcpu) -> None:
    """Everything vmx_vcpu_run does to the lists before VMLAUNCH/VMRESUME.

    The patch's hunk: if the guest has a DS area, switch DS_AREA between the
    guest's value and the host's (perf_get_ds_area()). "Move this somewhere
    else?" - it runs on every entry.
    """
    d = vcpu.design
    for i in range(vcpu.vm.extra_autoload):
        add_atomic_switch_msr(vcpu, OTHER_AUTOLOAD_MSRS[i % len(OTHER_AUTOLOAD_MSRS)],
                              0x1000 + i, 0x2000 + i)
    atomic_switch_perf_msrs(vcpu)
    pmu = vcpu.pmu
    if d.switch_ds_area:
        if pmu.ds_area:
            ok = add_atomic_switch_msr(vcpu, M.MSR_IA32_DS_AREA, pmu.ds_area,
                                       perf_hw.HOST_DS_AREA)
            if not ok and d.autoload_full == "disable_pebs":
                _drop_guest_pebs(vcpu)
        elif d.ds_area_clear_on_zero:
            if pmu.pebs_enable:
                # PEBS may still be armed: switch a 0 in rather than the host's area
                add_atomic_switch_msr(vcpu, M.MSR_IA32_DS_AREA, 0, perf_hw.HOST_DS_AREA)
            else:
                clear_atomic_switch_msr(vcpu, M.MSR_IA32_DS_AREA)
    if d.data_cfg and pmu.pebs_enable:
        add_atomic_switch_msr(vcpu, M.MSR_PEBS_DATA_CFG, pmu.pebs_data_cfg, 0)


def _drop_guest_pebs(vcpu) -> None:
    for g in vcpu.autoload.guest:
        if g[0] == M.MSR_IA32_PEBS_ENABLE:
            g[1] = 0
    vcpu.trace("NOTE", info="autoload list full: guest PEBS kept off for this entry")


def _load(vcpu, entries) -> None:
    regs = vcpu.pcpu.core.regs
    for msr, value in entries:
        slot = _SLOT.get(msr)
        if slot is not None:
            regs[slot] = np.uint64(value)


def vm_entry(vcpu) -> int:
    """VM entry: load the guest values of the entry-load list, in order.

    SDM Vol. 3C 26.4: an entry fails if the same WRMSR at CPL 0 would #GP
    (a non-canonical IA32_DS_AREA is one); the VM entry then fails with
    exit reason 34 | 0x80000000 (:data:`EXIT_REASON_MSR_LOAD_FAIL`) and the
    exit qualification is the failing entry's number, counting from 1
    (26.7). Returns 0 on success, else that number; the caller performs
    the VM-exit-like host-state load (:func:`vm_exit`, 26.7 step 4).
    """
    core = vcpu.pcpu.core
    for n, (msr, value) in enumerate(vcpu.autoload.guest, 1):
        if msr in _SLOT:
            try:
                core.wrmsr(msr, value)
            except GuestFault:
                return n
    return 0


def vm_exit(vcpu) -> None:
    """VM exit: load the host values of the exit-load list."""
    _load(vcpu, vcpu.autoload.host)
