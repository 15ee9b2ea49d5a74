"""The guest kernel's memory manager: page allocator and 4-level page tables.

The guest builds real x86-64 page tables *in its own memory*, entry by entry,
in the format of docs/ARCHITECTURE.md, so that the simulated CPU's walker
(pebslab.hw.mmu.walk) and the guest's own software walk read the same bytes.
Everything goes through a ``phys`` object, the guest's view of its physical
memory, which provides:

* ``phys.read(gpa, n) -> bytes`` and ``phys.write(gpa, data)``,
* ``phys.pages``, the number of guest physical pages,
* ``phys.flush_tlb()``, the vCPU's TLB flush (invlpg / CR3 reload).

Simplifications (pebslab only): the guest maps only 4 KiB pages (it honours,
but never builds, 1 GiB / 2 MiB leaves); intermediate entries are P|RW|US so
the leaf alone decides the rights; page tables are never freed; virtual
ranges are handed out by bump pointers and never reused; every change to a
leaf is followed by one full TLB flush.
"""

from __future__ import annotations

import numpy as np

from pebslab.hw.errors import GuestFault
from pebslab.hw.mmu import (LEVEL_NAMES, PAGE_SIZE, PAGE_SHIFT, PTE_ADDR_MASK,
                            PTE_P, PTE_PS, PTE_RW, PTE_US, is_canonical, leaf_gpa, pt_index,
                            walk_tables)

KERNEL_BASE = 0xFFFF_8880_0000_0000   # Linux's direct map (page_offset_base), 4-level paging
USER_BASE = 0x0040_0000               # where x86-64 executables are traditionally loaded
USER_TOP = 0x0000_7FFF_FFFF_F000      # Linux TASK_SIZE_MAX with 4-level paging
TABLE_FLAGS = PTE_P | PTE_RW | PTE_US  # every intermediate entry: the leaf decides

_U64_MAX = (1 << 64) - 1
_HIGH_HALF_START = _U64_MAX - (1 << 47) + 1   # first canonical address of the upper half


class GuestPageFault(GuestFault):
    """A page fault taken by the guest kernel's own access through GuestMM.

    pebslab only (the fault a real kernel would take in its #PF handler,
    exc_page_fault() in arch/x86/mm/fault.c). ``level`` is 4 (PML4) .. 1
    (PT) where the walk stopped; ``protection`` is True for a write to a
    read-only mapping, False for a not-present entry.
    """

    def __init__(self, gva, level, write=False, protection=False):
        self.gva = int(gva)
        self.level = int(level)
        self.write = bool(write)
        self.protection = bool(protection)
        access = "write" if self.write else "read"
        name = LEVEL_NAMES.get(self.level, "?")
        if self.protection:
            why = f"{name} entry (level {self.level}) is read-only"
        else:
            why = f"{name} entry (level {self.level}) not present"
        self.msr = None
        self.value = None
        self.vector = "#PF"
        self.reason = why
        Exception.__init__(self, f"guest page fault on a {access} of GVA {self.gva:#x}: {why}")


def _check_int(name, value, low, high):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in {low:#x}..{high:#x}; "
                        f"got {value!r} ({type(value).__name__})")
    value = int(value)
    if not low <= value <= high:
        shown = f"{value:#x}" if value >= 0 else str(value)
        raise ValueError(f"{name} must be in {low:#x}..{high:#x}; got {shown}")
    return value


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r}")
    return bool(value)


class GuestMM:
    """The guest kernel's physical page allocator and page-table editor.

    pebslab only as a whole; its methods model the kernel functions named in
    their docstrings. ``cr3`` is the GPA of the PML4, ready to load into the
    vCPU's CR3.
    """

    def __init__(self, phys, kernel_base=KERNEL_BASE, reserved_low_pages=1,
                 user_base=USER_BASE):
        """Set up the allocator over phys and allocate an empty PML4.

        Models what the boot code does before paging_init()
        (arch/x86/mm/init_64.c): mark the low reserved pages as used, then
        build the top-level table (swapper_pg_dir / init_top_pgt).
        Kernel allocations start at kernel_base, user ones at user_base.
        """
        for attr in ("read", "write", "pages", "flush_tlb"):
            if not hasattr(phys, attr):
                raise TypeError(f"phys must provide read, write, pages and flush_tlb; "
                                f"{type(phys).__name__} has no {attr!r}")
        self.phys = phys
        pages = _check_int("phys.pages", phys.pages, 2, 1 << 40)
        reserved_low_pages = _check_int("reserved_low_pages", reserved_low_pages,
                                        1, pages - 1)
        kernel_base = _check_int("kernel_base", kernel_base, _HIGH_HALF_START, _U64_MAX)
        user_base = _check_int("user_base", user_base, PAGE_SIZE, USER_TOP)
        for name, value in (("kernel_base", kernel_base), ("user_base", user_base)):
            if value % PAGE_SIZE:
                raise ValueError(f"{name} must be a multiple of {PAGE_SIZE:#x}; "
                                 f"got {value:#x}")
        self.pages = pages
        self.kernel_base = kernel_base
        self.user_base = user_base
        self._used = bytearray(pages)            # 1 = allocated, lowest-first
        self._used[:reserved_low_pages] = b"\x01" * reserved_low_pages
        self.reserved_low_pages = reserved_low_pages
        self.table_pages = set()                 # GPAs of page-table pages
        self._next = {False: kernel_base, True: user_base}
        self.cr3 = self._alloc_table()

    # --- guest physical pages ----------------------------------------------------

    def alloc_phys(self, n=1):
        """Allocate n contiguous zeroed guest physical pages: return the first GPA.

        Models alloc_pages(GFP_KERNEL | __GFP_ZERO, order) in mm/page_alloc.c,
        but first fit, lowest address first, any n (not only powers of two),
        so runs are deterministic. Raises MemoryError when no run fits.
        """
        n = _check_int("n", n, 1, self.pages)
        start = self._used.find(bytes(n))
        if start < 0:
            raise MemoryError(f"out of guest physical memory: no {n} contiguous free "
                              f"pages among {self.pages}")
        self._used[start:start + n] = b"\x01" * n
        gpa = start << PAGE_SHIFT
        self.phys.write(gpa, bytes(n * PAGE_SIZE))
        return gpa

    def free_phys(self, gpa, n=1):
        """Return n guest physical pages starting at gpa to the allocator.

        Models __free_pages() in mm/page_alloc.c. The pages must be
        allocated, not reserved and not page tables (ValueError otherwise).
        """
        gpa = self._check_gpa("gpa", gpa)
        n = _check_int("n", n, 1, self.pages)
        first = gpa >> PAGE_SHIFT
        if first + n > self.pages:
            raise ValueError(f"gpa + n pages must stay below {self.pages} pages; "
                             f"got gpa={gpa:#x}, n={n}")
        for pfn in range(first, first + n):
            if pfn < self.reserved_low_pages:
                raise ValueError(f"page {pfn << PAGE_SHIFT:#x} is reserved; "
                                 f"it cannot be freed")
            if not self._used[pfn]:
                raise ValueError(f"page {pfn << PAGE_SHIFT:#x} is not allocated "
                                 f"(double free?)")
            if (pfn << PAGE_SHIFT) in self.table_pages:
                raise ValueError(f"page {pfn << PAGE_SHIFT:#x} holds a page table; "
                                 f"it cannot be freed")
        self._used[first:first + n] = bytes(n)

    def is_allocated(self, gpa):
        """Tell whether the guest physical page holding gpa is allocated.

        pebslab only.
        """
        gpa = _check_int("gpa", gpa, 0, self.pages * PAGE_SIZE - 1)
        return bool(self._used[gpa >> PAGE_SHIFT])

    def nr_free_pages(self):
        """Count the free guest physical pages.

        Models nr_free_pages() (include/linux/swap.h).
        """
        return self.pages - sum(self._used)

    # --- page-table entries --------------------------------------------------------

    def _alloc_table(self):
        gpa = self.alloc_phys(1)
        self.table_pages.add(gpa)
        return gpa

    def _read_entry(self, entry_gpa):
        return int.from_bytes(self.phys.read(entry_gpa, 8), "little")

    def _write_entry(self, entry_gpa, value):
        """Store one 8-byte entry. Models native_set_pte() (pgtable_64.h)."""
        self.phys.write(entry_gpa, int(value).to_bytes(8, "little"))

    def _lookup(self, gva):
        """Walk the tables in software (pebslab.hw.mmu.walk_tables): (path, leaf_level).

        path is the list of (level, entry_gpa, entry) read, top first;
        leaf_level is the level of the present leaf, or 0 if the walk
        stopped at a not-present entry (the last one in path).
        """
        path = list(walk_tables(self._read_entry, self.cr3, gva))
        level, _, entry = path[-1]
        return path, (level if entry & PTE_P else 0)

    def _leaf(self, gva, what):
        """The (entry_gpa, entry) of gva's present 4 KiB leaf, or ValueError."""
        path, leaf_level = self._lookup(gva)
        if leaf_level == 0:
            raise ValueError(f"{what}: gva {gva:#x} is not mapped "
                             f"({LEVEL_NAMES[path[-1][0]]} entry not present)")
        if leaf_level != 1:
            raise ValueError(f"{what}: gva {gva:#x} lies in a large page of the "
                             f"{LEVEL_NAMES[leaf_level]}; GuestMM edits 4 KiB leaves only")
        return path[-1][1], path[-1][2]

    def _check_gva(self, name, gva, aligned=True):
        gva = _check_int(name, gva, 0, _U64_MAX)
        if not is_canonical(gva):
            raise ValueError(f"{name} must be canonical (bits 63:47 all equal); "
                             f"got {gva:#x}")
        if aligned and gva % PAGE_SIZE:
            raise ValueError(f"{name} must be a multiple of {PAGE_SIZE:#x}; got {gva:#x}")
        return gva

    def _check_gpa(self, name, gpa):
        gpa = _check_int(name, gpa, 0, self.pages * PAGE_SIZE - PAGE_SIZE)
        if gpa % PAGE_SIZE:
            raise ValueError(f"{name} must be a multiple of {PAGE_SIZE:#x}; got {gpa:#x}")
        return gpa

    def _set_leaf(self, gva, gpa, writable, user):
        table = self.cr3
        for level in (4, 3, 2):
            entry_gpa = table + 8 * pt_index(gva, level)
            entry = self._read_entry(entry_gpa)
            if not entry & PTE_P:
                table = self._alloc_table()
                self._write_entry(entry_gpa, table | TABLE_FLAGS)
                continue
            if entry & PTE_PS:
                raise ValueError(f"map: gva {gva:#x} lies in a large page of the "
                                 f"{LEVEL_NAMES[level]}; GuestMM maps 4 KiB pages only")
            table = entry & PTE_ADDR_MASK
        entry_gpa = table + 8 * pt_index(gva, 1)
        old = self._read_entry(entry_gpa)
        if old & PTE_P:
            raise ValueError(f"map: gva {gva:#x} is already mapped to gpa "
                             f"{old & PTE_ADDR_MASK:#x}; use remap()")
        leaf = gpa | PTE_P | (PTE_RW if writable else 0) | (PTE_US if user else 0)
        self._write_entry(entry_gpa, leaf)

    # --- mappings ------------------------------------------------------------------

    def map(self, gva, gpa, writable=True, user=False):
        """Map the 4 KiB page at gva to the guest physical page gpa.

        Models the kernel's page-table population: pud_alloc() / pmd_alloc() /
        pte_alloc() for missing tables (include/linux/mm.h), set_pte()
        (native_set_pte() in arch/x86/include/asm/pgtable_64.h) for the leaf,
        then a TLB flush (__flush_tlb_one_user() in arch/x86/mm/tlb.c).
        Missing tables get P|RW|US; the leaf gets P, RW if writable, US if
        user. Mapping a mapped gva is a ValueError: use remap().
        """
        gva = self._check_gva("gva", gva)
        gpa = self._check_gpa("gpa", gpa)
        writable = _check_bool("writable", writable)
        user = _check_bool("user", user)
        self._set_leaf(gva, gpa, writable, user)
        self.phys.flush_tlb()

    def unmap(self, gva):
        """Remove the mapping of the page at gva: return the GPA it mapped.

        Models pte_clear() (native_pte_clear() in
        arch/x86/include/asm/pgtable_64.h) followed by
        __flush_tlb_one_user() in arch/x86/mm/tlb.c. The tables above the
        leaf stay. ValueError if gva is not mapped.
        """
        gva = self._check_gva("gva", gva)
        entry_gpa, entry = self._leaf(gva, "unmap")
        self._write_entry(entry_gpa, 0)
        self.phys.flush_tlb()
        return entry & PTE_ADDR_MASK

    def remap(self, gva, new_gpa):
        """Point the mapped page at gva to new_gpa, keeping its flags: return the old GPA.

        Models set_pte() with a new frame (native_set_pte() in
        arch/x86/include/asm/pgtable_64.h) and __flush_tlb_one_user() in
        arch/x86/mm/tlb.c: what a guest does when it moves a page, and what
        the 2014 patch cannot see from the host.
        """
        gva = self._check_gva("gva", gva)
        new_gpa = self._check_gpa("new_gpa", new_gpa)
        entry_gpa, entry = self._leaf(gva, "remap")
        self._write_entry(entry_gpa, (entry & ~PTE_ADDR_MASK) | new_gpa)
        self.phys.flush_tlb()
        return entry & PTE_ADDR_MASK

    def translate(self, gva):
        """Translate gva to its GPA with a software walk, or None if unmapped.

        Models slow_virt_to_phys() in arch/x86/mm/pat/set_memory.c (a
        lookup_address() walk). Guest-physical only: EPT is the host's
        business. Honours 1 GiB / 2 MiB leaves.
        """
        gva = self._check_gva("gva", gva, aligned=False)
        path, leaf_level = self._lookup(gva)
        if leaf_level == 0:
            return None
        return leaf_gpa(leaf_level, path[-1][2], gva)

    def entries(self, gva):
        """List the entries the walk of gva reads: [(level name, entry gpa, entry)].

        pebslab only (what a notebook prints; Linux's debugging view is
        /sys/kernel/debug/page_tables, arch/x86/mm/dump_pagetables.c).
        Ends at the leaf, or at the first not-present entry.
        """
        gva = self._check_gva("gva", gva, aligned=False)
        path, _ = self._lookup(gva)
        return [(LEVEL_NAMES[level], entry_gpa, entry) for level, entry_gpa, entry in path]

    # --- allocations ---------------------------------------------------------------

    def alloc(self, n_pages, user=False):
        """Allocate n_pages contiguous guest physical pages and map them: return the GVA.

        Models vmalloc() in mm/vmalloc.c (fresh pages mapped at the next free
        kernel virtual range), with user=True the shape of an anonymous
        mmap(). Kernel mappings are writable supervisor pages from
        kernel_base up, user ones writable US pages from user_base up. The
        physical pages are contiguous too, so a notebook sees one GPA run.
        """
        n_pages = _check_int("n_pages", n_pages, 1, self.pages)
        user = _check_bool("user", user)
        gva = self._next[user]
        end = gva + n_pages * PAGE_SIZE
        limit = USER_TOP if user else _U64_MAX + 1
        if end > limit:
            raise MemoryError(f"out of {'user' if user else 'kernel'} virtual space: "
                              f"{n_pages} pages from {gva:#x} pass {limit:#x}")
        gpa = self.alloc_phys(n_pages)
        done = 0
        try:
            for i in range(n_pages):
                self._set_leaf(gva + i * PAGE_SIZE, gpa + i * PAGE_SIZE, True, user)
                done += 1
        except BaseException:
            for i in range(done):
                entry_gpa, _ = self._leaf(gva + i * PAGE_SIZE, "alloc")
                self._write_entry(entry_gpa, 0)
            self.free_phys(gpa, n_pages)
            self.phys.flush_tlb()
            raise
        self._next[user] = end
        self.phys.flush_tlb()
        return gva

    def free(self, gva, n):
        """Unmap n pages from gva and free the guest physical pages behind them.

        Models vfree() in mm/vmalloc.c. Every page must be mapped to an
        allocated, non-table page, else ValueError and nothing changes. The
        virtual range is not reused.
        """
        gva = self._check_gva("gva", gva)
        n = _check_int("n", n, 1, self.pages)
        leaves = []
        for i in range(n):
            va = gva + i * PAGE_SIZE
            if va > _U64_MAX or not is_canonical(va):
                raise ValueError(f"free: gva + n pages leaves the canonical range at {va:#x}")
            entry_gpa, entry = self._leaf(va, "free")
            gpa = entry & PTE_ADDR_MASK
            if gpa >= self.pages * PAGE_SIZE or not self._used[gpa >> PAGE_SHIFT] \
                    or gpa in self.table_pages \
                    or (gpa >> PAGE_SHIFT) < self.reserved_low_pages:
                raise ValueError(f"free: gva {va:#x} maps gpa {gpa:#x}, which is not an "
                                 f"allocated page that free() may release")
            leaves.append((entry_gpa, gpa))
        if len({gpa for _, gpa in leaves}) != len(leaves):
            raise ValueError(f"free: the {n} pages from gva {gva:#x} map the same "
                             f"guest physical page more than once")
        for entry_gpa, gpa in leaves:
            self._write_entry(entry_gpa, 0)
            self._used[gpa >> PAGE_SHIFT] = 0
        self.phys.flush_tlb()

    # --- the kernel's own accesses -----------------------------------------------

    def _pieces(self, gva, n, write):
        pieces = []
        va, end = gva, gva + n
        while va < end:
            if not is_canonical(va):
                raise ValueError(f"access from gva {gva:#x} of {n} bytes leaves the "
                                 f"canonical range at {va:#x}")
            length = min(end, (va | (PAGE_SIZE - 1)) + 1) - va
            path, leaf_level = self._lookup(va)
            if leaf_level == 0:
                raise GuestPageFault(va, path[-1][0], write=write)
            if write:
                for level, _, entry in path:
                    if not entry & PTE_RW:
                        raise GuestPageFault(va, level, write=True, protection=True)
            pieces.append((leaf_gpa(leaf_level, path[-1][2], va), length))
            va += length
        return pieces

    def read(self, gva, n):
        """Read n bytes at gva through the guest's own tables: return bytes.

        pebslab only (a kernel load, e.g. the PEBS drain reading records;
        Linux just dereferences the pointer). Raises GuestPageFault at the
        first unmapped page.
        """
        gva = self._check_gva("gva", gva, aligned=False)
        n = _check_int("n", n, 0, _U64_MAX + 1 - gva)
        return b"".join(self.phys.read(gpa, length)
                        for gpa, length in self._pieces(gva, n, False))

    def write(self, gva, data):
        """Write data at gva through the guest's own tables.

        pebslab only (a kernel store; Linux just dereferences the pointer).
        Every page is checked first (present; RW at every level, as with
        CR0.WP=1), so a GuestPageFault leaves memory unchanged.
        """
        gva = self._check_gva("gva", gva, aligned=False)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview; "
                            f"got {type(data).__name__}")
        data = bytes(data)
        if gva + len(data) > _U64_MAX + 1:
            raise ValueError(f"gva + len(data) must not pass 2**64; got gva={gva:#x}, "
                             f"len(data)={len(data)}")
        pos = 0
        for gpa, length in self._pieces(gva, len(data), True):
            self.phys.write(gpa, data[pos:pos + length])
            pos += length
