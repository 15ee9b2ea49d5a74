"""VMs and vCPUs, and the run loop: enter, run the core, handle the exit, re-enter.

Models the glue of arch/x86/kvm/x86.c (vcpu_enter_guest, kvm_emulate_rdmsr
/ wrmsr, kvm_emulate_cpuid) and vmx.c (vmx_handle_exit for EPT violations,
external NMIs and MSR exits), reduced to what the PEBS patch touches. One
vCPU runs on one physical CPU (:class:`PCpu`) of its own; there is no
overcommit, so the host perf events of a pCPU belong to one vCPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .designs import Design
from ..hw.errors import GuestCrash, GuestFault
from ..host import perf_hw
from ..host.mm import HostMM
from ..host.perf import HostPerf, PerfEvent
from ..hw import core as C
from ..hw import cpuid as CPUID
from ..hw import eventlog
from ..hw import msr as M
from ..hw.mmu import (EPT_ADDR_MASK, EPT_R, PTE_P, PTE_RW, XLATE_EPT, XLATE_PF, is_canonical, leaf_gpa,
                      walk_tables)
from ..hw.models import CpuModel
from ..trace import Trace
from . import mmu_notifier, pebs_pin, pmu as kpmu, vmx
from .cpuid import kvm_filter_cpuid
from .dirty_log import DirtyLog
from .._check import check_int as _check_int

PAGE = 4096


@dataclass(frozen=True)
class Costs:
    """Cycles charged to the guest's clock for software work (named defaults).

    ASSUMPTIONS, order-of-magnitude figures for a 2014-era Intel core: a VM
    exit + entry round trip ~1,200 cycles; an emulated MSR access adds
    ~300; creating or releasing a host perf event (what reprogram_counter
    does) ~4,000; injecting an interrupt ~800; an EPT violation that swaps a
    page in ~50,000 (a minor fault would be far less); a host timer tick ~2,000.
    """

    vmexit: int = 1200
    msr_emulation: int = 300
    cpuid: int = 100
    perf_event_create: int = 4000
    perf_event_release: int = 2000
    pmi_inject: int = 800
    ept_swapin: int = 50000
    ept_populate: int = 2000
    host_tick: int = 2000
    page_track_exit: int = 1500


#: Host timer tick, in guest cycles between forced exits (HZ=1000 at 2 GHz).
TICK_CYCLES = 2_000_000


class PCpu:
    """One physical CPU: its core (PMU registers) and the host perf events on it.

    pebslab only.
    """

    def __init__(self, cpu: CpuModel, seed: int, index: int):
        self.index = index
        self.core = C.Core(cpu, seed=seed)
        self.perf = HostPerf(cpu.n_gp, cpu.n_fixed)
        self.core.regs[C.R_DS_AREA] = np.uint64(perf_hw.HOST_DS_AREA)

    def program_new(self) -> None:
        """Program every scheduled event not yet on the hardware (after a release)."""
        for ev in self.perf.events():
            if ev.hw_idx >= 0 and getattr(ev, "_programmed", -1) != ev.hw_idx:
                perf_hw.program_event(self.core, ev)
                ev._programmed = ev.hw_idx


class GuestPhys:
    """Guest physical memory as guest software sees it.

    pebslab only. Accesses go through the VM's EPT; a page that reclaim
    swapped out is faulted back in (an EPT violation KVM handles); a write
    to a page-tracked page exits to KVM's page-track handler (`fixed`).
    """

    def __init__(self, vm: "VM"):
        self.vm = vm

    @property
    def pages(self) -> int:
        return self.vm.memory_pages

    def _hpa(self, gpa: int) -> int:
        if self.vm.destroyed:
            raise ValueError("the VM has been destroyed: its guest memory is gone "
                             "(create a new VM)")
        gfn = gpa >> 12
        if not 0 <= gfn < self.vm.memory_pages:
            raise ValueError(f"gpa must be below {self.vm.memory_pages * PAGE:#x} "
                             f"(the VM's memory); got {gpa:#x}")
        entry = int(self.vm.ept[gfn])
        if not entry & EPT_R:
            if self.vm.vcpus:
                self.vm.vcpus[0]._exit("EPT_VIOLATION", self.vm.costs.vmexit, gpa=gpa)
            self.vm.handle_ept_violation(gpa, source="guest software")
            entry = int(self.vm.ept[gfn])
        return (entry & EPT_ADDR_MASK) | (gpa & (PAGE - 1))

    def read(self, gpa: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            chunk = min(n, PAGE - (gpa & (PAGE - 1)))
            hpa = self._hpa(gpa)
            out += self.vm.host_mm.mem[hpa:hpa + chunk].tobytes()
            gpa += chunk
            n -= chunk
        return bytes(out)

    def write(self, gpa: int, data) -> None:
        data = bytes(data)
        pos = 0
        tracked = False
        while pos < len(data):
            chunk = min(len(data) - pos, PAGE - (gpa & (PAGE - 1)))
            hpa = self._hpa(gpa)
            self.vm.dirty_log.before_write(gpa >> 12)
            self.vm.host_mm.mem[hpa:hpa + chunk] = np.frombuffer(data[pos:pos + chunk], np.uint8)
            if self.vm.is_tracked(gpa >> 12):
                tracked = True
            gpa += chunk
            pos += chunk
        if tracked:
            self.vm.page_track_write()

    def flush_tlb(self) -> None:
        for v in self.vm.vcpus:
            v.pcpu.core.flush_tlb()


@dataclass
class RunResult:
    """What one vm.run() did."""

    instructions: int = 0
    guest_cycles: int = 0
    exits: dict = field(default_factory=dict)
    pmis_injected: int = 0
    crashed: bool = False

    def __str__(self) -> str:
        ex = ", ".join(f"{k}={v}" for k, v in sorted(self.exits.items()))
        return (f"ran {self.instructions} instructions in {self.guest_cycles} guest cycles; "
                f"exits: {ex or 'none'}; PMIs injected: {self.pmis_injected}"
                + ("; GUEST CRASHED" if self.crashed else ""))


class VCPU:
    """A virtual CPU: the guest-facing instruction interface and KVM's per-vCPU state.

    Models struct kvm_vcpu with its vcpu->arch.pmu and struct vcpu_vmx's
    msr_autoload.
    """

    def __init__(self, vm: "VM", index: int, pcpu: PCpu):
        self.vm = vm
        self.index = index
        self.pcpu = pcpu
        self.pmu = kpmu.KvmPmu()
        self.autoload = vmx.MsrAutoload()
        self.pmi_handler = None
        self.pmi_pending = False
        self.cr3 = 0
        self.pmis_injected = 0
        #: pinning work done in the current exit, charged when it ends (pebs_pin.settle_pin_debt)
        self.pin_debt = 0
        kpmu.kvm_pmu_init(self)
        kpmu.kvm_pmu_cpuid_update(self)     # KVM_SET_CPUID2 with the VM's CPUID

    # ---- facts the KVM code asks for -------------------------------------------
    @property
    def design(self) -> Design:
        return self.vm.design

    @property
    def host_cpu(self) -> CpuModel:
        return self.vm.cpu

    @property
    def host_mm(self) -> HostMM:
        return self.vm.host_mm

    @property
    def guest_cpuid(self) -> CPUID.Cpuid:
        return self.vm.cpuid

    def cpuid_has(self, name: str) -> bool:
        return self.vm.cpuid.has(name)

    def host_has_pdcm(self) -> bool:
        """boot_cpu_has(X86_FEATURE_PDCM): the host CPU's own CPUID."""
        return CPUID.default(self.host_cpu).has("PDCM")

    @property
    def core(self) -> C.Core:
        return self.pcpu.core

    @property
    def tsc(self) -> int:
        return self.core.tsc

    def charge(self, cycles: int) -> None:
        """Let guest time pass for software work done on its behalf."""
        self.core.regs[C.R_TSC] = np.uint64(self.core.tsc + cycles)

    def trace(self, kind: str, **kw) -> None:
        kw.setdefault("vcpu", self.index)
        self.vm.trace.add(kind, self.core.tsc, **kw)

    # ---- the guest's instructions --------------------------------------------------
    def _exit(self, reason: str, cost: int, **kw) -> None:
        self.vm.exit_counts[reason] = self.vm.exit_counts.get(reason, 0) + 1
        self.charge(cost)
        self.trace("VMEXIT", cost=cost, info=reason, **kw)

    def rdmsr(self, index: int) -> int:
        """RDMSR in the guest: exits to KVM; returns the value or raises GuestFault (#GP)."""
        _check_int("index", index, 0, (1 << 32) - 1)
        self._check_alive()
        self._exit("MSR_READ", self.vm.costs.vmexit + self.vm.costs.msr_emulation, msr=index)
        try:
            value = kpmu.kvm_pmu_get_msr(self, index)
        except GuestFault as e:
            self.trace("GP", msr=index, info=str(e))
            raise
        self.trace("MSR_READ", msr=index, value=value, info=M.msr_name(index))
        return value

    def wrmsr(self, index: int, value: int) -> None:
        """WRMSR in the guest: exits to KVM; raises GuestFault (#GP) where KVM injects one."""
        _check_int("index", index, 0, (1 << 32) - 1)
        _check_int("value", value, 0, (1 << 64) - 1)
        self._check_alive()
        self._exit("MSR_WRITE", self.vm.costs.vmexit + self.vm.costs.msr_emulation,
                   msr=index, value=value)
        try:
            kpmu.kvm_pmu_set_msr(self, index, value)
        except GuestFault as e:
            self.trace("GP", msr=index, value=value, info=str(e))
            pebs_pin.settle_pin_debt(self)
            raise
        self.trace("MSR_WRITE", msr=index, value=value, info=M.msr_name(index))
        pebs_pin.settle_pin_debt(self)          # issue 9 item 7: the pinning work costs cycles

    def cpuid(self, function: int) -> tuple[int, int, int, int]:
        """CPUID in the guest (always exits): the VM's CPUID table."""
        _check_int("function", function, 0, (1 << 32) - 1)
        self._check_alive()
        self._exit("CPUID", self.vm.costs.vmexit + self.vm.costs.cpuid)
        regs = self.vm.cpuid.leaf(function)
        self.trace("CPUID", value=function, info=f"leaf {function:#x} -> "
                   + " ".join(f"{r:#x}" for r in regs))
        return regs

    def set_pmi_handler(self, fn) -> None:
        """Register the guest's PMI handler (LVTPC + IDT entry): ``fn(vcpu, ip, cpl)``."""
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable or None; got {type(fn).__name__}")
        self.pmi_handler = fn

    def guest_time(self) -> int:
        """RDTSC (no exit)."""
        return self.core.tsc

    def load_cr3(self, gpa: int) -> None:
        """MOV to CR3 (no exit with EPT): the guest's page-table root."""
        _check_int("gpa", gpa, 0, self.vm.memory_pages * PAGE - 1)
        self.cr3 = gpa
        self.core.regs[C.R_CR3] = np.uint64(gpa)
        self.core.flush_tlb()

    def reset(self) -> None:
        """INIT/RESET of the vCPU (kvm_vcpu_reset -> kvm_pmu_reset)."""
        kpmu.kvm_pmu_reset(self)
        self.pmi_pending = False
        self.trace("NOTE", info="vCPU reset")

    def _check_alive(self) -> None:
        if self.vm.crashed:
            raise GuestCrash(f"the VM has crashed: {self.vm.crash_reason}")
        if self.vm.destroyed:
            raise ValueError("the VM has been destroyed")

    # ---- KVM's helpers used by pmu.py / pebs_pin.py -----------------------------------
    def host_perf_create(self, attr, handler, context, pebs: bool) -> PerfEvent | None:
        perf = self.pcpu.perf
        mask = perf.all_gp_mask
        if pebs:
            mask &= self.host_cpu.pebs_counter_mask or perf.all_gp_mask
        ev = perf.create_kernel_counter(attr, handler, context, guest_owned=True,
                                        counter_mask=mask, owner="kvm")
        self.charge(self.vm.costs.perf_event_create)
        self.vm.perf_events_created += 1
        if ev.hw_idx >= 0:
            perf_hw.program_event(self.core, ev)
            ev._programmed = ev.hw_idx
        return ev

    def host_perf_release(self, ev: PerfEvent) -> None:
        if ev.hw_idx >= 0:
            perf_hw.event_update(self.core, ev)
            perf_hw.unprogram_event(self.core, ev.hw_idx)
        ev.release()
        self.charge(self.vm.costs.perf_event_release)
        self.pcpu.program_new()

    def host_perf_sync(self, ev: PerfEvent) -> None:
        perf_hw.event_update(self.core, ev)

    def request_pmi(self, pmc) -> None:
        """kvm_make_request(KVM_REQ_PMI): the PMI is injected before the next entry."""
        self.pmi_pending = True

    def gva_to_gpa(self, gva: int, write: bool = False) -> int:
        """KVM's software walk of the guest page tables (walk_mmu->gva_to_gpa).

        Returns the GPA or UNMAPPED_GVA (-1). Reads table entries through
        guest memory (faulting swapped pages back in), like KVM does.
        """
        return self.vm.gva_to_gpa(self.cr3, gva, write)

    def gfn_to_pfn(self, gfn: int) -> int | None:
        """Host frame of a guest frame, faulting it in, with a reference taken (gfn_to_pfn)."""
        if not 0 <= gfn < self.vm.memory_pages:
            return None
        hfn = mmu_notifier.gfn_to_pfn(self, gfn)       # host memory; EPT untouched
        self.host_mm.get_page(hfn)
        self.vm.dirty_log.pinned(gfn)
        return hfn

    def read_guest_virt(self, gva: int, n: int) -> bytes:
        """kvm_read_guest_virt: read through the guest's page tables."""
        out = bytearray()
        while n > 0:
            chunk = min(n, PAGE - (gva & (PAGE - 1)))
            gpa = self.gva_to_gpa(gva)
            if gpa < 0:
                raise ValueError(f"gva {gva:#x} is not mapped in the guest")
            out += self.vm.phys.read(gpa, chunk)
            gva += chunk
            n -= chunk
        return bytes(out)

    def track_page_tables(self, gva: int) -> None:
        """Write-track the guest page-table pages that map ``gva`` (`fixed` design)."""
        for gfn in self.vm.table_gfns(self.cr3, gva):
            self.vm.tracked.setdefault(gfn, set()).add(self.index)

    def untrack_all(self) -> None:
        for gfn in list(self.vm.tracked):
            self.vm.tracked[gfn].discard(self.index)
            if not self.vm.tracked[gfn]:
                del self.vm.tracked[gfn]


class VM:
    """A virtual machine: memory (EPT over host frames), vCPUs, design, trace.

    Models struct kvm plus the per-VM parts of KVM the patch relies on.
    """

    def __init__(self, *, host_mm: HostMM, cpu: CpuModel, design: Design, vm_id: int,
                 memory_pages: int, cpuid: CPUID.Cpuid, seed: int, pcpu_base: int,
                 costs: Costs | None = None, extra_autoload: int = 0, vcpus: int = 1):
        self.id = vm_id
        self.host_mm = host_mm
        self.cpu = cpu
        self.design = design
        self.memory_pages = memory_pages
        self.cpuid = kvm_filter_cpuid(cpuid, cpu, design)
        self.costs = costs or Costs()
        #: what pinning and the MMU notifier's upkeep cost (kvm/pebs_pin.py PinCosts)
        self.pin_costs = pebs_pin.PinCosts()
        self.extra_autoload = extra_autoload
        self.trace = Trace()
        self.ept = np.zeros(memory_pages, np.uint64)
        self.phys = GuestPhys(self)
        self.tracked: dict[int, set] = {}
        self.crashed = False
        self.crash_reason = ""
        self.destroyed = False
        self.workload = None
        self.exit_counts: dict[str, int] = {}
        self.perf_events_created = 0
        self.host_faults: list[str] = []
        self.dirty_log = DirtyLog(self)
        self._in_track = False
        #: called on every host timer tick with (vm, vcpu); the Host installs memory pressure here
        self.tick_hooks: list = []
        #: called with the VM once it is destroyed (the Host forgets it)
        self.destroy_hooks: list = []
        #: KVM's MMU notifier (kvm/mmu_notifier.py): host zappers reach it
        self.mmu_notifier = mmu_notifier.KvmMmuNotifier(self)
        host_mm.register_vm(vm_id, self.ept, self._invept, notifier=self.mmu_notifier)
        for gfn in range(memory_pages):
            host_mm.populate(vm_id, gfn)
        self.vcpus = [VCPU(self, i, PCpu(cpu, seed * 1000 + pcpu_base + i, pcpu_base + i))
                      for i in range(vcpus)]
        self.baseline_refcounts = None

    # ---- KVM's per-VM view (DESIGN: vm.kvm.pmu) --------------------------------------
    @property
    def kvm(self) -> "KvmView":
        return KvmView(self)

    @property
    def dirty_logging(self) -> bool:
        """True while dirty logging is on (``dirty_log.active``)."""
        return self.dirty_log.active

    @property
    def dirty(self) -> set:
        """The gfns written since the last KVM_GET_DIRTY_LOG (``dirty_log.dirty``)."""
        return self.dirty_log.dirty

    def _invept(self) -> None:
        for v in getattr(self, "vcpus", []):
            v.core.flush_tlb()

    # ---- memory --------------------------------------------------------------------------
    def fault_in(self, gfn: int, why: str) -> int:
        swapped = self.host_mm.is_swapped(self.id, gfn)
        hfn = self.host_mm.populate(self.id, gfn)
        cost = self.costs.ept_swapin if swapped else self.costs.ept_populate
        v = self.vcpus[0] if getattr(self, "vcpus", None) else None
        if v is not None:
            v.charge(cost)
            v.trace("SWAPIN" if swapped else "EPT_VIOLATION", gpa=gfn << 12, hpa=hfn << 12,
                    frame=hfn, cost=cost, info=f"{why}: gfn {gfn:#x} -> frame {hfn}")
        return hfn

    def handle_ept_violation(self, gpa: int, source: str) -> None:
        """KVM's EPT-violation handler (tdp_page_fault): fault the page in.

        While dirty logging, a write to a write-protected page is the
        logging fault instead (:meth:`DirtyLog.ept_violation`).
        """
        gfn = gpa >> 12
        if self.dirty_log.ept_violation(gfn, source):
            return
        if not 0 <= gfn < self.memory_pages:
            self.crash(f"EPT violation outside guest memory at gpa {gpa:#x} ({source})")
            return
        self.fault_in(gfn, why=f"EPT violation ({source})")
        self.dirty_log.faulted_in(gfn)

    def _read_entry(self, entry_gpa: int) -> int | None:
        """A guest page-table entry read through guest memory (None outside the memslot)."""
        if entry_gpa >> 12 >= self.memory_pages:
            return None
        return int.from_bytes(self.phys.read(entry_gpa, 8), "little")

    def gva_to_gpa(self, cr3: int, gva: int, write: bool = False) -> int:
        """KVM's software walk of the guest page tables (walk_mmu->gva_to_gpa).

        Returns the GPA or UNMAPPED_GVA (-1); uses the one walker,
        :func:`pebslab.hw.mmu.walk_tables`.
        """
        if not 0 <= gva < 1 << 64 or not is_canonical(np.uint64(gva)):
            return pebs_pin.UNMAPPED_GVA
        for level, _entry_gpa, entry in walk_tables(self._read_entry, cr3, gva):
            if entry is None or not entry & PTE_P or (write and not entry & PTE_RW):
                return pebs_pin.UNMAPPED_GVA
        return leaf_gpa(level, entry, gva)

    def table_gfns(self, cr3: int, gva: int) -> list[int]:
        """The guest frames holding the page-table entries that map ``gva``."""
        return [entry_gpa >> 12 for _level, entry_gpa, _entry
                in walk_tables(self._read_entry, cr3, gva)]

    def is_tracked(self, gfn: int) -> bool:
        return gfn in self.tracked

    def page_track_write(self) -> None:
        """A guest write hit a tracked page-table page: re-validate the pins (`fixed`)."""
        if self._in_track:
            return
        self._in_track = True
        try:
            for v in self.vcpus:
                if v.pmu.pebs_enable and v.design.track_guest_page_tables:
                    v._exit("PAGE_TRACK", self.costs.page_track_exit)
                    old = list(v.pmu.pinned_pages)
                    pebs_pin.kvm_pmu_release_pin(v)
                    ok = pebs_pin.pin_for_design(v)
                    v.trace("NOTE", info=f"page-track: guest remapped PEBS memory; re-pinned "
                                         f"{len(old)} -> {len(v.pmu.pinned_pages)} frames"
                                         + ("" if ok else "; pinning FAILED: PEBS disabled"))
                    if not ok:
                        old_bits = v.pmu.pebs_enable
                        v.pmu.pebs_enable = 0
                        if v.design.reprogram_on_pebs_enable:
                            kpmu._reprogram_bits(v, old_bits)
        finally:
            self._in_track = False

    # ---- running ------------------------------------------------------------------------
    def crash(self, reason: str) -> None:
        if not self.crashed:
            self.crashed = True
            self.crash_reason = reason
            v = self.vcpus[0] if getattr(self, "vcpus", None) else None
            if v is not None:
                v.trace("GUEST_CRASH", info=reason)
            else:
                self.trace.add("GUEST_CRASH", 0, info=reason)

    def run(self, workload, instructions: int = 1_000_000, vcpu: int = 0) -> RunResult:
        """Run ``instructions`` guest instructions of ``workload`` on a vCPU.

        The loop of vcpu_enter_guest: inject a pending PMI, prepare the MSR
        switch lists, enter, run the core until it exits, exit, handle the
        exit (host PMI handler, EPT violation, PEBS-write fault, host timer
        tick), repeat. Returns a :class:`RunResult`.
        """
        from ..workloads import Workload
        if not isinstance(workload, Workload):
            raise TypeError(f"workload must be a pebslab.workloads.Workload; got "
                            f"{type(workload).__name__}")
        _check_int("instructions", instructions, 0, 10**12)
        _check_int("vcpu", vcpu, 0, len(self.vcpus) - 1)
        if self.destroyed:
            raise ValueError("the VM has been destroyed")
        v = self.vcpus[vcpu]
        core = v.core
        if self.workload is not workload:
            if self.workload is None or self.workload != workload:
                core.regs[C.R_RIP] = np.uint64(0)
            self.workload = workload
        res = RunResult()
        start_tsc = core.tsc
        start_ret = int(core.regs[C.R_RETIRED])
        exits_before = dict(self.exit_counts)
        pmis_before = v.pmis_injected
        left = instructions
        while left > 0 and not self.crashed:
            self._inject_pmi(v, workload)
            if self.crashed:
                break
            pebs_pin.settle_pin_debt(v)
            pebs_ok = self.mmu_notifier.kvm_check_request(v)     # issue 9 item 8
            vmx.vmx_prepare_msrs(v)
            if not pebs_ok:
                mmu_notifier.force_guest_pebs_off(v)
            vmx.vm_entry(v)
            core.regs[C.R_TIMER_DEADLINE] = np.uint64((core.tsc // TICK_CYCLES + 1) * TICK_CYCLES)
            before = int(core.regs[C.R_RETIRED])
            reason = core.run(workload, left, self.host_mm.mem, self.ept)
            left -= int(core.regs[C.R_RETIRED]) - before
            self._drain_log(v, workload)
            vmx.vm_exit(v)
            self._check_host_hazards(v)
            name = C.EXIT_NAMES[reason]
            if reason not in (C.EXIT_BUDGET, C.EXIT_LOG_FULL):
                v._exit(name if reason != C.EXIT_PMI else "EXTERNAL_NMI",
                        self.costs.vmexit, gpa=int(core.regs[C.R_EXIT_GPA]))
            if reason == C.EXIT_PMI:
                self._host_pmi(v, workload)
            elif reason == C.EXIT_EPT_VIOLATION:
                self.handle_ept_violation(int(core.regs[C.R_EXIT_GPA]), source="PEBS assist")
            elif reason == C.EXIT_PEBS_FAULT:
                self._pebs_fault(v)
            elif reason == C.EXIT_TIMER:
                v.charge(self.costs.host_tick)
                self.host_tick(v)
        res.instructions = int(core.regs[C.R_RETIRED]) - start_ret
        res.guest_cycles = core.tsc - start_tsc
        res.exits = {k: n - exits_before.get(k, 0) for k, n in self.exit_counts.items()
                     if n - exits_before.get(k, 0)}
        res.pmis_injected = v.pmis_injected - pmis_before
        res.crashed = self.crashed
        return res

    def host_tick(self, v: VCPU) -> None:
        for hook in list(self.tick_hooks):
            hook(self, v)

    def _inject_pmi(self, v: VCPU, workload) -> None:
        if not v.pmi_pending:
            return
        v.pmi_pending = False
        if v.pmi_handler is None:
            v.trace("NOTE", info="PMI pending but the guest has no handler (LVTPC masked)")
            return
        rip = v.core.rip
        ip = int(workload.ip[rip])
        cpl = int(workload.cpl[rip])
        v.charge(self.costs.pmi_inject)
        v.pmis_injected += 1
        v.trace("PMI_INJECT", gva=ip, cost=self.costs.pmi_inject,
                info=f"inject PMI at ip {ip:#x} ({workload.symbol_of(ip)})")
        try:
            v.pmi_handler(v, ip, cpl)
        except GuestFault as e:
            self.crash(f"guest PMI handler took an unexpected {e}")

    def _drain_log(self, v: VCPU, workload) -> None:
        """The core's event log (:mod:`pebslab.hw.eventlog`) as trace rows of this vCPU."""
        add = self.trace.add
        for ev in eventlog.decode(v.core.take_log()):
            k = ev.kind
            if k == "OVERFLOW":
                add(k, ev.tsc, vcpu=v.index, value=ev.a, gva=ev.c,
                    info=f"counter {ev.a} at {workload.symbol_of(ev.c)}")
            elif k == "PEBS_WRITE":
                add(k, ev.tsc, vcpu=v.index, gva=ev.a, hpa=ev.b, frame=ev.b >> 12, value=ev.d,
                    info=f"{ev.c}-byte record")
            elif k == "PEBS_FAULT":
                add(k, ev.tsc, vcpu=v.index, gva=ev.a, gpa=ev.b,
                    info=("EPT violation" if ev.c == XLATE_EPT else
                          "guest page fault" if ev.c == XLATE_PF else f"code {ev.c}"))
            elif k == "PEBS_DROP":
                add(k, ev.tsc, vcpu=v.index, gva=ev.a, info="buffer full: record not written")
            elif k == "PMI":
                add(k, ev.tsc, vcpu=v.index, value=ev.a, gva=ev.c, info="hardware PMI")

    def _host_pmi(self, v: VCPU, workload) -> None:
        """The host's PMI (NMI) handler on the guest's pCPU (:func:`perf_hw.intel_pmu_handle_irq`)."""
        ip = int(workload.ip[v.core.rip])
        perf_hw.intel_pmu_handle_irq(v.core, v.pcpu.perf, ip, v.trace)

    def _pebs_fault(self, v: VCPU) -> None:
        info = int(v.core.regs[C.R_EXIT_INFO])
        code = info >> 8
        gva = int(v.core.regs[C.R_EXIT_GVA])
        gpa = int(v.core.regs[C.R_EXIT_GPA])
        what = "an EPT violation" if code == XLATE_EPT else "a guest page fault"
        self.crash(f"PEBS assist took {what} accessing gva {gva:#x} (gpa {gpa:#x}); "
                   f"{self.cpu.name} cannot deliver faults from a PEBS assist, so the "
                   f"record is lost and the vCPU cannot continue")

    def _check_host_hazards(self, v: VCPU) -> None:
        """After the exit-load list ran: is the host now exposed to guest PEBS state?

        pebslab only: flags the two failures the MSR switching exists to
        prevent (a guest PEBS counter still enabled in host mode; host PEBS
        with the guest's DS_AREA).
        """
        regs = v.core.regs
        ds = int(regs[C.R_DS_AREA])
        pebs = int(regs[C.R_PEBS_ENABLE])
        guest_bits = perf_hw.pebs_guest_mask(v.pcpu.perf)
        msg = None
        if pebs & guest_bits:
            msg = (f"guest PEBS counters {pebs & guest_bits:#x} keep running in host mode: "
                   f"their records go to DS_AREA {ds:#x} through the HOST's page tables")
        elif pebs and ds != perf_hw.HOST_DS_AREA:
            msg = (f"host runs with PEBS_ENABLE={pebs:#x} and the guest's DS_AREA {ds:#x}: "
                   f"host PEBS records would land at a guest-chosen address")
        if msg:
            self.host_faults.append(msg)
            v.trace("HOST_FAULT", value=ds, info=msg)

    # ---- teardown -------------------------------------------------------------------------
    def destroy(self) -> list[int]:
        """kvm_destroy_vm: destroy each vCPU's PMU (drops pins), give the memory back.

        Returns the host frames still held (leaked pins): empty when all is well.
        """
        if self.destroyed:
            return []
        for v in self.vcpus:
            kpmu.kvm_pmu_destroy(v)
            for ev in list(v.pcpu.perf.events()):
                v.host_perf_release(ev)
        self.dirty_log.active = False          # the memslots go with the VM
        leaked = self.host_mm.release_vm(self.id)
        self.host_mm.unregister_vm(self.id)
        self.destroyed = True
        self.trace.add("NOTE", 0, info=f"VM destroyed; leaked frames: {leaked}")
        for hook in self.destroy_hooks:
            hook(self)
        self.destroy_hooks = []
        self.tick_hooks = []
        return leaked


class KvmView:
    """``vm.kvm``: KVM's state for this VM, as a notebook wants to look at it."""

    def __init__(self, vm: VM):
        self.vm = vm

    @property
    def pmu(self) -> kpmu.KvmPmu:
        return self.vm.vcpus[0].pmu

    @property
    def design(self) -> Design:
        return self.vm.design

    @property
    def autoload(self) -> vmx.MsrAutoload:
        return self.vm.vcpus[0].autoload
