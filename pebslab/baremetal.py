"""A machine with no hypervisor: one simulated core, its memory, and a vCPU facade.

pebslab only. Notebooks 01 and 02 (what PEBS does on real hardware, and
skid) run the guest kernel here, before any KVM is involved, and the guest
perf driver's tests use it as the reference machine: the same
``pebslab.guest.GuestKernel`` runs unchanged on :class:`BareMetal` and on
the KVM VM, because both expose the vCPU protocol of docs/ARCHITECTURE.md
("The vCPU as guest code sees it"): ``vcpus``, ``phys``, ``trace``, ``run``.

How it degenerates from the virtualized machine:

* Physical memory is one ``numpy.uint8`` array ``mem`` of ``frames`` pages
  and there is no host memory manager: nothing is ever reclaimed or pinned.
* The core's walker always does a two-dimensional walk (guest tables, then
  EPT). Here the EPT is the *identity*: entry ``g`` is ``(g << 12) | 7``
  (read, write, execute), so every GPA is the HPA of the same number and the
  walk degenerates to the guest's page tables alone, as on a CPU with VMX
  off. A GPA beyond ``frames`` pages has no entry: on bare metal that is
  an access to non-existent memory, reported as :class:`GuestCrash`.
* ``rdmsr``/``wrmsr``/``cpuid`` are the instructions themselves: they go
  straight to :class:`pebslab.hw.core.Core` (hardware semantics, #GP as
  :class:`GuestFault`), with no exit. They are still traced (MSR_READ,
  MSR_WRITE, GP, CPUID) so a notebook can compare the same perf session
  here and under KVM, where each one is a VM exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .hw.errors import GuestCrash, GuestFault
from .hw import core as C
from .hw import cpuid as cpuid_mod
from .hw import eventlog
from .hw.mmu import PAGE_SIZE
from .hw.models import CpuModel, get_model
from .hw.msr import msr_name
from .trace import Trace
from ._check import check_int as _check_int

__all__ = [
    "RDMSR_CYCLES", "WRMSR_CYCLES", "CPUID_CYCLES", "BareMetal", "BareVCPU", "BarePhys",
    "RunResult", "identity_ept",
]

#: ASSUMPTION: cost of one RDMSR of a PMU MSR on bare metal, in cycles. Real
#: parts take on the order of 100 cycles for RDMSR/WRMSR (serializing
#: instructions); the exact number varies by MSR and generation and is not
#: in the project's FACTS notes. Only recorded in the trace's ``cost``
#: column (the TSC is not advanced), so it never changes what counters count.
RDMSR_CYCLES = 100
#: ASSUMPTION: cost of one WRMSR of a PMU MSR on bare metal (see RDMSR_CYCLES;
#: WRMSR is usually the slower of the two).
WRMSR_CYCLES = 150
#: ASSUMPTION: cost of one CPUID instruction on bare metal (no exit).
CPUID_CYCLES = 100

def identity_ept(frames: int) -> np.ndarray:
    """Return an identity EPT over ``frames`` guest frames: entry g = (g << 12) | 7.

    pebslab only: the "EPT" of a machine without a hypervisor. Read, write
    and execute are allowed everywhere, and GPA == HPA.
    """
    g = np.arange(frames, dtype=np.uint64)
    return (g << np.uint64(12)) | np.uint64(7)


@dataclass
class RunResult:
    """Summary of one ``run()``: how much work, how many interrupts, why the core stopped.

    pebslab only. ``instructions`` retired and ``cycles`` elapsed (TSC delta)
    in this run; ``pmis`` delivered to the guest; ``exits`` counts each
    reason the run loop returned (names from pebslab.hw.core.EXIT_NAMES:
    on bare metal these are returns of the loop, not VM exits).
    """

    instructions: int
    cycles: int
    pmis: int
    exits: dict = field(default_factory=dict)

    @property
    def guest_cycles(self) -> int:
        """Alias of ``cycles`` (the name the KVM VM's RunResult uses)."""
        return self.cycles

    @property
    def pmis_injected(self) -> int:
        """Alias of ``pmis`` (the name the KVM VM's RunResult uses)."""
        return self.pmis

    @property
    def crashed(self) -> bool:
        """Always False: nothing here crashes a run without raising."""
        return False

    def __str__(self) -> str:
        ex = ", ".join(f"{k} {v}" for k, v in sorted(self.exits.items()))
        return (f"{self.instructions} instructions, {self.cycles} cycles, "
                f"{self.pmis} PMIs (loop returns: {ex})")


class BarePhys:
    """The machine's physical memory as guest software sees it (GPA == HPA).

    pebslab only: ``read(gpa, n)``, ``write(gpa, data)``, ``pages``,
    ``flush_tlb()``, the interface GuestMM needs (docs/ARCHITECTURE.md).
    """

    def __init__(self, machine: "BareMetal"):
        self._m = machine

    @property
    def pages(self) -> int:
        """Number of physical pages."""
        return self._m.frames

    def _range(self, gpa, n) -> tuple[int, int]:
        size = self._m.frames * PAGE_SIZE
        gpa = _check_int("gpa", gpa, 0, size)
        n = _check_int("n", n, 0, size)
        if gpa + n > size:
            raise ValueError(f"gpa + n must stay within the {size:#x} bytes of physical "
                             f"memory; got gpa={gpa:#x}, n={n}")
        return gpa, n

    def read(self, gpa: int, n: int) -> bytes:
        """Read ``n`` bytes of physical memory at ``gpa``."""
        gpa, n = self._range(gpa, n)
        return self._m.mem[gpa:gpa + n].tobytes()

    def write(self, gpa: int, data) -> None:
        """Write ``data`` (bytes-like) to physical memory at ``gpa``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview; "
                            f"got {type(data).__name__}")
        data = bytes(data)
        gpa, n = self._range(gpa, len(data))
        self._m.mem[gpa:gpa + n] = np.frombuffer(data, dtype=np.uint8)

    def flush_tlb(self) -> None:
        """Invalidate the core's TLB (invlpg / CR3 reload)."""
        self._m.core.flush_tlb()


class BareVCPU:
    """The CPU as the guest kernel's code sees it, with no hypervisor in between.

    pebslab only: implements the vCPU protocol of docs/ARCHITECTURE.md
    (rdmsr, wrmsr, cpuid, set_pmi_handler, guest_time, load_cr3). Each
    access is the instruction itself on the core: no exit, hardware
    semantics, ``GuestFault('#GP')`` where the hardware raises #GP.
    """

    def __init__(self, machine: "BareMetal", index: int = 0):
        self.machine = machine
        self.index = index
        self.core = machine.core
        self.pmi_handler = None

    def _trace(self, kind: str, **kw) -> None:
        self.machine.trace.add(kind, self.core.tsc, vcpu=self.index, **kw)

    def rdmsr(self, index: int) -> int:
        """RDMSR: read an MSR from the core; #GP raises GuestFault."""
        try:
            value = self.core.rdmsr(index)
        except GuestFault as f:
            self._trace("GP", msr=index, info=f"RDMSR: {f.reason}")
            raise
        self._trace("MSR_READ", msr=index, value=value, cost=RDMSR_CYCLES, info=msr_name(index))
        return value

    def wrmsr(self, index: int, value: int) -> None:
        """WRMSR: write an MSR of the core; #GP raises GuestFault."""
        try:
            self.core.wrmsr(index, value)
        except GuestFault as f:
            self._trace("GP", msr=index, value=value, info=f"WRMSR: {f.reason}")
            raise
        self._trace("MSR_WRITE", msr=index, value=value, cost=WRMSR_CYCLES, info=msr_name(index))

    def rdpmc(self, ecx: int) -> int:
        """RDPMC: counter ECX (bit 30: fixed counter, bit 31: low 32 bits); #GP if absent.

        SDM Vol. 2B RDPMC: an ECX naming no counter of this CPU is a #GP.
        """
        ecx = _check_int("ecx", ecx, 0, (1 << 32) - 1)
        fixed = bool(ecx >> 30 & 1)
        idx = ecx & ~(3 << 30)
        m = self.machine.cpu
        if idx >= (m.n_fixed if fixed else m.n_gp):
            f = GuestFault("#GP", value=ecx, reason=f"RDPMC of {'fixed ' if fixed else ''}"
                                                    f"counter {idx}, which {m.name} does not have")
            self._trace("GP", value=ecx, info=f.reason)
            raise f
        value = self.core.counter(idx + (32 if fixed else 0))
        return value & 0xFFFFFFFF if ecx >> 31 & 1 else value

    def cpuid(self, function: int) -> tuple[int, int, int, int]:
        """CPUID: return (eax, ebx, ecx, edx) of a leaf as the CPU reports it."""
        regs = self.machine.cpuid.leaf(function)
        self._trace("CPUID", value=function, cost=CPUID_CYCLES)
        return regs

    def set_pmi_handler(self, fn) -> None:
        """Install ``fn(vcpu, ip, cpl)`` as the PMI handler (LVTPC + IDT entry)."""
        if fn is not None and not callable(fn):
            raise TypeError(f"fn must be callable fn(vcpu, ip, cpl) or None; "
                            f"got {type(fn).__name__}")
        self.pmi_handler = fn

    def guest_time(self) -> int:
        """RDTSC: the core's time stamp counter."""
        return self.core.tsc

    def load_cr3(self, gpa: int) -> None:
        """MOV to CR3: point the core at a PML4 (its GPA) and flush the TLB."""
        gpa = _check_int("gpa", gpa, 0, self.machine.frames * PAGE_SIZE - 1)
        self.core.regs[C.R_CR3] = np.uint64(gpa)
        self.core.flush_tlb()


class BareMetal:
    """One simulated Intel core and its physical memory, with no hypervisor.

    pebslab only. ``cpu`` names a model of pebslab.hw.models ("silvermont",
    "haswell", "skylake", "icelake"), ``frames`` the pages of physical
    memory, ``seed`` the core's PRNG (PMI skid). Attributes: ``core``,
    ``cpu`` (the CpuModel), ``cpuid`` (what CPUID reports:
    pebslab.hw.cpuid.default), ``mem``, ``ept`` (identity; see the module
    docstring), ``phys``, ``trace``, ``vcpus`` (one :class:`BareVCPU`) and
    ``workload`` (the one run last, for symbolization).
    """

    def __init__(self, cpu="silvermont", frames: int = 1024, seed: int = 0):
        frames = _check_int("frames", frames, 16, 1 << 20)
        self.core = C.Core(cpu, seed=seed)
        self.cpu: CpuModel = get_model(cpu)
        self.cpuid = cpuid_mod.default(self.cpu)
        self.frames = frames
        self.mem = np.zeros(frames * PAGE_SIZE, np.uint8)
        self.ept = identity_ept(frames)
        self.trace = Trace()
        self.phys = BarePhys(self)
        self.vcpus = [BareVCPU(self, 0)]
        self.workload = None
        self.unhandled_pmis = 0

    @property
    def vcpu(self) -> BareVCPU:
        """The only vCPU."""
        return self.vcpus[0]

    def _drain_log(self) -> None:
        """Turn the core's event log (:mod:`pebslab.hw.eventlog`) into trace rows."""
        events = eventlog.decode(self.core.take_log())
        if not self.trace.enabled:
            return
        add = self.trace.add
        for ev in events:
            k, tsc, a, b, c, d = ev
            if k == "OVERFLOW":
                add(k, tsc, vcpu=0, value=a, gva=c, info=f"counter {a} overflowed at instruction {b}")
            elif k == "PEBS_WRITE":
                add(k, tsc, vcpu=0, gva=a, gpa=b, hpa=b, value=d,
                    info=f"{c}-byte record, counters {d:#x}")
            elif k == "PEBS_FAULT":
                add(k, tsc, vcpu=0, gva=a, gpa=b, value=c,
                    info=f"translation code {c} info {d}: the record is lost")
            elif k == "PMI":
                add(k, tsc, vcpu=0, value=a, gva=c,
                    info=f"status {a:#x}, cause {d:#x}, interrupted instruction {b}")
            elif k == "PEBS_DROP":
                add(k, tsc, vcpu=0, gva=a, value=d,
                    info=f"buffer full: index {a:#x} + {c} > absolute maximum {b:#x}")

    def run(self, workload, instructions: int) -> RunResult:
        """Run ``instructions`` instructions of ``workload``, delivering PMIs to the guest.

        pebslab only: the bare-metal counterpart of the VM's run loop. The
        core runs until it returns; its event log becomes trace rows; a PMI
        calls the handler registered with ``set_pmi_handler`` as
        ``fn(vcpu, ip, cpl)`` where ``ip``/``cpl`` belong to the next
        instruction to execute (the interrupted IP: this is where skid
        shows); a PEBS fault (a page fault during the assist: the guest's
        own bug) loses the record and the run goes on. The budget is exact:
        retired instructions are counted from the core's R_RETIRED register.
        A different workload starts at its first instruction; running the
        same one again continues where it stopped.
        """
        from .workloads import Workload
        if not isinstance(workload, Workload):
            raise TypeError(f"workload must be a pebslab.workloads.Workload; got "
                            f"{type(workload).__name__} {workload!r}")
        instructions = _check_int("instructions", instructions, 0, 1 << 62)
        if len(workload) == 0:
            raise ValueError("workload must have at least one instruction")
        core = self.core
        if workload is not self.workload:
            if self.workload is None or self.workload != workload:
                core.regs[C.R_RIP] = np.uint64(0)
            self.workload = workload
        vcpu = self.vcpus[0]
        regs = core.regs
        start_retired = int(regs[C.R_RETIRED])
        start_tsc = int(regs[C.R_TSC])
        exits: dict[str, int] = {}
        pmis = 0
        done = 0
        while done < instructions:
            before = int(regs[C.R_RETIRED])
            reason = core.run(workload, instructions - done, self.mem, self.ept)
            done += int(regs[C.R_RETIRED]) - before
            self._drain_log()
            name = C.EXIT_NAMES[reason]
            exits[name] = exits.get(name, 0) + 1
            if reason == C.EXIT_PMI:
                pmis += 1
                rip = core.rip
                ip, cpl = int(workload.ip[rip]), int(workload.cpl[rip])
                if vcpu.pmi_handler is None:
                    self.unhandled_pmis += 1
                else:
                    vcpu.pmi_handler(vcpu, ip, cpl)
            elif reason == C.EXIT_EPT_VIOLATION:
                gpa = int(regs[C.R_EXIT_GPA])
                raise GuestCrash(f"access to physical address {gpa:#x}, beyond the "
                                 f"{self.frames * PAGE_SIZE:#x} bytes of memory "
                                 f"(PEBS assist at GVA {int(regs[C.R_EXIT_GVA]):#x})")
            # EXIT_LOG_FULL, EXIT_PEBS_FAULT, EXIT_TIMER: the log is drained; go on
            if reason == C.EXIT_BUDGET and done < instructions:  # pragma: no cover
                raise AssertionError("core returned BUDGET before the budget was used")
        return RunResult(instructions=int(regs[C.R_RETIRED]) - start_retired,
                         cycles=int(regs[C.R_TSC]) - start_tsc, pmis=pmis, exits=exits)

    def __repr__(self) -> str:
        return f"BareMetal(cpu={self.cpu.name!r}, frames={self.frames})"
