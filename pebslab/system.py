"""The physical machine with KVM loaded: host memory, CPUs, VMs.

pebslab only. Assembled above every layer (DESIGN section 1): host/ never
imports kvm/, kvm/ never imports guest/; this module wires them together.
"""

from __future__ import annotations

from .designs import get_design
from .host.mm import HostMM
from .hw import cpuid as CPUID
from .hw.models import get_model
from .kvm.vm import VM, Costs
from .trace import Trace


class Host:
    """A host: one CPU model, ``frames`` pages of RAM, a seed; creates VMs.

    pebslab only. Every vCPU gets a physical CPU of its own (no overcommit).
    """

    def __init__(self, cpu="silvermont", frames: int = 4096, seed: int = 0):
        self.cpu = get_model(cpu)
        if isinstance(frames, bool) or not isinstance(frames, int) or not 64 <= frames <= 1 << 22:
            raise ValueError(f"frames must be an int in 64..{1 << 22}; got {frames!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int; got {seed!r}")
        self.seed = seed
        self.mm = HostMM(frames, seed=seed)
        self.vms: list[VM] = []
        self.trace = Trace()
        self._next_id = 1
        self._next_pcpu = 0
        #: pages reclaimed on every host timer tick while a guest runs
        self.pressure = 0

    def create_vm(self, design="patch", memory_pages: int = 1024, cpuid=None, *,
                  vcpus: int = 1, costs: Costs | None = None, extra_autoload: int = 0,
                  **knobs) -> VM:
        """Create a VM (KVM_CREATE_VM + KVM_SET_CPUID2 + vCPUs) under a design.

        ``cpuid`` defaults to the host CPU's (pl.cpuid.default(host.cpu));
        KVM filters it (the patch exposes DS/DTES64/PDCM only when it
        supports PEBS virtualization). Extra keyword arguments override
        design knobs, e.g. ``switch_ds_area=False``.
        """
        d = get_design(design, **knobs)
        if isinstance(memory_pages, bool) or not isinstance(memory_pages, int) or \
                not 16 <= memory_pages <= 1 << 20:
            raise ValueError(f"memory_pages must be an int in 16..{1 << 20}; got {memory_pages!r}")
        free = self.mm.free_count()
        if memory_pages > free:
            raise ValueError(f"memory_pages must be at most the host's free frames ({free}); "
                             f"got {memory_pages}")
        if cpuid is None:
            cpuid = CPUID.default(self.cpu)
        elif not isinstance(cpuid, CPUID.Cpuid):
            raise TypeError(f"cpuid must be a pebslab.hw.cpuid.Cpuid; got {type(cpuid).__name__}")
        if isinstance(vcpus, bool) or not isinstance(vcpus, int) or not 1 <= vcpus <= 8:
            raise ValueError(f"vcpus must be an int in 1..8; got {vcpus!r}")
        if isinstance(extra_autoload, bool) or not isinstance(extra_autoload, int) or \
                not 0 <= extra_autoload <= 8:
            raise ValueError(f"extra_autoload must be an int in 0..8; got {extra_autoload!r}")
        vm = VM(host_mm=self.mm, cpu=self.cpu, design=d, vm_id=self._next_id,
                memory_pages=memory_pages, cpuid=cpuid, seed=self.seed,
                pcpu_base=self._next_pcpu, costs=costs, extra_autoload=extra_autoload,
                vcpus=vcpus)
        vm.host = self
        vm.tick_hooks.append(self._tick)
        self._next_id += 1
        self._next_pcpu += vcpus
        self.vms.append(vm)
        return vm

    def _tick(self, vm: VM, vcpu) -> None:
        if self.pressure:
            self.reclaim(self.pressure)

    def reclaim(self, n: int) -> list[tuple[int, int, int]]:
        """Memory pressure: swap out up to ``n`` unpinned guest pages (seeded order)."""
        out = self.mm.reclaim(n)
        by_vm = {vm.id: vm for vm in self.vms}
        for vm_id, gfn, hfn in out:
            vm = by_vm.get(vm_id)
            if vm is not None and vm.vcpus:
                v = vm.vcpus[0]
                v.trace("RECLAIM", gpa=gfn << 12, hpa=hfn << 12, frame=hfn,
                        info=f"swapped out gfn {gfn:#x} (frame {hfn})")
        return out
