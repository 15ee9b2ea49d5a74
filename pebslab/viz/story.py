"""The life of one PEBS record in a VM, as a sequence diagram drawn from a real run.

pebslab only. :func:`record_life_steps` runs the course's running example (a
guest ``perf record`` of a precise event on ``hot_loop``) and picks out of
the run's trace the first occurrence of each step of the chain the 2014 patch
builds, from the guest's WRMSR to the guest draining its buffer;
:func:`record_life` draws those steps as a sequence diagram with one lane per
actor. Every arrow is an event that really happened in the run, labelled with
the simulated guest time (TSC cycles) it happened at.

Used in: notebook 00 (the opening picture) and the site's figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._check import check_choice, check_int

#: The lanes of the diagram, left to right.
LANES = ("guest kernel", "KVM", "host perf", "CPU", "guest memory")

#: Colour-blind-safe colours (Okabe-Ito) per lane of the arrow's source.
_LANE_COLOURS = {"guest kernel": "#0072B2", "KVM": "#D55E00", "host perf": "#CC79A7",
                 "CPU": "#009E73", "guest memory": "#E69F00"}


@dataclass(frozen=True)
class Step:
    """One arrow of the diagram: who acts on whom, what, and when (guest TSC)."""

    src: str
    dst: str
    label: str
    time: int
    kind: str          # the trace event kind the step was taken from


def _first(rows, kind, *, msr=None, after=-1, pred=None):
    for i, r in enumerate(rows):
        if i <= after or r["kind"] != kind:
            continue
        if msr is not None and r["msr"] != msr:
            continue
        if pred is not None and not pred(r):
            continue
        return i, r
    return None, None


def record_life_steps(design: str = "patch", cpu: str = "silvermont", seed: int = 0,
                      instructions: int = 3_000_000) -> list[Step]:
    """Run the running example and return the steps of one PEBS record's life, in order.

    pebslab only. The run: ``pl.Host(cpu, seed)``, a VM under ``design``, a
    guest ``perf record`` of the model's precise load event (``:pp``) at
    period 10007 on ``hot_loop``. Steps whose event did not happen (e.g. no
    pinning under ``icelake``) are left out; the order is the trace's order.
    """
    import pebslab as pl
    from ..hw import msr as M
    from ..kvm.designs import DESIGN_NAMES

    check_choice("design", design, DESIGN_NAMES)
    check_choice("cpu", cpu, tuple(pl.MODELS))
    seed = check_int("seed", seed, 0, 2**63 - 1)
    instructions = check_int("instructions", instructions, 1, 50_000_000)

    host = pl.Host(cpu=cpu, frames=4096, seed=seed)
    vm = host.create_vm(design=design, memory_pages=1024)
    try:
        guest = pl.GuestKernel(vm)
        guest.perf.record(_precise_event(cpu), period=10007)
        vm.run(pl.workloads.hot_loop(), instructions=instructions)
        rows = vm.trace.rows()
    finally:
        vm.destroy()

    steps: list[Step] = []

    def add(i, r, src, dst, label):
        if r is not None:
            steps.append(Step(src, dst, label, int(r["time"]), r["kind"]))
        return i if i is not None else -1

    _, r = _first(rows, "MSR_WRITE", msr=M.MSR_IA32_DS_AREA)
    add(_, r, "guest kernel", "KVM", "WRMSR DS_AREA: VM exit, KVM stores the GVA")
    i_pe, r_pe = _first(rows, "MSR_WRITE", msr=M.MSR_IA32_PEBS_ENABLE,
                        pred=lambda r: r["value"] != 0)
    if r_pe is not None:
        pins = [r for r in rows if r["kind"] == "PIN" and r["time"] == r_pe["time"]]
        steps.append(Step("guest kernel", "KVM", "WRMSR PEBS_ENABLE: VM exit",
                          int(r_pe["time"]), "MSR_WRITE"))
        if pins:
            steps.append(Step("KVM", "guest memory",
                              f"kvm_pmu_pebs_pin: get_page() on {len(pins)} pages",
                              int(pins[0]["time"]), "PIN"))
    i, r = _first(rows, "AUTOLOAD", msr=M.MSR_IA32_DS_AREA)
    add(i, r, "KVM", "CPU", "VM entry: MSR-load list loads the guest's DS_AREA")
    i_ov, r_ov = _first(rows, "OVERFLOW")
    add(i_ov, r_ov, "CPU", "CPU", "counter overflows: PEBS assist armed")
    i_w, r_w = _first(rows, "PEBS_WRITE", after=i_ov if i_ov is not None else -1)
    add(i_w, r_w, "CPU", "guest memory", "assist writes the record via GVA -> GPA -> HPA")
    i_p, r_p = _first(rows, "PMI", after=i_w if i_w is not None else -1)
    add(i_p, r_p, "CPU", "host perf",
        "threshold reached: GLOBAL_STATUS bit 62, PMI (an NMI: VM exit)")
    i_x, r_x = _first(rows, "PMI_INJECT", after=i_p if i_p is not None else -1)
    if r_x is not None:
        steps.append(Step("host perf", "KVM",
                          "kvm_perf_overflow_intr: virtual GLOBAL_STATUS bit 62",
                          int(r_p["time"]) if r_p is not None else int(r_x["time"]),
                          "PMI"))
        add(i_x, r_x, "KVM", "guest kernel", "KVM injects the PMI into the guest")
    i_s, r_s = _first(rows, "MSR_READ", msr=M.MSR_CORE_PERF_GLOBAL_STATUS,
                      after=i_x if i_x is not None else -1,
                      pred=lambda r: r["value"] >> 62 & 1)
    add(i_s, r_s, "guest kernel", "KVM", "RDMSR GLOBAL_STATUS: bit 62 set")
    i_d, r_d = _first(rows, "DRAIN", after=i_s if i_s is not None else -1)
    add(i_d, r_d, "guest kernel", "guest memory",
        "drain: read the records, reset pebs_index")
    return steps


def _precise_event(cpu: str) -> str:
    """The running example's precise event for a CPU model."""
    return {"silvermont": "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp"}.get(
        cpu, "LONGEST_LAT_CACHE.MISS:pp" if cpu in ("haswell", "skylake") else
        "MEM_LOAD_RETIRED.L3_MISS:pp")


def sequence_figure(steps, title: str, *, lanes=LANES, row_height: float = 0.55,
                    fontsize: float = 8):
    """Draw steps (objects with src, dst, label, time) as a sequence diagram; return the Figure.

    pebslab only. One lane per actor, one arrow per step in order (a step
    from a lane to itself is a loop), the simulated guest time at the left.
    Shared by :func:`record_life` and ``viz.profile.chain_figure``.
    """
    import matplotlib.pyplot as plt

    n = max(len(steps), 1)
    fig, ax = plt.subplots(figsize=(10, row_height * n + 1.6))
    xs = {lane: i for i, lane in enumerate(lanes)}
    top = n + 0.6
    for lane, x in xs.items():
        ax.plot([x, x], [0.2, top - 0.3], color="0.6", lw=1, ls="--", zorder=0)
        ax.text(x, top, lane, ha="center", va="bottom", fontsize=10, fontweight="bold",
                bbox=dict(boxstyle="round,pad=0.3", fc="white", ec=_LANE_COLOURS[lane]))
    for k, s in enumerate(steps):
        y = n - k
        x0, x1 = xs[s.src], xs[s.dst]
        colour = _LANE_COLOURS[s.src]
        if x0 == x1:
            ax.annotate("", xy=(x0 + 0.02, y - 0.25), xytext=(x0 + 0.02, y + 0.05),
                        arrowprops=dict(arrowstyle="->", color=colour,
                                        connectionstyle="arc3,rad=-1.2", lw=1.5))
        else:
            ax.annotate("", xy=(x1, y), xytext=(x0, y),
                        arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.5))
        ax.text((x0 + x1) / 2 if x0 != x1 else x0 + 0.12, y + 0.08,
                f"{k + 1}. {s.label}", ha="center" if x0 != x1 else "left", va="bottom",
                fontsize=fontsize, bbox=dict(fc="white", ec="none", pad=0.5))
        ax.text(-0.55, y, f"{s.time:,}", ha="right", va="center", fontsize=7, color="0.35")
    ax.text(-0.55, top, "guest TSC\n(simulated)", ha="right", va="bottom", fontsize=7,
            color="0.35")
    ax.set_xlim(-1.3, len(lanes) - 0.4)
    ax.set_ylim(0, top + 0.7)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.02)
    return fig


def record_life(design: str = "patch", cpu: str = "silvermont", seed: int = 0):
    """Draw the life of one PEBS record in a VM as a sequence diagram; return the Figure.

    pebslab only. Lanes: guest kernel, KVM, host perf, CPU, guest memory;
    arrows in time order, each labelled with what happened and the simulated
    guest time (cycles) from the run's trace (:func:`record_life_steps`).
    """
    steps = record_life_steps(design=design, cpu=cpu, seed=seed)
    return sequence_figure(steps, f"The life of one PEBS record in a VM ({design} design, "
                                  f"{cpu}): every arrow is an event of the run's trace")
