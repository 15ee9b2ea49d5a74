"""Host physical memory: frames, references, EPT mappings, swap.

The host owns one ``numpy.uint8`` array ``mem`` of ``frames * PAGE_SIZE``
bytes; a host physical address (HPA) is an index into it. Beside it lives
the frame table as plain arrays indexed by host frame number (HFN):
``owner``, ``refcount``, ``state`` and ``gfn`` (see docs/ARCHITECTURE.md,
section "Memory").

References follow Linux: a VM's mapping of a frame holds one reference, and
every pin (``get_page``) one more. Reclaim only takes frames whose only
reference is the mapping, so a pinned frame is never swapped out. Swapping
out copies the bytes into a swap store, clears the EPT entry, zeroes and
frees the frame; faulting the page back in (``populate``) allocates a
*fresh* frame, which may well have a different HFN.

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
    page reclaim under memory pressure (mm/vmscan.c, reduced to "pick
    unpinned guest pages and swap them out") and KVM's EPT maintenance
    when it does (the mmu notifier path that zaps EPT entries and flushes).

    Randomness: ``reclaim`` draws its victim order from ``self.rng``, a
    ``numpy.random.Generator(PCG64(seed))`` owned by this object; every
    call to ``reclaim`` advances it, so a sequence of calls is reproducible
    for a given seed.
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
                    on_invalidate: Callable[[], None] | None) -> None:
        """Tell the host about a VM's EPT and how to flush its TLBs.

        pebslab only (in Linux, KVM registers an mmu notifier on the VM's
        mm). ``ept`` is a 1-D ``numpy.uint64`` array indexed by GFN that the
        host edits in place; ``on_invalidate()`` is called after every
        change that removes or weakens a mapping (the VM does INVEPT).
        ``None`` means the VM caches nothing.
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
        self._vms[vm_id] = (ept, on_invalidate)

    def unregister_vm(self, vm_id: int) -> None:
        """Forget a VM's EPT and callback (its frames are not touched).

        pebslab only. Call ``release_vm`` first to give the memory back.
        """
        vm_id, _, _ = self._vm(vm_id)
        del self._vms[vm_id]

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

    def populate(self, vm_id: int, gfn: int) -> int:
        """Back a guest frame with a host frame and map it R|W|X in EPT.

        Models KVM's EPT-violation path (tdp_page_fault -> gfn_to_pfn ->
        the host's page-fault / swap-in): a fresh frame is allocated and,
        if the page had been swapped out, its bytes come back from the swap
        store and the swap slot is dropped. Returns the HFN. A GFN that is
        already mapped is left alone and its HFN returned. Filling a hole
        needs no invalidation (TLBs never cache a missing translation).
        """
        vm_id, ept, _ = self._vm(vm_id)
        gfn = self._gfn(ept, gfn)
        entry = int(ept[gfn])
        if entry & EPT_R:
            return (entry & EPT_ADDR_MASK) >> PAGE_SHIFT
        hfn = self.alloc_frame(vm_id, gfn)
        data = self.swap.pop((vm_id, gfn), None)
        if data is not None:
            base = hfn * PAGE_SIZE
            self.mem[base:base + PAGE_SIZE] = np.frombuffer(data, dtype=np.uint8)
        ept[gfn] = np.uint64((hfn << PAGE_SHIFT) | EPT_RWX)
        return hfn

    def reclaim(self, n: int) -> list[tuple[int, int, int]]:
        """Swap out up to ``n`` unpinned guest pages; return (vm_id, gfn, hfn) each.

        Models page reclaim (shrink_page_list in mm/vmscan.c) as seen by
        KVM: candidates are frames owned by a VM (owner >= 1) that its EPT
        maps and that hold no reference but the mapping (refcount == 1);
        pinned frames (refcount > 1) are skipped. The candidates, in
        ascending HFN, are shuffled with ``self.rng.permutation`` (this
        advances the generator on every call) and the first ``n`` are
        taken. Each victim's bytes go to the swap store, its EPT entry is
        cleared and the frame is zeroed and freed; then each affected VM's
        ``on_invalidate`` is called once, in ascending VM id. Fewer than
        ``n`` are returned if there are not enough candidates.
        """
        n = _check_int("n", n, 0)
        cands = []
        for hfn in np.flatnonzero((self.owner >= 1) & (self.refcount == 1)):
            hfn = int(hfn)
            vm_id, g = int(self.owner[hfn]), int(self.gfn[hfn])
            if vm_id in self._vms and g >= 0:
                ept = self._vms[vm_id][0]
                if g < len(ept) and self._maps(ept[g], hfn):
                    cands.append(hfn)
        order = self.rng.permutation(len(cands))
        victims = [cands[i] for i in order[:n]]
        out: list[tuple[int, int, int]] = []
        touched: set[int] = set()
        for hfn in victims:
            vm_id, g = int(self.owner[hfn]), int(self.gfn[hfn])
            base = hfn * PAGE_SIZE
            self.swap[(vm_id, g)] = self.mem[base:base + PAGE_SIZE].tobytes()
            self._vms[vm_id][0][g] = 0
            self._release_frame(hfn)
            touched.add(vm_id)
            out.append((vm_id, g, hfn))
        for vm_id in sorted(touched):
            cb = self._vms[vm_id][1]
            if cb is not None:
                cb()
        return out

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
        page is not also in the swap store.
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

    def __repr__(self) -> str:
        return (f"HostMM(frames={self.frames}, free={self.free_count()}, "
                f"vms={self.registered_vms()}, swapped={len(self.swap)})")
