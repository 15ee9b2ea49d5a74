"""The MMU: an x86-64 4-level page walk through EPT, and a small software TLB.

A guest virtual address (GVA) becomes a guest physical address (GPA) by
walking the guest's own page tables (PML4 -> PDPT -> PD -> PT), which live
in guest memory; every GPA the walk touches, the table entries included,
becomes a host physical address (HPA) through the VM's EPT. That is the
"two-dimensional walk" of hardware-assisted virtualization, and it is why an
EPT hole under a page-table page is an EPT violation even though the guest
only asked for a GVA.

The layouts are the ones pinned down in docs/ARCHITECTURE.md: host memory is
one ``numpy.uint8`` array ``mem``, the EPT is a flat ``numpy.uint64`` array
indexed by guest frame number, guest entries are real 8-byte little-endian
x86-64 entries. The hot functions are ``@njit(cache=True)`` over plain
arrays and integers, so the numba run loop of the core calls them directly;
each keeps its pure-Python twin as ``.py_func``. They carry explicit
signatures (addresses uint64, arrays C-contiguous), see _SIG_* below. The Python-level helpers at
the bottom (``read_guest``, ``write_guest``, ``describe_walk``) check their
arguments and are meant for notebooks and the software layers.

Numbers: every address is handled as ``np.uint64`` inside the walk (a GVA may
be anything up to 2**64-1) and returned as ``int64`` (GPAs and HPAs are
below 2**52), so callers can add offsets to them without mixing signed and
unsigned integers, which numba would otherwise turn into floats.

What the model leaves out (none of it matters to the PEBS patch): the walker
sets no accessed/dirty bits, checks no reserved bits (PS in a PML4 entry is
ignored), models no execute permission (XD is decoded for display only),
SMEP/SMAP, PCID or PKEYs. Supervisor writes honour RW as with CR0.WP=1,
which is what Linux runs with.
"""

from __future__ import annotations

import numpy as np

from .._jit import njit


# --- pages and guest page-table entries (Intel SDM Vol. 3A, ch. 4.5) -------
PAGE_SIZE = 4096
PAGE_SHIFT = 12
PTE_P = 1                          # present
PTE_RW = 2                         # writable
PTE_US = 4                         # user-accessible
PTE_PWT = 0x08                     # write-through (decoded for display only)
PTE_PCD = 0x10                     # cache disable (decoded for display only)
PTE_A = 0x20                       # accessed (never set by the model)
PTE_D = 0x40                       # dirty (never set by the model)
PTE_PS = 0x80                      # page size: a 1 GiB / 2 MiB leaf in a PDPT / PD
PTE_G = 0x100                      # global (decoded for display only)
PTE_XD = 1 << 63                   # execute disable (decoded for display only)
PTE_ADDR_MASK = 0x000F_FFFF_FFFF_F000  # bits 51:12

# --- EPT leaf entries (Intel SDM Vol. 3C, ch. 28.2) --------------------------
EPT_R = 1
EPT_W = 2
EPT_X = 4
EPT_RWX = EPT_R | EPT_W | EPT_X
EPT_ADDR_MASK = PTE_ADDR_MASK

# --- translation result codes (docs/ARCHITECTURE.md) -------------------------
XLATE_OK = 0                       # translated
XLATE_PF = 1                       # guest page fault; info = level (+8 if protection)
XLATE_EPT = 2                      # EPT violation; the faulting GPA is in gpa
XLATE_GP = 3                       # non-canonical GVA (#GP)
PF_PROTECTION = 8                  # added to the level in info for a rights fault

LEVEL_NAMES = {4: "PML4", 3: "PDPT", 2: "PD", 1: "PT"}

# --- the software TLB -----------------------------------------------------------
TLB_ENTRIES = 64
TLB_WRITABLE = 1                   # flag in column 1: writable in guest tables and EPT
TLB_USER = 2                       # flag in column 1: user-accessible at every level

# uint64 twins of the constants, so numba never mixes signed and unsigned.
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U8 = np.uint64(8)
_U12 = np.uint64(PAGE_SHIFT)
_U47 = np.uint64(47)
_UOFF = np.uint64(PAGE_SIZE - 1)
_UINDEX = np.uint64(0x1FF)
_UTOP17 = np.uint64(0x1FFFF)
_UADDR = np.uint64(PTE_ADDR_MASK)
_UVPN = np.uint64((1 << 36) - 1)
_UBYTE = np.uint64(0xFF)
_UP = np.uint64(PTE_P)
_URW = np.uint64(PTE_RW)
_UUS = np.uint64(PTE_US)
_UPS = np.uint64(PTE_PS)
_UEPT_R = np.uint64(EPT_R)
_UEPT_W = np.uint64(EPT_W)

_U64_MAX = (1 << 64) - 1

# Explicit signatures: addresses and values are uint64, so a Python int up to
# 2**64-1 is always accepted. (Left lazy, numba would reuse an int64
# specialization compiled for a small address and overflow on a large one.)
# Arrays must be C-contiguous: mem uint8, ept uint64, tlb int64 (TLB_ENTRIES, 3).
_MEM = "uint8[::1]"
_EPT = "uint64[::1]"
_SIG_IS_CANONICAL = "boolean(uint64)"
_SIG_READ_U64 = f"uint64({_MEM}, int64)"
_SIG_WRITE_U64 = f"void({_MEM}, int64, uint64)"
_SIG_EPT_TRANSLATE = f"UniTuple(int64, 2)({_EPT}, uint64, boolean)"
_SIG_WALK5 = f"UniTuple(int64, 5)({_MEM}, {_EPT}, uint64, uint64, boolean, boolean)"
_SIG_WALK = f"UniTuple(int64, 4)({_MEM}, {_EPT}, uint64, uint64, boolean, boolean)"
_SIG_TLB_FLUSH = "void(int64[:, ::1])"
_SIG_TRANSLATE = (f"UniTuple(int64, 4)({_MEM}, {_EPT}, uint64, uint64, boolean, boolean, "
                  f"int64[:, ::1])")


# =============================================================================
# Hot path (numba)
# =============================================================================

@njit(_SIG_IS_CANONICAL, cache=True)
def canonical_u64(gva):
    """Tell whether a 64-bit address is canonical for 48-bit linear addresses.

    pebslab only (the check the CPU makes before any walk; Linux has the same
    test as __is_canonical_address() in arch/x86/include/asm/page.h).
    Bits 63:47 must be all zeros or all ones. ``gva`` is a uint64; software
    layers call :func:`is_canonical`, which takes any integer.
    """
    top = np.uint64(gva) >> _U47
    return top == _U0 or top == _UTOP17


def is_canonical(addr) -> bool:
    """True if the integer ``addr`` is a canonical 64-bit address (the rule: canonical_u64).

    pebslab only. Any Python or numpy integer; one outside 0..2**64-1 is no
    address at all, so not canonical.
    """
    return 0 <= addr <= _U64_MAX and bool(canonical_u64(np.uint64(addr)))


@njit(_SIG_READ_U64, cache=True)
def read_u64(mem, hpa):
    """Read the little-endian 8 bytes at host physical address hpa.

    pebslab only (a memory load by the page walker). Any alignment; raises
    IndexError if the 8 bytes are not all inside mem.
    """
    base = np.int64(hpa)
    if base < 0 or base + 8 > mem.size:
        raise IndexError("read_u64: hpa outside host memory")
    value = _U0
    for i in range(8):
        value |= np.uint64(mem[base + i]) << np.uint64(8 * i)
    return value


@njit(_SIG_WRITE_U64, cache=True)
def write_u64(mem, hpa, value):
    """Write value as 8 little-endian bytes at host physical address hpa.

    pebslab only (a memory store). Any alignment; raises IndexError if the
    8 bytes are not all inside mem.
    """
    base = np.int64(hpa)
    if base < 0 or base + 8 > mem.size:
        raise IndexError("write_u64: hpa outside host memory")
    v = np.uint64(value)
    for i in range(8):
        mem[base + i] = np.uint8((v >> np.uint64(8 * i)) & _UBYTE)


@njit(_SIG_EPT_TRANSLATE, cache=True)
def ept_translate(ept, gpa, write):
    """Translate a GPA to an HPA through the flat EPT: return (code, hpa).

    pebslab only (the second dimension of the hardware walk; the software
    twin in KVM is the EPT page walk of arch/x86/kvm/mmu/paging_tmpl.h).
    code is XLATE_OK, or XLATE_EPT when the GPA has no memslot (its frame
    number is beyond len(ept)), the entry is not present (R clear), or a write
    meets an entry without W. hpa is 0 on failure.
    """
    g = np.uint64(gpa)
    gfn = g >> _U12
    if gfn >= np.uint64(ept.size):
        return XLATE_EPT, np.int64(0)
    entry = np.uint64(ept[np.int64(gfn)])
    if (entry & _UEPT_R) == _U0:
        return XLATE_EPT, np.int64(0)
    if write and (entry & _UEPT_W) == _U0:
        return XLATE_EPT, np.int64(0)
    return XLATE_OK, np.int64((entry & _UADDR) | (g & _UOFF))


@njit(_SIG_WALK5, cache=True)
def _walk(mem, ept, cr3, gva, write, user):
    """The 2-D walk; return (code, gpa, hpa, info, rights).

    pebslab only. rights (TLB_WRITABLE | TLB_USER) is what the TLB caches:
    writable means RW at every level and W in EPT, user means US at every
    level. Presence is checked level by level while walking; access rights
    are checked once the walk has reached a present leaf, over all levels
    (Intel SDM Vol. 3A, 4.6 and 4.7: a not-present entry anywhere is a
    P=0 fault even if a higher level also denies the access). A protection
    fault reports the highest level whose entry denies the access.
    """
    va = np.uint64(gva)
    if not canonical_u64(va):
        return XLATE_GP, np.int64(0), np.int64(0), np.int64(0), np.int64(0)
    table = np.uint64(cr3) & _UADDR
    rw_all = True
    us_all = True
    prot_level = np.int64(0)
    gpa = _U0
    for level in range(4, 0, -1):
        shift = np.uint64(3 + 9 * level)            # 39, 30, 21, 12
        index = (va >> shift) & _UINDEX
        entry_gpa = table + index * _U8
        code, entry_hpa = ept_translate(ept, entry_gpa, False)
        if code != XLATE_OK or entry_hpa + 8 > mem.size:
            return (XLATE_EPT, np.int64(entry_gpa), np.int64(0),
                    np.int64(level), np.int64(0))
        entry = read_u64(mem, entry_hpa)
        if (entry & _UP) == _U0:
            return XLATE_PF, np.int64(0), np.int64(0), np.int64(level), np.int64(0)
        rw = (entry & _URW) != _U0
        us = (entry & _UUS) != _U0
        if prot_level == 0 and ((write and not rw) or (user and not us)):
            prot_level = np.int64(level)
        rw_all = rw_all and rw
        us_all = us_all and us
        if level == 1 or (level <= 3 and (entry & _UPS) != _U0):
            size_mask = (_U1 << shift) - _U1
            gpa = (entry & _UADDR & ~size_mask) | (va & size_mask)
            break
        table = entry & _UADDR
    if prot_level != 0:
        return (XLATE_PF, np.int64(0), np.int64(0),
                prot_level + PF_PROTECTION, np.int64(0))
    code, hpa = ept_translate(ept, gpa, write)
    if code != XLATE_OK or (hpa | (PAGE_SIZE - 1)) >= mem.size:
        return XLATE_EPT, np.int64(gpa), np.int64(0), np.int64(0), np.int64(0)
    rights = np.int64(0)
    if rw_all:
        wcode, _ = ept_translate(ept, gpa, True)
        if wcode == XLATE_OK:
            rights |= TLB_WRITABLE
    if us_all:
        rights |= TLB_USER
    return XLATE_OK, np.int64(gpa), np.int64(hpa), np.int64(0), rights


@njit(_SIG_WALK, cache=True)
def walk(mem, ept, cr3, gva, write, user):
    """Walk the guest page tables and EPT for one access: (code, gpa, hpa, info).

    pebslab only (what the CPU's page-miss handler does on a TLB miss; the
    software walker KVM uses for the same job is paging64_walk_addr() in
    arch/x86/kvm/mmu/paging_tmpl.h).
    cr3 holds the GPA of the PML4 (its low 12 bits are ignored). Results, as
    in docs/ARCHITECTURE.md:

    * non-canonical gva: (XLATE_GP, 0, 0, 0);
    * a table entry whose GPA fails EPT: (XLATE_EPT, entry GPA, 0, level);
    * a not-present entry: (XLATE_PF, 0, 0, level), level 4 (PML4) .. 1 (PT);
    * write without RW, or user without US, at some level:
      (XLATE_PF, 0, 0, level + PF_PROTECTION), the highest such level
      (checked after the walk has found every level present);
    * the final GPA fails EPT (absent, or a write to a non-W entry):
      (XLATE_EPT, gpa, 0, 0);
    * else (XLATE_OK, gpa, hpa, 0).

    PS in a PDPT / PD entry makes a 1 GiB / 2 MiB leaf. An EPT entry that
    points outside mem also counts as an EPT violation (real hardware calls
    that an EPT misconfiguration).
    """
    code, gpa, hpa, info, _rights = _walk(mem, ept, cr3, gva, write, user)
    return code, gpa, hpa, info


@njit(_SIG_TLB_FLUSH, cache=True)
def tlb_flush(tlb):
    """Invalidate every TLB entry (set all tags to -1).

    Models a CR3 write / INVEPT, and what Linux's flush_tlb_local()
    (arch/x86/mm/tlb.c) achieves; the model has one flush for invlpg too.
    """
    for i in range(tlb.shape[0]):
        for j in range(tlb.shape[1]):
            tlb[i, j] = -1


@njit(_SIG_TRANSLATE, cache=True)
def translate(mem, ept, cr3, gva, write, user, tlb):
    """Translate one access through the TLB, walking on a miss: (code, gpa, hpa, info).

    pebslab only (the CPU's TLB lookup in front of the page walk).
    Direct-mapped: slot (gva >> 12) % TLB_ENTRIES, tag = (gva >> 12) masked
    to 36 bits. A hit is used only if it grants the access (write needs the
    writable flag, user the user flag); otherwise the full walk decides.
    Only successful walks are cached, never faults.

    Like a real TLB, entries are *not* kept coherent with the tables: after
    the guest edits a page-table entry, or the host edits the EPT, a hit
    still returns the old translation until software calls tlb_flush(tlb).
    """
    va = np.uint64(gva)
    if not canonical_u64(va):
        return XLATE_GP, np.int64(0), np.int64(0), np.int64(0)
    vpn = np.int64((va >> _U12) & _UVPN)
    slot = vpn % tlb.shape[0]          # TLB_ENTRIES for a tlb_new() TLB; never out of bounds
    off = np.int64(va & _UOFF)
    if tlb[slot, 0] == vpn:
        flags = tlb[slot, 1]
        if (not write or (flags & TLB_WRITABLE) != 0) and \
                (not user or (flags & TLB_USER) != 0):
            return (XLATE_OK, np.int64(tlb[slot, 2] | off),
                    np.int64((flags & ~np.int64(PAGE_SIZE - 1)) | off), np.int64(0))
    code, gpa, hpa, info, rights = _walk(mem, ept, cr3, va, write, user)
    if code == XLATE_OK:
        tlb[slot, 0] = vpn
        tlb[slot, 1] = (hpa & ~np.int64(PAGE_SIZE - 1)) | rights
        tlb[slot, 2] = gpa & ~np.int64(PAGE_SIZE - 1)
    return code, gpa, hpa, info


# Under NUMBA_DISABLE_JIT=1 numba hands back the plain functions; give them the
# .py_func the tests and the core's equivalence checks rely on.
for _hot in (canonical_u64, read_u64, write_u64, ept_translate, _walk, walk,
             tlb_flush, translate):
    if not hasattr(_hot, "py_func"):
        _hot.py_func = _hot
del _hot


# =============================================================================
# Python level: argument checks, faults as exceptions, notebook helpers
# =============================================================================

class TranslationFault(Exception):
    """A modeled translation failure seen by a Python-level access.

    pebslab only. Carries the result code, the GVA that failed, the GPA
    (for EPT violations) and the walk's info word (level, +8 for a
    protection fault), decoded in the message.
    """

    def __init__(self, code, gva, gpa, info, write=False, user=False):
        self.code = int(code)
        self.gva = int(gva)
        self.gpa = int(gpa)
        self.info = int(info)
        self.write = bool(write)
        self.user = bool(user)
        self.level = self.info & 7
        self.protection = bool(self.info & PF_PROTECTION)
        super().__init__(self._message())

    def _message(self):
        access = ("user " if self.user else "supervisor ") + \
            ("write" if self.write else "read")
        where = f"{access} of GVA {self.gva:#x}"
        name = LEVEL_NAMES.get(self.level, "?")
        if self.code == XLATE_GP:
            return f"#GP: {where}: not canonical (bits 63:47 must all be equal)"
        if self.code == XLATE_PF and self.protection:
            return (f"guest #PF: {where}: protection fault at the {name} entry "
                    f"(level {self.level}; writes need RW and user accesses US "
                    f"at every level)")
        if self.code == XLATE_PF:
            return f"guest #PF: {where}: {name} entry not present (level {self.level})"
        if self.code == XLATE_EPT and self.level:
            return (f"EPT violation at GPA {self.gpa:#x} while reading the {name} "
                    f"entry (level {self.level}) for the {where}")
        if self.code == XLATE_EPT:
            return (f"EPT violation at GPA {self.gpa:#x}, the data page of the "
                    f"{where} (not present in EPT, or not writable for a write)")
        return f"translation fault code {self.code} for the {where}"


def _check_array(name, arr, dtype, ndim, what):
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim \
            or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise TypeError(f"{name} must be {what} (C-contiguous, writeable); "
                        f"got {_describe(arr)}")
    return arr


def _check_mem(mem):
    return _check_array("mem", mem, np.uint8, 1, "a 1-D numpy.uint8 array")


def _check_ept(ept):
    return _check_array("ept", ept, np.uint64, 1, "a 1-D numpy.uint64 array")


def _check_tlb(tlb):
    if tlb is None:
        return None
    _check_array("tlb", tlb, np.int64, 2, f"None or an int64 array of shape "
                 f"({TLB_ENTRIES}, 3) from tlb_new()")
    if tlb.shape != (TLB_ENTRIES, 3):
        raise TypeError(f"tlb must be None or an int64 array of shape "
                        f"({TLB_ENTRIES}, 3) from tlb_new(); got {_describe(tlb)}")
    return tlb


def _check_int(name, value, low, high):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer in {low:#x}..{high:#x}; "
                        f"got {value!r} ({type(value).__name__})")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low:#x}..{high:#x}; got {value:#x}"
                         if value >= 0 else
                         f"{name} must be in {low:#x}..{high:#x}; got {value}")
    return value


def _describe(obj):
    if isinstance(obj, np.ndarray):
        notes = "" if obj.flags.c_contiguous else " not C-contiguous"
        notes += "" if obj.flags.writeable else " read-only"
        return f"ndarray dtype={obj.dtype} shape={obj.shape}{notes}"
    return f"{type(obj).__name__}"


def tlb_new():
    """Return an empty software TLB: int64 array (TLB_ENTRIES, 3), all -1.

    pebslab only. Columns: tag (GVA page number), HPA page | TLB_WRITABLE |
    TLB_USER, GPA page. A tag of -1 is an invalid entry.
    """
    return np.full((TLB_ENTRIES, 3), -1, np.int64)


def _pieces(mem, ept, cr3, gva, n, write, tlb):
    """Translate [gva, gva+n) page by page: list of (hpa, length)."""
    pieces = []
    va = gva
    end = gva + n
    while va < end:
        length = min(end, (va | (PAGE_SIZE - 1)) + 1) - va
        if tlb is None:
            code, gpa, hpa, info = walk(mem, ept, np.uint64(cr3), np.uint64(va),
                                        write, False)
        else:
            code, gpa, hpa, info = translate(mem, ept, np.uint64(cr3),
                                             np.uint64(va), write, False, tlb)
        if code != XLATE_OK:
            raise TranslationFault(code, va, gpa, info, write=write, user=False)
        pieces.append((int(hpa), length))
        va += length
    return pieces


def read_guest(mem, ept, cr3, gva, n, tlb=None):
    """Read n bytes at a guest virtual address, as the guest kernel would.

    pebslab only (a supervisor load through the MMU; what KVM does in
    software for the same job is kvm_read_guest_virt() in arch/x86/kvm/x86.c).
    Translates page by page through tlb (or a plain walk if tlb is None);
    raises TranslationFault naming the first page that fails. Returns bytes.
    """
    _check_mem(mem)
    _check_ept(ept)
    tlb = _check_tlb(tlb)
    cr3 = _check_int("cr3", cr3, 0, _U64_MAX)
    gva = _check_int("gva", gva, 0, _U64_MAX)
    n = _check_int("n", n, 0, _U64_MAX)
    if gva + n > _U64_MAX + 1:
        raise ValueError(f"gva + n must not pass 2**64; got gva={gva:#x}, n={n}")
    out = bytearray()
    for hpa, length in _pieces(mem, ept, cr3, gva, n, False, tlb):
        out += mem[hpa:hpa + length].tobytes()
    return bytes(out)


def write_guest(mem, ept, cr3, gva, data, tlb=None):
    """Write bytes at a guest virtual address, as the guest kernel would.

    pebslab only (a supervisor store through the MMU; KVM's software twin is
    kvm_write_guest_virt_system() in arch/x86/kvm/x86.c). Every page is
    translated for writing before any byte is stored, so a fault leaves
    memory unchanged. Raises TranslationFault; returns None.
    """
    _check_mem(mem)
    _check_ept(ept)
    tlb = _check_tlb(tlb)
    cr3 = _check_int("cr3", cr3, 0, _U64_MAX)
    gva = _check_int("gva", gva, 0, _U64_MAX)
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"data must be bytes-like or a uint8 array; got {_describe(data)}")
        data = data.tobytes()
    elif isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
    else:
        raise TypeError(f"data must be bytes, bytearray, memoryview or a uint8 array; "
                        f"got {type(data).__name__}")
    if gva + len(data) > _U64_MAX + 1:
        raise ValueError(f"gva + len(data) must not pass 2**64; got gva={gva:#x}, "
                         f"len(data)={len(data)}")
    pos = 0
    buf = np.frombuffer(data, dtype=np.uint8)
    for hpa, length in _pieces(mem, ept, cr3, gva, len(data), True, tlb):
        mem[hpa:hpa + length] = buf[pos:pos + length]
        pos += length


def pt_index(gva, level):
    """Index of ``gva``'s entry in its page table at ``level`` (4 PML4 .. 1 PT): 9 bits.

    SDM Vol. 3A, 4.5: bits 47:39, 38:30, 29:21, 20:12 of the linear address.
    """
    return (gva >> (3 + 9 * level)) & 0x1FF


def walk_tables(read_entry, cr3, gva):
    """Yield the guest page-table entries the CPU reads to translate ``gva``.

    pebslab only: the one software page-table walker. KVM (pinning,
    gva_to_gpa), the guest kernel, the fuzzer and the explorers all use it;
    the numba hot path (_walk) is its compiled twin, extended with EPT and
    access rights. ``read_entry(entry_gpa)`` returns the 8-byte entry at a
    guest physical address, or None when that GPA cannot be read (no
    memslot / not in EPT), which ends the walk. Yields
    ``(level, entry_gpa, entry)`` with level 4 (PML4) .. 1 (PT), top first;
    entry is None for the unreadable entry. The walk stops after a
    not-present entry or a leaf (PT entry, or PS set in a PDPT / PD entry).
    The caller checks canonicality (is_canonical) first.
    """
    table = cr3 & PTE_ADDR_MASK
    for level in (4, 3, 2, 1):
        entry_gpa = table + 8 * pt_index(gva, level)
        entry = read_entry(entry_gpa)
        yield level, entry_gpa, entry
        if entry is None or not entry & PTE_P:
            return
        if level <= 3 and entry & PTE_PS:
            return
        table = entry & PTE_ADDR_MASK


def leaf_gpa(level, entry, gva):
    """The GPA a present leaf entry at ``level`` maps ``gva`` to (4 KiB, 2 MiB or 1 GiB page)."""
    size = 1 << (3 + 9 * level)
    return (entry & PTE_ADDR_MASK & ~(size - 1)) | (gva & (size - 1))


_FLAG_NAMES = ((PTE_P, "P"), (PTE_RW, "RW"), (PTE_US, "US"), (PTE_PWT, "PWT"),
               (PTE_PCD, "PCD"), (PTE_A, "A"), (PTE_D, "D"), (PTE_PS, "PS"),
               (PTE_G, "G"), (PTE_XD, "XD"))


def pte_flags(entry):
    """Name the flag bits set in a guest page-table entry, e.g. 'P RW US'.

    pebslab only (for tables and hexdumps in notebooks). The empty string
    means no flag is set.
    """
    entry = _check_int("entry", entry, 0, _U64_MAX)
    return " ".join(name for bit, name in _FLAG_NAMES if entry & bit)


def describe_walk(mem, ept, cr3, gva, write=False, user=False):
    """Describe the 2-D walk of gva step by step: a list of dicts, one per level.

    pebslab only (a notebook view of walk()). Each level row has: level
    ('PML4', 'PDPT', 'PD', 'PT'), index, entry_gpa, entry_hpa, entry (int),
    flags (str), next (GPA of the next table, or of the page frame for a
    leaf). A final row (level 'page') has size, gpa and hpa. The row where
    the walk fails carries a 'fault' key with the reason, and no later row
    follows, except that a protection fault is only known once every level
    has been read: its 'fault' sits on the level that denied the access and
    the rows below it stay, without a 'page' row. The result agrees with
    walk(mem, ept, cr3, gva, write, user).
    """
    _check_mem(mem)
    _check_ept(ept)
    cr3 = _check_int("cr3", cr3, 0, _U64_MAX)
    gva = _check_int("gva", gva, 0, _U64_MAX)
    write = bool(write)
    user = bool(user)
    if not is_canonical(gva):
        return [{"level": "GVA", "gva": gva,
                 "fault": "#GP: non-canonical (bits 63:47 must all be equal)"}]
    rows = []
    prot_row = None
    gpa = size = None

    def read_entry(entry_gpa):
        code, entry_hpa = ept_translate(ept, np.uint64(entry_gpa), False)
        if code != XLATE_OK or entry_hpa + 8 > mem.size:
            return None
        return int(read_u64(mem, entry_hpa))

    for level, entry_gpa, entry in walk_tables(read_entry, cr3, gva):
        row = {"level": LEVEL_NAMES[level], "index": (entry_gpa & (PAGE_SIZE - 1)) // 8,
               "entry_gpa": entry_gpa, "entry_hpa": None, "entry": None, "flags": None,
               "next": None}
        rows.append(row)
        if entry is None:
            row["fault"] = (f"EPT violation: the {LEVEL_NAMES[level]} page at GPA "
                            f"{entry_gpa & ~(PAGE_SIZE - 1):#x} is not mapped in EPT")
            return rows
        row.update(entry_hpa=int(ept_translate(ept, np.uint64(entry_gpa), False)[1]),
                   entry=entry, flags=pte_flags(entry))
        if not entry & PTE_P:
            row["fault"] = "#PF: not present"
            return rows
        denied = [why for bad, why in ((write and not entry & PTE_RW, "write needs RW"),
                                       (user and not entry & PTE_US, "user needs US"))
                  if bad]
        if denied and prot_row is None:
            prot_row = (row, "#PF: protection: " + ", ".join(denied))
        if level == 1 or (level <= 3 and entry & PTE_PS):
            size = 1 << (3 + 9 * level)
            row["next"] = entry & PTE_ADDR_MASK & ~(size - 1)
            gpa = leaf_gpa(level, entry, gva)
        else:
            row["next"] = entry & PTE_ADDR_MASK
    if prot_row is not None:
        prot_row[0]["fault"] = prot_row[1]
        return rows
    page = {"level": "page", "size": size, "gpa": gpa, "hpa": None}
    rows.append(page)
    code, hpa = ept_translate(ept, np.uint64(gpa), write)
    if code != XLATE_OK or (hpa | (PAGE_SIZE - 1)) >= mem.size:
        if ept_translate(ept, np.uint64(gpa), False)[0] != XLATE_OK:
            page["fault"] = "EPT violation: the page is not present in EPT"
        elif code != XLATE_OK:
            page["fault"] = "EPT violation: write to a page not writable in EPT"
        else:
            page["fault"] = "EPT violation: the EPT entry points outside host memory"
        return rows
    page["hpa"] = int(hpa)
    return rows
