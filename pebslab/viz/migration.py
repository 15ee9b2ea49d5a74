"""Figures for notebook 10: migrating a VM whose guest uses PEBS.

pebslab only. Every function runs real VMs: a source guest that programs
PEBS by hand (:func:`pebslab.scenarios.manual_pebs`, the set-up of notebook
06) on ``hot_loop``, saved with :func:`pebslab.vmm.migrate.save_state` and
restored on a destination host. :func:`replay_restore` is the restore of
:func:`pebslab.vmm.migrate.restore_state` with the KVM_SET_MSRS list written
one entry at a time in any order, so a figure can show KVM's state after each
entry (:func:`restore_steps`, :func:`restore_timeline`).
:func:`live_migration_rounds` runs the pre-copy loop with dirty logging under
several designs.

The guest kernel object (:class:`pebslab.GuestKernel`) is not moved to the
destination here: its PMI handler keeps running against the source's
memory. What the destination's CPU does is read from the destination's
trace (PEBS_WRITE rows are the assist's own writes) and its memory (through
the guest's page tables, as KVM reads it). Moving a ``GuestKernel`` is
issue 9 item 10.

Used in: notebook 10.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from .._check import check_choice, check_int
from ..hw import core as C
from ..hw import msr as M
from ..kvm.designs import DESIGN_NAMES

__all__ = ["SOURCE_RUN", "Source", "source_vm", "saved_source", "replay_restore", "restore_steps",
           "restore_timeline", "RestoreStep", "leave_writable", "live_migration_rounds",
           "live_migration_figure", "EXPLORERS", "ORDER_CHOICES", "pebs_event"]

#: The running set-up: PEBS on PMC0 for the hot loop's LLC-missing load, a
#: PMI after every record, 20,000 guest instructions (about six records).
SOURCE_RUN = {"period": 50, "instructions": 20_000, "memory_pages": 256, "frames": 1024}

#: Orders offered by the explorer: the three of vmm.migrate.MSR_ORDERS.
ORDER_CHOICES = ("userspace", "ds_first", "pebs_first")

#: Okabe-Ito colours (colour-blind safe).
_BLUE, _ORANGE, _GREEN, _VERMILION, _GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#999999"


def pebs_event(cpu: str) -> int:
    """The event|umask<<8 of the running example's PEBS load event on ``cpu``.

    Silvermont MEM_UOPS_RETIRED.L2_MISS_LOADS (0x04/0x04); the bigger cores'
    MEM_LOAD_RETIRED.L3_MISS (0xD1/0x20), as tests/test_vmm_migrate.py uses.
    """
    return 0x0404 if cpu == "silvermont" else 0x20D1


@dataclass
class Source:
    """A source VM with PEBS running: host, vm, guest kernel, the manual set-up, run result."""

    host: object
    vm: object
    guest: object
    setup: object
    result: object

    @property
    def records(self) -> int:
        """PEBS records the source's CPU wrote (PEBS_WRITE rows of its trace)."""
        return int(self.vm.trace.of("PEBS_WRITE").size)


def source_vm(design: str = "patch", cpu: str = "silvermont", *, seed: int = 0,
              instructions: int | None = None, **setup) -> Source:
    """Boot a guest under ``design`` on ``cpu``, program PEBS by hand and run ``hot_loop``.

    pebslab only. ``setup`` goes to :func:`pebslab.scenarios.manual_pebs`
    (``ds_offset``, ``buf_offset``, ``buf_pages``, ``threshold_records``);
    the period is SOURCE_RUN's unless given.
    """
    import pebslab as pl
    from .. import scenarios as S

    check_choice("design", design, DESIGN_NAMES)
    check_choice("cpu", cpu, tuple(pl.MODELS))
    n = SOURCE_RUN["instructions"] if instructions is None else check_int(
        "instructions", instructions, 0, 10_000_000)
    host = pl.Host(cpu=cpu, frames=SOURCE_RUN["frames"], seed=seed)
    vm = host.create_vm(design=design, memory_pages=SOURCE_RUN["memory_pages"])
    guest = pl.GuestKernel(vm)
    setup.setdefault("period", SOURCE_RUN["period"])
    st = S.manual_pebs(guest, event=pebs_event(cpu), **setup)
    res = vm.run(pl.workloads.hot_loop(), n) if n else None
    return Source(host, vm, guest, st, res)


@dataclass(frozen=True)
class RestoreStep:
    """KVM's view of the vCPU right after one KVM_SET_MSRS entry."""

    n: int
    msr: int
    value: int
    ds_area: int            # what KVM holds in pmu->ds_area
    pebs_enable: int
    pinned: int             # frames pinned (data pages and, under `fixed`, page tables)
    needed: int             # frames PEBS needs (DS area and buffer)
    missing: int            # needed and not pinned
    host_event: str         # PMC0's backing host event: "none", "counting" or "precise"

    @property
    def name(self) -> str:
        return M.msr_name(self.msr)


def _host_event(vcpu, idx: int = 0) -> str:
    pmc = vcpu.pmu.gp_counters[idx] if idx < len(vcpu.pmu.gp_counters) else None
    ev = None if pmc is None else pmc.perf_event
    if ev is None:
        return "none"
    return "precise" if ev.attr.precise_ip else "counting"


def replay_restore(state, host, order, design=None):
    """Restore ``state`` on ``host`` writing the PMU MSRs in ``order``; return (vm, steps).

    pebslab only. The VM, its memory, CR3, RIP and the PMI handler come from
    :func:`pebslab.vmm.migrate.restore_state` given the state without its
    MSRs; then every MSR of ``order`` (MSR indices; read-only ones are
    skipped) goes through ``kvm_pmu_set_msr(..., host_initiated=True)`` as
    KVM_SET_MSRS does, or, under a design that defers PMU work
    (``restore_defers_pmu``), ``kvm_pmu_set_msr_deferred`` followed by
    ``kvm_pmu_finish_restore``. For a named order this is what
    ``restore_state`` does. Each step records KVM's view
    (:class:`RestoreStep`); a final step with msr 0 is added after
    ``kvm_pmu_finish_restore`` under a deferring design.
    Raises ``MigrationError`` as restore_state does.
    """
    from ..hw.errors import GuestFault
    from ..kvm import pmu as kpmu
    from ..kvm.designs import get_design
    from ..vmm import migrate as MG

    if not isinstance(state, MG.VmState):
        raise TypeError(f"state must be a VmState; got {type(state).__name__}")
    msrs = state.vcpus[0].msrs
    try:
        order = [int(m) for m in order]
    except (TypeError, ValueError):
        raise TypeError(f"order must be a list of MSR indices; got {order!r}") from None
    unknown = [m for m in order if m not in msrs]
    if unknown:
        raise ValueError(f"order must only name saved MSRs ({', '.join(hex(m) for m in msrs)}); "
                         f"got {', '.join(hex(m) for m in unknown)}")
    d = get_design(design if design is not None else state.design_knobs)
    reasons = MG.check_compatible(state, host, d)
    if reasons:
        raise MG.MigrationError(reasons)
    bare = replace(state, vcpus=[replace(vs, msrs={}) for vs in state.vcpus])
    vm = MG.restore_state(bare, host, d)
    v = vm.vcpus[0]
    defer = MG.defers_pmu_restore(d)
    steps: list[RestoreStep] = []

    def snap(n, msr, value):
        cov = MG.pin_coverage(v)
        steps.append(RestoreStep(n, msr, value, v.pmu.ds_area, v.pmu.pebs_enable,
                                 len(cov["pinned"]), len(cov["needed"]), len(cov["missing"]),
                                 _host_event(v)))

    for n, msr in enumerate(order):
        if msr in MG.READ_ONLY_MSRS:
            continue
        value = msrs[msr]
        try:
            if defer and msr in kpmu.DEFERRED_MSRS:
                kpmu.kvm_pmu_set_msr_deferred(v, msr, value)
            else:
                kpmu.kvm_pmu_set_msr(v, msr, value, host_initiated=True)
        except GuestFault as e:
            vm.destroy()
            raise MG.MigrationError([f"KVM_SET_MSRS failed at entry {n} "
                                     f"({M.msr_name(msr)}={value:#x}): {e}"]) from None
        v.trace("MIGRATE", msr=msr, value=value, info=f"KVM_SET_MSRS[{n}] {M.msr_name(msr)}")
        snap(n, msr, value)
    if defer:
        kpmu.kvm_pmu_finish_restore(v)
        snap(len(order), 0, 0)
    v.core.regs[C.R_TSC] = np.uint64(state.vcpus[0].tsc)   # KVM's work is not guest time
    return vm, steps


def _cpu_for(design: str) -> str:
    """The running example's CPU under a design: Ice Lake for `icelake`, else Silvermont."""
    return "icelake" if design == "icelake" else "silvermont"


@functools.lru_cache(maxsize=8)
def saved_source(design: str = "patch"):
    """The running example's source under ``design``, run and saved: (VmState, records written).

    pebslab only: :func:`source_vm` on the design's CPU, then
    :func:`pebslab.vmm.migrate.save_state`. Cached (the run is
    deterministic), so an explorer restores without re-running the source;
    the source VM stays alive behind the state (its PMI handler reads it).
    """
    from ..vmm import migrate as MG

    check_choice("design", design, DESIGN_NAMES)
    src = source_vm(design, _cpu_for(design))
    return MG.save_state(src.vm), src.records


def restore_steps(design: str = "patch", msr_order: str = "userspace", order=None, *,
                  dest_cpu: str | None = None, run: int | None = None):
    """Migrate the running example once; return (saved state, destination vm, steps, outcome).

    pebslab only. Source: :func:`saved_source` under ``design`` (Silvermont;
    Ice Lake for `icelake`); restored on a fresh ``dest_cpu`` host (default:
    the source's CPU) with :func:`replay_restore` in the named ``msr_order``
    (:func:`pebslab.vmm.migrate.restore_order`) or in ``order`` (a list of
    MSR indices) if given. The destination then runs ``run`` guest
    instructions (default SOURCE_RUN's). ``outcome``: records the source
    wrote, records the destination's CPU wrote, PMIs injected there,
    whether it crashed, and the restore's reasons if it was refused (then
    the destination vm and steps are None and []).
    """
    import pebslab as pl
    from ..vmm import migrate as MG

    check_choice("design", design, DESIGN_NAMES)
    check_choice("msr_order", msr_order, MG.MSR_ORDERS)
    cpu = _cpu_for(design)
    dest_cpu = cpu if dest_cpu is None else check_choice("dest_cpu", dest_cpu, tuple(pl.MODELS))
    n = SOURCE_RUN["instructions"] if run is None else check_int("run", run, 0, 10_000_000)
    state, source_records = saved_source(design)
    if order is None:
        order = MG.restore_order(state.vcpus[0].msrs, msr_order)
    dest = pl.Host(cpu=dest_cpu, frames=SOURCE_RUN["frames"], seed=1)
    outcome = {"source_records": source_records, "records": 0, "pmis": 0, "crashed": False,
               "reasons": []}
    try:
        vm, steps = replay_restore(state, dest, order)
    except MG.MigrationError as e:
        outcome["reasons"] = e.reasons
        return state, None, [], outcome
    w0 = vm.trace.of("PEBS_WRITE").size
    if n:
        res = vm.run(pl.workloads.hot_loop(), n)
        outcome["pmis"] = int(res.pmis_injected)
        outcome["crashed"] = bool(res.crashed)
    outcome["records"] = int(vm.trace.of("PEBS_WRITE").size - w0)
    return state, vm, steps, outcome


_SHORT = {M.MSR_IA32_DS_AREA: "DS_AREA", M.MSR_IA32_PEBS_ENABLE: "PEBS_ENABLE",
          M.MSR_CORE_PERF_GLOBAL_CTRL: "GLOBAL_CTRL", M.MSR_CORE_PERF_GLOBAL_STATUS: "GLOBAL_STATUS",
          M.MSR_CORE_PERF_GLOBAL_OVF_CTRL: "GLOBAL_OVF_CTRL",
          M.MSR_CORE_PERF_FIXED_CTR_CTRL: "FIXED_CTR_CTRL", M.MSR_PEBS_DATA_CFG: "PEBS_DATA_CFG"}


def _short(msr: int) -> str:
    if msr == 0:
        return "(after the list)"
    if msr in _SHORT:
        return _SHORT[msr]
    if M.MSR_IA32_PERFCTR0 <= msr < M.MSR_IA32_PERFCTR0 + 8:
        return f"PMC{msr - M.MSR_IA32_PERFCTR0}"
    if M.MSR_P6_EVNTSEL0 <= msr < M.MSR_P6_EVNTSEL0 + 8:
        return f"EVNTSEL{msr - M.MSR_P6_EVNTSEL0}"
    if M.MSR_CORE_PERF_FIXED_CTR0 <= msr < M.MSR_CORE_PERF_FIXED_CTR0 + 4:
        return f"FIXED_CTR{msr - M.MSR_CORE_PERF_FIXED_CTR0}"
    return f"{msr:#x}"


def restore_timeline(design: str = "patch", msr_order: str = "userspace"):
    """Draw KVM's state after each KVM_SET_MSRS entry of a restore; return the Figure.

    pebslab only. Columns: the MSRs in the order written; rows: DS_AREA as
    KVM holds it, frames pinned (of those PEBS needs), and PMC0's backing
    host perf event (none / counting / precise). Below, what the destination
    then did in 20,000 guest instructions (simulated), beside the source.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    check_choice("design", design, DESIGN_NAMES)
    _state, vm, steps, out = restore_steps(design, msr_order)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    fig.subplots_adjust(left=0.14, right=0.98, top=0.82, bottom=0.36)
    rows = ("DS_AREA in KVM", "pages pinned", "PMC0 host event")
    ev_colour = {"none": "white", "counting": _ORANGE, "precise": _GREEN}
    for x, s in enumerate(steps):
        # row 2: DS_AREA
        known = s.ds_area != 0
        ax.add_patch(Rectangle((x, 2), 0.95, 0.9, fc=_BLUE if known else "white", ec="0.4",
                               alpha=0.8 if known else 1))
        ax.text(x + 0.47, 2.45, "GVA" if known else "0", ha="center", va="center", fontsize=8,
                color="white" if known else "black")
        # row 1: pins
        full = s.needed and s.missing == 0
        ax.add_patch(Rectangle((x, 1), 0.95, 0.9, fc=_GREEN if full else "white", ec="0.4",
                               hatch=None if full or not s.pebs_enable else "//"))
        got = s.needed - s.missing
        label = f"{got}/{s.needed}" if s.needed else f"{s.pinned}"
        if s.pinned > got and s.needed:
            label += f"\n+{s.pinned - got} PT"
        ax.text(x + 0.47, 1.45, label, ha="center", va="center", fontsize=7)
        # row 0: host event
        ax.add_patch(Rectangle((x, 0), 0.95, 0.9, fc=ev_colour[s.host_event], ec="0.4",
                               hatch="xx" if s.host_event == "counting" else None))
        ax.text(x + 0.47, 0.45, s.host_event, ha="center", va="center", fontsize=7)
    for y, label in enumerate(reversed(rows)):
        ax.text(-0.2, y + 0.45, label, ha="right", va="center", fontsize=9)
    ax.set_xticks([x + 0.47 for x in range(len(steps))])
    ax.set_xticklabels([_short(s.msr) for s in steps], rotation=40, ha="right", fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(0, max(len(steps), 1))
    ax.set_ylim(-0.1, 3.0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlabel("KVM_SET_MSRS entries, in the order written (left to right)", fontsize=9)
    ax.set_title(f"Restoring the vPMU on the destination: design {design!r}, order {msr_order!r}"
                 "\n(KVM's state after each entry; hatched: PEBS on but pages unpinned / "
                 "host event not precise)", fontsize=10)
    if out["reasons"]:
        verdict = "refused: " + out["reasons"][0]
    else:
        verdict = (f"then, simulated, {SOURCE_RUN['instructions']:,} guest instructions on the "
                   f"destination: {out['records']} PEBS records written, {out['pmis']} PMIs "
                   f"injected (the source wrote {out['source_records']} in as many)")
    fig.text(0.02, 0.02, verdict, fontsize=9)
    return fig


def leave_writable(vm, gfns) -> None:
    """While dirty logging is on, keep ``gfns`` writable and report them dirty in every log.

    pebslab only: what :meth:`pebslab.kvm.dirty_log.DirtyLog.pinned` does
    for pinned pages under ``dirty_log_skips_pinned``, for any list of
    gfns (the exercise checker uses it to try a learner's choice).
    """
    from ..hw.mmu import EPT_R, EPT_W

    dl = vm.dirty_log
    if not dl.active:
        raise ValueError("dirty logging is not enabled on this VM (start_dirty_logging)")
    for g in gfns:
        g = check_int("gfn", g, 0, vm.memory_pages - 1)
        dl.always_dirty.add(g)
        dl.protected.discard(g)
        e = int(vm.ept[g])
        if e & EPT_R:
            vm.ept[g] = np.uint64(e | EPT_W)
    vm._invept()


#: (design, CPU) pairs compared by :func:`live_migration_rounds`.
LIVE_CASES = (("patch", "silvermont"), ("fixed", "silvermont"), ("icelake", "icelake"))


def live_migration_rounds(design: str = "patch", cpu: str = "silvermont", rounds: int = 2):
    """Live-migrate the running example once; return the report of ``live_migrate``.

    pebslab only: :func:`source_vm` then
    :func:`pebslab.vmm.migrate.live_migrate` to a fresh host of the same CPU,
    ``rounds`` pre-copy rounds of SOURCE_RUN's instructions each. The report
    gains ``source_records`` (PEBS records the source wrote while migrating),
    ``dest_records`` (written by the destination in one more run) and
    ``pebs_faults`` (faults taken inside a PEBS assist on the source).
    """
    import pebslab as pl
    from ..vmm import migrate as MG

    rounds = check_int("rounds", rounds, 0, 10)
    src = source_vm(design, cpu, instructions=0)
    w0 = src.vm.trace.of("PEBS_WRITE").size
    dest = pl.Host(cpu=cpu, frames=SOURCE_RUN["frames"], seed=1)
    wl = pl.workloads.hot_loop()
    new, rep = MG.live_migrate(src.vm, dest, wl, rounds=rounds,
                               instructions_per_round=SOURCE_RUN["instructions"],
                               destroy_source=False)
    rep["source_records"] = int(src.vm.trace.of("PEBS_WRITE").size - w0)
    rep["pebs_faults"] = int(src.vm.trace.of("PEBS_FAULT").size)
    rep["dest_records"] = 0
    if new is not None:
        d0 = new.trace.of("PEBS_WRITE").size
        new.run(wl, SOURCE_RUN["instructions"])
        rep["dest_records"] = int(new.trace.of("PEBS_WRITE").size - d0)
    return rep


def live_migration_figure(rounds: int = 2):
    """Draw pages sent per pre-copy pass for each design of LIVE_CASES; return the Figure.

    pebslab only. One group of bars per design (full copy, each round,
    stop-and-copy); a crashed source is marked. Everything is simulated.
    """
    import matplotlib.pyplot as plt

    reps = [(d, c, live_migration_rounds(d, c, rounds)) for d, c in LIVE_CASES]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    fig.subplots_adjust(left=0.09, right=0.98, top=0.88, bottom=0.2)
    width = 0.8 / (rounds + 2)
    colours = [_BLUE] + [_ORANGE] * rounds + [_GREEN]
    hatches = [None] + ["//"] * rounds + ["xx"]
    for k, (d, c, rep) in enumerate(reps):
        sent = rep["pages_sent"]
        for j in range(rounds + 2):
            x = k + (j - (rounds + 1) / 2) * width
            if j < len(sent):
                ax.bar(x, max(sent[j], 0), width * 0.95, color=colours[j], hatch=hatches[j],
                       edgecolor="0.3", log=True)
                ax.text(x, max(sent[j], 1) * 1.1, str(sent[j]), ha="center", fontsize=7)
        if rep["crashed"]:
            ax.text(k - 0.2, 2, f"source guest crashed\nin pre-copy round {len(sent)}",
                    ha="left", fontsize=8, color=_VERMILION, fontweight="bold")

    def tick(d, c, rep):
        if rep["crashed"]:
            return f"{d} on {c}\n(migration aborted)"
        return f"{d} on {c}\n(destination: {rep['dest_records']} records)"
    ax.set_xticks(range(len(reps)))
    ax.set_xticklabels([tick(d, c, rep) for d, c, rep in reps], fontsize=9)
    ax.set_ylabel("pages sent (log scale)")
    ax.set_ylim(0.8, 3000)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(fc=_BLUE, label="full copy"),
                       Patch(fc=_ORANGE, hatch="//", label="pre-copy round"),
                       Patch(fc=_GREEN, hatch="xx", label="stop-and-copy")],
              fontsize=8, loc="upper right", ncol=3)
    ax.set_title(f"Live migration with dirty logging while PEBS runs ({rounds} pre-copy "
                 f"rounds of {SOURCE_RUN['instructions']:,} instructions; simulated)",
                 fontsize=10)
    return fig


EXPLORERS = {
    "restore_timeline": (restore_timeline, {"design": "patch", "msr_order": "userspace"}),
}
