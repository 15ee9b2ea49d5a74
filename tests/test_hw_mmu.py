"""Tests for pebslab.hw.mmu: the 2-D page walk, EPT, the TLB.

Expected values follow the x86-64 4-level paging rules (Intel SDM Vol. 3A,
4.5: PML4 index = GVA bits 47:39, PDPT 38:30, PD 29:21, PT 20:12; a PS leaf
in a PDPT / PD maps 1 GiB / 2 MiB) and the result codes of
docs/ARCHITECTURE.md. Tables are built by hand, entry by entry.

The EPT used here is deliberately not the identity: guest frame g lives in
host frame FRAMES-1-g, so a test that confused a GPA with an HPA would fail.
"""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pebslab.hw import mmu
from pebslab.hw.mmu import (EPT_R, EPT_W, EPT_X, PTE_P, PTE_PS, PTE_RW, PTE_US,
                            XLATE_EPT, XLATE_GP, XLATE_OK, XLATE_PF)

FRAMES = 64
EPT_LEN = 1024                # 4 MiB of guest physical space, mostly absent
RWX = EPT_R | EPT_W | EPT_X
TBL = PTE_P | PTE_RW | PTE_US

# guest frames of the hand-built tables
PML4, PDPT, PD, PT = 0x1000, 0x2000, 0x3000, 0x4000
PD_2M = 0x5000                # a PD holding a 2 MiB leaf
DATA = 0xA000                 # the 4 KiB data page

# a canonical GVA whose four indexes are all different and not zero
IDX = {4: 0x0A5, 3: 0x13C, 2: 0x0F7, 1: 0x1E1}
OFFSET = 0x9AB
GVA = (IDX[4] << 39) | (IDX[3] << 30) | (IDX[2] << 21) | (IDX[1] << 12) | OFFSET
GVA_2M = (IDX[4] << 39) | (IDX[3] << 30) | (0x0F8 << 21) | 0x1_2345   # PD index 0xF8
GVA_1G = (IDX[4] << 39) | (0x1C0 << 30) | 0x0003_4567                  # PDPT index 0x1C0
LARGE_2M_GPA = 0x20_0000      # the 2 MiB leaf's frame
TABLE_OF_LEVEL = {4: PML4, 3: PDPT, 2: PD, 1: PT}

NOJIT = os.environ.get("NUMBA_DISABLE_JIT", "0") == "1"


def host_frame(gfn):
    return FRAMES - 1 - gfn


def gpa_to_hpa(ept, gpa):
    return int(ept[gpa >> 12] & mmu.EPT_ADDR_MASK) | (gpa & 0xFFF)


def set_entry(mem, ept, table_gpa, index, value):
    mmu.write_u64(mem, gpa_to_hpa(ept, table_gpa + 8 * index), value)


def get_entry(mem, ept, table_gpa, index):
    return int(mmu.read_u64(mem, gpa_to_hpa(ept, table_gpa + 8 * index)))


def machine():
    """Memory, EPT and tables mapping GVA (4 KiB), GVA_2M (2 MiB) and GVA_1G (1 GiB)."""
    mem = np.zeros(FRAMES * 4096, np.uint8)
    ept = np.zeros(EPT_LEN, np.uint64)
    for gfn in range(FRAMES):
        ept[gfn] = (host_frame(gfn) << 12) | RWX
    # guest frames 0x212, 0x213 (inside the 2 MiB page) and 0x203 (inside the
    # 1 GiB page at GPA 0), backed by host frames 40, 41, 42
    ept[0x212] = (40 << 12) | RWX
    ept[0x213] = (41 << 12) | RWX
    ept[0x203] = (42 << 12) | RWX
    set_entry(mem, ept, PML4, IDX[4], PDPT | TBL)
    set_entry(mem, ept, PDPT, IDX[3], PD | TBL)
    set_entry(mem, ept, PD, IDX[2], PT | TBL)
    set_entry(mem, ept, PT, IDX[1], DATA | TBL)
    set_entry(mem, ept, PD, 0x0F8, LARGE_2M_GPA | TBL | PTE_PS)
    set_entry(mem, ept, PDPT, 0x1C0, 0 | TBL | PTE_PS)          # 1 GiB leaf at GPA 0
    return mem, ept


@pytest.fixture
def m():
    return machine()


def test_constants():
    assert (mmu.PAGE_SIZE, mmu.PAGE_SHIFT) == (4096, 12)
    assert (PTE_P, PTE_RW, PTE_US, mmu.PTE_A, mmu.PTE_D, PTE_PS) == (1, 2, 4, 0x20, 0x40, 0x80)
    assert mmu.PTE_XD == 1 << 63
    assert mmu.PTE_ADDR_MASK == mmu.EPT_ADDR_MASK == ((1 << 52) - 1) & ~0xFFF
    assert (XLATE_OK, XLATE_PF, XLATE_EPT, XLATE_GP, mmu.PF_PROTECTION) == (0, 1, 2, 3, 8)


# --- bytes -------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["njit", "py"])
def test_read_write_u64_little_endian_any_alignment(impl):
    rd = mmu.read_u64 if impl == "njit" else mmu.read_u64.py_func
    wr = mmu.write_u64 if impl == "njit" else mmu.write_u64.py_func
    mem = np.zeros(64, np.uint8)
    wr(mem, 3, 0x8877_6655_4433_2211)
    assert list(mem[3:11]) == [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
    assert mem[2] == 0 and mem[11] == 0
    assert int(rd(mem, 3)) == 0x8877_6655_4433_2211
    wr(mem, 56, 2**64 - 1)
    assert int(rd(mem, 56)) == 2**64 - 1
    for bad in (57, -1, 64):
        with pytest.raises(IndexError):
            rd(mem, bad)
        with pytest.raises(IndexError):
            wr(mem, bad, 0)


# --- canonical addresses -------------------------------------------------------------

@pytest.mark.parametrize("gva, ok", [
    (0, True), (0x0000_7FFF_FFFF_FFFF, True), (0x0000_8000_0000_0000, False),
    (0x8000_0000_0000_0000, False), (0xFFFF_7FFF_FFFF_FFFF, False),
    (0xFFFF_8000_0000_0000, True), (2**64 - 1, True), (0x0001_0000_0000_0000, False),
])
def test_is_canonical(gva, ok):
    assert mmu.is_canonical(gva) == ok
    assert mmu.is_canonical(np.uint64(gva)) == ok
    assert mmu.canonical_u64(gva) == ok
    assert mmu.canonical_u64.py_func(gva) == ok


@pytest.mark.parametrize("addr", [-1, -(1 << 47), 1 << 64, (1 << 64) + 5])
def test_an_integer_outside_64_bits_is_not_canonical(addr):
    assert mmu.is_canonical(addr) is False
    from pebslab.hw import core
    assert core.is_canonical is mmu.is_canonical     # one definition


@pytest.mark.parametrize("gva", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_F000, 1 << 63])
def test_non_canonical_is_gp(m, gva):
    mem, ept = m
    assert mmu.walk(mem, ept, PML4, gva, False, False) == (XLATE_GP, 0, 0, 0)
    assert mmu.translate(mem, ept, PML4, gva, True, True, mmu.tlb_new()) == (XLATE_GP, 0, 0, 0)


# --- EPT -------------------------------------------------------------------------------

def test_ept_translate(m):
    _, ept = m
    assert mmu.ept_translate(ept, 0x3123, False) == (XLATE_OK, (host_frame(3) << 12) | 0x123)
    assert mmu.ept_translate(ept, 0x3123, True) == (XLATE_OK, (host_frame(3) << 12) | 0x123)
    assert mmu.ept_translate(ept, FRAMES << 12, False) == (XLATE_EPT, 0)   # present-bit clear
    assert mmu.ept_translate(ept, EPT_LEN << 12, False) == (XLATE_EPT, 0)  # no memslot
    ept[3] = (7 << 12) | EPT_R                                               # read-only
    assert mmu.ept_translate(ept, 0x3008, False) == (XLATE_OK, 0x7008)
    assert mmu.ept_translate(ept, 0x3008, True) == (XLATE_EPT, 0)
    ept[3] = (7 << 12) | EPT_W | EPT_X                                       # R clear
    assert mmu.ept_translate(ept, 0x3008, False) == (XLATE_EPT, 0)


# --- the walk ----------------------------------------------------------------------------

def test_4k_leaf(m):
    mem, ept = m
    expect = (XLATE_OK, DATA | OFFSET, (host_frame(DATA >> 12) << 12) | OFFSET, 0)
    for write in (False, True):
        for user in (False, True):
            assert mmu.walk(mem, ept, PML4, GVA, write, user) == expect


def test_index_bit_ranges(m):
    """Each level's index comes from its own 9 bits: flip one, the walk misses there."""
    mem, ept = m
    rows = mmu.describe_walk(mem, ept, PML4, GVA)
    assert [r["index"] for r in rows[:4]] == [IDX[4], IDX[3], IDX[2], IDX[1]]
    assert [r["entry_gpa"] for r in rows[:4]] == [
        PML4 + 8 * IDX[4], PDPT + 8 * IDX[3], PD + 8 * IDX[2], PT + 8 * IDX[1]]
    lowest_bit = {4: 39, 3: 30, 2: 21, 1: 12}
    for level, bit in lowest_bit.items():
        for b in (bit, bit + 8):     # lowest and highest bit of the 9-bit index
            other = GVA ^ (1 << b)
            if b == 47:              # the sign bit: flip 63:48 with it to stay canonical
                other ^= 0xFFFF << 48
            assert mmu.walk(mem, ept, PML4, other, False, False) == (XLATE_PF, 0, 0, level)
    for b in range(12):              # bits 11:0 are the page offset
        code, gpa, _, _ = mmu.walk(mem, ept, PML4, GVA ^ (1 << b), False, False)
        assert (code, gpa) == (XLATE_OK, DATA | (OFFSET ^ (1 << b)))


def test_cr3_low_bits_ignored(m):
    mem, ept = m
    ref = mmu.walk(mem, ept, PML4, GVA, False, False)
    assert mmu.walk(mem, ept, PML4 | 0xFFF, GVA, False, False) == ref


def test_2m_leaf(m):
    mem, ept = m
    code, gpa, hpa, info = mmu.walk(mem, ept, PML4, GVA_2M, True, True)
    assert (code, gpa, info) == (XLATE_OK, LARGE_2M_GPA | 0x1_2345, 0)
    assert hpa == (40 << 12) | 0x345
    # the PAT bit (12) of a large leaf is not an address bit
    set_entry(mem, ept, PD, 0x0F8, LARGE_2M_GPA | TBL | PTE_PS | 0x1000)
    assert mmu.walk(mem, ept, PML4, GVA_2M, False, False)[1] == LARGE_2M_GPA | 0x1_2345
    # other 4 KiB slices of the 2 MiB page go through their own EPT entries
    assert mmu.walk(mem, ept, PML4, GVA_2M + 0x1000, False, False)[2] == (41 << 12) | 0x345


def test_2m_leaf_uses_bits_20_0(m):
    mem, ept = m
    code, gpa, _, _ = mmu.walk(mem, ept, PML4, GVA_2M + 0x2000, False, False)
    assert (code, gpa) == (XLATE_EPT, LARGE_2M_GPA | 0x1_4345)   # frame 0x214 absent in EPT


def test_1g_leaf(m):
    mem, ept = m
    code, gpa, hpa, info = mmu.walk(mem, ept, PML4, GVA_1G, False, False)
    assert (code, gpa, hpa, info) == (XLATE_OK, 0x3_4567, (host_frame(0x34) << 12) | 0x567, 0)
    # bits 29:21 belong to the offset too: 0x0020_0000 into the page
    code, gpa, hpa, _ = mmu.walk(mem, ept, PML4, GVA_1G + 0x1C_F000, False, False)
    assert (code, gpa, hpa) == (XLATE_OK, 0x20_3567, (42 << 12) | 0x567)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_not_present_each_level(m, level):
    mem, ept = m
    table = TABLE_OF_LEVEL[level]
    entry = get_entry(mem, ept, table, IDX[level])
    set_entry(mem, ept, table, IDX[level], entry & ~PTE_P)
    for write in (False, True):
        for user in (False, True):
            assert mmu.walk(mem, ept, PML4, GVA, write, user) == (XLATE_PF, 0, 0, level)
    assert mmu.describe_walk(mem, ept, PML4, GVA)[-1]["fault"] == "#PF: not present"


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_rw_protection_each_level(m, level):
    mem, ept = m
    table = TABLE_OF_LEVEL[level]
    set_entry(mem, ept, table, IDX[level], get_entry(mem, ept, table, IDX[level]) & ~PTE_RW)
    assert mmu.walk(mem, ept, PML4, GVA, False, True)[0] == XLATE_OK
    assert mmu.walk(mem, ept, PML4, GVA, True, False) == (XLATE_PF, 0, 0, level + 8)
    assert mmu.walk(mem, ept, PML4, GVA, True, True) == (XLATE_PF, 0, 0, level + 8)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_us_protection_each_level(m, level):
    mem, ept = m
    table = TABLE_OF_LEVEL[level]
    set_entry(mem, ept, table, IDX[level], get_entry(mem, ept, table, IDX[level]) & ~PTE_US)
    assert mmu.walk(mem, ept, PML4, GVA, True, False)[0] == XLATE_OK
    assert mmu.walk(mem, ept, PML4, GVA, False, True) == (XLATE_PF, 0, 0, level + 8)


def test_protection_reports_highest_level_and_presence_wins(m):
    mem, ept = m
    set_entry(mem, ept, PDPT, IDX[3], PD | PTE_P | PTE_US)          # no RW at level 3
    set_entry(mem, ept, PT, IDX[1], DATA | PTE_P)                     # no RW, no US at level 1
    assert mmu.walk(mem, ept, PML4, GVA, True, False) == (XLATE_PF, 0, 0, 3 + 8)
    assert mmu.walk(mem, ept, PML4, GVA, False, True) == (XLATE_PF, 0, 0, 1 + 8)
    # SDM 4.7: a not-present entry below is a P=0 fault even though level 3 denies the write
    set_entry(mem, ept, PT, IDX[1], 0)
    assert mmu.walk(mem, ept, PML4, GVA, True, False) == (XLATE_PF, 0, 0, 1)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_ept_hole_under_table_page(m, level):
    mem, ept = m
    table = TABLE_OF_LEVEL[level]
    ept[table >> 12] = 0
    entry_gpa = table + 8 * IDX[level]
    assert mmu.walk(mem, ept, PML4, GVA, False, False) == (XLATE_EPT, entry_gpa, 0, level)
    # table reads need only EPT read permission
    ept[table >> 12] = (host_frame(table >> 12) << 12) | EPT_R
    assert mmu.walk(mem, ept, PML4, GVA, True, True)[0] == XLATE_OK
    rows = mmu.describe_walk(mem, ept, PML4, GVA)
    assert "fault" not in rows[-1]


def test_ept_beyond_memslot_and_outside_mem(m):
    mem, ept = m
    set_entry(mem, ept, PT, IDX[1], (EPT_LEN << 12) | TBL)           # GPA with no memslot
    assert mmu.walk(mem, ept, PML4, GVA, False, False) == (XLATE_EPT, (EPT_LEN << 12) | OFFSET, 0, 0)
    set_entry(mem, ept, PT, IDX[1], DATA | TBL)
    ept[DATA >> 12] = (FRAMES << 12) | RWX                           # EPT points past mem
    assert mmu.walk(mem, ept, PML4, GVA, False, False) == (XLATE_EPT, DATA | OFFSET, 0, 0)


def test_ept_write_protect_on_final_page(m):
    mem, ept = m
    ept[DATA >> 12] = (host_frame(DATA >> 12) << 12) | EPT_R | EPT_X
    assert mmu.walk(mem, ept, PML4, GVA, False, False)[0] == XLATE_OK
    assert mmu.walk(mem, ept, PML4, GVA, False, True)[0] == XLATE_OK
    assert mmu.walk(mem, ept, PML4, GVA, True, False) == (XLATE_EPT, DATA | OFFSET, 0, 0)
    rows = mmu.describe_walk(mem, ept, PML4, GVA, write=True)
    assert rows[-1]["level"] == "page" and "not writable" in rows[-1]["fault"]
    ept[DATA >> 12] = 0
    assert mmu.walk(mem, ept, PML4, GVA, False, False) == (XLATE_EPT, DATA | OFFSET, 0, 0)


def test_walk_sets_no_accessed_or_dirty_bits(m):
    mem, ept = m
    before = mem.copy()
    mmu.walk(mem, ept, PML4, GVA, True, True)
    mmu.translate(mem, ept, PML4, GVA, True, True, mmu.tlb_new())
    assert np.array_equal(mem, before)


# --- the TLB -----------------------------------------------------------------------------

def test_tlb_new_and_flush():
    tlb = mmu.tlb_new()
    assert tlb.shape == (mmu.TLB_ENTRIES, 3) and tlb.dtype == np.int64
    assert (tlb == -1).all()
    tlb[:] = 5
    mmu.tlb_flush(tlb)
    assert (tlb[:, 0] == -1).all()


def test_tlb_hit_equals_walk_and_caches_only_success(m):
    mem, ept = m
    tlb = mmu.tlb_new()
    ref = mmu.walk(mem, ept, PML4, GVA, False, False)
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb) == ref      # miss, fill
    slot = (GVA >> 12) % mmu.TLB_ENTRIES
    hpa_page = ref[2] & ~0xFFF
    assert list(tlb[slot]) == [GVA >> 12, hpa_page | mmu.TLB_WRITABLE | mmu.TLB_USER, DATA]
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb) == ref      # hit
    assert mmu.translate(mem, ept, PML4, GVA + 0x10, True, True, tlb) == \
        mmu.walk(mem, ept, PML4, GVA + 0x10, True, True)
    # a fault is not cached
    tlb2 = mmu.tlb_new()
    assert mmu.translate(mem, ept, PML4, GVA ^ (1 << 12), False, False, tlb2)[0] == XLATE_PF
    assert (tlb2 == -1).all()


def test_tlb_kernel_half_tag(m):
    """A high-half GVA gets a 36-bit tag (bits 47:12), never a negative one."""
    mem, ept = m
    gva = (0x1FFFF << 47) | (0x100 << 39) | 0x123
    set_entry(mem, ept, PML4, 0x100, PDPT | TBL)
    set_entry(mem, ept, PDPT, 0, 0 | TBL | PTE_PS)
    tlb = mmu.tlb_new()
    assert mmu.translate(mem, ept, PML4, gva, False, False, tlb) == \
        (XLATE_OK, 0x123, host_frame(0) << 12 | 0x123, 0)
    assert tlb[(gva >> 12) % mmu.TLB_ENTRIES, 0] == (gva >> 12) & ((1 << 36) - 1)


def test_tlb_stale_until_flush(m):
    """Hardware behaviour: a TLB is not coherent with the page tables.

    After the guest changes a leaf, a cached translation still answers with the
    old page until software flushes (invlpg, CR3 reload). That is why a guest
    that remaps its PEBS buffer keeps writing to the old page for a while.
    """
    mem, ept = m
    tlb = mmu.tlb_new()
    old = mmu.translate(mem, ept, PML4, GVA, False, False, tlb)
    set_entry(mem, ept, PT, IDX[1], 0xB000 | TBL)                     # remap to frame 0xB
    new = mmu.walk(mem, ept, PML4, GVA, False, False)
    assert new[1] == 0xB000 | OFFSET
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb) == old   # stale
    mmu.tlb_flush(tlb)
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb) == new
    # unmapping is stale too until the flush
    set_entry(mem, ept, PT, IDX[1], 0)
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb) == new
    mmu.tlb_flush(tlb)
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb) == (XLATE_PF, 0, 0, 1)


def test_tlb_hit_without_rights_rewalks(m):
    mem, ept = m
    tlb = mmu.tlb_new()
    slot = (GVA >> 12) % mmu.TLB_ENTRIES
    # read-only supervisor leaf: the cached entry carries neither flag
    set_entry(mem, ept, PT, IDX[1], DATA | PTE_P)
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb)[0] == XLATE_OK
    assert tlb[slot, 1] & 3 == 0
    assert mmu.translate(mem, ept, PML4, GVA, True, False, tlb) == (XLATE_PF, 0, 0, 1 + 8)
    assert mmu.translate(mem, ept, PML4, GVA, False, True, tlb) == (XLATE_PF, 0, 0, 1 + 8)
    # once the tables allow it, the re-walk succeeds and refills the entry
    set_entry(mem, ept, PT, IDX[1], DATA | TBL)
    assert mmu.translate(mem, ept, PML4, GVA, True, True, tlb)[0] == XLATE_OK
    assert tlb[slot, 1] & 3 == 3


def test_tlb_writable_needs_ept_write(m):
    mem, ept = m
    tlb = mmu.tlb_new()
    slot = (GVA >> 12) % mmu.TLB_ENTRIES
    ept[DATA >> 12] = (host_frame(DATA >> 12) << 12) | EPT_R
    assert mmu.translate(mem, ept, PML4, GVA, False, False, tlb)[0] == XLATE_OK
    assert tlb[slot, 1] & mmu.TLB_WRITABLE == 0
    assert mmu.translate(mem, ept, PML4, GVA, True, False, tlb) == (XLATE_EPT, DATA | OFFSET, 0, 0)


# --- numba and Python agree ---------------------------------------------------------------

_MACHINE = machine()
# a few broken spots so that every result code shows up
set_entry(_MACHINE[0], _MACHINE[1], PD, 0x0F9, 0x7000 | PTE_P)          # read-only supervisor PT
set_entry(_MACHINE[0], _MACHINE[1], 0x7000, 0, DATA | TBL)               # ... with one page
set_entry(_MACHINE[0], _MACHINE[1], PML4, 0x0A6, (0x30 << 12) | TBL)   # PDPT in an EPT hole
_MACHINE[1][0x30] = 0

_near = st.sampled_from([GVA, GVA_2M, GVA_1G, (IDX[4] << 39) | (IDX[3] << 30) | (0x0F9 << 21),
                         0x0A6 << 39, 0x0000_7FFF_FFFF_F000, 0xFFFF_8000_0000_0000])
_gvas = st.one_of(st.integers(0, 2**64 - 1),
                  st.builds(lambda base, delta: (base + delta) % 2**64, _near,
                            st.integers(-(1 << 22), 1 << 22)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gva=_gvas, write=st.booleans(), user=st.booleans(), as_u64=st.booleans())
def test_njit_matches_py_func(gva, write, user, as_u64):
    mem, ept = _MACHINE
    g = np.uint64(gva) if as_u64 else gva
    for fn, args in ((mmu.walk, (mem, ept, PML4, g, write, user)),
                     (mmu.canonical_u64, (g,)),
                     (mmu.ept_translate, (ept, np.uint64(gva & 0x3F_FFFF), write))):
        if NOJIT:               # fn is fn.py_func: comparing them proves nothing
            break
        assert tuple(np.atleast_1d(fn(*args))) == tuple(np.atleast_1d(fn.py_func(*args)))
    tlb_a, tlb_b = mmu.tlb_new(), mmu.tlb_new()
    for _ in range(2):                  # the second call may hit
        a = mmu.translate(mem, ept, PML4, g, write, user, tlb_a)
        b = mmu.translate.py_func(mem, ept, PML4, g, write, user, tlb_b)
        assert a == b == mmu.walk(mem, ept, PML4, g, write, user)
    assert np.array_equal(tlb_a, tlb_b)
    # describe_walk tells the same story as walk
    code, gpa, hpa, info = mmu.walk(mem, ept, PML4, g, write, user)
    rows = mmu.describe_walk(mem, ept, PML4, gva, write, user)
    faults = [r for r in rows if "fault" in r]
    assert len(faults) == (code != XLATE_OK)
    if code == XLATE_OK:
        assert (rows[-1]["gpa"], rows[-1]["hpa"]) == (gpa, hpa)
    elif code == XLATE_PF:
        assert faults[0]["level"] == mmu.LEVEL_NAMES[info & 7]
    elif code == XLATE_EPT:
        assert faults[0]["level"] == (mmu.LEVEL_NAMES[info] if info else "page")


# --- Python-level helpers -----------------------------------------------------------------

def test_read_write_guest_across_pages(m):
    mem, ept = m
    # map GVA's neighbour page to frame 0xB so an access can cross pages
    set_entry(mem, ept, PT, IDX[1] + 1, 0xB000 | TBL)
    start = (GVA & ~0xFFF) + 0xFF0
    data = bytes(range(32))
    tlb = mmu.tlb_new()
    mmu.write_guest(mem, ept, PML4, start, data, tlb)
    assert mmu.read_guest(mem, ept, PML4, start, 32, tlb) == data
    assert mmu.read_guest(mem, ept, PML4, start, 32) == data
    h1 = gpa_to_hpa(ept, DATA + 0xFF0)
    h2 = gpa_to_hpa(ept, 0xB000)
    assert mem[h1:h1 + 16].tobytes() == data[:16]
    assert mem[h2:h2 + 16].tobytes() == data[16:]
    assert mmu.read_guest(mem, ept, PML4, start, 0) == b""
    mmu.write_guest(mem, ept, PML4, start, np.arange(4, dtype=np.uint8))
    assert mmu.read_guest(mem, ept, PML4, start, 4) == bytes([0, 1, 2, 3])


def test_write_guest_faults_leave_memory_unchanged(m):
    mem, ept = m
    start = (GVA & ~0xFFF) + 0xFF0          # the next page is not mapped
    before = mem.copy()
    with pytest.raises(mmu.TranslationFault) as exc:
        mmu.write_guest(mem, ept, PML4, start, bytes(32))
    assert np.array_equal(mem, before)
    f = exc.value
    assert (f.code, f.gva, f.level, f.protection) == (XLATE_PF, (GVA & ~0xFFF) + 0x1000, 1, False)
    assert "PT entry not present" in str(f)


def test_translation_fault_messages(m):
    mem, ept = m
    ept[PD >> 12] = 0
    with pytest.raises(mmu.TranslationFault, match=r"EPT violation at GPA 0x3.* PD entry"):
        mmu.read_guest(mem, ept, PML4, GVA, 1)
    with pytest.raises(mmu.TranslationFault, match="not canonical"):
        mmu.read_guest(mem, ept, PML4, 1 << 47, 1)
    mem, ept = machine()
    set_entry(mem, ept, PT, IDX[1], DATA | PTE_P)
    with pytest.raises(mmu.TranslationFault, match="protection fault at the PT entry") as exc:
        mmu.write_guest(mem, ept, PML4, GVA, b"x")
    assert exc.value.info == 1 + mmu.PF_PROTECTION


def test_describe_walk_rows(m):
    mem, ept = m
    rows = mmu.describe_walk(mem, ept, PML4, GVA)
    assert [r["level"] for r in rows] == ["PML4", "PDPT", "PD", "PT", "page"]
    assert [r["next"] for r in rows[:4]] == [PDPT, PD, PT, DATA]
    assert rows[0]["flags"] == "P RW US"
    assert rows[0]["entry_hpa"] == gpa_to_hpa(ept, PML4 + 8 * IDX[4])
    assert rows[0]["entry"] == PDPT | TBL
    assert rows[-1] == {"level": "page", "size": 4096, "gpa": DATA | OFFSET,
                        "hpa": gpa_to_hpa(ept, DATA | OFFSET)}
    rows = mmu.describe_walk(mem, ept, PML4, GVA_2M)
    assert [r["level"] for r in rows] == ["PML4", "PDPT", "PD", "page"]
    assert "PS" in rows[2]["flags"] and rows[-1]["size"] == 2 << 20
    assert mmu.describe_walk(mem, ept, PML4, 1 << 47)[0]["fault"].startswith("#GP")
    assert mmu.pte_flags(PTE_P | mmu.PTE_XD) == "P XD"


@pytest.mark.parametrize("call, exc, words", [
    (lambda m: mmu.read_guest(m[0].astype(np.int8), m[1], PML4, 0, 1), TypeError, "mem"),
    (lambda m: mmu.read_guest(m[0], m[1].astype(np.int64), PML4, 0, 1), TypeError, "ept"),
    (lambda m: mmu.read_guest(m[0], m[1], PML4, -1, 1), ValueError, "gva"),
    (lambda m: mmu.read_guest(m[0], m[1], PML4, 2**64, 1), ValueError, "gva"),
    (lambda m: mmu.read_guest(m[0], m[1], PML4, 1.0, 1), TypeError, "gva"),
    (lambda m: mmu.read_guest(m[0], m[1], PML4, 0, -1), ValueError, "n"),
    (lambda m: mmu.read_guest(m[0], m[1], PML4, 2**64 - 1, 2), ValueError, "gva \\+ n"),
    (lambda m: mmu.read_guest(m[0], m[1], "x", 0, 1), TypeError, "cr3"),
    (lambda m: mmu.read_guest(m[0], m[1], PML4, 0, 1, np.zeros((64, 2), np.int64)),
     TypeError, "tlb"),
    (lambda m: mmu.write_guest(m[0], m[1], PML4, 0, "text"), TypeError, "data"),
    (lambda m: mmu.write_guest(m[0], m[1], PML4, True, b"x"), TypeError, "gva"),
    (lambda m: mmu.describe_walk(m[0], list(m[1]), PML4, 0), TypeError, "ept"),
    (lambda m: mmu.read_guest(m[0][::2], m[1], PML4, 0, 1), TypeError, "mem.*C-contiguous"),
    (lambda m: mmu.pte_flags(-5), ValueError, "entry"),
])
def test_bad_arguments(m, call, exc, words):
    with pytest.raises(exc, match=words):
        call(m)
