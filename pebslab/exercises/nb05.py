"""Checkers for notebook 05 (the DS area in guest memory: GVA -> GPA -> HPA).

pebslab only. The right answers come from the real page walker: a guest
kernel maps pages at a spread of canonical addresses (its DS area and
buffer, a user page, kernel-text and stack-like addresses, seeded random
ones), and :func:`pebslab.hw.mmu.describe_walk` reports the index it used
at each level.
"""

from __future__ import annotations

import numpy as np

from ._base import run_cases

__all__ = ["ex05_indices", "ex05_walk"]

# pages the checker maps besides the scenario's (page-aligned GVAs)
_FIXED_GVAS = (0xFFFF_FFFF_8100_0000,   # kernel text (PML4 511, PDPT 510)
               0x7FFD_F000_0000,        # a user stack
               0x0000_7FFF_FFFF_F000,   # the last user page
               0xFFFF_8000_0000_0000,   # the first kernel page
               0x0000_0000_0040_0000,   # where executables are loaded
               0x0000_5555_5555_4000)   # a PIE executable


def _cases() -> list[tuple[str, tuple, tuple]]:
    import pebslab as pl
    from pebslab import scenarios
    from pebslab.hw import mmu
    host = pl.Host(cpu="silvermont", frames=256, seed=0)
    vm = host.create_vm(design="patch", memory_pages=128)
    guest = pl.GuestKernel(vm)
    st = scenarios.manual_pebs(guest, ds_offset=0xFC0, buf_offset=0x40, buf_pages=2)
    rng = np.random.default_rng(5)
    pages = list(_FIXED_GVAS)
    for _ in range(8):
        va = int(rng.integers(0, 1 << 35)) << 12
        if rng.integers(2):
            va |= 0xFFFF_8000_0000_0000           # upper half: sign-extend bit 47
        pages.append(va)
    for va in pages:
        guest.mm.map(va, guest.mm.alloc_phys(1), writable=True, user=va < 1 << 47)
    addrs = [st.ds, st.ds + 0x40, st.buffer, st.buffer + 4096 + 0x123]
    for va in pages:
        addrs.append(va | int(rng.integers(0, 4096)))
    cases = []
    for gva in addrs:
        rows = mmu.describe_walk(host.mm.mem, vm.ept, guest.mm.cr3, gva)
        idx = tuple(r["index"] for r in rows if r["level"] in ("PML4", "PDPT", "PD", "PT"))
        assert len(idx) == 4 and rows[-1]["level"] == "page", rows
        cases.append((f"gva={gva:#x}", (gva,), idx + (gva & 0xFFF,)))
    return cases


def _same(got, expected) -> bool:
    if not isinstance(got, (tuple, list)) or len(got) != 5:
        return False
    try:
        return tuple(int(x) for x in got) == expected
    except (TypeError, ValueError):
        return False


def ex05_indices(candidate, *, quiet=False, strict=False):
    """Check ``split_gva(gva) -> (pml4, pdpt, pd, pt, offset)`` against the real walker."""
    return run_cases(
        "ex05_indices", candidate, _cases(), compare=_same,
        hint=("return five ints, top level first: each table index is 9 bits of the "
              "address (PML4 = bits 47:39, then 38:30, 29:21, 20:12) and the offset is the "
              "low 12 bits. Shift, then mask: upper-half (kernel) addresses have bits 63:48 "
              "set, so a shift alone leaves them in the PML4 index."),
        strict=strict, quiet=quiet)



# ----------------------------------------------------------------------------- exercise 2: the walk

def _walk_cases():
    """(description, (cr3, gva, read_u64), expected GPAs) from describe_walk on a real guest."""
    from pebslab.hw import mmu
    from pebslab.viz import addr
    host, vm, guest, st, user = addr.setup()
    cr3 = guest.mm.cr3

    def read_u64(gpa):
        if not isinstance(gpa, int) or isinstance(gpa, bool) or gpa < 0 or gpa % 8:
            raise ValueError(f"read_u64 needs an 8-byte aligned guest physical address; "
                             f"got {gpa!r}")
        return int.from_bytes(vm.phys.read(gpa, 8), "little")

    spots = (("the DS area", st.ds), ("DS_AREA + 0x28 (pebs_index)", st.ds + 0x28),
             ("buffer page 2, offset 0x9c0", st.buffer + 2 * 4096 + 0x9C0),
             ("a user page, offset 0x123", user + 0x123),
             ("the page after the buffer (nothing maps it)", st.buffer + 4 * 4096 + 8),
             ("a user address nobody mapped (PML4 entry 255)", 0x7FFF_0000_0000))
    cases = []
    for desc, gva in spots:
        rows = mmu.describe_walk(host.mm.mem, vm.ept, cr3, gva, write=False)
        out = []
        for r in rows:
            if r["level"] == "page":
                out.append(r["gpa"])
            else:
                out.append(r["entry_gpa"])
                if "fault" in r:
                    break
        cases.append((f"{desc} (cr3={cr3:#x}, gva={gva:#x})", (cr3, gva, read_u64), Gpas(out)))
    return cases


_LEVELS = ("PML4 entry", "PDPT entry", "PD entry", "PT entry", "data")


def ex05_walk(candidate, *, quiet=False, strict=False):
    """Check ``walk(cr3, gva, read_u64) -> list of GPAs`` against the model's walker.

    pebslab only. The answer: the guest physical address of each 8-byte
    entry the 4-level walk reads, top level first, then the GPA of the byte
    ``gva`` names; if an entry is not present (bit 0 clear) the list ends with
    that entry's GPA. Expected values: :func:`pebslab.hw.mmu.describe_walk`
    on a guest built by :func:`pebslab.viz.addr.setup` (SDM Vol. 3A, 4-level
    paging). The hint names the first level where the answer goes wrong.
    """
    res = run_cases("ex05_walk", lambda *a: _as_list(candidate(*a)), _walk_cases(),
                    quiet=True)
    if res.failed and not res.error:
        desc, exp, got = res.failed[0]
        if not isinstance(got, Gpas):
            res.hint = f"return a list of ints; for {desc.split(' (')[0]} you returned {got!r}"
        else:
            k = next((i for i, (a, b) in enumerate(zip(got, exp)) if a != b),
                     min(len(got), len(exp)))
            if k < len(exp) and k < len(got):
                what = _LEVELS[k] if len(exp) == 5 or k < len(exp) - 1 else _LEVELS[k]
                res.hint = (f"for {desc.split(' (')[0]}, item {k} ({what}) should be "
                            f"{exp[k]:#x}, you have {got[k]:#x}: "
                            + ("an entry's GPA is the table's GPA (bits 51:12 of the entry "
                               "above, or CR3) plus 8 times the index" if k < 4 else
                               "the data GPA is the PT entry's frame plus the 12-bit offset"))
            elif len(got) > len(exp):
                res.hint = (f"for {desc.split(' (')[0]} the walk stops after {len(exp)} reads: "
                            f"the entry at {exp[-1]:#x} is not present (bit 0 clear)")
            else:
                res.hint = (f"for {desc.split(' (')[0]} you stop after {len(got)} reads; the "
                            f"walk goes on to {exp[len(got)]:#x}")
    if not quiet:
        print(res)
    if strict and not res.ok:
        from ._base import CheckFailed
        raise CheckFailed(str(res))
    return res


class Gpas(list):
    """A list of guest physical addresses that prints in hex."""

    def __repr__(self) -> str:
        return "[" + ", ".join(f"{v:#x}" for v in self) + "]"


def _as_list(x):
    try:
        return Gpas(int(v) for v in x)
    except (TypeError, ValueError):
        return x
