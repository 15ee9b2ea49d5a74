"""Host physical memory: frames, references, EPT mappings, swap.

The host owns one ``numpy.uint8`` array ``mem`` of ``frames * PAGE_SIZE``
bytes; a host physical address (HPA) is an index into it. Beside it lives
the frame table as plain arrays indexed by host frame number (HFN):
``owner``, ``refcount``, ``state`` and ``gfn`` (see docs/ARCHITECTURE.md,
section "Memory").

References follow Linux: a VM's memory holds one reference on each of its
frames (the host mapping, or the swap cache once reclaim has unmapped it),
and every pin (``get_page``) one more. The frame and its EPT entry are
tracked separately (issue 9 item 8, FACTS g.1): a pin keeps the *frame*,
never the EPT entry. Every host path that unmaps or write-protects a page
(reclaim, aging, migration, KSM, THP split/collapse, NUMA balancing) first
fires the MMU notifier, which makes KVM zap the EPT entry; only afterwards
does the extra reference make it keep the frame. A frame that is resident
but not in EPT is in ``unmapped``; the next access (``populate``) maps the
same frame again. Swapping out (an unpinned page) copies the bytes into a
swap store, zeroes and frees the frame; faulting that page back in
allocates a *fresh* frame, which may well have a different HFN.

All arrays are mutated in place, never rebound, so callers (the numba core,
the KVM layer) may keep references to ``mem``, the frame table and every
VM's ``ept``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from .._check import check_int as _check_int

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

#: ``owner`` values. VM ids are 1, 2, ...
FRAME_FREE = -1
FRAME_HOST = 0

#: ``state`` values.
STATE_FREE = 0
STATE_RESIDENT = 1

#: Frames 0 .. DEFAULT_RESERVED_HOST_FRAMES-1 belong to the host kernel.
DEFAULT_RESERVED_HOST_FRAMES = 16

# EPT leaf-entry bits are defined once, in hw/mmu.py (the hardware format).
from ..hw.mmu import EPT_ADDR_MASK, EPT_R, EPT_RWX, EPT_W, EPT_X  # noqa: E402,F401


class HostOutOfMemory(MemoryError):
    """No free host frame is left.

    pebslab only (Linux would try reclaim, then invoke the OOM killer).
    """


class HostMM:
    """The host's physical memory and frame table.

    Models the parts of Linux mm that the 2014 patch leans on: struct page
    reference counts (``get_page``/``put_page`` in include/linux/mm.h),
    page reclaim under memory pressure (mm/vmscan.c) and the other paths
    that unmap guest pages (aging, migration, compaction, KSM, THP,
    NUMA balancing), each firing the MMU notifier that makes KVM zap EPT
    entries before any reference count is checked (FACTS g.1).

    Randomness: the zappers draw their victim order from ``self.rng``, a
    ``numpy.random.Generator(PCG64(seed))`` owned by this object; every
    call advances it, so a sequence of calls is reproducible for a given
    seed.
    """

    def __init__(self, frames: int, seed: int = 0,
                 reserved_host_frames: int = DEFAULT_RESERVED_HOST_FRAMES):
        frames = _check_int("frames", frames, 1)
        reserved_host_frames = _check_int(
            "reserved_host_frames", reserved_host_frames, 0, frames)
        seed = _check_int("seed", seed, 0)
        self.frames = frames
        self.reserved_host_frames = reserved_host_frames
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))

        self.mem = np.zeros(frames * PAGE_SIZE, dtype=np.uint8)
        self.owner = np.full(frames, FRAME_FREE, dtype=np.int32)
        self.refcount = np.zeros(frames, dtype=np.int32)
        self.state = np.full(frames, STATE_FREE, dtype=np.uint8)
        self.gfn = np.full(frames, -1, dtype=np.int64)
        #: Swapped-out guest pages: (vm_id, gfn) -> 4096 bytes.
        self.swap: dict[tuple[int, int], bytes] = {}

        self._vms: dict[int, tuple[np.ndarray, Callable[[], None] | None]] = {}
        #: KVM's MMU notifier per VM (register_vm(notifier=...)); None: the host zaps itself
        self._notifiers: dict[int, object] = {}
        #: Resident guest pages whose EPT entry is gone: (vm_id, gfn) -> hfn. The
        #: frame still holds the page (host-mapped, or in the swap cache).
        self.unmapped: dict[tuple[int, int], int] = {}
        #: The frames of ``unmapped`` that reclaim left in the swap cache.
        self.swap_cache: set[int] = set()
        # Frames whose VM reference release_vm() already dropped but that a
        # leaked pin still holds.
        self._leaked: set[int] = set()

        hosts = slice(0, reserved_host_frames)
        self.owner[hosts] = FRAME_HOST
        self.refcount[hosts] = 1
        self.state[hosts] = STATE_RESIDENT

    # ------------------------------------------------------------------
    # argument helpers
    # ------------------------------------------------------------------
    def _hfn(self, hfn, name: str = "hfn") -> int:
        return _check_int(name, hfn, 0, self.frames - 1)

    def _allocated(self, hfn, name: str = "hfn") -> int:
        hfn = self._hfn(hfn, name)
        if self.owner[hfn] == FRAME_FREE:
            raise ValueError(f"{name} {hfn} is a free frame; it must be allocated")
        return hfn

    def _vm(self, vm_id) -> tuple[int, np.ndarray, Callable[[], None] | None]:
        vm_id = _check_int("vm_id", vm_id, 1)
        if vm_id not in self._vms:
            known = sorted(self._vms) or "none"
            raise ValueError(f"vm_id {vm_id} is not registered; registered VMs: {known}")
        ept, cb = self._vms[vm_id]
        return vm_id, ept, cb

    def _gfn(self, ept: np.ndarray, gfn) -> int:
        return _check_int("gfn", gfn, 0, len(ept) - 1)

    # ------------------------------------------------------------------
    # frames and references
    # ------------------------------------------------------------------
    def alloc_frame(self, owner: int, gfn: int = -1) -> int:
        """Allocate the lowest free frame, zeroed, with one reference.

        Models alloc_page() in mm/page_alloc.c (with __GFP_ZERO); the
        lowest-free-first choice is pebslab's, for reproducibility.
        Raises HostOutOfMemory when no frame is free.
        """
        owner = _check_int("owner", owner, FRAME_HOST)
        gfn = _check_int("gfn", gfn, -1)
        if owner == FRAME_HOST and gfn != -1:
            raise ValueError(f"gfn must be -1 for a host frame (owner 0); got {gfn}")
        free = np.flatnonzero(self.owner == FRAME_FREE)
        if free.size == 0:
            raise HostOutOfMemory(
                f"no free host frame: all {self.frames} frames are in use")
        hfn = int(free[0])
        base = hfn * PAGE_SIZE
        self.mem[base:base + PAGE_SIZE] = 0
        self.owner[hfn] = owner
        self.refcount[hfn] = 1
        self.state[hfn] = STATE_RESIDENT
        self.gfn[hfn] = gfn
        return hfn

    def _release_frame(self, hfn: int) -> None:
        """Return a frame to the free pool, zeroing its bytes so nothing leaks."""
        base = hfn * PAGE_SIZE
        self.mem[base:base + PAGE_SIZE] = 0
        self.owner[hfn] = FRAME_FREE
        self.refcount[hfn] = 0
        self.state[hfn] = STATE_FREE
        self.gfn[hfn] = -1
        self._leaked.discard(hfn)

    def free_frame(self, hfn: int) -> None:
        """Free an allocated frame that holds exactly one reference.

        Models __free_page() in mm/page_alloc.c. A frame with more
        references is still pinned by someone: ValueError. The host
        kernel's reserved frames cannot be freed. A guest frame should be
        given back with ``reclaim``/``release_vm`` so its EPT entry goes too.
        """
        hfn = self._allocated(hfn)
        if hfn < self.reserved_host_frames:
            raise ValueError(
                f"hfn {hfn} is reserved for the host kernel "
                f"(frames 0..{self.reserved_host_frames - 1}); it cannot be freed")
        rc = int(self.refcount[hfn])
        if rc != 1:
            raise ValueError(
                f"cannot free frame {hfn}: refcount is {rc}, must be 1 "
                f"(someone still holds a reference)")
        self._release_frame(hfn)

    def get_page(self, hfn: int) -> None:
        """Take one more reference on a frame (pin it).

        Models get_page() in include/linux/mm.h.
        """
        hfn = self._allocated(hfn)
        self.refcount[hfn] += 1

    def put_page(self, hfn: int) -> None:
        """Drop one reference; the last one frees the frame.

        Models put_page() in include/linux/mm.h. If the frame dies while a
        VM's EPT still maps it, the entry is cleared and the VM's TLBs are
        invalidated first (what KVM's mmu notifier does), so the guest can
        never reach a freed frame.
        """
        hfn = self._hfn(hfn)
        rc = int(self.refcount[hfn])
        if self.owner[hfn] == FRAME_FREE or rc <= 0:
            raise ValueError(
                f"put_page on frame {hfn} with refcount {rc}: "
                f"the reference count would go below 0 (unbalanced put_page)")
        if rc == 1 and hfn < self.reserved_host_frames:
            raise ValueError(
                f"put_page would free frame {hfn}, which is reserved for the host kernel")
        self.refcount[hfn] = rc - 1
        if rc - 1 == 0:
            vm_id, g = int(self.owner[hfn]), int(self.gfn[hfn])
            if self.unmapped.get((vm_id, g)) == hfn:
                del self.unmapped[(vm_id, g)]
            self.swap_cache.discard(hfn)
            if vm_id >= 1 and vm_id in self._vms and g >= 0:
                ept, cb = self._vms[vm_id]
                if g < len(ept) and self._maps(ept[g], hfn):
                    ept[g] = 0
                    if cb is not None:
                        cb()
            self._release_frame(hfn)

    def ref(self, hfn: int) -> int:
        """Return the reference count of a frame (0 for a free frame).

        Models page_count() in include/linux/mm.h.
        """
        return int(self.refcount[self._hfn(hfn)])

    # ------------------------------------------------------------------
    # VMs and their EPT
    # ------------------------------------------------------------------
    def register_vm(self, vm_id: int, ept: np.ndarray,
                    on_invalidate: Callable[[], None] | None, notifier=None) -> None:
        """Tell the host about a VM's EPT and how to flush its TLBs.

        pebslab only (in Linux, KVM registers an mmu notifier on the VM's
        mm: kvm_init_mmu_notifier() in virt/kvm/kvm_main.c). ``ept`` is a
        1-D ``numpy.uint64`` array indexed by GFN; ``on_invalidate()`` is
        called after every change that removes or weakens a mapping (the VM
        does INVEPT); ``None`` means the VM caches nothing. ``notifier``,
        if given, is KVM's side of the MMU notifier: an object whose
        ``invalidate_range(gfns, why)`` zaps those EPT entries and flushes
        (kvm/mmu_notifier.py); without one the host zaps the entries itself
        and calls ``on_invalidate``.
        """
        vm_id = _check_int("vm_id", vm_id, 1)
        if vm_id in self._vms:
            raise ValueError(f"vm_id {vm_id} is already registered")
        if not isinstance(ept, np.ndarray) or ept.dtype != np.uint64 or ept.ndim != 1:
            got = (f"ndarray of dtype {ept.dtype} and shape {ept.shape}"
                   if isinstance(ept, np.ndarray) else type(ept).__name__)
            raise TypeError(f"ept must be a 1-D numpy.uint64 array; got {got}")
        if on_invalidate is not None and not callable(on_invalidate):
            raise TypeError(
                f"on_invalidate must be callable or None; got {type(on_invalidate).__name__}")
        if notifier is not None and not callable(getattr(notifier, "invalidate_range", None)):
            raise TypeError(f"notifier must have an invalidate_range(gfns, why) method; got "
                            f"{type(notifier).__name__}")
        self._vms[vm_id] = (ept, on_invalidate)
        if notifier is not None:
            self._notifiers[vm_id] = notifier

    def unregister_vm(self, vm_id: int) -> None:
        """Forget a VM's EPT and callback (its frames are not touched).

        pebslab only. Call ``release_vm`` first to give the memory back.
        """
        vm_id, _, _ = self._vm(vm_id)
        del self._vms[vm_id]
        self._notifiers.pop(vm_id, None)

    def registered_vms(self) -> list[int]:
        """Return the ids of the registered VMs, ascending.

        pebslab only.
        """
        return sorted(self._vms)

    @staticmethod
    def _maps(entry, hfn: int) -> bool:
        entry = int(entry)
        return bool(entry & EPT_R) and (entry & EPT_ADDR_MASK) >> PAGE_SHIFT == hfn

    def hfn_of(self, vm_id: int, gfn: int) -> int:
        """Return the host frame the VM's EPT maps ``gfn`` to, or -1.

        Models gfn_to_pfn() without its fault-in (see ``populate``).
        """
        vm_id, ept, _ = self._vm(vm_id)
        gfn = self._gfn(ept, gfn)
        entry = int(ept[gfn])
        if not entry & EPT_R:
            return -1
        return (entry & EPT_ADDR_MASK) >> PAGE_SHIFT

    def hva_to_pfn(self, vm_id: int, gfn: int) -> int:
        """Make a guest page resident in host memory and return its frame; EPT untouched.

        Models hva_to_pfn() (get_user_pages on the VM's memory) as
        gfn_to_pfn() uses it: a page already in EPT or resident but
        unmapped (``unmapped``: host-mapped or in the swap cache) gives its
        frame; a swapped-out page is read back into a fresh frame (it stays
        out of EPT until the guest's next access, ``populate``); a page
        never touched gets a zeroed frame. No reference is taken here.
        """
        vm_id, ept, _ = self._vm(vm_id)
        gfn = self._gfn(ept, gfn)
        entry = int(ept[gfn])
        if entry & EPT_R:
            return (entry & EPT_ADDR_MASK) >> PAGE_SHIFT
        hfn = self.unmapped.get((vm_id, gfn))
        if hfn is not None:
            return hfn
        hfn = self.alloc_frame(vm_id, gfn)
        data = self.swap.pop((vm_id, gfn), None)
        if data is not None:
            base = hfn * PAGE_SIZE
            self.mem[base:base + PAGE_SIZE] = np.frombuffer(data, dtype=np.uint8)
        self.unmapped[(vm_id, gfn)] = hfn
        return hfn

    def populate(self, vm_id: int, gfn: int) -> int:
        """Back a guest frame with a host frame and map it R|W|X in EPT.

        Models KVM's EPT-violation path (tdp_page_fault -> gfn_to_pfn ->
        the host's page-fault / swap-in, then the EPT entry): a page whose
        frame is still resident (``unmapped``: a zapper took only its EPT
        entry) is mapped again *with the same frame* and leaves the swap
        cache; a swapped-out page comes back from the swap store into a
        fresh frame. Returns the HFN. A GFN that is already mapped is left
        alone and its HFN returned. Filling a hole needs no invalidation
        (TLBs never cache a missing translation).
        """
        vm_id, ept, _ = self._vm(vm_id)
        gfn = self._gfn(ept, gfn)
        entry = int(ept[gfn])
        if entry & EPT_R:
            return (entry & EPT_ADDR_MASK) >> PAGE_SHIFT
        hfn = self.hva_to_pfn(vm_id, gfn)
        del self.unmapped[(vm_id, gfn)]
        self.swap_cache.discard(hfn)
        ept[gfn] = np.uint64((hfn << PAGE_SHIFT) | EPT_RWX)
        return hfn

    def is_unmapped(self, vm_id: int, gfn: int) -> bool:
        """Return whether the VM's page ``gfn`` is resident but has no EPT entry.

        pebslab only: what a zapper leaves behind (FACTS g.1).
        """
        vm_id = _check_int("vm_id", vm_id, 1)
        gfn = _check_int("gfn", gfn, 0)
        return (vm_id, gfn) in self.unmapped

    # ------------------------------------------------------------------
    # the zappers: host paths that unmap guest pages (FACTS g.1)
    # ------------------------------------------------------------------
    def _zap(self, vm_id: int, gfns: list[int], why: str) -> None:
        """Fire the MMU notifier for ``gfns``: KVM zaps their EPT entries and flushes.

        Models mmu_notifier_invalidate_page()/_range_start() (mm/mmu_notifier.c)
        reaching KVM (kvm_mmu_notifier_invalidate_page -> kvm_unmap_hva). The
        frames are not touched: each zapped page that is still resident goes
        to ``unmapped``.
        """
        ept, cb = self._vms[vm_id]
        present = [g for g in gfns if int(ept[g]) & EPT_R]
        if not present:
            return
        for g in present:
            self.unmapped[(vm_id, g)] = (int(ept[g]) & EPT_ADDR_MASK) >> PAGE_SHIFT
        notifier = self._notifiers.get(vm_id)
        if notifier is not None:
            notifier.invalidate_range(present, why)
        else:
            for g in present:
                ept[g] = 0
            if cb is not None:
                cb()
        for g in present:
            if int(ept[g]) & EPT_R:
                raise AssertionError(f"the MMU notifier of VM {vm_id} left EPT[gfn {g}] "
                                     f"present after {why}")

    def _guest_frames(self, vm_id=None, mapped_only: bool = False) -> list[int]:
        """Resident frames of registered VMs that back a gfn (not leaked), ascending HFN."""
        out = []
        for hfn in np.flatnonzero(self.owner >= 1):
            hfn = int(hfn)
            v, g = int(self.owner[hfn]), int(self.gfn[hfn])
            if v not in self._vms or g < 0 or hfn in self._leaked:
                continue
            if vm_id is not None and v != vm_id:
                continue
            ept = self._vms[v][0]
            if g < len(ept) and self._maps(ept[g], hfn):
                out.append(hfn)
            elif not mapped_only and self.unmapped.get((v, g)) == hfn:
                out.append(hfn)
        return out

    def _pick(self, cands: list[int], n: int) -> list[int]:
        order = self.rng.permutation(len(cands))
        return [cands[i] for i in order[:n]]

    def _vm_arg(self, vm_id):
        if vm_id is None:
            return None
        return self._vm(vm_id)[0]

    def _swap_out(self, hfn: int) -> None:
        """An unpinned page leaves memory: bytes to the swap store, frame freed."""
        vm_id, g = int(self.owner[hfn]), int(self.gfn[hfn])
        base = hfn * PAGE_SIZE
        self.swap[(vm_id, g)] = self.mem[base:base + PAGE_SIZE].tobytes()
        self.unmapped.pop((vm_id, g), None)
        self.swap_cache.discard(hfn)
        self._release_frame(hfn)

    def _move(self, hfn: int) -> int:
        """Migrate an unpinned, already unmapped page to a fresh frame; return it."""
        vm_id, g = int(self.owner[hfn]), int(self.gfn[hfn])
        new = self.alloc_frame(vm_id, g)
        self.mem[new * PAGE_SIZE:(new + 1) * PAGE_SIZE] = \
            self.mem[hfn * PAGE_SIZE:(hfn + 1) * PAGE_SIZE]
        self.unmapped[(vm_id, g)] = new
        self.swap_cache.discard(hfn)
        self._release_frame(hfn)
        return new

    def reclaim(self, n: int, kept: list | None = None) -> list[tuple[int, int, int]]:
        """Reclaim up to ``n`` guest pages; return (vm_id, gfn, hfn) of each swapped out.

        Models shrink_page_list() in mm/vmscan.c of v3.15 (FACTS g.1):
        page_check_references(), add_to_swap(), then try_to_unmap() with no
        reference-count check first: try_to_unmap_one() fires the MMU
        notifier, so KVM zaps the EPT entry of *every* victim, pinned or
        not. Only then does pageout()/is_page_cache_freeable() see an extra
        reference: a pinned page (refcount > 1) keeps its frame, in the
        swap cache (``unmapped``, ``swap_cache``; appended to ``kept`` as
        (vm_id, gfn, hfn) when a list is given); an unpinned one is written
        to the swap store and its frame zeroed and freed. Candidates are
        the resident pages of registered VMs (EPT-mapped, or unmapped with
        no reference but the VM's), in ascending HFN, shuffled with
        ``self.rng.permutation`` (every call advances it); the first ``n``
        are taken.
        """
        n = _check_int("n", n, 0)
        if kept is not None and not isinstance(kept, list):
            raise TypeError(f"kept must be a list or None; got {type(kept).__name__}")
        cands = [h for h in self._guest_frames()
                 if h not in self.swap_cache or self.refcount[h] == 1]
        victims = self._pick(cands, n)
        by_vm: dict[int, list[int]] = {}
        for hfn in victims:
            by_vm.setdefault(int(self.owner[hfn]), []).append(int(self.gfn[hfn]))
        for vm_id in sorted(by_vm):
            self._zap(vm_id, by_vm[vm_id], "reclaim (shrink_page_list -> try_to_unmap)")
        out: list[tuple[int, int, int]] = []
        for hfn in victims:
            vm_id, g = int(self.owner[hfn]), int(self.gfn[hfn])
            if self.refcount[hfn] > 1:
                self.swap_cache.add(hfn)           # pageout(): is_page_cache_freeable() fails
                if kept is not None:
                    kept.append((vm_id, g, hfn))
                continue
            self._swap_out(hfn)
            out.append((vm_id, g, hfn))
        return out

    def age(self, n: int, ept_ad: bool = False, vm_id=None) -> list[tuple[int, int, int]]:
        """Age up to ``n`` EPT-mapped guest pages; return the (vm_id, gfn, hfn) zapped.

        Models page_referenced() -> page_referenced_one() (mm/rmap.c) firing
        mmu_notifier_clear_flush_young() -> kvm_age_hva() -> kvm_age_rmapp()
        (arch/x86/kvm/mmu.c): with EPT accessed/dirty bits (``ept_ad``) KVM
        only clears the accessed bit and nothing is zapped; without them it
        zaps the entry, so the next access shows the page is in use. Frames
        and references are unchanged either way.
        """
        n = _check_int("n", n, 0)
        if not isinstance(ept_ad, bool):
            raise TypeError(f"ept_ad must be a bool; got {type(ept_ad).__name__} {ept_ad!r}")
        victims = self._pick(self._guest_frames(self._vm_arg(vm_id), mapped_only=True), n)
        if ept_ad:
            return []
        return self._zap_each(victims, "aging without EPT A/D (kvm_age_rmapp)")

    def _zap_each(self, victims: list[int], why: str) -> list[tuple[int, int, int]]:
        by_vm: dict[int, list[int]] = {}
        out = []
        for hfn in victims:
            vm_id, g = int(self.owner[hfn]), int(self.gfn[hfn])
            by_vm.setdefault(vm_id, []).append(g)
            out.append((vm_id, g, hfn))
        for vm_id in sorted(by_vm):
            self._zap(vm_id, by_vm[vm_id], why)
        return out

    def migrate_pages(self, n: int, vm_id=None) -> list[tuple[int, int, int, int]]:
        """Migrate up to ``n`` guest pages; return (vm_id, gfn, old hfn, new hfn or -1) each.

        Models migrate_pages() -> __unmap_and_move() (mm/migrate.c, v3.15):
        try_to_unmap() first (the MMU notifier zaps the EPT entry), then
        migrate_page_move_mapping() finds more references than expected on
        a pinned page and fails with -EAGAIN: the page keeps its frame (new
        hfn -1) but not its EPT entry. An unpinned page moves to a fresh
        frame (bytes copied, old frame freed); its EPT entry comes back on
        the next access.
        """
        n = _check_int("n", n, 0)
        victims = self._pick(self._guest_frames(self._vm_arg(vm_id)), n)
        out = []
        for vm_id_, g, hfn in self._zap_each(victims, "migration (try_to_unmap)"):
            new = -1 if self.refcount[hfn] > 1 else self._move(hfn)
            out.append((vm_id_, g, hfn, new))
        return out

    def compact(self, n: int, vm_id=None) -> list[tuple[int, int, int, int]]:
        """Compact: migrate up to ``n`` unpinned guest pages; pinned ones are skipped whole.

        Models isolate_migratepages_range() (mm/compaction.c, v3.15), which
        skips an anonymous page whose count exceeds its mapcount *before*
        unmapping it: a pinned page keeps frame and EPT entry. The others
        migrate as in :meth:`migrate_pages`. Returns (vm_id, gfn, old, new).
        """
        n = _check_int("n", n, 0)
        cands = [h for h in self._guest_frames(self._vm_arg(vm_id)) if self.refcount[h] == 1]
        victims = self._pick(cands, n)
        out = []
        for vm_id_, g, hfn in self._zap_each(victims, "compaction (migrate_pages)"):
            out.append((vm_id_, g, hfn, self._move(hfn)))
        return out

    def ksm_scan(self, n: int, vm_id=None) -> list[tuple[int, int, int]]:
        """KSM scans up to ``n`` EPT-mapped guest pages; return the (vm_id, gfn, hfn) zapped.

        Models try_to_merge_one_page() -> write_protect_page() (mm/ksm.c,
        v3.15): the PTE is cleared and flushed with the MMU notifier before
        the count check, so KVM zaps the EPT entry; a pinned page is then
        refused (count != mapcount + 1). pebslab does not merge identical
        pages (an unpinned page keeps its frame too; ASSUMPTION-free
        simplification: no page here is ever found identical).
        """
        n = _check_int("n", n, 0)
        victims = self._pick(self._guest_frames(self._vm_arg(vm_id), mapped_only=True), n)
        return self._zap_each(victims, "KSM (write_protect_page)")

    def thp_split(self, n: int, vm_id=None) -> list[tuple[int, int, int]]:
        """Split huge pages covering up to ``n`` guest pages; return those zapped.

        Models split_huge_page() (mm/huge_memory.c, v3.15): the huge PMD is
        split under the MMU notifier, so KVM zaps the EPT entries; the
        frames do not change.
        """
        n = _check_int("n", n, 0)
        victims = self._pick(self._guest_frames(self._vm_arg(vm_id), mapped_only=True), n)
        return self._zap_each(victims, "THP split (split_huge_page)")

    def thp_collapse(self, n: int, vm_id=None) -> list[tuple[int, int, int, int]]:
        """khugepaged collapses up to ``n`` guest pages; return (vm_id, gfn, old, new or -1).

        Models collapse_huge_page() (mm/huge_memory.c, v3.15): the PMD is
        cleared under the MMU notifier (KVM zaps), then
        __collapse_huge_page_isolate() refuses a page with an extra
        reference: a pinned page keeps its frame (new -1), not its EPT
        entry. An unpinned page is copied into the new huge page (a fresh
        frame here).
        """
        n = _check_int("n", n, 0)
        victims = self._pick(self._guest_frames(self._vm_arg(vm_id)), n)
        out = []
        for vm_id_, g, hfn in self._zap_each(victims, "THP collapse (khugepaged)"):
            new = -1 if self.refcount[hfn] > 1 else self._move(hfn)
            out.append((vm_id_, g, hfn, new))
        return out

    def numa_balance(self, n: int, vm_id=None) -> list[tuple[int, int, int]]:
        """NUMA balancing marks up to ``n`` guest pages PROT_NONE; return those zapped.

        Models change_prot_numa() -> change_protection() (mm/mprotect.c,
        v3.15), which invalidates the range through the MMU notifier with
        no exemption for pinned pages; the frames stay (the hinting fault
        that may migrate them later is not modelled).
        """
        n = _check_int("n", n, 0)
        victims = self._pick(self._guest_frames(self._vm_arg(vm_id), mapped_only=True), n)
        return self._zap_each(victims, "NUMA balancing (change_prot_numa)")

    def is_swapped(self, vm_id: int, gfn: int) -> bool:
        """Return whether the VM's page ``gfn`` lives in the swap store.

        pebslab only.
        """
        vm_id = _check_int("vm_id", vm_id, 1)
        gfn = _check_int("gfn", gfn, 0)
        return (vm_id, gfn) in self.swap

    def frames_of(self, vm_id: int) -> list[int]:
        """Return the HFNs owned by ``vm_id`` (0 for the host), ascending.

        pebslab only.
        """
        vm_id = _check_int("vm_id", vm_id, FRAME_HOST)
        return [int(h) for h in np.flatnonzero(self.owner == vm_id)]

    def free_count(self) -> int:
        """Return the number of free frames.

        Models nr_free_pages() in include/linux/swap.h.
        """
        return int(np.count_nonzero(self.owner == FRAME_FREE))

    def release_vm(self, vm_id: int) -> list[int]:
        """Give back all of a VM's memory; return the frames a leaked pin keeps.

        Models what kvm_destroy_vm() leads to: the VM's mappings are torn
        down (EPT cleared, TLBs flushed once) and the mapping reference of
        every frame it owns is put. A frame that someone still pins
        (refcount was > 1) survives, still owned by the VM; it is returned
        so the caller can report the leak. The VM's swap slots are dropped.
        The VM stays registered (with an empty EPT); a second call does not
        put the leaked frames again.
        """
        vm_id = _check_int("vm_id", vm_id, 1)
        if vm_id in self._vms:
            ept, cb = self._vms[vm_id]
            present = (ept & np.uint64(EPT_R)) != 0
            if present.any():
                ept[present] = 0
                if cb is not None:
                    cb()
        leaked = []
        for hfn in self.frames_of(vm_id):
            if hfn in self._leaked:
                leaked.append(hfn)
                continue
            self.put_page(hfn)
            if self.owner[hfn] != FRAME_FREE:
                self._leaked.add(hfn)
                leaked.append(hfn)
        for key in [k for k in self.swap if k[0] == vm_id]:
            del self.swap[key]
        for key in [k for k in self.unmapped if k[0] == vm_id]:
            self.swap_cache.discard(self.unmapped.pop(key))
        return sorted(leaked)

    # ------------------------------------------------------------------
    # the host's own access to physical memory
    # ------------------------------------------------------------------
    def write_phys(self, hpa: int, data) -> None:
        """Write bytes at a host physical address.

        Models a kernel write through the direct map (phys_to_virt).
        """
        hpa = _check_int("hpa", hpa, 0)
        if isinstance(data, np.ndarray):
            if data.dtype != np.uint8:
                raise TypeError(f"data must be bytes-like or a uint8 array; got dtype {data.dtype}")
            buf = data.reshape(-1)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            buf = np.frombuffer(bytes(data), dtype=np.uint8)
        else:
            raise TypeError(f"data must be bytes-like or a uint8 array; got {type(data).__name__}")
        end = hpa + buf.size
        if end > self.mem.size:
            raise ValueError(
                f"write of {buf.size} bytes at hpa {hpa:#x} ends at {end:#x}, "
                f"beyond host memory (size {self.mem.size:#x})")
        self.mem[hpa:end] = buf

    def read_phys(self, hpa: int, n: int) -> bytes:
        """Read ``n`` bytes at a host physical address.

        Models a kernel read through the direct map (phys_to_virt).
        """
        hpa = _check_int("hpa", hpa, 0)
        n = _check_int("n", n, 0)
        end = hpa + n
        if end > self.mem.size:
            raise ValueError(
                f"read of {n} bytes at hpa {hpa:#x} ends at {end:#x}, "
                f"beyond host memory (size {self.mem.size:#x})")
        return self.mem[hpa:end].tobytes()

    # ------------------------------------------------------------------
    # consistency
    # ------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Raise AssertionError, saying what is wrong, if the frame table is inconsistent.

        pebslab only. Checks: free frames have owner -1, refcount 0,
        gfn -1, state FREE and only zero bytes; allocated frames have
        refcount >= 1 and state RESIDENT; host frames back no gfn; every
        present EPT entry of a registered VM points inside host memory at a
        distinct frame owned by that VM whose ``gfn`` matches, and that
        page is not also in the swap store; every ``unmapped`` page is a
        frame of its VM backing that gfn, absent from EPT and from the swap
        store (the swap cache is part of it); every frame a registered VM
        owns (leaks aside) is in its EPT or in ``unmapped``.
        """
        free = self.owner == FRAME_FREE
        for name, bad in (
            ("refcount != 0", free & (self.refcount != 0)),
            ("gfn != -1", free & (self.gfn != -1)),
            ("state != FREE", free & (self.state != STATE_FREE)),
            ("owner < -1", self.owner < FRAME_FREE),
        ):
            if bad.any():
                raise AssertionError(
                    f"free frame(s) {np.flatnonzero(bad)[:8].tolist()} have {name}")
        used = ~free
        if (used & (self.refcount < 1)).any():
            h = int(np.flatnonzero(used & (self.refcount < 1))[0])
            raise AssertionError(
                f"allocated frame {h} (owner {int(self.owner[h])}) has refcount "
                f"{int(self.refcount[h])}; must be >= 1")
        if (used & (self.state != STATE_RESIDENT)).any():
            h = int(np.flatnonzero(used & (self.state != STATE_RESIDENT))[0])
            raise AssertionError(f"allocated frame {h} has state {int(self.state[h])}, not RESIDENT")
        host_gfn = (self.owner == FRAME_HOST) & (self.gfn != -1)
        if host_gfn.any():
            h = int(np.flatnonzero(host_gfn)[0])
            raise AssertionError(f"host frame {h} claims to back gfn {int(self.gfn[h])}")
        dirty = self.mem.reshape(self.frames, PAGE_SIZE)[free].any(axis=1)
        if dirty.any():
            h = int(np.flatnonzero(free)[np.flatnonzero(dirty)[0]])
            raise AssertionError(f"free frame {h} holds non-zero bytes (stale data)")
        for (vm_id, g), hfn in sorted(self.unmapped.items()):
            where = f"unmapped page (VM {vm_id}, gfn {g}) -> hfn {hfn}"
            if int(self.owner[hfn]) != vm_id or int(self.gfn[hfn]) != g:
                raise AssertionError(f"{where}: frame is owned by {int(self.owner[hfn])} "
                                     f"and backs gfn {int(self.gfn[hfn])}")
            if vm_id in self._vms and int(self._vms[vm_id][0][g]) & EPT_R:
                raise AssertionError(f"{where}: the page is also present in EPT")
            if (vm_id, g) in self.swap:
                raise AssertionError(f"{where}: page is also in the swap store")
        stray = self.swap_cache - set(self.unmapped.values())
        if stray:
            raise AssertionError(f"swap-cache frame(s) {sorted(stray)[:8]} are not unmapped "
                                 f"guest pages")
        for vm_id, (ept, _) in sorted(self._vms.items()):
            present = np.flatnonzero((ept & np.uint64(EPT_R)) != 0)
            seen: dict[int, int] = {}
            for g in present:
                g = int(g)
                entry = int(ept[g])
                hfn = (entry & EPT_ADDR_MASK) >> PAGE_SHIFT
                where = f"VM {vm_id} EPT[gfn {g}] = {entry:#x} -> hfn {hfn}"
                if hfn >= self.frames:
                    raise AssertionError(f"{where}: beyond host memory ({self.frames} frames)")
                if int(self.owner[hfn]) != vm_id:
                    raise AssertionError(f"{where}: frame is owned by {int(self.owner[hfn])}")
                if int(self.gfn[hfn]) != g:
                    raise AssertionError(f"{where}: frame says it backs gfn {int(self.gfn[hfn])}")
                if hfn in seen:
                    raise AssertionError(f"{where}: frame is also mapped at gfn {seen[hfn]}")
                if (vm_id, g) in self.swap:
                    raise AssertionError(f"{where}: page is also in the swap store")
                seen[hfn] = g
            for hfn in np.flatnonzero(self.owner == vm_id):
                hfn = int(hfn)
                g = int(self.gfn[hfn])
                if hfn in self._leaked or seen.get(hfn) == g:
                    continue
                if self.unmapped.get((vm_id, g)) != hfn:
                    raise AssertionError(f"VM {vm_id} owns frame {hfn} (gfn {g}) that is neither "
                                         f"in its EPT nor an unmapped resident page")

    def __repr__(self) -> str:
        return (f"HostMM(frames={self.frames}, free={self.free_count()}, "
                f"vms={self.registered_vms()}, swapped={len(self.swap)})")
