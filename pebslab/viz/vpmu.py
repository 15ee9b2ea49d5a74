"""Figures for notebook 03: the virtual PMU before PEBS, its VM exits and their cost.

pebslab only. Each function runs a real guest (pl.Host, create_vm, the
guest kernel's perf driver sampling without PEBS) on ``hot_loop`` and
reads the VM's trace. Cycle costs come from pebslab.kvm.vm.Costs, whose
values are ASSUMPTIONS (order-of-magnitude figures, see its docstring);
the explorers let a learner change them.
"""

from __future__ import annotations

import numpy as np

from .. import workloads as WL
from ..kvm.designs import DESIGN_NAMES
from ..trace import KIND_ID, KINDS
from .._check import check_int as _check_int, is_int as _is_int

__all__ = [
    "VPMU_EVENTS", "COST_CATEGORIES", "guest_session", "handler_windows",
    "pmi_cost_breakdown", "pmi_costs", "exit_timeline", "EXPLORERS",
]

#: Sampling events offered by the explorers (non-PEBS; the perf driver puts
#: instructions and cycles on fixed counters 0 and 1, loads on PMC0).
VPMU_EVENTS = ("instructions", "cycles", "MEM_UOPS_RETIRED.ALL_LOADS")

#: Keys of a per-PMI cost breakdown, with their labels.
COST_CATEGORIES = {
    "nmi_exit": "VM exit for the host PMI (NMI)",
    "inject": "inject the PMI into the guest",
    "msr_exits": "guest RDMSR/WRMSR exits",
    "perf_events": "host perf event release + re-create",
}
_COLORS = {"nmi_exit": "#cb181d", "inject": "#fd8d3c", "msr_exits": "#3182bd",
           "perf_events": "#969696", "guest": "#c7e9c0"}
_HANDLER_KINDS = {KIND_ID[k] for k in ("VMEXIT", "MSR_READ", "MSR_WRITE", "PMI_INJECT")}


def _check_event(event) -> str:
    if not isinstance(event, str):
        raise TypeError(f"event must be a str such as 'instructions'; got {type(event).__name__}")
    base, _, mods = event.partition(":")
    if "p" in mods:
        raise ValueError(f"event must not use PEBS (no :p/:pp; this figure is about the vPMU "
                         f"before PEBS, see notebook 08 for PEBS); got {event!r}")
    return event


def guest_session(period: int = 10007, design: str = "patch", event: str = "instructions",
                  instructions: int = 200_000, *, vmexit: int = 1200, msr_emulation: int = 300,
                  perf_event_create: int = 4000, perf_event_release: int = 2000,
                  pmi_inject: int = 800, cpu: str = "silvermont"):
    """Boot a guest, start ``perf record -e EVENT -c PERIOD`` in it, run ``hot_loop``.

    pebslab only. pl.Host(cpu, seed=0), a 256-page VM of ``design`` whose
    Costs use the given cycle figures (ASSUMPTIONS; defaults are
    pebslab.kvm.vm.Costs), the guest kernel and its perf driver. Returns
    (vm, recording, run result, index of the first trace row of the run).
    """
    from ..guest.kernel import GuestKernel
    from ..kvm.vm import Costs
    from ..system import Host

    period = _check_int("period", period, 1_000, 10_000_000)
    if design not in DESIGN_NAMES:
        raise ValueError(f"design must be one of {', '.join(map(repr, DESIGN_NAMES))}; "
                         f"got {design!r}")
    event = _check_event(event)
    instructions = _check_int("instructions", instructions, 1_000, 1_000_000)
    costs = Costs(vmexit=_check_int("vmexit", vmexit, 0, 100_000),
                  msr_emulation=_check_int("msr_emulation", msr_emulation, 0, 100_000),
                  perf_event_create=_check_int("perf_event_create", perf_event_create, 0, 100_000),
                  perf_event_release=_check_int("perf_event_release", perf_event_release, 0,
                                                100_000),
                  pmi_inject=_check_int("pmi_inject", pmi_inject, 0, 100_000))
    host = Host(cpu=cpu, frames=512, seed=0)
    vm = host.create_vm(design=design, memory_pages=256, costs=costs)
    guest = GuestKernel(vm)
    rec = guest.perf.record(event, period=period)
    start = len(vm.trace)
    res = vm.run(WL.hot_loop(), instructions)
    return vm, rec, res, start


def handler_windows(vm, start: int = 0) -> list[dict]:
    """Split the trace after row ``start`` into one window per guest PMI.

    pebslab only. A window opens at a hardware PMI row and takes the rows
    of its handling that follow without guest execution in between: the
    VM exit for the NMI, the injection, and the guest handler's MSR exits.
    Each window is a dict: ``start``/``end`` (TSC), ``rows`` (trace row
    dicts), and the cycles per COST_CATEGORIES key. ``perf_events`` is the
    time in the window no trace row accounts for: the host perf events
    KVM releases and re-creates while it emulates a GLOBAL_CTRL write.
    """
    rows = vm.trace.rows()[start:]
    out = []
    i = 0
    while i < len(rows):
        if rows[i]["kind"] != "PMI":
            i += 1
            continue
        w = {"start": rows[i]["time"], "rows": [rows[i]], "nmi_exit": 0, "inject": 0,
             "msr_exits": 0, "reads": 0, "writes": 0}
        j = i + 1
        while j < len(rows) and KIND_ID[rows[j]["kind"]] in _HANDLER_KINDS:
            r = rows[j]
            if r["kind"] == "VMEXIT" and r["info"] not in ("EXTERNAL_NMI", "MSR_READ",
                                                          "MSR_WRITE"):
                break
            w["rows"].append(r)
            if r["kind"] == "VMEXIT":
                if r["info"] == "EXTERNAL_NMI":
                    w["nmi_exit"] += r["cost"]
                else:
                    w["msr_exits"] += r["cost"]
                    w["reads" if r["info"] == "MSR_READ" else "writes"] += 1
            elif r["kind"] == "PMI_INJECT":
                w["inject"] += r["cost"]
            j += 1
        w["end"] = w["rows"][-1]["time"]
        w["perf_events"] = (w["end"] - w["start"]) - w["nmi_exit"] - w["inject"] - w["msr_exits"]
        out.append(w)
        i = j
    return out


def pmi_cost_breakdown(period: int = 10007, design: str = "patch", event: str = "instructions",
                       instructions: int = 200_000, *, vmexit: int = 1200,
                       msr_emulation: int = 300, perf_event_create: int = 4000,
                       perf_event_release: int = 2000, pmi_inject: int = 800) -> dict:
    """What one guest PMI costs, by category, and the overhead over the whole run.

    pebslab only. Runs :func:`guest_session` and :func:`handler_windows`.
    Returns {"pmis", "per_pmi": {category: mean cycles}, "per_pmi_total",
    "reads", "writes" (guest MSR exits per PMI), "guest_cycles" (the run's
    guest time), "overhead_cycles" (all PMI handling), "overhead" (its
    fraction of guest time), "perf_events_created" (since boot), "counter"
    (where the driver put the event), "period", "design", "event"}.
    """
    vm, rec, res, start = guest_session(period, design, event, instructions, vmexit=vmexit,
                                        msr_emulation=msr_emulation,
                                        perf_event_create=perf_event_create,
                                        perf_event_release=perf_event_release,
                                        pmi_inject=pmi_inject)
    wins = handler_windows(vm, start)
    n = len(wins)
    per = {k: (int(round(np.mean([w[k] for w in wins]))) if n else 0) for k in COST_CATEGORIES}
    total = sum(w["end"] - w["start"] for w in wins)
    return {
        "pmis": n, "per_pmi": per, "per_pmi_total": sum(per.values()),
        "reads": int(round(np.mean([w["reads"] for w in wins]))) if n else 0,
        "writes": int(round(np.mean([w["writes"] for w in wins]))) if n else 0,
        "guest_cycles": int(res.guest_cycles), "overhead_cycles": int(total),
        "overhead": total / res.guest_cycles if res.guest_cycles else 0.0,
        "perf_events_created": int(vm.perf_events_created), "counter": rec.counter,
        "period": period, "design": design, "event": event, "instructions": instructions,
    }


def pmi_costs(period: int = 10007, design: str = "patch", event: str = "instructions",
              vmexit: int = 1200, msr_emulation: int = 300, perf_event_create: int = 4000,
              perf_event_release: int = 2000):
    """Draw the cost of one guest PMI by category, and the share of guest time it eats.

    pebslab only: the picture of :func:`pmi_cost_breakdown` over 200,000
    instructions of hot_loop. The cycle figures are ASSUMPTIONS (Costs).
    Returns a Figure.
    """
    import matplotlib.pyplot as plt

    d = pmi_cost_breakdown(period, design, event, vmexit=vmexit, msr_emulation=msr_emulation,
                           perf_event_create=perf_event_create,
                           perf_event_release=perf_event_release)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 4.6), gridspec_kw={"height_ratios": [1, 1]})
    left = 0
    per = d["per_pmi"]
    for k, label in COST_CATEGORIES.items():
        v = per[k]
        if k == "msr_exits":
            label = f"{label} ({d['reads']} reads + {d['writes']} writes)"
        a1.barh(0, v, left=left, color=_COLORS[k], edgecolor="white", label=f"{label}: {v}")
        if v > 0.06 * max(d["per_pmi_total"], 1):
            a1.text(left + v / 2, 0, f"{v}", ha="center", va="center", fontsize=9)
        left += v
    a1.set_yticks([])
    a1.set_xlim(0, max(left, 1) * 1.02)
    a1.set_xlabel("cycles charged to the guest for ONE PMI (Costs: assumed values)")
    a1.set_title(f"one guest PMI costs {d['per_pmi_total']} cycles "
                 f"(design {design!r}, {event}, period {period}; {d['pmis']} PMIs in the run)",
                 fontsize=10)
    a1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55), ncol=2, fontsize=8,
              frameon=False)
    gc, oc = d["guest_cycles"] / 1e6, d["overhead_cycles"] / 1e6
    guest = gc - oc
    a2.barh(0, guest, color=_COLORS["guest"], edgecolor="white")
    a2.text(guest / 2, 0, f"the workload: {100 * (1 - d['overhead']):.1f}%",
            ha="center", va="center", fontsize=9)
    a2.barh(0, oc, left=guest, color=_COLORS["nmi_exit"], edgecolor="white")
    a2.text(guest + oc / 2, 0.55, f"PMI handling {100 * d['overhead']:.1f}%",
            ha="center", va="bottom", fontsize=9, color="#cb181d")
    a2.set_ylim(-0.6, 1.2)
    a2.set_yticks([])
    a2.set_xlim(0, max(gc, 1e-6))
    a2.set_xlabel("guest time (millions of cycles)")
    a2.set_title(f"the whole run ({d['instructions']} instructions): {d['pmis']} PMIs x "
                 f"{d['per_pmi_total']} = {d['overhead_cycles']} of {d['guest_cycles']} "
                 "guest cycles", fontsize=10)
    fig.tight_layout()
    return fig


# =============================================================================
# exit_timeline
# =============================================================================

_ROWS = ("OVERFLOW", "PMI", "VMEXIT", "PMI_INJECT", "MSR_READ", "MSR_WRITE")
_ROW_LABEL = {
    "OVERFLOW": "counter overflows",
    "PMI": "hardware PMI (host)",
    "VMEXIT": "VM exit",
    "PMI_INJECT": "KVM injects PMI",
    "MSR_READ": "guest RDMSR",
    "MSR_WRITE": "guest WRMSR",
}
_EXIT_COLOR = {"EXTERNAL_NMI": "#cb181d", "MSR_READ": "#3182bd", "MSR_WRITE": "#31a354"}


def _msr_short(name: str) -> str:
    return name.replace("MSR_CORE_PERF_", "").replace("MSR_IA32_", "").replace("MSR_", "")


def exit_timeline(period: int = 10007, design: str = "patch", event: str = "instructions",
                  instructions: int = 200_000, pmi: int = 0):
    """Strip chart of the run's trace events by kind over guest time, and a zoom on one PMI.

    pebslab only. Top: every OVERFLOW, PMI, VMEXIT (a bar as long as its
    cost), PMI_INJECT, MSR_READ and MSR_WRITE of the run. Bottom: the
    handling of PMI number ``pmi`` (0 = the first) with each exit labelled,
    and the unlabelled stretches (grey) where KVM releases and re-creates
    host perf events. Costs are pebslab.kvm.vm.Costs defaults
    (ASSUMPTIONS). Returns a Figure.
    """
    import matplotlib.pyplot as plt

    pmi = _check_int("pmi", pmi, 0, 1000)
    vm, rec, res, start = guest_session(period, design, event, instructions)
    arr = vm.trace.array[start:]
    wins = handler_windows(vm, start)
    fig, (top, bot) = plt.subplots(2, 1, figsize=(10, 6.4),
                                   gridspec_kw={"height_ratios": [1, 1.25]})
    ypos = {k: len(_ROWS) - 1 - i for i, k in enumerate(_ROWS)}
    t0 = int(arr["time"][0]) if len(arr) else 0
    for kind in _ROWS:
        sel = arr[arr["kind"] == KIND_ID[kind]]
        t = (sel["time"].astype(np.int64) - t0) / 1e6
        y = ypos[kind]
        if kind in ("VMEXIT", "PMI_INJECT"):
            c = sel["cost"].astype(np.int64) / 1e6
            top.broken_barh(list(zip(t - c, c)), (y - 0.35, 0.7),
                            color="#cb181d" if kind == "VMEXIT" else "#fd8d3c")
        else:
            top.plot(t, [y] * len(t), "|", ms=12, color="0.25")
    top.set_yticks([ypos[k] for k in _ROWS])
    top.set_yticklabels([f"{_ROW_LABEL[k]} ({int(np.sum(arr['kind'] == KIND_ID[k]))})"
                         for k in _ROWS], fontsize=8)
    top.set_xlim(0, max((res.guest_cycles) / 1e6, 1e-6))
    top.set_xlabel("guest time since the run started (millions of cycles)")
    top.set_title(f"design {design!r}: perf record -e {event} -c {period} in the guest\n"
                  f"{res.instructions} instructions of hot_loop; {len(wins)} PMIs, "
                  f"{int(np.sum(arr['kind'] == KIND_ID['VMEXIT']))} VM exits", fontsize=10)
    if pmi >= len(wins):
        bot.text(0.5, 0.5, f"no PMI number {pmi}: this run has {len(wins)} PMIs",
                 transform=bot.transAxes, ha="center", va="center")
        bot.set_axis_off()
    else:
        _draw_window(bot, wins[pmi], pmi)
    fig.tight_layout()
    return fig


def _draw_window(ax, w: dict, number: int) -> None:
    from ..hw.msr import msr_name

    t0 = w["start"]
    spans = []                      # (start, length, label, colour)
    for r in w["rows"]:
        if r["kind"] == "VMEXIT":
            c = r["cost"]
            if r["info"] == "EXTERNAL_NMI":
                label = "exit: host NMI"
            else:
                op = "RDMSR" if r["info"] == "MSR_READ" else "WRMSR"
                name = _msr_short(msr_name(r["msr"]))
                label = f"{op} {name}"
                if op == "WRMSR" and name == "GLOBAL_CTRL":
                    label += f" = {r['value']:#x}"
            spans.append((r["time"] - c - t0, c, label, _EXIT_COLOR.get(r["info"], "0.5")))
        elif r["kind"] == "PMI_INJECT":
            spans.append((r["time"] - r["cost"] - t0, r["cost"], "inject PMI", "#fd8d3c"))
    spans.sort()
    total = w["end"] - w["start"]
    covered = 0
    gaps = []
    for s, length, _, _ in spans:
        if s > covered:
            gaps.append((covered, s - covered))
        covered = max(covered, s + length)
    if covered < total:
        gaps.append((covered, total - covered))
    for s, length, label, color in spans:
        ax.broken_barh([(s, length)], (0, 1), color=color, edgecolor="white")
        ax.text(s + 0.1 * length, 1.08, label, ha="left", va="bottom", fontsize=7.5,
                rotation=35, rotation_mode="anchor")
    for s, length in gaps:
        ax.broken_barh([(s, length)], (0, 1), facecolor="0.85", edgecolor="0.5", hatch="//")
        ax.text(s + length / 2, -0.12, f"perf event\n{length} cyc", ha="center", va="top",
                fontsize=7.5)
    ax.set_xlim(-0.01 * total, total * 1.08)
    ax.set_ylim(-0.9, 3.2)
    ax.set_yticks([])
    ax.set_xlabel("cycles since the hardware PMI")
    ax.set_title(f"zoom on PMI {number}: {total} cycles from the host PMI to the guest's last "
                 f"MSR exit ({w['reads']} RDMSR + {w['writes']} WRMSR exits)\n"
                 "grey: no exit of its own - KVM releases / re-creates the host perf event "
                 "while it emulates a GLOBAL_CTRL write", fontsize=9)


EXPLORERS = {
    "pmi_costs": (pmi_costs, {"period": 10007, "design": "patch", "event": "instructions",
                              "vmexit": 1200, "msr_emulation": 300, "perf_event_create": 4000,
                              "perf_event_release": 2000}),
    "exit_timeline": (exit_timeline, {"period": 10007, "design": "patch",
                                      "event": "instructions", "instructions": 200_000,
                                      "pmi": 0}),
}
