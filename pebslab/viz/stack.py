"""A picture of the virtualized stack pebslab models, and the paths through it.

pebslab only. Notebook 00 (welcome) draws it: four layers (hardware, host
kernel, KVM, guest), each labeled with its pebslab folder and main objects,
and the arrows that cross layers: VM exit and VM entry, PMI injection, the
PEBS record write that goes straight from the CPU into guest memory through
the guest page tables and EPT, and the pinning that keeps that memory in
place. ``flow`` picks one path to highlight.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["LAYERS", "FLOWS", "stack_diagram", "flow_steps", "EXPLORERS"]

#: (key, title, pebslab folder, main objects, face color, y of the box bottom)
LAYERS = (
    ("guest", "guest kernel", "pebslab/guest/",
     "GuestKernel (kernel.py) - GuestMM: page tables in guest memory (mm.py)\n"
     "GuestPerf: perf record / perf stat, PMI handler, PEBS drain (perf.py)",
     "#e8f1fa", 6.0),
    ("kvm", "KVM (the 2014 patch lives here)", "pebslab/kvm/",
     "VM, VCPU, run loop (vm.py) - KvmPmu: guest MSRs, reprogram_counter (pmu.py)\n"
     "kvm_pmu_pebs_pin / kvm_pmu_release_pin (pebs_pin.py) - MSR autoload lists (vmx.py)",
     "#fdf0d5", 4.1),
    ("host", "host kernel", "pebslab/host/  (assembled by pl.Host, system.py)",
     "HostMM: frames, refcounts, get_page/put_page, reclaim (mm.py)\n"
     "host perf events that back guest counters, throttling (perf.py, perf_hw.py)",
     "#e9f5e1", 2.2),
    ("hw", "hardware: one simulated Intel core", "pebslab/hw/",
     "Core: counters, overflow, PEBS assist, PMI with skid (core.py) - MSRs (msr.py)\n"
     "CPU models (models.py) - page walk + EPT (mmu.py) - DS area & PEBS records (pebs.py)",
     "#eeeeee", 0.3),
)
_BOX_H = 1.45
_BOX_X0, _BOX_X1 = 0.3, 8.6
_GUEST_X1 = 11.8     # the guest box also holds the guest memory

#: flow name -> (title, ordered steps); "all" shows every arrow.
FLOWS = {
    "all": ("every path", ()),
    "msr": ("a guest programs a counter", (
        "1. guest perf driver: WRMSR IA32_PERFEVTSEL0 / PMC0 / GLOBAL_CTRL",
        "2. the MSR is intercepted: VM exit to KVM (kvm_pmu_set_msr)",
        "3. KVM turns it into a host perf event (reprogram_counter)",
        "4. host perf programs a real counter; VM entry back to the guest",
    )),
    "pmi": ("a counter overflows", (
        "1. the real counter overflows: the CPU raises a PMI (an NMI on the host)",
        "2. host perf handles it and calls KVM's overflow handler",
        "3. KVM sets the guest's GLOBAL_STATUS bit (bit 62 for PEBS in the patch)",
        "4. KVM injects a PMI into the guest at the next VM entry",
    )),
    "pebs": ("a PEBS record is written", (
        "1. the guest WRMSRs IA32_DS_AREA and IA32_PEBS_ENABLE: VM exits",
        "2. the patch pins the DS area and buffer pages (get_page), max 17",
        "3. at VM entry DS_AREA is switched to the guest's value",
        "4. the CPU writes each record to a guest *virtual* address:",
        "   GVA -> guest page tables -> GPA -> EPT -> HPA, with no VM exit",
    )),
}

# arrows: (flow keys it belongs to, start (x, y), end (x, y), label, label xy, color)
_ARROWS = (
    (("msr", "pebs"), (1.1, 6.0), (1.1, 5.55), "VM exit\n(WRMSR, RDMSR, CPUID)", (1.25, 5.78), "#1d3557"),
    (("msr", "pebs"), (2.9, 5.55), (2.9, 6.0), "VM entry\n(MSR autoload)", (3.05, 5.78), "#1d3557"),
    (("pmi",), (4.6, 5.55), (4.6, 6.0), "PMI injection", (4.75, 5.78), "#d62828"),
    (("msr",), (1.1, 4.1), (1.1, 3.65), "host perf event\n(reprogram_counter)", (1.25, 3.88),
     "#1d3557"),
    (("pmi",), (4.6, 3.65), (4.6, 4.1), "overflow handler\n(kvm_perf_overflow_intr)",
     (4.75, 3.88), "#d62828"),
    (("pebs",), (6.9, 4.1), (6.9, 3.65), "pin pages\n(get_page)", (7.05, 3.88), "#6a4c93"),
    (("msr",), (1.1, 2.2), (1.1, 1.75), "WRMSR on the\nreal counter", (1.25, 1.98), "#1d3557"),
    (("pmi",), (4.6, 1.75), (4.6, 2.2), "host PMI (NMI)", (4.75, 1.98), "#d62828"),
)


def flow_steps(flow: str = "all") -> list[str]:
    """Return the numbered steps of one path through the stack (empty for "all").

    pebslab only: the caption text of :func:`stack_diagram`.
    """
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {', '.join(map(repr, FLOWS))}; got {flow!r}")
    return list(FLOWS[flow][1])


def stack_diagram(flow: str = "all"):
    """Draw hardware / host kernel / KVM / guest as boxes, with the paths between them.

    pebslab only. Each box names its pebslab folder and main objects.
    Arrows: VM exit / VM entry, host perf event programming, overflow ->
    host PMI -> PMI injection, page pinning, and the PEBS record write that
    goes from the core straight into the guest's buffer through the guest
    page tables and EPT. ``flow`` ("all", "msr", "pmi", "pebs") highlights
    one path and lists its steps.
    """
    steps = flow_steps(flow)
    fig = Figure(figsize=(12, 8.2))
    ax = fig.subplots()
    ax.set_xlim(0, 12)
    ax.set_ylim(-1.6 if steps else 0.1, 7.75)
    ax.axis("off")

    for key, title, folder, objs, color, y in LAYERS:
        x1 = _GUEST_X1 if key == "guest" else _BOX_X1
        ax.add_patch(FancyBboxPatch((_BOX_X0, y), x1 - _BOX_X0, _BOX_H,
                                    boxstyle="round,pad=0.02,rounding_size=0.12",
                                    facecolor=color, edgecolor="#555555", lw=1.2))
        ax.text(_BOX_X0 + 0.15, y + _BOX_H - 0.12, title, fontsize=11.5, fontweight="bold",
                va="top")
        ax.text(_BOX_X1 - 0.15, y + _BOX_H - 0.12, folder, fontsize=9, family="monospace",
                va="top", ha="right", color="#333333")
        ax.text(_BOX_X0 + 0.15, y + 0.12, objs, fontsize=8.3, va="bottom", linespacing=1.35)

    # the guest's memory, where the DS area and PEBS buffer live
    gy = LAYERS[0][5]
    mem = (9.0, gy + 0.12, 2.6, 1.2)
    ax.add_patch(FancyBboxPatch(mem[:2], mem[2], mem[3],
                                boxstyle="round,pad=0.02,rounding_size=0.1",
                                facecolor="#fff3b0", edgecolor="#b08900", lw=1.2))
    ax.text(mem[0] + mem[2] / 2, mem[1] + mem[3] - 0.12,
            "guest memory:\nDS area + PEBS buffer\n(at a guest virtual address)",
            ha="center", va="top", fontsize=9, linespacing=1.3)

    def alpha(keys):
        return 1.0 if flow == "all" or flow in keys else 0.12

    for keys, start, end, label, lxy, color in _ARROWS:
        a = alpha(keys)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                     color=color, lw=2, alpha=a))
        ax.text(*lxy, label, fontsize=7.8, va="center", color=color, alpha=a, linespacing=1.1)

    # the PEBS write: from the core, up past host and KVM, into guest memory
    a = alpha(("pebs",))
    x = 10.4
    ax.add_patch(FancyArrowPatch((_BOX_X1, 0.9), (x, 0.9), arrowstyle="-", color="#2a9d8f",
                                 lw=2.4, alpha=a))
    ax.add_patch(FancyArrowPatch((x, 0.9), (x, mem[1]), arrowstyle="-|>", mutation_scale=16,
                                 color="#2a9d8f", lw=2.4, alpha=a))
    ax.text(x - 0.12, 3.05,
            "PEBS record write\nby the CPU, no exit:\nGVA\n-> guest page tables\n-> GPA\n"
            "-> EPT\n-> HPA\n\nit cannot take\na fault: so the\npatch pins the pages",
            fontsize=8, color="#2a9d8f", alpha=a, ha="right", va="center",
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85 * a, "pad": 1.5})
    ax.text(x + 0.12, 0.75, "PEBS assist\n(core.py)", fontsize=7.8, color="#2a9d8f", alpha=a,
            va="top")

    ftitle, _ = FLOWS[flow]
    ax.set_title(f"The stack pebslab models - {ftitle}", fontsize=13, loc="left")
    if steps:
        ax.text(0.35, -0.05, "\n".join(steps), fontsize=9.5, va="top", linespacing=1.4,
                family="monospace")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.95, bottom=0.01)
    return fig


EXPLORERS = {"stack_diagram": (stack_diagram, {})}
