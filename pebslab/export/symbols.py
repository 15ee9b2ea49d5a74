"""Symbols without a compiler: a small ELF for user code, a kallsyms file for the kernel.

pebslab only. A workload (pebslab.workloads) carries its symbol table:
(start, end, name) per function. ``perf`` resolves sample IPs through
files, so the exporter writes two:

* user functions (addresses below 2**63) go into a minimal ELF64
  executable (ET_EXEC, x86-64): one PT_LOAD text segment, a PT_NOTE with a
  GNU build-id, and the sections ``.text``, ``.note.gnu.build-id``,
  ``.symtab``, ``.strtab``, ``.shstrtab``. Layouts follow the System V
  ABI's ELF-64 object file format (ELF header 64 bytes, program header 56,
  section header 64, symbol 24; the values of e_ident, ET_EXEC, EM_X86_64,
  PT_LOAD, PT_NOTE, SHT_*, STT_FUNC as in Linux's include/uapi/linux/elf.h)
  and the GNU build-id note (name "GNU", type NT_GNU_BUILD_ID = 3). The
  text holds, at every instruction address of the workload's trace, a
  multi-byte NOP of that instruction's length (the recommended sequences
  of the Intel SDM Vol. 2B, NOP), so ``perf annotate`` shows one line per
  simulated instruction at the simulated IPs: pebslab has no instruction
  encodings, so the bytes are placeholders, the addresses are exact.
  Gaps between functions are int3 (0xCC).
* kernel functions (addresses at or above 2**63) go into a text file in
  the /proc/kallsyms format ("address type name" per line, lowest address
  first), with ``_text`` and ``_etext`` bracketing the text as in a real
  kallsyms. kallsyms has no sizes: perf ends each symbol where the next
  begins, which is why ``_etext`` closes the last function.

The build-id is the SHA-1 of the ELF's text, symbol and string tables (as
GNU ld's --build-id=sha1 hashes its output), so the same workload always
gives the same bytes and the same id.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from ..workloads import KERNEL_TEXT, Workload

PAGE = 0x1000
KERNEL_HALF = 1 << 63

# ELF constants (include/uapi/linux/elf.h, System V ABI)
ET_EXEC = 2
EM_X86_64 = 62
EV_CURRENT = 1
ELFCLASS64 = 2
ELFDATA2LSB = 1
PT_LOAD = 1
PT_NOTE = 4
PF_X, PF_R = 1, 4
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOTE = 1, 2, 3, 7
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
STB_GLOBAL, STT_FUNC = 1, 2
NT_GNU_BUILD_ID = 3
EHDR_SIZE, PHDR_SIZE, SHDR_SIZE, SYM_SIZE = 64, 56, 64, 24
BUILD_ID_SIZE = 20

#: Recommended multi-byte NOP sequences, 1..9 bytes (Intel SDM Vol. 2B, NOP).
NOPS = {
    1: bytes.fromhex("90"),
    2: bytes.fromhex("6690"),
    3: bytes.fromhex("0f1f00"),
    4: bytes.fromhex("0f1f4000"),
    5: bytes.fromhex("0f1f440000"),
    6: bytes.fromhex("660f1f440000"),
    7: bytes.fromhex("0f1f8000000000"),
    8: bytes.fromhex("0f1f840000000000"),
    9: bytes.fromhex("660f1f840000000000"),
}


def nop(length: int) -> bytes:
    """Return a NOP instruction of exactly ``length`` bytes (1..15).

    1..9: the SDM's recommended sequences; 10..15: the 9-byte form with a
    CS segment prefix and more operand-size prefixes in front (legal
    redundant prefixes, at most 15 bytes in all, as assemblers pad).
    """
    if not 1 <= length <= 15:
        raise ValueError(f"length must be 1..15 bytes; got {length}")
    if length <= 9:
        return NOPS[length]
    return b"\x66" * (length - 10) + b"\x66\x2e" + NOPS[9][1:]


def user_symbols(workload: Workload) -> list[tuple[int, int, str]]:
    """The workload's functions below 2**63 (user space), as (start, end, name)."""
    return [s for s in workload.symbols if s[0] < KERNEL_HALF]


def kernel_symbols(workload: Workload) -> list[tuple[int, int, str]]:
    """The workload's functions at or above 2**63 (kernel space), as (start, end, name)."""
    return [s for s in workload.symbols if s[0] >= KERNEL_HALF]


def text_range(symbols) -> tuple[int, int]:
    """Page-aligned [start, end) covering ``symbols``."""
    lo = min(s[0] for s in symbols) & ~(PAGE - 1)
    hi = (max(s[1] for s in symbols) + PAGE - 1) & ~(PAGE - 1)
    return lo, hi


def _text_bytes(workload: Workload, lo: int, hi: int) -> bytes:
    text = bytearray(b"\xcc" * (hi - lo))
    ips = workload.ip
    sel = ips < np.uint64(KERNEL_HALF)
    seen = {}
    for ip, ln in zip(ips[sel].tolist(), workload.length[sel].tolist()):
        seen[ip] = ln
    for ip, ln in seen.items():
        off = ip - lo
        text[off:off + ln] = nop(ln)
    return bytes(text)


class ElfImage:
    """A built ELF image: ``data`` (bytes), ``build_id`` (20 bytes), text placement.

    ``vaddr``/``offset``/``size`` describe the PT_LOAD text segment: the
    MMAP record of the exported perf.data maps [vaddr, vaddr + size) of the
    file at ``offset``.
    """

    def __init__(self, data: bytes, build_id: bytes, vaddr: int, offset: int, size: int):
        self.data = data
        self.build_id = build_id
        self.vaddr = vaddr
        self.offset = offset
        self.size = size


def build_elf(workload: Workload) -> ElfImage:
    """Build the user-space ELF executable for ``workload`` (see the module docstring).

    pebslab only. Raises ValueError if the workload has no user-space function.
    """
    syms = user_symbols(workload)
    if not syms:
        raise ValueError(f"workload {workload.name!r} has no user-space function (all symbols "
                         "are at or above 2**63): there is nothing to put in an ELF")
    lo, hi = text_range(syms)
    text = _text_bytes(workload, lo, hi)

    # string tables
    strtab = bytearray(b"\0")
    name_off = []
    for _, _, name in syms:
        name_off.append(len(strtab))
        strtab += name.encode() + b"\0"
    sh_names = [b"", b".text", b".note.gnu.build-id", b".symtab", b".strtab", b".shstrtab"]
    shstrtab = bytearray()
    sh_name_off = []
    for n in sh_names:
        sh_name_off.append(len(shstrtab))
        shstrtab += n + b"\0"
    TEXT, NOTE, SYMTAB, STRTAB, SHSTRTAB = 1, 2, 3, 4, 5

    symtab = bytearray(SYM_SIZE)                       # index 0: the null symbol
    for (start, end, _), off in zip(syms, name_off):
        symtab += struct.pack("<IBBHQQ", off, (STB_GLOBAL << 4) | STT_FUNC, 0, TEXT,
                              start, end - start)

    build_id = hashlib.sha1(bytes(text) + bytes(symtab) + bytes(strtab)).digest()
    note = struct.pack("<III", 4, BUILD_ID_SIZE, NT_GNU_BUILD_ID) + b"GNU\0" + build_id

    # file layout: ehdr, 2 phdrs, note | text at a page-aligned offset | tables | shdrs
    note_off = EHDR_SIZE + 2 * PHDR_SIZE
    text_off = PAGE
    assert note_off + len(note) <= text_off
    symtab_off = text_off + len(text)
    strtab_off = symtab_off + len(symtab)
    shstrtab_off = strtab_off + len(strtab)
    shdr_off = (shstrtab_off + len(shstrtab) + 7) & ~7
    n_sh = len(sh_names)

    entry = next((s[0] for s in syms if s[2] == "main"), syms[0][0])
    ident = b"\x7fELF" + bytes([ELFCLASS64, ELFDATA2LSB, EV_CURRENT, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", ET_EXEC, EM_X86_64, EV_CURRENT, entry,
                               EHDR_SIZE, shdr_off, 0, EHDR_SIZE, PHDR_SIZE, 2, SHDR_SIZE,
                               n_sh, SHSTRTAB)
    phdrs = struct.pack("<IIQQQQQQ", PT_LOAD, PF_R | PF_X, text_off, lo, lo, len(text),
                        len(text), PAGE)
    # the note is not loaded (no PT_LOAD covers it): its addresses are 0
    phdrs += struct.pack("<IIQQQQQQ", PT_NOTE, PF_R, note_off, 0, 0, len(note), len(note), 4)

    def shdr(name_i, typ, flags, addr, off, size, link=0, info=0, align=1, entsize=0):
        return struct.pack("<IIQQQQIIQQ", sh_name_off[name_i], typ, flags, addr, off, size,
                           link, info, align, entsize)

    shdrs = bytes(SHDR_SIZE)
    shdrs += shdr(TEXT, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, lo, text_off, len(text),
                  align=16)
    shdrs += shdr(NOTE, SHT_NOTE, 0, 0, note_off, len(note), align=4)
    shdrs += shdr(SYMTAB, SHT_SYMTAB, 0, 0, symtab_off, len(symtab), link=STRTAB, info=1,
                  align=8, entsize=SYM_SIZE)
    shdrs += shdr(STRTAB, SHT_STRTAB, 0, 0, strtab_off, len(strtab))
    shdrs += shdr(SHSTRTAB, SHT_STRTAB, 0, 0, shstrtab_off, len(shstrtab))

    out = bytearray(ehdr + phdrs)
    out += note
    out += bytes(text_off - len(out))
    out += text + symtab + strtab + shstrtab
    out += bytes(shdr_off - len(out))
    out += shdrs
    return ElfImage(bytes(out), build_id, lo, text_off, len(text))


def kallsyms_text(workload: Workload) -> tuple[str, int, int]:
    """Return (file text, _text, _etext) of the kallsyms-style file for the kernel functions.

    pebslab only. Lines "%016x T name", sorted by address; ``_text`` is
    pebslab's KERNEL_TEXT (or the first function's page if lower), ``_etext``
    the page after the last function. A workload without kernel functions
    still gets the file (just ``_text`` and ``_etext``): perf expects a
    kernel map in every profile and warns about restricted kernel maps
    without one.
    """
    syms = kernel_symbols(workload)
    if syms:
        lo, hi = text_range(syms)
        lo = min(lo, KERNEL_TEXT)
    else:
        lo, hi = KERNEL_TEXT, KERNEL_TEXT + PAGE
    lines = [f"{lo:016x} T _text"]
    lines += [f"{start:016x} T {name}" for start, _, name in syms]
    lines.append(f"{hi:016x} T _etext")
    return "\n".join(lines) + "\n", lo, hi


def build_id_of(data: bytes) -> bytes:
    """A 20-byte build-id for a non-ELF symbol file (kallsyms): SHA-1 of its bytes."""
    return hashlib.sha1(data).digest()
