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

__all__ = ["ex05_indices"]

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
