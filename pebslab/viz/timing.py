"""Figures for notebook 09: what one guest PMI costs under emulation, and how perf throttles it.

pebslab only. :func:`pmi_session` runs the running example (a Silvermont
guest's ``perf record -e MEM_UOPS_RETIRED.L2_MISS_LOADS:pp`` on ``hot_loop``)
with chosen cycle costs; :func:`pmi_windows` cuts its trace into one window
per PMI, from the hardware PMI to the guest handler's last VM exit;
:func:`pmi_anatomy` draws one window as a timeline. :func:`throttle_run`
feeds the guest handler's duration, as the guest's own clock measures it,
to the model of perf's throttling (:mod:`pebslab.host.perf`,
perf_sample_event_took in kernel/events/core.c) in its 2014 or current
form; :func:`throttle_explorer` draws it.

Every cycle figure is an ASSUMPTION (pebslab.kvm.vm.Costs, and
:data:`GHZ` to turn cycles into nanoseconds); the figures label the numbers
they print as simulated.

Used in: notebook 09.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._check import check_choice, check_int
from ..host import perf as HP
from ..kvm.designs import DESIGN_NAMES

__all__ = ["GHZ", "EVENT", "PERIOD", "INSTRUCTIONS", "LINUX_ERAS", "pmi_session", "pmi_windows",
           "PmiWindow", "cycles_to_ns", "pmi_summary", "pmi_anatomy", "throttle_run",
           "throttle_explorer", "handler_ns_for", "EXPLORERS", "linux_eras"]

#: Guest clock in GHz, to turn the model's cycles into the nanoseconds perf measures.
#: ASSUMPTION, consistent with pebslab.kvm.vm.TICK_CYCLES (2,000,000 cycles per
#: 1 ms host tick, i.e. 2 GHz); a 2014 Silvermont server part ran at 1.7-2.4 GHz.
GHZ = 2.0

#: The running example's precise event and period: one sample every 97 L2-missing
#: loads of hot_loop (one such load per 64 instructions).
EVENT = "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp"
PERIOD = 97
#: Guest instructions per session: about five PMIs at PERIOD.
INSTRUCTIONS = 40_000

#: The guest kernel eras pebslab can boot (pl.GuestKernel(vm, linux=...)).
LINUX_ERAS = ("current", "3.15")

_BLUE, _ORANGE, _GREEN, _VERMILION, _SKY, _PURPLE, _YELLOW = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")


def linux_eras() -> tuple:
    """The guest eras this pebslab's GuestKernel accepts ("current" always; "3.15" if modelled)."""
    import inspect

    from ..guest.kernel import GuestKernel

    if "linux" in inspect.signature(GuestKernel.__init__).parameters:
        return LINUX_ERAS
    return ("current",)


def cycles_to_ns(cycles) -> int:
    """Guest cycles to nanoseconds at :data:`GHZ` (rounded down, as integer clocks are)."""
    return int(int(cycles) / GHZ)


def pmi_session(design: str = "patch", linux: str = "3.15", period: int = PERIOD,
                instructions: int = INSTRUCTIONS, *, vmexit: int = 1200,
                msr_emulation: int = 300, perf_event_create: int = 4000,
                perf_event_release: int = 2000, pmi_inject: int = 800):
    """Boot the running example with these costs, start ``perf record``, run ``hot_loop``.

    pebslab only. pl.Host("silvermont", seed 0), a 256-page VM under
    ``design`` whose Costs take the given cycle figures (ASSUMPTIONS;
    defaults are pebslab.kvm.vm.Costs), a guest kernel of era ``linux``
    (default the patch's, 3.15; pinning costs are pebslab.kvm.pebs_pin.PinCosts),
    ``perf record -e EVENT -c period``. Returns (vm, recording, run result,
    index of the first trace row of the run).
    """
    from ..guest.kernel import GuestKernel
    from ..kvm.vm import Costs
    from ..system import Host

    check_choice("design", design, DESIGN_NAMES)
    check_choice("linux", linux, linux_eras())
    period = check_int("period", period, 10, 1_000_000)
    instructions = check_int("instructions", instructions, 1_000, 2_000_000)
    costs = Costs(vmexit=check_int("vmexit", vmexit, 0, 100_000),
                  msr_emulation=check_int("msr_emulation", msr_emulation, 0, 100_000),
                  perf_event_create=check_int("perf_event_create", perf_event_create, 0, 100_000),
                  perf_event_release=check_int("perf_event_release", perf_event_release, 0,
                                               100_000),
                  pmi_inject=check_int("pmi_inject", pmi_inject, 0, 100_000))
    host = Host(cpu="silvermont", frames=512, seed=0)
    vm = host.create_vm(design=design, memory_pages=256, costs=costs)
    guest = GuestKernel(vm) if linux == "current" else GuestKernel(vm, linux=linux)
    rec = guest.perf.record(EVENT, period=period)
    start = len(vm.trace)
    from .. import workloads as WL
    res = vm.run(WL.hot_loop(), instructions)
    return vm, rec, res, start


#: Trace kinds that belong to the handling of a PMI (no guest instruction runs between them).
_WINDOW_KINDS = {"VMEXIT", "MSR_READ", "MSR_WRITE", "PMI_INJECT", "PIN", "UNPIN", "DRAIN",
                 "NOTE", "SAMPLE", "AUTOLOAD"}
_HANDLER_EXITS = {"EXTERNAL_NMI", "MSR_READ", "MSR_WRITE"}


@dataclass
class PmiWindow:
    """One PMI, from the hardware PMI to the guest handler's last exit (guest TSC cycles).

    ``nmi_exit`` and ``inject`` happen before the guest handler starts;
    ``handler`` is what the guest's own clock sees its handler take
    (``end - handler_start``): its MSR exits, and the KVM work inside them
    (host perf events released and re-created, pins). ``exits`` lists the
    handler's exits in order as (op, msr, value) with op "rd"/"wr";
    ``pins``/``unpins`` count PIN/UNPIN rows, ``pin_cycles`` their cost.
    """

    start: int
    handler_start: int
    end: int
    nmi_exit: int
    inject: int
    msr_exits: int
    pin_cycles: int
    exits: list
    pins: int
    unpins: int
    rows: list

    @property
    def total(self) -> int:
        return self.end - self.start

    @property
    def handler(self) -> int:
        return self.end - self.handler_start

    @property
    def kvm_work(self) -> int:
        """Handler time no exit or pin row accounts for: host perf events released/created."""
        return self.handler - self.msr_exits - self.pin_cycles


def pmi_windows(vm, start: int = 0) -> list[PmiWindow]:
    """Cut the trace after row ``start`` into one :class:`PmiWindow` per hardware PMI.

    pebslab only. A window opens at a PMI row and takes the rows that follow
    while no guest instruction runs (VM exits for the NMI and the handler's
    MSR accesses, the injection, pins, the drain, autoload changes). A
    window without an injection (a PMI KVM did not forward) is left out.
    """
    rows = vm.trace.rows()[start:]
    out = []
    i = 0
    while i < len(rows):
        if rows[i]["kind"] != "PMI":
            i += 1
            continue
        w = [rows[i]]
        j = i + 1
        while j < len(rows) and rows[j]["kind"] in _WINDOW_KINDS:
            r = rows[j]
            if r["kind"] == "VMEXIT" and r["info"] not in _HANDLER_EXITS:
                break
            w.append(r)
            j += 1
        i = j
        inject = [r for r in w if r["kind"] == "PMI_INJECT"]
        if not inject:
            continue
        exits, nmi, msr = [], 0, 0
        for r in w:
            if r["kind"] != "VMEXIT":
                continue
            if r["info"] == "EXTERNAL_NMI":
                nmi += r["cost"]
            else:
                msr += r["cost"]
                exits.append(("rd" if r["info"] == "MSR_READ" else "wr", int(r["msr"]),
                              int(r["value"])))
        pins = [r for r in w if r["kind"] == "PIN"]
        unpins = [r for r in w if r["kind"] == "UNPIN"]
        out.append(PmiWindow(
            start=int(w[0]["time"]), handler_start=int(inject[0]["time"]),
            end=int(w[-1]["time"]), nmi_exit=int(nmi), inject=int(inject[0]["cost"]),
            msr_exits=int(msr), pin_cycles=int(sum(r["cost"] for r in pins + unpins)),
            exits=exits, pins=len(pins), unpins=len(unpins), rows=w))
    return out


def pmi_summary(design: str = "patch", linux: str = "3.15", period: int = PERIOD, **costs):
    """One session's PMIs in numbers: a dict for printing and for the throttling model.

    pebslab only. Keys: ``pmis``, ``handler_cycles`` (median over the run's
    PMIs), ``handler_ns`` (at GHZ), ``total_cycles`` (median, NMI exit to
    the end), ``exits`` (the first window's list), ``pins``/``unpins`` per
    PMI, ``overhead`` (all PMI handling over the run's guest cycles),
    ``samples_per_s`` (PMIs per second of guest time at GHZ), ``records``
    (samples the guest's perf drained).
    """
    n = max(INSTRUCTIONS, 64 * period * 3)         # at least two PMIs (one L2 miss per 64)
    vm, rec, res, start = pmi_session(design, linux, period, n, **costs)
    wins = pmi_windows(vm, start)
    if not wins:
        raise ValueError(f"no PMI in {n} instructions at period {period}")
    handler = int(np.median([w.handler for w in wins]))
    total = int(np.median([w.total for w in wins]))
    secs = res.guest_cycles / (GHZ * 1e9)
    out = {"pmis": len(wins), "handler_cycles": handler, "handler_ns": cycles_to_ns(handler),
           "total_cycles": total, "exits": wins[0].exits, "pins": wins[0].pins,
           "unpins": wins[0].unpins, "pin_cycles": wins[0].pin_cycles,
           "nmi_exit": wins[0].nmi_exit, "inject": wins[0].inject,
           "msr_exits": wins[0].msr_exits, "kvm_work": wins[0].kvm_work,
           "overhead": sum(w.total for w in wins) / res.guest_cycles,
           "samples_per_s": len(wins) / secs if secs else 0.0,
           "records": len(rec.samples()), "design": design, "linux": linux, "period": period}
    vm.destroy()
    return out


def _msr_short(msr: int) -> str:
    from ..hw import msr as M

    return {M.MSR_CORE_PERF_GLOBAL_CTRL: "GLOBAL_CTRL", M.MSR_CORE_PERF_GLOBAL_STATUS: "STATUS",
            M.MSR_CORE_PERF_GLOBAL_OVF_CTRL: "OVF_CTRL", M.MSR_IA32_PEBS_ENABLE: "PEBS_ENABLE",
            M.MSR_CORE_PERF_FIXED_CTR_CTRL: "FIXED_CTRL", M.MSR_IA32_PERFCTR0: "PMC0"}.get(
                msr, f"{msr:#x}")


def _segments(w: PmiWindow):
    """(start, end, label, colour, hatch) for each stretch of one window, in time order.

    A VM exit or the injection occupies the ``cost`` cycles before its row;
    the time before that since the previous stretch is KVM work: pinning
    if PIN/UNPIN rows came since, else host perf events.
    """
    segs = []
    prev = w.start
    pins = None

    def work(upto):
        if upto > prev:
            if pins:
                segs.append((prev, upto, pins, _PURPLE, ".."))
            else:
                segs.append((prev, upto, "perf event", "0.7", "//"))

    for r in w.rows[1:]:
        t = int(r["time"])
        k = r["kind"]
        if k in ("PIN", "UNPIN"):
            pins = "pin" if k == "PIN" else "unpin"
            continue
        if k in ("VMEXIT", "PMI_INJECT"):
            c = int(r["cost"])
            work(t - c)
            if k == "PMI_INJECT":
                segs.append((t - c, t, "inject", _ORANGE, None))
            elif r["info"] == "EXTERNAL_NMI":
                segs.append((t - c, t, "NMI exit", _VERMILION, None))
            else:
                op = "RD" if r["info"] == "MSR_READ" else "WR"
                segs.append((t - c, t, f"{op} {_msr_short(int(r['msr']))}", _BLUE, None))
            prev, pins = t, None
        elif t > prev:
            work(t)
            prev, pins = t, None
    return segs


def pmi_anatomy(linux_list=("3.15", "current"), design: str = "patch", period: int = PERIOD):
    """Draw one guest PMI of the running example as a timeline per guest era; return the Figure.

    pebslab only. One bar per era in ``linux_list``: each stretch of the
    PMI's handling (the NMI exit, the injection, every MSR exit of the
    guest handler, KVM's host-perf-event work, pins) at the simulated time
    it took, from the hardware PMI on; the bracket marks the part the
    guest's own clock measures (what perf_sample_event_took is given).
    """
    import matplotlib.pyplot as plt

    eras = tuple(linux_list)
    for e in eras:
        check_choice("linux", e, linux_eras())
    fig, ax = plt.subplots(figsize=(11, 1.6 + 1.3 * len(eras)))
    fig.subplots_adjust(left=0.15, right=0.98, top=0.8, bottom=0.28)
    longest = 1
    for y, era in enumerate(reversed(eras)):
        vm, rec, res, start = pmi_session(design, era, period)
        wins = pmi_windows(vm, start)
        vm.destroy()
        w = wins[1] if len(wins) > 1 else wins[0]
        for s, e, label, colour, hatch in _segments(w):
            ax.barh(y, e - s, left=s - w.start, color=colour, hatch=hatch, edgecolor="white",
                    height=0.55)
            if e - s > 900:
                ax.text((s + e) / 2 - w.start, y, label, ha="center", va="center", fontsize=6.5,
                        rotation=90 if e - s < 1600 else 0,
                        color="white" if colour in (_BLUE, _VERMILION) else "black")
        hs = w.handler_start - w.start
        ax.annotate("", xy=(w.total, y + 0.38), xytext=(hs, y + 0.38),
                    arrowprops=dict(arrowstyle="<->", color="0.2", lw=1))
        ax.text((hs + w.total) / 2, y + 0.42,
                f"the guest's handler: {w.handler:,} cycles = {cycles_to_ns(w.handler):,} ns "
                f"(simulated)", ha="center", va="bottom", fontsize=8)
        longest = max(longest, w.total)
    ax.set_yticks(range(len(eras)))
    ax.set_yticklabels([f"Linux {e} guest" for e in reversed(eras)], fontsize=9)
    ax.set_ylim(-0.5, len(eras) - 0.2)
    ax.set_xlim(0, longest * 1.02)
    ax.set_xlabel(f"guest cycles since the hardware PMI (simulated; Costs are assumptions; "
                  f"{GHZ:g} GHz assumed)", fontsize=9)
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(fc=_VERMILION, label="VM exit for the NMI"),
                       Patch(fc=_ORANGE, label="KVM injects the PMI"),
                       Patch(fc=_BLUE, label="exit for a guest RDMSR/WRMSR"),
                       Patch(fc="0.7", hatch="//", label="KVM: host perf event release/create"),
                       Patch(fc=_PURPLE, hatch="..", label="KVM: unpin / pin")],
              loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=5, fontsize=7,
              frameon=False)
    ax.set_title(f"One guest PMI under emulation (design {design!r}, {EVENT}, period {period})",
                 fontsize=10)
    return fig


def handler_ns_for(vmexit: int = 1200, linux: str = "3.15", period: int = PERIOD,
                   **costs) -> tuple[int, float]:
    """(guest-measured handler ns, samples per second) of the running example with these costs."""
    s = pmi_summary("patch", linux, period, vmexit=vmexit, **costs)
    return s["handler_ns"], s["samples_per_s"]


#: The explorer's largest period (a session runs 3 * 64 * period instructions).
MAX_EXPLORER_PERIOD = 2000

#: Samples fed to the throttling model per run: 15 times the 128-sample average's memory.
SAMPLES = 2000


def throttle_run(handler_ns: int, samples_per_s: float, era: str = "today",
                 cpu_time_max_percent: int = HP.DEFAULT_CPU_TIME_MAX_PERCENT,
                 samples: int = SAMPLES) -> dict:
    """Feed ``samples`` samples of ``handler_ns`` each to perf's throttling; return the result.

    pebslab only: :func:`pebslab.host.perf.simulate_throttling` (the model of
    perf_sample_event_took() in kernel/events/core.c, ``era`` "today" or
    "2014") driven with a constant sample length, the guest's PMI handler
    as its own clock measures it (x86's perf_event_nmi_handler times
    x86_pmu.handle_irq with sched_clock and passes the difference).
    ``samples_per_s`` (the rate the fixed-period event produces) only
    places the samples in time. Returns the arrays of simulate_throttling
    plus ``t`` (seconds of guest time at each sample), ``messages`` (the warning lines, in order), ``first_warning``
    (sample index or None), ``final_rate`` (kernel.perf_event_max_sample_rate
    at the end) and ``kept_per_s`` (about how many samples per second a
    fixed-period event keeps once the per-tick limit bites: min(demand,
    final rate); __perf_event_account_interrupt stops an event for the rest
    of the tick once it reaches max_samples_per_tick).
    """
    handler_ns = check_int("handler_ns", handler_ns, 0, 10**9)
    if not isinstance(samples_per_s, (int, float)) or not 0 < samples_per_s < 1e8:
        raise ValueError(f"samples_per_s must be a number in (0, 1e8); got {samples_per_s!r}")
    check_choice("era", era, HP.ERAS)
    n = check_int("samples", samples, 1, 100_000)
    lens = np.full(n, handler_ns, dtype=np.int64)
    out = HP.simulate_throttling(lens, era=era, cpu_time_max_percent=cpu_time_max_percent)
    st = HP.ThrottleState.initial(cpu_time_max_percent=cpu_time_max_percent, era=era)
    messages = []
    for i in np.flatnonzero(out["warned"]).tolist():
        prev_allowed = int(out["allowed_ns"][i - 1]) if i else st.allowed_ns
        rate = int(out["sample_rate"][i])
        avg = int(out["avg"][i])
        shown = prev_allowed if era == "today" else int(out["allowed_ns"][i]) >> 1
        messages.append(HP.WARNING_FORMAT[era].format(avg, shown, rate))
    warned = np.flatnonzero(out["warned"])
    out["t"] = np.arange(1, n + 1) / samples_per_s
    out["messages"] = messages
    out["first_warning"] = int(warned[0]) if warned.size else None
    out["final_rate"] = int(out["sample_rate"][-1])
    out["kept_per_s"] = float(min(samples_per_s, out["final_rate"]))
    out["allowed_at_start"] = st.allowed_ns
    return out


def throttle_explorer(vmexit: int = 1200, period: int = PERIOD, era: str = "today",
                      cpu_time_max_percent: int = 25, linux: str = "3.15"):
    """Exit cost and sample period against sample rate and "perf interrupt took too long".

    pebslab only. Runs the running example with ``vmexit`` cycles per VM exit
    and ``period`` (:func:`pmi_summary`), turns the guest handler's
    duration into ns (GHZ, an assumption) and feeds SAMPLES samples
    to perf's throttling in ``era`` with ``cpu_time_max_percent``
    (:func:`throttle_run`). Top: the running average against
    perf_sample_allowed_ns; bottom: kernel.perf_event_max_sample_rate against
    the rate the guest asks for. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    check_choice("era", era, HP.ERAS)
    check_int("cpu_time_max_percent", cpu_time_max_percent, 0, 100)
    check_int("period", period, 10, MAX_EXPLORER_PERIOD)
    s = pmi_summary("patch", linux, period, vmexit=vmexit)
    r = throttle_run(s["handler_ns"], s["samples_per_s"], era, cpu_time_max_percent)
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.9, bottom=0.22, hspace=0.25)
    t = np.arange(1, len(r["avg"]) + 1)
    a1.plot(t, r["avg"], color=_BLUE, label="running average (running_len / 128), ns")
    a1.step(t, r["allowed_ns"], where="post", color=_VERMILION, ls="--",
            label="perf_sample_allowed_ns")
    w = np.flatnonzero(r["warned"])
    if w.size:
        a1.plot(t[w], r["avg"][w], "v", color=_VERMILION, ms=7, label="warning printed")
    a1.axhline(s["handler_ns"], color="0.5", lw=0.8, ls=":")
    a1.text(t[-1], s["handler_ns"], f"one handler: {s['handler_ns']:,} ns", va="bottom",
            ha="right", fontsize=8, color="0.3")
    a1.set_xscale("log")
    a1.set_ylabel("ns")
    a1.legend(fontsize=7, loc="lower right")
    a1.set_title(f"Linux {linux} guest, vmexit {vmexit} cycles, period {period}: its PMI "
                 f"handler takes {s['handler_cycles']:,} cycles = {s['handler_ns']:,} ns "
                 f"(simulated)\nperf throttling as of {era}, perf_cpu_time_max_percent="
                 f"{cpu_time_max_percent}", fontsize=9)
    a2.step(t, r["sample_rate"], where="post", color=_GREEN,
            label="kernel.perf_event_max_sample_rate")
    a2.axhline(s["samples_per_s"], color=_ORANGE, ls="--",
               label=f"samples/s the guest asks for (period {period}): {s['samples_per_s']:,.0f}")
    a2.set_yscale("log")
    a2.set_ylabel("samples per second")
    a2.set_xlabel(f"samples (log scale; {len(t):,} samples = {1000 * r['t'][-1]:,.1f} ms of "
                  f"guest time at {s['samples_per_s']:,.0f} samples/s, simulated)")
    a2.legend(fontsize=7, loc="lower left")
    text = (r["messages"][0] if r["messages"] else
            "no message: " + ("throttling disabled (perf_sample_allowed_ns = 0)"
                              if r["allowed_at_start"] == 0 else
                              "the average never exceeds the allowed time"))
    more = f"   (+{len(r['messages']) - 1} more)" if len(r["messages"]) > 1 else ""
    fig.text(0.01, 0.06, f"guest dmesg: {text}{more}", fontsize=8, family="monospace")
    fig.text(0.01, 0.015, f"after {len(t):,} samples: max_sample_rate {r['final_rate']:,}; about "
             f"{r['kept_per_s']:,.0f} of {s['samples_per_s']:,.0f} samples/s kept",
             fontsize=8)
    return fig


EXPLORERS = {
    "throttle_explorer": (throttle_explorer, {"vmexit": 1200, "period": PERIOD, "era": "today",
                                              "cpu_time_max_percent": 25, "linux": "3.15"}),
}
