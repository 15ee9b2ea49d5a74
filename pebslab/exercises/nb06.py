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


# ----------------------------------------------------------------------------- the re-pin rule

#: The steps a learner's ``pinned_area(steps)`` is asked about, each with
#: the answer the patch's code gives and why (checked against the real model).
_REPIN_CASES = (
    ("DS_AREA=A, PEBS_ENABLE=1",
     (("DS_AREA", "A"), ("PEBS_ENABLE", 1)),
     "a new non-zero PEBS_ENABLE releases (nothing) and pins the DS area in DS_AREA now"),
    ("DS_AREA=A, PEBS_ENABLE=1, PEBS_ENABLE=0",
     (("DS_AREA", "A"), ("PEBS_ENABLE", 1), ("PEBS_ENABLE", 0)),
     "PEBS_ENABLE=0 while it was non-zero releases every pin"),
    ("DS_AREA=A, PEBS_ENABLE=1, DS_AREA=B",
     (("DS_AREA", "A"), ("PEBS_ENABLE", 1), ("DS_AREA", "B")),
     "a DS_AREA write only stores the value (pmu->ds_area = data); it never pins or unpins"),
    ("DS_AREA=A, PEBS_ENABLE=1, DS_AREA=B, PEBS_ENABLE=1",
     (("DS_AREA", "A"), ("PEBS_ENABLE", 1), ("DS_AREA", "B"), ("PEBS_ENABLE", 1)),
     "writing the value PEBS_ENABLE already holds does nothing: the patch re-pins only if "
     "data && data != pmu->pebs_enable"),
    ("DS_AREA=A, PEBS_ENABLE=1, DS_AREA=B, PEBS_ENABLE=0, PEBS_ENABLE=1",
     (("DS_AREA", "A"), ("PEBS_ENABLE", 1), ("DS_AREA", "B"), ("PEBS_ENABLE", 0),
      ("PEBS_ENABLE", 1)),
     "this is the discipline the patch assumes (PEBS off, move the buffer, PEBS on): the "
     "0 releases A, the 1 pins the DS area in DS_AREA at that moment"),
    ("DS_AREA=B, PEBS_ENABLE=1, DS_AREA=0",
     (("DS_AREA", "B"), ("PEBS_ENABLE", 1), ("DS_AREA", 0)),
     "DS_AREA=0 is stored like any other value; only PEBS_ENABLE releases pins"),
    ("DS_AREA=A, PEBS_ENABLE=1, RESET",
     (("DS_AREA", "A"), ("PEBS_ENABLE", 1), ("RESET", None)),
     "kvm_pmu_reset stops the counters but leaves pebs_enable, ds_area and the pins alone; "
     "only kvm_pmu_destroy calls kvm_pmu_release_pin"),
    ("DS_AREA=A, PEBS_ENABLE=1, RESET, DS_AREA=B, PEBS_ENABLE=1",
     (("DS_AREA", "A"), ("PEBS_ENABLE", 1), ("RESET", None), ("DS_AREA", "B"),
      ("PEBS_ENABLE", 1)),
     "after the reset KVM's pebs_enable is still 1, so the rebooted guest's PEBS_ENABLE=1 "
     "is 'no change' and its new DS area B is never pinned; A's pins survive"),
    ("PEBS_ENABLE=1 (DS_AREA still 0), then DS_AREA=A, PEBS_ENABLE=1",
     (("PEBS_ENABLE", 1), ("DS_AREA", "A"), ("PEBS_ENABLE", 1)),
     "the first PEBS_ENABLE=1 tries to pin DS area 0, cannot translate it and pins nothing "
     "(a printk_once); the second write is the same value, so nothing is ever pinned"),
)

_STEP_MSRS = ("DS_AREA", "PEBS_ENABLE", "RESET")


def _repin_real(steps) -> str | None:
    """Replay ``steps`` on a `patch` VM with two prepared DS areas; return the pinned one."""
    from ..hw import msr as M

    host = Host(frames=1024, seed=0)
    vm = host.create_vm(design="patch", memory_pages=256)
    guest = GuestKernel(vm)
    v = vm.vcpus[0]
    areas = {}
    for name in ("A", "B"):          # the guest builds both areas, then turns everything off
        st = scenarios.manual_pebs(guest)
        for msr in (M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA):
            v.wrmsr(msr, 0)
        areas[name] = st.ds
    for what, value in steps:
        if what == "RESET":
            v.reset()
        elif what == "DS_AREA":
            v.wrmsr(M.MSR_IA32_DS_AREA, areas.get(value, 0))
        else:
            v.wrmsr(M.MSR_IA32_PEBS_ENABLE, value)
    pmu = vm.kvm.pmu
    if not pmu.num_pinned_pages:
        return None
    first = pmu.pinned_pages[0]
    for name, ds in areas.items():
        if host.mm.hfn_of(vm.id, v.gva_to_gpa(ds) >> 12) == first:
            return name
    return "another page"


def _repin_cases():
    return [(desc, (tuple(steps),), _repin_real(steps)) for desc, steps, _ in _REPIN_CASES]


REPIN_HINT = ("Keep two pieces of KVM state as you go: pmu->ds_area and pmu->pebs_enable. "
              "Only a PEBS_ENABLE write changes the pins.")


def ex06_repin(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``pinned_area(steps) -> "A", "B" or None`` against the real `patch` model.

    pebslab only. ``steps`` is a tuple of (what, value): ("DS_AREA", "A" |
    "B" | 0), ("PEBS_ENABLE", 0 | 1) or ("RESET", None), guest WRMSRs and a
    vCPU reset in order, starting from a vPMU with nothing pinned, DS_AREA
    and PEBS_ENABLE 0, and two DS areas A and B already built by the guest.
    The answer is the DS area whose page the patch's KVM holds pinned after
    the steps, or None. On a wrong answer the hint names the rule of the
    patch's code that the case exercises.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    cases = _repin_cases()
    why = {desc: reason for desc, _, reason in _REPIN_CASES}
    res = run_cases("ex06_repin", candidate, cases, hint=REPIN_HINT, quiet=True)
    if res.failed and not res.error:
        desc, expected, got = res.failed[0]
        if got not in ("A", "B", None):
            res.hint = f"return 'A', 'B' or None; you returned {got!r}. " + REPIN_HINT
        else:
            res.hint = f"after {desc} the pins hold {expected!r}: {why[desc]}"
    if not quiet:
        print(res)
    if strict and not res.ok:
        from ._base import CheckFailed
        raise CheckFailed(str(res))
    return res


# ----------------------------------------------------------------------------- the wrong page

def _layout_run(design: str, layout: dict):
    """manual_pebs with ``layout`` (period 97, no PMI), full compaction, then run; return facts.

    Compaction (HostMM.compact) skips pinned pages before unmapping them
    (FACTS g.1), so only the pages the design left unpinned lose their EPT
    entries: the layout's own flaw, not reclaim's, decides the outcome.
    """
    from ..workloads import hot_loop

    host = Host(frames=1024, seed=0)
    vm = host.create_vm(design=design, memory_pages=256, pin_limit=64) if design == "fixed" \
        else host.create_vm(design=design, memory_pages=256)
    guest = GuestKernel(vm)
    st = scenarios.manual_pebs(guest, period=97, threshold_records=10**4, **layout)
    pinned = vm.kvm.pmu.num_pinned_pages
    host.mm.compact(10_000)
    st.debug_store()            # guest software reads its DS: its page tables come back
    res = vm.run(hot_loop(), 5_000_000)
    return st, pinned, res, vm.crash_reason or ""


def ex06_wrong_page(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``wrong_page_layout() -> dict(ds_offset=, buf_offset=, buf_pages=)``.

    pebslab only. The layout must make the 2014 patch leave a buffer page
    unpinned *because of its loop* (fewer than 17 pins, so the cap is not
    the cause), and that page must be the one the PEBS assist faults on
    after full compaction (period 97, threshold past the end, the
    guest's page tables faulted back in), while the `fixed` design runs
    the same layout to the end. Each failed condition is named.
    """
    from ._base import Result
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    res = Result("ex06_wrong_page")
    desc = "your layout"
    try:
        layout = candidate()
    except NotImplementedError:
        res.error = "your function still raises NotImplementedError; fill it in"
        return _finish(res, quiet, strict)
    except Exception as e:  # noqa: BLE001 - a learner's bug is a wrong answer
        res.failed.append((desc, "a dict", f"{type(e).__name__}: {e}"))
        return _finish(res, quiet, strict)
    keys = {"ds_offset", "buf_offset", "buf_pages"}
    if not isinstance(layout, dict) or set(layout) != keys or not all(
            isinstance(layout[k], int) and not isinstance(layout[k], bool) for k in keys):
        res.failed.append((desc, "dict(ds_offset=int, buf_offset=int, buf_pages=int)", layout))
        res.hint = "return a dict with exactly the int keys ds_offset, buf_offset, buf_pages"
        return _finish(res, quiet, strict)
    if not (0 <= layout["ds_offset"] < PAGE and 0 <= layout["buf_offset"] < PAGE
            and 1 <= layout["buf_pages"] <= 32):
        res.failed.append((desc, "offsets in 0..4095, buf_pages in 1..32", layout))
        res.hint = "keep ds_offset and buf_offset inside a page and buf_pages between 1 and 32"
        return _finish(res, quiet, strict)
    desc = f"layout {layout}"
    st, pinned, run, why = _layout_run("patch", layout)
    need = pebs_pin.needed_pages(st.ds, st.buffer, st.absolute_maximum)
    plan = set(pebs_pin.patch_pin_plan(st.ds, st.buffer, st.absolute_maximum, limit=1 << 20))
    missed = [p for p in need if p not in plan]
    if pinned >= 17:
        res.failed.append((desc, "fewer than 17 pins", f"{pinned} pins"))
        res.hint = (f"the patch pins {pinned} pages here, so MAX_PINNED_PAGES may be what "
                    "leaves a page out; find a layout where the loop itself misses one "
                    "(a smaller buffer)")
    elif not missed:
        res.failed.append((desc, "a needed page the loop never reaches", "none missed"))
        res.hint = ("the patch's loop reaches every page this layout needs; it steps from "
                    "pebs_buffer_base by PAGE_SIZE while addr < absolute_maximum. Where must "
                    "buffer_base sit for the last byte to land one page past the last step?")
    elif not run.crashed or f"{missed[0]:#x}" not in why:
        res.failed.append((desc, f"a crash on {missed[0]:#x}", why or "no crash"))
        res.hint = (f"the loop misses {missed[0]:#x}, but the run "
                    + ("did not crash" if not run.crashed else "crashed elsewhere")
                    + ": does the assist ever write into that page before the buffer is full?")
    else:
        _, _, fixed_run, fixed_why = _layout_run("fixed", layout)
        if fixed_run.crashed:
            res.failed.append((desc, "fixed survives", fixed_why))
            res.hint = "the fixed design crashes too with this layout; keep the buffer smaller"
        else:
            res.passed = 1
    return _finish(res, quiet, strict)


def _finish(res, quiet, strict):
    if not quiet:
        print(res)
    if strict and not res.ok:
        from ._base import CheckFailed
        raise CheckFailed(str(res))
    return res
