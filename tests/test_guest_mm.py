"""Tests for pebslab.guest.mm: the guest builds real tables the CPU can walk.

Every mapping GuestMM makes is checked with the simulated hardware walker
(pebslab.hw.mmu.walk) over the same bytes, so the guest's entries must be in
the real x86-64 format (Intel SDM Vol. 3A, 4.5), not merely self-consistent.

FakePhys stands in for the KVM layer. Its EPT is deliberately not the
identity (guest frame g is host frame PAGES-1-g), so mixing up a GPA and an
HPA anywhere would show.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pebslab.guest import mm as gmm
from pebslab.guest.mm import KERNEL_BASE, USER_BASE, GuestMM, GuestPageFault
from pebslab.hw import mmu
from pebslab.hw.mmu import PTE_P, PTE_RW, PTE_US, XLATE_OK, XLATE_PF

PAGES = 64
P = mmu.PAGE_SIZE


class FakePhys:
    """Guest physical memory over a numpy host memory and a scrambled EPT."""

    def __init__(self, pages=PAGES):
        self.pages = pages
        self.mem = np.zeros(pages * P, np.uint8)
        self.ept = np.array([((pages - 1 - g) << 12) | 7 for g in range(pages)], np.uint64)
        self.tlb = mmu.tlb_new()
        self.flushes = 0

    def _hpa(self, gpa):
        assert 0 <= gpa < self.pages * P, f"gpa {gpa:#x} outside guest memory"
        return int(self.ept[gpa >> 12] & mmu.EPT_ADDR_MASK) | (gpa & 0xFFF)

    def _chunks(self, gpa, n):
        while n:
            length = min(n, P - (gpa & 0xFFF))
            yield self._hpa(gpa), length
            gpa += length
            n -= length

    def read(self, gpa, n):
        return b"".join(self.mem[h:h + k].tobytes() for h, k in self._chunks(gpa, n))

    def write(self, gpa, data):
        pos = 0
        for h, k in self._chunks(gpa, len(data)):
            self.mem[h:h + k] = np.frombuffer(data[pos:pos + k], np.uint8)
            pos += k

    def flush_tlb(self):
        mmu.tlb_flush(self.tlb)
        self.flushes += 1


@pytest.fixture
def phys():
    return FakePhys()


@pytest.fixture
def gm(phys):
    return GuestMM(phys)


def hw_walk(phys, gm, gva, write=False, user=False):
    return mmu.walk(phys.mem, phys.ept, gm.cr3, gva, write, user)


def hw_gpa(phys, gm, gva):
    code, gpa, hpa, info = hw_walk(phys, gm, gva)
    assert code == XLATE_OK, (code, info)
    return gpa


# --- set-up and the physical allocator --------------------------------------------------

def test_init_reserves_page_zero_and_builds_empty_pml4(phys, gm):
    assert gm.cr3 == P                       # page 0 reserved, PML4 is the lowest free page
    assert gm.table_pages == {P}
    assert phys.read(gm.cr3, P) == bytes(P)
    assert gm.nr_free_pages() == PAGES - 2
    assert hw_walk(phys, gm, KERNEL_BASE) == (XLATE_PF, 0, 0, 4)
    gm2 = GuestMM(FakePhys(), reserved_low_pages=4)
    assert gm2.cr3 == 4 * P


def test_alloc_phys_lowest_first_contiguous_zeroed(phys, gm):
    a = gm.alloc_phys(3)
    assert a == 2 * P
    phys.write(a, b"\xff" * (3 * P))
    b = gm.alloc_phys()
    assert b == 5 * P
    gm.free_phys(a + P, 1)
    assert gm.alloc_phys(2) == 6 * P          # the hole of one page is too small
    assert gm.alloc_phys(1) == a + P          # lowest first
    assert phys.read(a + P, P) == bytes(P)    # and zeroed again
    assert gm.is_allocated(a) and not gm.is_allocated(8 * P)


def test_alloc_phys_exhaustion_and_free_errors(gm):
    with pytest.raises(MemoryError, match="contiguous"):
        gm.alloc_phys(PAGES - 1)
    with pytest.raises(ValueError, match="reserved"):
        gm.free_phys(0)
    with pytest.raises(ValueError, match="page table"):
        gm.free_phys(gm.cr3)
    with pytest.raises(ValueError, match="not allocated"):
        gm.free_phys(10 * P)
    with pytest.raises(ValueError, match="multiple of 0x1000"):
        gm.free_phys(10 * P + 8)
    with pytest.raises(ValueError, match="n"):
        gm.alloc_phys(0)
    with pytest.raises(TypeError, match="n"):
        gm.alloc_phys(1.5)


# --- map / unmap / remap, checked by the hardware walker -----------------------------------

def test_map_builds_real_tables(phys, gm):
    gva = KERNEL_BASE + 0x1234_5000
    gpa = gm.alloc_phys()
    before = phys.flushes
    gm.map(gva, gpa)
    assert phys.flushes == before + 1
    assert hw_walk(phys, gm, gva + 0x10, True, False) == (
        XLATE_OK, gpa + 0x10, phys._hpa(gpa + 0x10), 0)
    assert hw_walk(phys, gm, gva, False, True) == (XLATE_PF, 0, 0, 1 + mmu.PF_PROTECTION)
    entries = gm.entries(gva)
    assert [name for name, _, _ in entries] == ["PML4", "PDPT", "PD", "PT"]
    for name, entry_gpa, entry in entries[:3]:
        assert entry & 0xFFF == PTE_P | PTE_RW | PTE_US            # the leaf decides
        assert entry & mmu.PTE_ADDR_MASK in gm.table_pages
    assert entries[3][2] == gpa | PTE_P | PTE_RW
    # the entries sit where the hardware walk reads them
    rows = mmu.describe_walk(phys.mem, phys.ept, gm.cr3, gva)
    assert [(r["level"], r["entry_gpa"], r["entry"]) for r in rows[:4]] == entries
    assert len(gm.table_pages) == 4
    # a second page in the same PT allocates no new table
    gm.map(gva + P, gm.alloc_phys())
    assert len(gm.table_pages) == 4


@pytest.mark.parametrize("writable, user", [(True, False), (False, False), (True, True),
                                            (False, True)])
def test_map_rights(phys, gm, writable, user):
    gva = 0x0040_0000
    gm.map(gva, 9 * P, writable=writable, user=user)
    for w in (False, True):
        for u in (False, True):
            code, _, _, info = hw_walk(phys, gm, gva, w, u)
            ok = (writable or not w) and (user or not u)
            assert (code, info) == ((XLATE_OK, 0) if ok else (XLATE_PF, 1 + 8))


def test_map_errors(gm):
    gm.map(KERNEL_BASE, 5 * P)
    with pytest.raises(ValueError, match="already mapped.*remap"):
        gm.map(KERNEL_BASE, 6 * P)
    with pytest.raises(ValueError, match="gva must be a multiple"):
        gm.map(KERNEL_BASE + 8, 5 * P)
    with pytest.raises(ValueError, match="gpa must be a multiple"):
        gm.map(KERNEL_BASE + P, 5 * P + 8)
    with pytest.raises(ValueError, match="gpa must be in"):
        gm.map(KERNEL_BASE + P, PAGES * P)
    with pytest.raises(ValueError, match="canonical"):
        gm.map(0x0000_8000_0000_0000, 5 * P)
    with pytest.raises(ValueError, match="gva must be in"):
        gm.map(-P, 5 * P)
    with pytest.raises(TypeError, match="gva"):
        gm.map("0x1000", 5 * P)
    with pytest.raises(TypeError, match="writable"):
        gm.map(KERNEL_BASE + P, 5 * P, writable=1)


def test_unmap(phys, gm):
    gva = KERNEL_BASE + 0x20_0000
    gm.map(gva, 7 * P)
    assert hw_gpa(phys, gm, gva) == 7 * P
    # the vCPU's TLB holds the translation ...
    assert mmu.translate(phys.mem, phys.ept, gm.cr3, gva, False, False, phys.tlb)[0] == XLATE_OK
    before = phys.flushes
    assert gm.unmap(gva) == 7 * P
    assert phys.flushes == before + 1        # ... and unmap flushed it
    assert hw_walk(phys, gm, gva) == (XLATE_PF, 0, 0, 1)
    assert mmu.translate(phys.mem, phys.ept, gm.cr3, gva, False, False, phys.tlb) == \
        (XLATE_PF, 0, 0, 1)
    assert gm.translate(gva) is None
    with pytest.raises(ValueError, match="not mapped"):
        gm.unmap(gva)
    with pytest.raises(ValueError, match="not mapped.*PDPT"):
        gm.unmap(KERNEL_BASE + (1 << 30))


def test_remap_keeps_flags_and_flushes(phys, gm):
    gva = USER_BASE
    gm.map(gva, 7 * P, writable=False, user=True)
    mmu.translate(phys.mem, phys.ept, gm.cr3, gva, False, True, phys.tlb)
    assert gm.remap(gva, 11 * P) == 7 * P
    assert mmu.translate(phys.mem, phys.ept, gm.cr3, gva + 4, False, True, phys.tlb)[1] == \
        11 * P + 4
    assert gm.entries(gva)[-1][2] == 11 * P | PTE_P | PTE_US
    assert hw_walk(phys, gm, gva, True, True) == (XLATE_PF, 0, 0, 1 + 8)
    with pytest.raises(ValueError, match="not mapped"):
        gm.remap(gva + P, 11 * P)
    with pytest.raises(ValueError, match="new_gpa"):
        gm.remap(gva, PAGES * P)


def test_translate_software_walk(phys, gm):
    gm.map(KERNEL_BASE + P, 12 * P)
    assert gm.translate(KERNEL_BASE + P + 0xABC) == 12 * P + 0xABC
    assert gm.translate(KERNEL_BASE) is None
    assert gm.translate(0) is None
    with pytest.raises(ValueError, match="canonical"):
        gm.translate(1 << 47)
    # a 2 MiB leaf built by hand is honoured, as the hardware does
    pd_entry_gpa = gm.entries(KERNEL_BASE)[2][1] + 8     # PD index 1
    phys.write(pd_entry_gpa, (0x20_0000 | PTE_P | PTE_RW | mmu.PTE_PS).to_bytes(8, "little"))
    gva = KERNEL_BASE + 0x20_0000 + 0x1_2345
    assert gm.translate(gva) == 0x21_2345
    assert hw_walk(phys, gm, gva)[0] == mmu.XLATE_EPT     # beyond the fake's memory
    assert mmu.walk(phys.mem, phys.ept, gm.cr3, gva, False, False) == \
        (mmu.XLATE_EPT, 0x21_2345, 0, 0)
    with pytest.raises(ValueError, match="large page"):
        gm.map(gva & ~0xFFF, 5 * P)


# --- alloc / free and the kernel's own accesses ----------------------------------------------

def test_alloc_kernel_and_user(phys, gm):
    a = gm.alloc(3)
    b = gm.alloc(1)
    u = gm.alloc(2, user=True)
    assert (a, b, u) == (KERNEL_BASE, KERNEL_BASE + 3 * P, USER_BASE)
    base = gm.translate(a)
    for i in range(3):                                   # physically contiguous too
        assert hw_gpa(phys, gm, a + i * P) == base + i * P
        assert hw_walk(phys, gm, a + i * P, True, True)[3] == 1 + 8   # supervisor only
    assert hw_walk(phys, gm, u + P + 5, True, True)[0] == XLATE_OK
    assert hw_walk(phys, gm, b + P) == (XLATE_PF, 0, 0, 1)


def test_free_returns_pages(phys, gm):
    a = gm.alloc(2)
    gpa = gm.translate(a)
    free_before = gm.nr_free_pages()
    gm.free(a, 2)
    assert gm.nr_free_pages() == free_before + 2
    assert hw_walk(phys, gm, a) == (XLATE_PF, 0, 0, 1)
    assert gm.alloc_phys(2) == gpa                       # reused, lowest first
    assert gm.alloc(1) == a + 2 * P                      # virtual range not reused
    with pytest.raises(ValueError, match="not mapped"):
        gm.free(a, 1)
    gm.map(KERNEL_BASE + 100 * P, 40 * P)                # mapped but never allocated
    with pytest.raises(ValueError, match="not an allocated page"):
        gm.free(KERNEL_BASE + 100 * P, 1)


def test_read_write_through_own_tables(phys, gm):
    a = gm.alloc(2)
    data = bytes(range(256)) * 3
    gm.write(a + P - 100, data)                          # crosses the page boundary
    assert gm.read(a + P - 100, len(data)) == data
    # the CPU sees the same bytes
    assert mmu.read_guest(phys.mem, phys.ept, gm.cr3, a + P - 100, len(data)) == data
    assert gm.read(a, 0) == b""


def test_guest_page_faults(phys, gm):
    a = gm.alloc(1)
    with pytest.raises(GuestPageFault, match="PT entry .level 1. not present") as exc:
        gm.read(a + P - 4, 8)
    assert (exc.value.gva, exc.value.level, exc.value.protection) == (a + P, 1, False)
    with pytest.raises(GuestPageFault) as exc:
        gm.read(KERNEL_BASE + (1 << 39), 1)
    assert exc.value.level == 4
    gm.map(USER_BASE, 20 * P, writable=False)
    with pytest.raises(GuestPageFault, match="not present") as exc:
        gm.write(USER_BASE - 4, b"12345678")             # previous page unmapped: checked first
    assert (exc.value.gva, exc.value.level) == (USER_BASE - 4, 2)   # 0x3ff000 has no PT
    gm.map(USER_BASE - P, 21 * P)
    before = phys.mem.copy()
    with pytest.raises(GuestPageFault, match="read-only") as exc:
        gm.write(USER_BASE - 4, b"12345678")
    assert exc.value.protection and exc.value.gva == USER_BASE
    assert np.array_equal(phys.mem, before)              # nothing written
    with pytest.raises(TypeError, match="data"):
        gm.write(a, "text")


def test_constructor_errors(phys):
    with pytest.raises(TypeError, match="flush_tlb"):
        GuestMM(object())
    with pytest.raises(ValueError, match="kernel_base"):
        GuestMM(phys, kernel_base=0x1000)
    with pytest.raises(ValueError, match="kernel_base must be a multiple"):
        GuestMM(phys, kernel_base=KERNEL_BASE + 8)
    with pytest.raises(ValueError, match="reserved_low_pages"):
        GuestMM(phys, reserved_low_pages=0)
    with pytest.raises(ValueError, match="user_base"):
        GuestMM(phys, user_base=1 << 47)


def test_docstrings_name_linux_or_pebslab():
    for name in ("map", "unmap", "remap", "translate", "alloc", "free", "alloc_phys",
                 "free_phys", "read", "write", "entries"):
        doc = getattr(GuestMM, name).__doc__
        first, _, rest = doc.partition("\n\n")
        assert "\n" not in first.strip() and ("Models" in rest or "pebslab only" in rest)
    assert gmm.TABLE_FLAGS == PTE_P | PTE_RW | PTE_US


# --- a property: GuestMM and the hardware walker agree ----------------------------------------

_ops = st.lists(st.tuples(st.sampled_from(["map", "unmap", "remap"]),
                          st.integers(0, 40), st.integers(2, PAGES - 1),
                          st.booleans(), st.booleans()), max_size=25)
_SLOTS = [KERNEL_BASE + i * P for i in range(8)] + \
    [KERNEL_BASE + (i << 21) for i in range(1, 5)] + \
    [KERNEL_BASE + (i << 30) for i in range(1, 4)] + \
    [0xFFFF_FFFF_FFFF_F000, USER_BASE, 0, 0x7FFF_FFFF_F000] + \
    [(i << 39) for i in range(1, 20)]


@settings(max_examples=40, deadline=None)
@given(ops=_ops)
def test_mappings_match_hardware_walk(ops):
    phys = FakePhys()
    gm = GuestMM(phys)
    model = {}
    for op, slot, frame, writable, user in ops:
        gva = _SLOTS[slot % len(_SLOTS)]
        gpa = frame * P
        legal = (gva not in model) if op == "map" else (gva in model)
        try:
            if op == "map":
                gm.map(gva, gpa, writable=writable, user=user)
            elif op == "unmap":
                old = gm.unmap(gva)
            else:
                old = gm.remap(gva, gpa)
        except ValueError:
            assert not legal
            continue
        except MemoryError:            # out of page-table pages: stop here
            return
        assert legal
        if op == "map":
            model[gva] = (gpa, writable, user)
        elif op == "unmap":
            assert old == model.pop(gva)[0]
        else:
            assert old == model[gva][0]
            model[gva] = (gpa,) + model[gva][1:]
    for gva in _SLOTS:
        if gva in model:
            gpa, writable, user = model[gva]
            assert gm.translate(gva + 3) == gpa + 3
            assert hw_walk(phys, gm, gva + 3, writable, user) == \
                (XLATE_OK, gpa + 3, phys._hpa(gpa + 3), 0)
        else:
            assert gm.translate(gva) is None
            assert hw_walk(phys, gm, gva)[0] == XLATE_PF
