"""A guest's ``perf record`` end to end: the chain of one sample, and the profile against ground truth.

pebslab only. :func:`profile_run` boots a guest on a simulated host, runs
``perf record -e <event><modifier>`` on ``multi_function`` and returns the
samples with their per-function shares; :func:`ground_truth` computes the
shares the profile should converge to, straight from the workload's
instruction arrays (one pass of its trace). :func:`chain_steps` picks the
first occurrence of each step of a PEBS sample's life out of the run's
trace (the approach of :mod:`pebslab.viz.story`, on this chapter's
workload). :func:`profile_figure` and :func:`profile_explorer` draw the
comparison; :func:`design_matrix` runs the same recording under every
design and CPU model.

Every number these functions return is simulated.

Used in: notebook 08 (the opening picture, sections 1-3, the explorer) and
the exercise checkers of :mod:`pebslab.exercises.nb08`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .._check import check_choice, check_int
from .story import LANES, Step, _first

__all__ = ["EVENTS", "MODIFIERS", "TRUTH_KINDS", "profile_error", "ProfileRun", "event_name", "ground_truth", "profile_run",
           "shares", "exact_fraction", "profile_table", "profile_figure", "profile_explorer",
           "chain_steps", "chain_figure", "design_matrix", "EXPLORERS"]

#: What the chapter samples: the kind of instruction counted, per CPU model's event name.
EVENTS = {
    "loads": {"silvermont": "MEM_UOPS_RETIRED.ALL_LOADS", "haswell": "MEM_UOPS_RETIRED.ALL_LOADS",
              "skylake": "MEM_INST_RETIRED.ALL_LOADS", "icelake": "MEM_INST_RETIRED.ALL_LOADS"},
    "instructions": {cpu: "instructions" for cpu in ("silvermont", "haswell", "skylake",
                                                     "icelake")},
}
#: The precision levels compared, with what they mean for the sample IP (FACTS a.6).
MODIFIERS = {
    ":pp": "PEBS, eventing IP (:pp)",
    ":p": "PEBS, IP after the event (:p)",
    "": "no PEBS: PMI with skid",
}
#: Instruction kinds the ground truth can count (workloads.KIND_*; None = every instruction).
TRUTH_KINDS = {"instructions": None, "loads": 1, "stores": 2, "branches": 3}
_KIND = TRUTH_KINDS

# Okabe-Ito colours per modifier; the ground truth is drawn as black outlines
_COL = {":pp": "#009E73", ":p": "#56B4E9", "": "#D55E00"}
_HATCH = {":pp": None, ":p": "..", "": "//"}


def event_name(cpu: str, event: str = "loads") -> str:
    """The event name a guest on ``cpu`` passes to perf for ``event`` ('loads' or 'instructions')."""
    import pebslab as pl
    check_choice("event", event, tuple(EVENTS))
    check_choice("cpu", cpu, tuple(pl.MODELS))
    return EVENTS[event][cpu]


def _workload():
    import pebslab as pl
    return pl.workloads.multi_function()


def ground_truth(workload=None, event: str = "loads") -> dict[str, float]:
    """Each function's share of the events one pass of the workload's trace retires.

    pebslab only. ``event`` is one of :data:`TRUTH_KINDS`: 'loads' counts
    load instructions, 'instructions' every instruction; the core runs the
    trace cyclically, so over a long run every function's share of the
    events converges to this. Functions with no event have share 0.0; keys
    in symbol-table order.
    """
    import pebslab as pl
    w = _workload() if workload is None else workload
    if not isinstance(w, pl.workloads.Workload):
        raise TypeError(f"workload must be a pebslab.workloads.Workload; got {type(w).__name__}")
    check_choice("event", event, tuple(TRUTH_KINDS))
    kind = _KIND[event]
    counted = np.ones(len(w), bool) if kind is None else (w.kind == kind)
    total = int(counted.sum())
    out = {}
    for start, end, name in w.symbols:
        sel = counted & (w.ip >= np.uint64(start)) & (w.ip < np.uint64(end))
        out[name] = int(sel.sum()) / total if total else 0.0
    return out


@dataclass(frozen=True)
class ProfileRun:
    """One guest recording: what was asked, what the guest got."""

    spec: str                   # the perf event string, e.g. 'MEM_UOPS_RETIRED.ALL_LOADS:pp'
    design: str
    cpu: str
    samples: np.ndarray         # rec.samples() (empty if refused)
    refused: str = ""           # perf record's error in the guest, if it was refused
    crashed: bool = False
    summary: str = ""           # the RunResult line
    pmis: int = 0
    records: int = 0
    bit62_reads: int = 0        # guest RDMSRs of GLOBAL_STATUS that saw bit 62


def profile_run(modifier: str = ":pp", design: str = "patch", cpu: str = "silvermont",
                event: str = "loads", period: int = 2003, instructions: int = 1_000_000,
                seed: int = 0) -> ProfileRun:
    """Run ``perf record -e <event><modifier> -c <period>`` in a guest on multi_function.

    pebslab only. A fresh host (``cpu``, seeded) and VM under ``design``;
    if the guest's perf refuses the event (no PEBS offered to this guest)
    the run is skipped and ``refused`` says why.
    """
    import pebslab as pl
    check_choice("modifier", modifier, tuple(MODIFIERS))
    check_choice("design", design, tuple(pl.DESIGN_NAMES))
    spec = event_name(cpu, event) + modifier
    period = check_int("period", period, 1, 1 << 31)
    instructions = check_int("instructions", instructions, 1, 50_000_000)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    host = pl.Host(cpu=cpu, frames=1024, seed=seed)
    vm = host.create_vm(design=design, memory_pages=256)
    try:
        guest = pl.GuestKernel(vm)
        try:
            rec = guest.perf.record(spec, period=period)
        except (ValueError, RuntimeError) as e:    # perf_event_open fails in the guest
            return ProfileRun(spec, design, cpu, np.zeros(0, _sample_dtype()), refused=str(e))
        res = vm.run(_workload(), instructions=instructions)
        st = vm.trace.of("MSR_READ")
        bit62 = int(((st["msr"] == pl.msr.MSR_CORE_PERF_GLOBAL_STATUS)
                     & ((st["value"] >> np.uint64(62)) & np.uint64(1)).astype(bool)).sum())
        counts = vm.trace.counts()
        return ProfileRun(spec, design, cpu, rec.samples(), crashed=res.crashed,
                          summary=str(res), pmis=res.pmis_injected,
                          records=counts.get("PEBS_WRITE", 0), bit62_reads=bit62)
    finally:
        vm.destroy()


@functools.lru_cache(maxsize=1)
def _sample_dtype():
    from ..guest.perf import SAMPLE_DTYPE
    return SAMPLE_DTYPE


def shares(samples, workload=None) -> dict[str, float]:
    """Each function's share of the samples (keys: the workload's functions, in order)."""
    w = _workload() if workload is None else workload
    names = [s[2] for s in w.symbols]
    n = len(samples)
    out = {name: 0.0 for name in names}
    if n:
        syms, counts = np.unique(np.asarray(samples["sym"]).astype(str), return_counts=True)
        for s, c in zip(syms, counts):
            out[str(s)] = int(c) / n
    return out


def exact_fraction(samples, workload=None, event: str = "loads") -> float:
    """The fraction of samples whose IP is an instruction that counts ``event``."""
    w = _workload() if workload is None else workload
    kind = _KIND[check_choice("event", event, tuple(TRUTH_KINDS))]
    ips = w.ip if kind is None else w.ip[w.kind == kind]
    if not len(samples):
        return 0.0
    return float(np.isin(np.asarray(samples["ip"], np.uint64), ips).mean())


def profile_error(sh: dict, truth: dict) -> float:
    """Total variation distance between a profile and the truth (half the L1 distance)."""
    return _error(sh, truth)


def _error(sh: dict, truth: dict) -> float:
    """Total variation distance between two share vectors (half the L1 distance)."""
    return 0.5 * sum(abs(sh.get(k, 0.0) - v) for k, v in truth.items()) + 0.5 * sum(
        v for k, v in sh.items() if k not in truth)


def profile_table(design: str = "patch", cpu: str = "silvermont", event: str = "loads",
                  period: int = 2003, instructions: int = 1_000_000) -> str:
    """Per-function shares: ground truth against :pp, :p and no PEBS, as text (simulated)."""
    truth = ground_truth(event=event)
    runs = {m: profile_run(m, design, cpu, event, period, instructions) for m in MODIFIERS}
    head = f"{'function':<19}{'truth':>7}" + "".join(f"{('no PEBS' if not m else m):>9}"
                                                  for m in MODIFIERS)
    lines = [head]
    sh = {m: shares(r.samples) for m, r in runs.items()}
    for name, t in truth.items():
        lines.append(f"{name:<19}{100 * t:6.1f}%" + "".join(
            f"{100 * sh[m].get(name, 0.0):8.1f}%" if not runs[m].refused else f"{'-':>9}"
            for m in MODIFIERS))
    lines.append(f"{'samples':<19}{'':>7}" + "".join(f"{len(runs[m].samples):>9}"
                                                   for m in MODIFIERS))
    lines.append(f"{'error (TV distance)':<26}" + "".join(
        f"{100 * _error(sh[m], truth):8.1f}%" if not runs[m].refused else f"{'-':>9}"
        for m in MODIFIERS))
    lines.append(f"{'IP on a counted instr.':<26}" + "".join(
        f"{100 * exact_fraction(runs[m].samples, event=event):8.1f}%" if not runs[m].refused
        else f"{'-':>9}" for m in MODIFIERS))
    return "\n".join(lines)


def _bars(ax, truth, results, title):
    names = list(truth)
    y = np.arange(len(names))
    k = len(results)
    h = 0.8 / max(k, 1)
    for j, (m, run) in enumerate(results.items()):
        sh = shares(run.samples)
        vals = [100 * sh.get(n, 0.0) for n in names]
        label = MODIFIERS[m] + (f", error {100 * _error(sh, truth):.1f}%" if not run.refused
                                else ": refused")
        ax.barh(y + (j - (k - 1) / 2) * h, vals, height=h, color=_COL[m], hatch=_HATCH[m],
                edgecolor="white", label=label)
    for i, n in enumerate(names):
        ax.plot([100 * truth[n]] * 2, [i - 0.45, i + 0.45], color="black", lw=2)
    ax.plot([], [], color="black", lw=2, label="ground truth (from the workload)")
    ax.set_yticks(y)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("share of samples (%) - simulated")
    ax.set_xlim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    for i, n in enumerate(names):
        worst = max(100 * shares(r.samples).get(n, 0.0) for r in results.values())
        if truth[n] == 0 and worst > 0:
            ax.annotate(f"no counted instruction here, yet {worst:.0f}% of the samples",
                        xy=(worst, i), xytext=(worst + 4, i), va="center", fontsize=8,
                        color="#D55E00", arrowprops=dict(arrowstyle="->", color="#D55E00"))


def profile_figure(design: str = "patch", cpu: str = "silvermont", event: str = "loads",
                   period: int = 2003, instructions: int = 1_000_000):
    """Draw the guest's profile with :pp, :p and without PEBS against the ground truth.

    pebslab only. Per function of multi_function: the share of samples of
    each recording (bars) and the share of the counted events (black line).
    """
    import matplotlib.pyplot as plt
    truth = ground_truth(event=event)
    runs = {m: profile_run(m, design, cpu, event, period, instructions) for m in MODIFIERS}
    fig, ax = plt.subplots(figsize=(9, 4.6))
    _bars(ax, truth, runs, f"Where a guest's perf record -e {event_name(cpu, event)} puts its "
                           f"samples\n({design} design, {cpu} host, period {period}; simulated)")
    fig.subplots_adjust(left=0.19, right=0.97, top=0.86, bottom=0.12)   # cheaper than tight_layout
    return fig


def profile_explorer(modifier: str = ":pp", design: str = "patch", cpu: str = "silvermont",
                     event: str = "loads", period: int = 2003):
    """Draw one recording's per-function profile against the ground truth (the explorer).

    pebslab only. 500,000 guest instructions of multi_function.
    """
    import matplotlib.pyplot as plt
    truth = ground_truth(event=event)
    run = profile_run(modifier, design, cpu, event, period, instructions=500_000)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    what = (f"{len(run.samples)} samples, {100 * exact_fraction(run.samples, event=event):.0f}% "
            f"on a counted instruction" if not run.refused else "perf record refused")
    _bars(ax, truth, {modifier: run}, f"perf record -e {run.spec} in a {design} guest on "
                                      f"{cpu}\n{what} (simulated)")
    if run.refused:
        why = run.refused
        if "(" in why and ")" in why:
            why = why[why.index("(") + 1:why.index(")")]
        ax.text(50, len(truth) / 2, f"the guest's perf refuses the precise event:\n"
                f"no PEBS for this guest ({why[:70]})",
                ha="center", va="center", fontsize=9, color="#D55E00")
    fig.subplots_adjust(left=0.19, right=0.97, top=0.86, bottom=0.12)   # cheaper than tight_layout
    return fig


def chain_steps(design: str = "patch", cpu: str = "silvermont", event: str = "loads",
                period: int = 2003, seed: int = 0) -> list[Step]:
    """The first occurrence of each step of a PEBS sample's life in a real run, in order.

    pebslab only. The run: the guest records ``<event>:pp`` on
    multi_function. Steps: the guest's WRMSRs (DS_AREA, PEBS_ENABLE with the
    pins, GLOBAL_CTRL), the MSR-load list at entry, the counter overflow,
    the assist's record write, the PMI, bit 62 in the guest's GLOBAL_STATUS
    (kvm_perf_overflow), the injected PMI, the guest's RDMSR that sees bit
    62, the drain. Steps that did not happen are left out.
    """
    import pebslab as pl
    M = pl.msr
    check_choice("design", design, tuple(pl.DESIGN_NAMES))
    spec = event_name(cpu, event) + ":pp"
    seed = check_int("seed", seed, 0, 2**63 - 1)
    period = check_int("period", period, 1, 1 << 31)
    host = pl.Host(cpu=cpu, frames=1024, seed=seed)
    vm = host.create_vm(design=design, memory_pages=256)
    try:
        guest = pl.GuestKernel(vm)
        try:
            guest.perf.record(spec, period=period)
        except (ValueError, RuntimeError):
            return []
        vm.run(_workload(), instructions=period * 10)
        rows = vm.trace.rows()
    finally:
        vm.destroy()
    steps: list[Step] = []

    def add(r, src, dst, label):
        if r is not None:
            steps.append(Step(src, dst, label, int(r["time"]), r["kind"]))

    _, r = _first(rows, "MSR_WRITE", msr=M.MSR_IA32_DS_AREA)
    add(r, "guest kernel", "KVM", "WRMSR DS_AREA: KVM stores the guest virtual address")
    _, r = _first(rows, "MSR_WRITE", msr=M.MSR_IA32_PEBS_ENABLE, pred=lambda r: r["value"] != 0)
    if r is not None:
        pins = sum(1 for q in rows if q["kind"] == "PIN" and q["time"] == r["time"])
        add(r, "guest kernel", "KVM", f"WRMSR PEBS_ENABLE = {r['value']:#x}: "
            + (f"kvm_pmu_pebs_pin pins {pins} pages" if pins else "nothing pinned"))
    _, r = _first(rows, "MSR_WRITE", msr=M.MSR_CORE_PERF_GLOBAL_CTRL,
                  pred=lambda r: r["value"] != 0)
    add(r, "guest kernel", "KVM", "WRMSR GLOBAL_CTRL: reprogram_gp_counter creates the host "
        "perf event")
    _, r = _first(rows, "AUTOLOAD", msr=M.MSR_IA32_DS_AREA)
    add(r, "KVM", "CPU", "VM entry: the MSR-load list loads the guest's PEBS MSRs")
    i_ov, r = _first(rows, "OVERFLOW")
    add(r, "CPU", "CPU", "the counter overflows: PEBS assist armed")
    i_w, r = _first(rows, "PEBS_WRITE", after=i_ov if i_ov is not None else -1)
    add(r, "CPU", "guest memory", "the assist writes the record (GVA -> GPA -> HPA)")
    i_p, r_p = _first(rows, "PMI", after=i_w if i_w is not None else -1)
    add(r_p, "CPU", "host perf", "threshold reached: PMI, an NMI on the host: VM exit")
    i_x, r_x = _first(rows, "PMI_INJECT", after=i_p if i_p is not None else -1)
    if r_x is not None and r_p is not None:
        steps.append(Step("host perf", "KVM", "kvm_perf_overflow_intr: precise event, so bit 62 "
                          "of the virtual GLOBAL_STATUS", int(r_p["time"]), "PMI"))
    add(r_x, "KVM", "guest kernel", "KVM injects the PMI")
    i_s, r = _first(rows, "MSR_READ", msr=M.MSR_CORE_PERF_GLOBAL_STATUS,
                    after=i_x if i_x is not None else -1, pred=lambda r: r["value"] >> 62 & 1)
    add(r, "guest kernel", "KVM", f"RDMSR GLOBAL_STATUS = {r['value']:#x}" if r else "")
    _, r = _first(rows, "DRAIN", after=i_s if i_s is not None else -1)
    add(r, "guest kernel", "guest memory", "drain: decode the records into samples")
    return steps


def chain_figure(design: str = "patch", cpu: str = "silvermont", event: str = "loads",
                 period: int = 2003):
    """Draw :func:`chain_steps` as a sequence diagram (lanes as in notebook 00's picture).

    pebslab only. One arrow per step, in time order, labelled with what
    happened and the simulated guest TSC it happened at.
    """
    from .story import sequence_figure

    steps = chain_steps(design=design, cpu=cpu, event=event, period=period)
    return sequence_figure(
        steps, f"One sample of perf record -e {event_name(cpu, event)}:pp in a {design} guest "
               f"on {cpu}\n(every arrow is an event of the run's trace)",
        lanes=LANES, row_height=0.5, fontsize=7.5)


def design_matrix(cpus=("silvermont", "icelake"), event: str = "loads", period: int = 2003,
                  instructions: int = 500_000) -> list[dict]:
    """The same ``<event>:pp`` recording under every design on each CPU model.

    pebslab only. One dict per (design, cpu): samples, the share of them on a
    counted instruction, pinned pages, the error against the ground truth,
    or why the guest's perf refused the event; for a refusal, what the guest
    gets from the same event without PEBS.
    """
    import pebslab as pl
    truth = ground_truth(event=event)
    out = []
    for cpu in cpus:
        check_choice("cpu", cpu, tuple(pl.MODELS))
        for design in pl.DESIGN_NAMES:
            run = profile_run(":pp", design, cpu, event, period, instructions)
            row = {"design": design, "cpu": cpu, "refused": run.refused,
                   "samples": len(run.samples), "crashed": run.crashed}
            src = run
            if run.refused:
                src = profile_run("", design, cpu, event, period, instructions)
            row["exact"] = exact_fraction(src.samples, event=event)
            row["error"] = _error(shares(src.samples), truth)
            row["fallback_samples"] = len(src.samples) if run.refused else 0
            out.append(row)
    return out


#: Explorers of notebook 08 and their defaults (bench/bench_explorers.py times them).
EXPLORERS = {
    "profile_explorer": (profile_explorer, {"modifier": ":pp", "design": "patch",
                                            "cpu": "silvermont", "event": "loads",
                                            "period": 2003}),
}
