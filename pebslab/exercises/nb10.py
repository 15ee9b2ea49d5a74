"""Checkers for notebook 10 (migration): restore order, compatibility, dirty logging.

pebslab only. Every right answer comes from the real model:

* ``ex10_restore_order``: the learner's KVM_SET_MSRS order is replayed on a
  destination under the `patch` design (:func:`pebslab.viz.migration.replay_restore`)
  and the destination runs; the order is right if every page PEBS needs is
  pinned, PMC0's host event is precise and the destination writes as many
  PEBS records as the source did.
* ``ex10_compatible``: the reasons :func:`pebslab.vmm.migrate.check_compatible`
  gives for destinations that differ from Silvermont in one or more PMU
  facts, sorted into five codes.
* ``ex10_keep_writable``: with dirty logging on under `patch`, the checker
  keeps the learner's gfns writable (what `fixed` does for its pins) and
  runs the guest; right means no crash and no page left writable that PEBS
  never writes.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from ._base import Result, run_cases
from ..hw import msr as M

__all__ = ["ex10_restore_order", "ex10_compatible", "ex10_keep_writable", "CODES"]

#: The reason codes of ex10_compatible, with the phrase of check_compatible they stand for.
CODES = {
    "format": "different PEBS format",
    "gp_counters": "fewer GP counters",
    "fixed_counters": "fewer fixed counters",
    "width": "narrower counters",
    "pebs_counter": "is not PEBS-capable",
}


def _text(msrs) -> str:
    return ", ".join(M.msr_name(m).replace("MSR_", "") for m in msrs)


# -----------------------------------------------------------------------------
# exercise 1: an order that works under the patch
# -----------------------------------------------------------------------------

_ORDER_SETUPS = (
    ("the running example (DS page + 16-page buffer, PEBS on PMC0)", {}),
    ("a DS area straddling two pages and a 4-page buffer", {"ds_offset": 4064, "buf_pages": 4}),
    ("a one-page buffer, 3 records per PMI", {"buf_pages": 1, "threshold_records": 3}),
)


@functools.lru_cache(maxsize=None)
def _saved(setup_index: int):
    from ..viz import migration as VZ
    from ..vmm import migrate as MG

    _, kw = _ORDER_SETUPS[setup_index]
    src = VZ.source_vm("patch", **kw)
    return MG.save_state(src.vm), src.records


def _try_order(setup_index: int, order):
    """Replay ``order``; return (ok, message)."""
    import pebslab as pl
    from ..viz import migration as VZ

    state, source_records = _saved(setup_index)
    msrs = state.vcpus[0].msrs
    try:
        order = [int(m) for m in order]
    except (TypeError, ValueError):
        return False, f"return a list of MSR indices (ints); got {order!r}"
    missing = [m for m in msrs if m not in order]
    extra = [m for m in order if m not in msrs]
    dup = sorted({m for m in order if order.count(m) > 1})
    if missing or extra or dup:
        parts = []
        if missing:
            parts.append(f"it leaves out {_text(missing)}: every saved MSR must be restored")
        if extra:
            parts.append(f"it names {', '.join(hex(m) for m in extra)}, which were not saved")
        if dup:
            parts.append(f"it writes {_text(dup)} twice")
        return False, "; ".join(parts)
    dest = pl.Host(cpu="silvermont", frames=VZ.SOURCE_RUN["frames"], seed=1)
    vm, steps = VZ.replay_restore(state, dest, order)
    last = steps[-1]
    pos = {m: order.index(m) for m in order}
    problems = []
    if last.missing:
        ds, pe = pos[M.MSR_IA32_DS_AREA], pos[M.MSR_IA32_PEBS_ENABLE]
        problems.append(
            f"{last.missing} of the {last.needed} pages PEBS needs are not pinned: PEBS_ENABLE "
            f"(entry {pe}) is written {'before' if pe < ds else 'after'} DS_AREA (entry {ds}); "
            f"the patch pins in the PEBS_ENABLE write, from the DS_AREA KVM holds at that moment")
    if last.host_event != "precise":
        ctl, pe = pos[M.MSR_CORE_PERF_GLOBAL_CTRL], pos[M.MSR_IA32_PEBS_ENABLE]
        sel = pos[M.MSR_P6_EVNTSEL0]
        created = max(ctl, sel)
        problems.append(
            f"PMC0's host perf event is {last.host_event!r}, not precise: it was created at entry "
            f"{created} ({'GLOBAL_CTRL' if created == ctl else 'EVNTSEL0'}), "
            f"{'before' if created < pe else 'after'} PEBS_ENABLE (entry {pe}); the patch reads "
            f"pebs_enable only when reprogram_counter creates the event")
    n0 = vm.trace.of("PEBS_WRITE").size
    res = vm.run(pl.workloads.hot_loop(), VZ.SOURCE_RUN["instructions"])
    written = int(vm.trace.of("PEBS_WRITE").size - n0)
    vm.destroy()
    if res.crashed:
        problems.append("the destination guest crashed")
    if not problems and written != source_records:
        problems.append(f"the destination wrote {written} PEBS records, the source {source_records}")
    if problems:
        return False, "; ".join(problems)
    return True, f"pins complete, PMC0 precise, {written} records on the destination"


def ex10_restore_order(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``restore_order(msrs) -> list of MSR indices`` under the patch.

    pebslab only. ``msrs`` is the ascending list of MSR indices the source
    saved; the answer is the KVM_SET_MSRS order. Each case replays it on a
    Silvermont destination under `patch` and runs 20,000 guest instructions.
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    res = Result("ex10_restore_order")
    for i, (desc, _) in enumerate(_ORDER_SETUPS):
        state, _n = _saved(i)
        msrs = sorted(state.vcpus[0].msrs)
        try:
            order = candidate(list(msrs))
        except NotImplementedError:
            res.error = "your function still raises NotImplementedError; fill it in"
            break
        except Exception as e:  # noqa: BLE001 - a learner's bug is a wrong answer
            res.failed.append((desc, "an order of the saved MSRs", f"{type(e).__name__}: {e}"))
            continue
        ok, why = _try_order(i, order)
        if ok:
            res.passed += 1
        else:
            res.failed.append((desc, "a restore that pins every page and arms PEBS", why))
    if res.failed:
        res.hint = ("two writes of the patch act at once: PEBS_ENABLE pins from the DS_AREA KVM "
                    "already has, and the write that enables PMC0 (GLOBAL_CTRL or EVNTSEL0, "
                    "whichever comes last) creates the host event from the PEBS_ENABLE KVM "
                    "already has.")
    return _finish(res, quiet, strict)


def _finish(res: Result, quiet: bool, strict: bool) -> Result:
    from ._base import CheckFailed

    if not quiet:
        print(res)
    if strict and not res.ok:
        raise CheckFailed(str(res))
    return res


# -----------------------------------------------------------------------------
# exercise 2: the compatibility check
# -----------------------------------------------------------------------------

def _variant(**changes):
    from ..hw.models import get_model

    m = get_model("silvermont")
    if "pebs_format" in changes:
        caps = (m.perf_capabilities & ~M.PERF_CAP_PEBS_FORMAT) | changes["pebs_format"] << 8
        changes["perf_capabilities"] = caps
    return replace(m, **changes)


_COMPAT_DESTS = (
    ("another Silvermont", {}),
    ("a Silvermont-like CPU writing PEBS format 1 (176-byte records)", {"pebs_format": 1}),
    ("one GP counter (PEBS still on PMC0)", {"n_gp": 1}),
    ("two fixed counters", {"n_fixed": 2}),
    ("40-bit counters", {"width": 40}),
    ("PEBS on PMC1 only", {"pebs_counter_mask": 0x2}),
    ("format 1, one GP counter and 40-bit counters", {"pebs_format": 1, "n_gp": 1, "width": 40}),
)


def _facts(model) -> dict:
    return {"pebs_format": model.pebs_format, "n_gp": model.n_gp, "n_fixed": model.n_fixed,
            "width": model.width, "pebs_counter_mask": model.pebs_counter_mask}


class Codes(frozenset):
    """A set of reason codes that prints as a sorted set."""

    def __repr__(self) -> str:
        return "{" + ", ".join(repr(c) for c in sorted(self)) + "}" if self else "set()"


def _codes(reasons) -> Codes:
    return Codes(code for code, phrase in CODES.items() if any(phrase in r for r in reasons))


@functools.lru_cache(maxsize=1)
def _compat_cases():
    import pebslab as pl
    from ..viz import migration as VZ
    from ..vmm import migrate as MG

    out = []
    for pebs_on in (True, False):
        src = VZ.source_vm("patch", instructions=0)
        v = src.vm.vcpus[0]
        if not pebs_on:
            v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)
        state = MG.save_state(src.vm, include_memory=False)
        vs = state.vcpus[0]
        guest = {"pebs_format": state.cpu.pebs_format, "nr_gp": vs.nr_gp,
                 "nr_fixed": vs.nr_fixed, "width": vs.counter_width,
                 "pebs_enable": vs.pebs_enable}
        dests = _COMPAT_DESTS if pebs_on else (_COMPAT_DESTS[0], _COMPAT_DESTS[5],
                                                _COMPAT_DESTS[1])
        for desc, changes in dests:
            model = _variant(**changes)
            host = pl.Host(cpu=model, frames=512, seed=1)
            codes = _codes(MG.check_compatible(state, host))
            label = f"{desc}, guest PEBS_ENABLE={vs.pebs_enable:#x}"
            out.append((label, (dict(guest), _facts(model)), codes))
    return tuple(out)


def ex10_compatible(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``compatible(guest, dest) -> set of reason codes`` (see CODES).

    pebslab only. ``guest``: pebs_format, nr_gp, nr_fixed, width,
    pebs_enable (what the saved state says the guest uses); ``dest``:
    pebs_format, n_gp, n_fixed, width, pebs_counter_mask (the destination
    CPU). Expected: the codes of the reasons check_compatible() really gives
    for Silvermont-like destinations (the other reasons, CPUID and host
    support, do not arise there).
    """
    def norm(got):
        if isinstance(got, str):
            return got
        try:
            return Codes(got)
        except TypeError:
            return got

    res = run_cases("ex10_compatible", lambda g, d: norm(candidate(g, d)), _compat_cases(),
                    quiet=True)
    if res.failed:
        desc, expected, got = res.failed[0]
        if isinstance(got, frozenset):
            miss, extra = sorted(expected - got), sorted(got - expected)
            parts = []
            if miss:
                parts.append(f"for {desc} you miss {', '.join(miss)} ("
                             + "; ".join(f"{c}: '{CODES[c]}'" for c in miss) + ")")
            if extra:
                parts.append(f"for {desc} you report {', '.join(extra)}, which the destination "
                             "does not justify")
                if "pebs_counter" in extra and "PEBS_ENABLE=0x0" in desc:
                    parts.append("a counter that is not PEBS-capable only matters if its "
                                 "PEBS_ENABLE bit is set")
            res.hint = "; ".join(parts)
        else:
            res.hint = "return a set of codes such as {'format', 'width'}"
    return _finish(res, quiet, strict)


# -----------------------------------------------------------------------------
# exercise 3: which pages dirty logging must leave writable
# -----------------------------------------------------------------------------

_WRITABLE_SETUPS = (
    ("the running example with 40 records per PMI (buffer pages 0 and 1 get written)",
     {"threshold_records": 40}),
    ("a one-page buffer starting at offset 0xf40, 3 records per PMI",
     {"buf_offset": 3904, "buf_pages": 1, "threshold_records": 3}),
    ("a DS area straddling two pages (ds_offset=0xfe0)", {"ds_offset": 4064}),
)


def _needed_gfns(vcpu) -> list[int]:
    """Every gfn PEBS may write for this vCPU: the DS area's pages and the buffer's."""
    from ..vmm import migrate as MG

    cov = MG.pin_coverage(vcpu)
    mm = vcpu.host_mm
    return sorted(int(mm.gfn[h]) for h in cov["needed"])


def _writable_case(i: int, candidate):
    import pebslab as pl
    from ..kvm import dirty_log as DL
    from ..viz import migration as VZ

    desc, kw = _WRITABLE_SETUPS[i]
    src = VZ.source_vm("patch", instructions=0, **kw)
    vm = src.vm
    v = vm.vcpus[0]
    needed = _needed_gfns(v)
    tables = sorted({g for gva in (src.setup.ds, src.setup.buffer)
                     for g in vm.table_gfns(v.cr3, gva)})
    got = candidate(v)
    try:
        got = sorted({int(g) for g in got})
    except (TypeError, ValueError):
        return False, f"return a list of gfns (ints); got {got!r}"
    bad = [g for g in got if not 0 <= g < vm.memory_pages]
    if bad:
        return False, f"gfn {bad[0]} is outside the VM's {vm.memory_pages} pages"
    DL.start_dirty_logging(vm)
    VZ.leave_writable(vm, got)
    res = vm.run(pl.workloads.hot_loop(), 60_000)
    problems = []
    if res.crashed:
        f = vm.trace.of("PEBS_FAULT")
        gfn = int(f["gpa"][-1]) >> 12 if f.size else -1
        ds_gfns = {v.gva_to_gpa(src.setup.ds) >> 12, v.gva_to_gpa(src.setup.ds + 0x5F) >> 12}
        what = "the DS area" if gfn in ds_gfns else "the buffer"
        problems.append(f"the guest crashed: the PEBS assist wrote gfn {gfn:#x} ({what}), which "
                        f"dirty logging had write-protected")
    left_out = [g for g in needed if g not in got]
    if left_out and not res.crashed:
        problems.append(f"you leave out gfn {left_out[0]:#x}: this run did not reach it, but it "
                        f"lies inside the DS area or [pebs_buffer_base, pebs_absolute_maximum), "
                        f"so a longer run would")
    extra = [g for g in got if g not in needed]
    if extra:
        which = "a guest page-table page" if extra[0] in tables else "a page PEBS never writes"
        problems.append(f"you keep gfn {extra[0]:#x} writable, {which}: every page kept writable "
                        f"is sent again in every round, so keep only what the assist writes")
    DL.stop_dirty_logging(vm)
    vm.destroy()
    if problems:
        return False, "; ".join(problems)
    return True, "no crash, nothing extra"


def ex10_keep_writable(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``keep_writable(vcpu) -> list of gfns`` dirty logging must not write-protect.

    pebslab only. Under `patch` on Silvermont, for three set-ups: turn on
    dirty logging, keep the learner's gfns writable (and always dirty), run
    60,000 guest instructions. Right: no crash, and exactly the pages of the
    DS area and the buffer (nothing the assist never writes).
    """
    if not callable(candidate):
        raise TypeError(f"candidate must be a function; got {type(candidate).__name__}")
    res = Result("ex10_keep_writable")
    for i, (desc, _) in enumerate(_WRITABLE_SETUPS):
        try:
            ok, why = _writable_case(i, candidate)
        except NotImplementedError:
            res.error = "your function still raises NotImplementedError; fill it in"
            break
        except Exception as e:  # noqa: BLE001 - a learner's bug is a wrong answer
            ok, why = False, f"{type(e).__name__}: {e}"
        if ok:
            res.passed += 1
        else:
            res.failed.append((desc, "the DS area's and the buffer's gfns", why))
    if res.failed:
        res.hint = ("the pages to keep are the ones the CPU writes during an assist: the DS "
                    "area (it advances pebs_index) and the whole buffer up to "
                    "pebs_absolute_maximum. Are those the pages the patch pinned?")
    return _finish(res, quiet, strict)
