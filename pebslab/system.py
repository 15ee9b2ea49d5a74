"""The physical machine with KVM loaded: host memory, CPUs, VMs.

pebslab only. Assembled above every layer (DESIGN section 1): host/ never
imports kvm/, kvm/ never imports guest/; this module wires them together.
"""

from __future__ import annotations

from ._check import check_int
from .kvm.designs import get_design
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
        frames = check_int("frames", frames, 64, 1 << 22)
        seed = check_int("seed", seed, 0)
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
        memory_pages = check_int("memory_pages", memory_pages, 16, 1 << 20)
        free = self.mm.free_count()
        if memory_pages > free:
            raise ValueError(f"memory_pages must be at most the host's free frames ({free}); "
                             f"got {memory_pages}")
        if cpuid is None:
            cpuid = CPUID.default(self.cpu)
        elif not isinstance(cpuid, CPUID.Cpuid):
            raise TypeError(f"cpuid must be a pebslab.hw.cpuid.Cpuid; got {type(cpuid).__name__}")
        vcpus = check_int("vcpus", vcpus, 1, 8)
        extra_autoload = check_int("extra_autoload", extra_autoload, 0, 8)
        if costs is not None and not isinstance(costs, Costs):
            raise TypeError(f"costs must be a pebslab.kvm.vm.Costs or None; got "
                            f"{type(costs).__name__} {costs!r}")
        vm = VM(host_mm=self.mm, cpu=self.cpu, design=d, vm_id=self._next_id,
                memory_pages=memory_pages, cpuid=cpuid, seed=self.seed,
                pcpu_base=self._next_pcpu, costs=costs, extra_autoload=extra_autoload,
                vcpus=vcpus)
        vm.host = self
        vm.tick_hooks.append(self._tick)
        vm.destroy_hooks.append(self._forget)
        self._next_id += 1
        self._next_pcpu += vcpus
        self.vms.append(vm)
        return vm

    def _forget(self, vm: VM) -> None:
        """A destroyed VM leaves ``vms`` (KVM drops its last reference)."""
        if vm in self.vms:
            self.vms.remove(vm)

    def _tick(self, vm: VM, vcpu) -> None:
        if self.pressure:
            self.reclaim(self.pressure)

    def reclaim(self, n: int) -> list[tuple[int, int, int]]:
        """Memory pressure: reclaim up to ``n`` guest pages (seeded order); return those swapped out.

        Every victim loses its EPT entry (the MMU notifier); an unpinned
        one is swapped out, a pinned one keeps its frame in the swap cache
        (HostMM.reclaim, FACTS g.1). Both are traced (RECLAIM).
        """
        kept: list[tuple[int, int, int]] = []
        out = self.mm.reclaim(n, kept=kept)
        by_vm = {vm.id: vm for vm in self.vms}
        for vm_id, gfn, hfn in out:
            vm = by_vm.get(vm_id)
            if vm is not None and vm.vcpus:
                v = vm.vcpus[0]
                v.trace("RECLAIM", gpa=gfn << 12, hpa=hfn << 12, frame=hfn,
                        info=f"swapped out gfn {gfn:#x} (frame {hfn})")
        for vm_id, gfn, hfn in kept:                    # issue 9 item 8
            vm = by_vm.get(vm_id)
            if vm is not None and vm.vcpus:
                vm.vcpus[0].trace(
                    "RECLAIM", gpa=gfn << 12, hpa=hfn << 12, frame=hfn,
                    info=f"gfn {gfn:#x} unmapped, frame {hfn} kept in the swap cache (refcount "
                         f"{self.mm.ref(hfn)}: pinned); its EPT entry is gone")
        return out
