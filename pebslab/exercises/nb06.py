"""Checker for notebook 06 (pinning): ``ex06_pin_range``.

pebslab only. The learner writes ``pages_to_pin(ds_area, buffer_base,
absolute_maximum)``: every page-aligned guest virtual address the PEBS
assist may write, i.e. the pages of the 96-byte DS area (the patch's
``struct debug_store``) and of the buffer ``[buffer_base,
absolute_maximum)``. The right answers come from the real model: for set-ups
built by :func:`pebslab.scenarios.manual_pebs` in a VM under the `fixed`
design, the data pages that design's KVM actually pinned
(``pmu.pin_view["pages"]``); for a few hand-made corner cases,
:func:`pebslab.kvm.pebs_pin.needed_pages`.
"""

from __future__ import annotations

from ._base import run_cases
from .. import scenarios
from ..guest.kernel import GuestKernel
from ..hw.pebs import DS_SIZE_PATCH
from ..kvm import pebs_pin
from ..system import Host

PAGE = 4096
_K = 0xFFFF_8880_0000_0000          # the guest kernel's direct map (GuestMM.KERNEL_BASE)


class Pages(tuple):
    """A set of page GVAs that prints compactly (runs of consecutive pages)."""

    def __repr__(self) -> str:
        if not self:
            return "no pages"
        runs, start, prev = [], self[0], self[0]
        for p in self[1:]:
            if p != prev + PAGE:
                runs.append((start, prev))
                start = p
            prev = p
        runs.append((start, prev))
        parts = [f"{a:#x}" if a == b else f"{a:#x}..{b:#x}" for a, b in runs]
        return f"{len(self)} pages: " + ", ".join(parts)


def _normalise(result):
    """The learner's answer as a sorted Pages, or the answer itself if it is not a list of ints."""
    try:
        items = list(result)
    except TypeError:
        return result
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in items):
        return result
    return Pages(sorted(set(items)))


def _real_case(ds_offset: int, buf_offset: int, buf_pages: int):
    """Set PEBS up in a `fixed` VM and return (ds, base, absmax, pages it pinned)."""
    host = Host(frames=1024, seed=0)
    vm = host.create_vm(design="fixed", memory_pages=256, pin_limit=64)
    guest = GuestKernel(vm)
    st = scenarios.manual_pebs(guest, ds_offset=ds_offset, buf_offset=buf_offset,
                               buf_pages=buf_pages)
    pinned = vm.kvm.pmu.pin_view["pages"]
    return st.ds, st.buffer, st.absolute_maximum, pinned


def _cases():
    real = (
        ("DS and buffer page-aligned, 16-page buffer", 0, 0, 16),
        ("buffer base 2048 bytes into its page", 0, 2048, 16),
        ("DS area straddling two pages (ds_offset=0xfe0)", 4064, 0, 16),
        ("DS area ending exactly at its page end (ds_offset=0xfa0)", 4000, 0, 16),
        ("straddling DS and an unaligned 32-page buffer", 4064, 520, 32),
        ("one-page buffer starting at offset 0xf40", 0, 3904, 1),
    )
    out = []
    for desc, ds_off, buf_off, pages in real:
        ds, base, absmax, pinned = _real_case(ds_off, buf_off, pages)
        out.append((f"{desc} (ds_area={ds:#x}, buffer_base={base:#x}, "
                    f"absolute_maximum={absmax:#x})", (ds, base, absmax), Pages(sorted(pinned))))
    made = (
        ("absolute_maximum exactly on a page boundary", _K, _K + 0x1800, _K + 0x3000),
        ("an empty buffer (absolute_maximum == buffer_base)", _K + 0x40, _K + 0x5000,
         _K + 0x5000),
        ("DS area and buffer sharing a page", _K + 0x1000, _K + 0x1100, _K + 0x3100),
    )
    for desc, ds, base, absmax in made:
        out.append((f"{desc} (ds_area={ds:#x}, buffer_base={base:#x}, "
                    f"absolute_maximum={absmax:#x})", (ds, base, absmax),
                    Pages(sorted(pebs_pin.needed_pages(ds, base, absmax)))))
    return out


def _describe(page: int, ds: int, base: int, absmax: int) -> str:
    """Say which page of the set-up ``page`` is."""
    ds_pages = range(ds & ~(PAGE - 1), ((ds + DS_SIZE_PATCH - 1) & ~(PAGE - 1)) + 1, PAGE)
    if page in ds_pages:
        k = ds_pages.index(page)
        return ("the DS area's first page" if k == 0 else
                f"the DS area's second page (the {DS_SIZE_PATCH}-byte DS area starts at "
                f"offset {ds & (PAGE - 1):#x} and crosses into it)")
    if absmax > base and page == (absmax - 1) & ~(PAGE - 1):
        return (f"the buffer's last page (it holds absolute_maximum - 1 = {absmax - 1:#x})")
    if absmax > base and base & ~(PAGE - 1) <= page < absmax:
        return f"buffer page {(page - (base & ~(PAGE - 1))) // PAGE}"
    return "a page the CPU never touches"


def _diagnose(case, got) -> str:
    """Explain the first wrong case: which pages are missing or extra, and why it matters."""
    desc, (ds, base, absmax), expected = case
    if not isinstance(got, Pages):
        return (f"return a list of ints (page-aligned GVAs); for {desc.split(' (')[0]} you "
                f"returned {type(got).__name__}")
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    plan = set(pebs_pin.patch_pin_plan(ds, base, absmax, limit=1 << 20))
    parts = []
    if missing:
        p = missing[0]
        parts.append(f"you leave out {p:#x}, {_describe(p, ds, base, absmax)}"
                     + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        if p not in plan:
            parts.append("the 2014 patch misses this very page: its loop steps from an "
                         "unaligned buffer_base by PAGE_SIZE while addr < absolute_maximum, so "
                         "it never reaches the page of absolute_maximum - 1")
    if extra:
        p = extra[0]
        why = ("not page-aligned" if p % PAGE else _describe(p, ds, base, absmax))
        parts.append(f"you add {p:#x}, which is {why}"
                     + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return "; ".join(parts)


HINT = ("Pages are page-aligned GVAs. The DS area covers [ds_area, ds_area + 96), the buffer "
        "[buffer_base, absolute_maximum): its last byte is absolute_maximum - 1. Round the "
        "first byte and the last byte of each range down to a page and take every page "
        "between them; stepping from an unaligned base while addr < absolute_maximum stops "
        "one page short.")


def ex06_pin_range(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``pages_to_pin(ds_area, buffer_base, absolute_maximum) -> list of page GVAs``.

    Compared as sets with the pages the `fixed` design pins on real set-ups
    (aligned, unaligned base, straddling DS area, 32-page buffer, one-page
    buffer) and with needed_pages() on hand-made corner cases. On a wrong
    answer the hint names the page left out or added, and says whether it
    is the page the 2014 patch misses.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    cases = _cases()

    def wrapped(ds, base, absmax):
        return _normalise(candidate(ds, base, absmax))

    res = run_cases("ex06_pin_range", wrapped, cases, hint=HINT,
                    compare=lambda got, exp: isinstance(got, Pages) and got == exp,
                    quiet=True)
    if res.failed and not res.error:
        desc0 = res.failed[0][0]
        case = next(c for c in cases if c[0] == desc0)
        res.hint = _diagnose(case, res.failed[0][2]) + ". " + HINT
    if not quiet:
        print(res)
        if res.ok:
            ds, base, absmax = cases[1][1]
            plan = pebs_pin.patch_pin_plan(ds, base, absmax)
            lost = sorted(set(cases[1][2]) - set(plan))
            print(f"  For the unaligned buffer ({cases[1][0].split(' (')[0]}) you pin "
                  f"{len(cases[1][2])} pages; the patch pins {len(plan)} and misses "
                  + ", ".join(f"{p:#x}" for p in lost) + ", the page holding "
                  f"absolute_maximum - 1.")
    if strict and not res.ok:
        from ._base import CheckFailed
        raise CheckFailed(str(res))
    return res
