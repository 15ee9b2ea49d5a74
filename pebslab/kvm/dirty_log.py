"""Dirty logging: write-protect the guest's memory in EPT and record the pages written.

Models KVM_MEM_LOG_DIRTY_PAGES (kvm_mmu_slot_remove_write_access and the
write-protection faults it causes, fast_page_fault + mark_page_dirty) and
KVM_GET_DIRTY_LOG (kvm_vm_ioctl_get_dirty_log) over the VM's one memslot.
The VM owns one :class:`DirtyLog` (``vm.dirty_log``); the three places that
must know about it ask it: the EPT-violation handler
(:meth:`DirtyLog.ept_violation`), guest-physical writes
(:meth:`DirtyLog.before_write`) and gfn_to_pfn (:meth:`DirtyLog.pinned`).

A PEBS assist that writes into a write-protected page is an EPT violation
inside the assist, which a pre-Ice-Lake CPU cannot deliver: the patch's
"pinning" keeps pages resident but does not keep them writable. Under
``design.dirty_log_skips_pinned`` (`fixed`) pinned pages stay writable and
are reported dirty in every log.
"""

from __future__ import annotations

import numpy as np

from ..hw.mmu import EPT_ADDR_MASK, EPT_R, EPT_W

_NOT_W = np.uint64(~EPT_W & 0xFFFFFFFFFFFFFFFF)

#: Cycles charged for KVM's handling of a write-protection fault during dirty
#: logging (fast_page_fault: set W in the EPT entry, mark the gfn dirty).
#: ASSUMPTION: priced like a page-track exit (Costs.page_track_exit); no source in FACTS.md.
DIRTY_FAULT_CYCLES = 1500


class DirtyLog:
    """One VM's dirty-logging state.

    ``active``: logging is on; ``dirty``: gfns written since the last
    KVM_GET_DIRTY_LOG; ``protected``: gfns write-protected by logging;
    ``always_dirty``: pinned gfns left writable (reported in every log until
    logging stops; sticky: over-reporting is safe, a missed page is not);
    ``faults``: write-protection faults taken.
    """

    def __init__(self, vm):
        self.vm = vm
        self.active = False
        self.dirty: set[int] = set()
        self.protected: set[int] = set()
        self.always_dirty: set[int] = set()
        self.faults = 0
        self.started = False

    # ---- the three hooks the VM calls ---------------------------------------------------
    def _write_protected(self, gfn: int) -> bool:
        e = int(self.vm.ept[gfn])
        return bool(e & EPT_R) and not e & EPT_W

    def ept_violation(self, gfn: int, source: str) -> bool:
        """Handle an EPT violation while logging; True if it was a write-protection fault.

        Called by VM.handle_ept_violation. A not-present page is left to the
        caller to fault in (and :meth:`faulted_in` marks it dirty).
        """
        if not self.active or not 0 <= gfn < self.vm.memory_pages:
            return False
        if self._write_protected(gfn):
            self.write_fault(gfn, source, count_exit=False)
            return True
        return False

    def faulted_in(self, gfn: int) -> None:
        """A page faulted in while logging is reported dirty (the access may have been a write)."""
        if self.active and int(self.vm.ept[gfn]) & EPT_R:
            self.dirty.add(gfn)

    def before_write(self, gfn: int) -> None:
        """A guest-software write is about to hit ``gfn``: take the fault if it is protected."""
        if self.active and self._write_protected(gfn):
            self.write_fault(gfn, "guest software", count_exit=True)

    def pinned(self, gfn: int) -> None:
        """gfn_to_pfn took a reference on ``gfn`` (a pin): under
        ``dirty_log_skips_pinned`` it stays writable and always dirty."""
        vm = self.vm
        if not self.active or not vm.design.dirty_log_skips_pinned or gfn in self.always_dirty:
            return
        self.always_dirty.add(gfn)
        self.protected.discard(gfn)
        if self._write_protected(gfn):
            vm.ept[gfn] = np.uint64(int(vm.ept[gfn]) | EPT_W)
            vm._invept()
        vm.vcpus[0].trace("DIRTY_LOG", info=f"pinned gfns {[hex(gfn)]} left writable and "
                                            f"always reported dirty")

    # ---- the fault ------------------------------------------------------------------------
    def write_fault(self, gfn: int, source: str, count_exit: bool = True) -> None:
        """A write hit a write-protected page while logging: mark dirty, make writable.

        Models KVM's handling of that EPT violation (fast_page_fault ->
        mark_page_dirty + restoring the W bit) followed by INVEPT. With
        ``count_exit`` the VM exit itself is modeled here (a guest-software
        write); the run loop has already counted the exits it takes.
        """
        vm = self.vm
        v = vm.vcpus[0]
        cost = DIRTY_FAULT_CYCLES
        if count_exit:
            v._exit("EPT_VIOLATION", vm.costs.vmexit, gpa=gfn << 12)
        v.charge(cost)
        e = int(vm.ept[gfn])
        vm.ept[gfn] = np.uint64(e | EPT_W)
        self.dirty.add(gfn)
        self.faults += 1
        self.protected.discard(gfn)
        v.trace("DIRTY_LOG", gpa=gfn << 12, hpa=e & EPT_ADDR_MASK,
                frame=(e & EPT_ADDR_MASK) >> 12, cost=cost,
                info=f"write-protection fault ({source}): gfn {gfn:#x} dirty, W restored")
        vm._invept()

    # ---- the ioctls ---------------------------------------------------------------------------
    def _pinned_gfns(self) -> set[int]:
        vm = self.vm
        mm = vm.host_mm
        out = set()
        for v in vm.vcpus:
            for hfn in v.pmu.pinned_pages:
                if int(mm.owner[hfn]) == vm.id and int(mm.gfn[hfn]) >= 0:
                    out.add(int(mm.gfn[hfn]))
        return out

    def _protect(self) -> int:
        vm = self.vm
        mask = ((vm.ept & np.uint64(EPT_R)) != 0) & ((vm.ept & np.uint64(EPT_W)) != 0)
        if self.always_dirty:
            mask[list(self.always_dirty)] = False
        gfns = np.flatnonzero(mask)
        vm.ept[gfns] &= _NOT_W
        self.protected.update(int(g) for g in gfns)
        vm._invept()
        return len(gfns)

    def start(self) -> "DirtyLog":
        """Turn logging on: write-protect every present EPT entry (not pinned ones under
        ``dirty_log_skips_pinned``). Idempotent."""
        vm = self.vm
        if self.active:
            return self
        self.active = self.started = True
        self.protected = set()
        self.always_dirty = self._pinned_gfns() if vm.design.dirty_log_skips_pinned else set()
        self.faults = 0
        self.dirty.clear()
        n = self._protect()
        vm.vcpus[0].trace("DIRTY_LOG", value=n, info=(
            f"dirty logging on: {n} pages write-protected"
            + (f", pinned gfns {sorted(hex(g) for g in self.always_dirty)} left writable "
               f"(always dirty)" if self.always_dirty else "")))
        return self

    def get(self, clear: bool = True) -> list[int]:
        """The gfns written since the last call, sorted, plus every always-dirty gfn.

        With ``clear`` the bitmap is reset and the reported pages write-protected
        again (kvm_arch_mmu_enable_log_dirty_pt_masked).
        """
        if not self.active:
            raise ValueError("dirty logging is not enabled on this VM (start_dirty_logging)")
        out = sorted(self.dirty | self.always_dirty)
        if clear:
            self.dirty.clear()
            self._protect()
        self.vm.vcpus[0].trace("DIRTY_LOG", value=len(out),
                               info=f"KVM_GET_DIRTY_LOG: {len(out)} dirty pages"
                                    + (" (cleared, re-protected)" if clear else ""))
        return out

    def stop(self) -> None:
        """Turn logging off: make the protected pages writable again."""
        vm = self.vm
        if not self.active:
            return
        for gfn in self.protected:
            e = int(vm.ept[gfn])
            if e & EPT_R:
                vm.ept[gfn] = np.uint64(e | EPT_W)
        self.protected = set()
        self.active = False
        vm._invept()
        vm.vcpus[0].trace("DIRTY_LOG", info="dirty logging off")


def _check_vm(vm) -> None:
    if not isinstance(getattr(vm, "dirty_log", None), DirtyLog):
        raise TypeError(f"vm must be a pebslab VM; got {type(vm).__name__}")
    if vm.destroyed:
        raise ValueError("the VM has been destroyed")


def start_dirty_logging(vm) -> DirtyLog:
    """KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES: see :meth:`DirtyLog.start`.

    Under the `patch` a pinned PEBS buffer is write-protected like any page:
    the next PEBS record into it is an EPT violation inside the assist,
    which Silvermont cannot deliver (the guest crashes).
    """
    _check_vm(vm)
    return vm.dirty_log.start()


def get_dirty_log(vm, clear: bool = True) -> list[int]:
    """KVM_GET_DIRTY_LOG: see :meth:`DirtyLog.get`."""
    _check_vm(vm)
    return vm.dirty_log.get(clear)


def stop_dirty_logging(vm) -> None:
    """KVM_SET_USER_MEMORY_REGION without KVM_MEM_LOG_DIRTY_PAGES: see :meth:`DirtyLog.stop`."""
    if getattr(vm, "destroyed", False):
        return
    _check_vm(vm)
    vm.dirty_log.stop()


def dirty_log_state(vm) -> DirtyLog | None:
    """The VM's dirty-logging state, or None if logging never started."""
    dl = getattr(vm, "dirty_log", None)
    return dl if dl is not None and dl.started else None
