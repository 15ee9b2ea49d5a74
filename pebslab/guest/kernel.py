"""The guest kernel: its memory manager and its perf driver, over one machine.

pebslab only as a whole. A ``GuestKernel`` runs unchanged on
:class:`pebslab.baremetal.BareMetal` and on the KVM VM, because it only
touches the machine through the vCPU protocol of docs/ARCHITECTURE.md:
``machine.vcpus`` (rdmsr, wrmsr, cpuid, set_pmi_handler, guest_time,
load_cr3), ``machine.phys`` (its physical memory), ``machine.trace`` and
``machine.run``.
"""

from __future__ import annotations

from .mm import GuestMM
from .perf import GuestPerf, check_linux

__all__ = ["GuestKernel"]


class GuestKernel:
    """A guest kernel booted on ``machine``: ``mm`` (page tables) and ``perf``.

    Boot, in the order a kernel does it: build the kernel page tables in the
    machine's memory (GuestMM: paging_init() in arch/x86/mm/init_64.c), load
    CR3 on every vCPU, then create the perf driver, which probes the PMU
    lazily on first use (init_hw_perf_events() runs at early_initcall time
    in Linux; here ``perf.probe()`` runs on the first ``record``/``stat``).

    ``linux`` picks the perf driver's era: "current" (the default: today's
    driver) or "3.15" (the patch's era: a PMI handler that writes
    PEBS_ENABLE twice per PMI, a one-page PEBS buffer with a one-record
    threshold; FACTS g.2).
    """

    def __init__(self, machine, linux: str = "current"):
        linux = check_linux(linux)
        for attr in ("vcpus", "phys", "trace", "run"):
            if not hasattr(machine, attr):
                raise TypeError(f"machine must provide vcpus, phys, trace and run "
                                f"(docs/ARCHITECTURE.md); {type(machine).__name__} "
                                f"has no {attr!r}")
        self.machine = machine
        #: the kernel's era: "current" or "3.15" (guest/perf.py LINUX_ERAS)
        self.linux = linux
        self.mm = GuestMM(machine.phys)
        for vcpu in machine.vcpus:
            vcpu.load_cr3(self.mm.cr3)
        self.perf = GuestPerf(self)

    @property
    def vcpus(self):
        """The machine's vCPUs."""
        return self.machine.vcpus

    def read(self, gva: int, n: int) -> bytes:
        """Read ``n`` bytes at a kernel virtual address (a plain load in C)."""
        return self.mm.read(gva, n)

    def write(self, gva: int, data) -> None:
        """Write ``data`` at a kernel virtual address (a plain store in C)."""
        self.mm.write(gva, data)

    def __repr__(self) -> str:
        return f"GuestKernel(machine={self.machine!r}, linux={self.linux!r})"
