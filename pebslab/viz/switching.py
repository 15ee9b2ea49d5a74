"""What the VMX MSR-load lists put in DS_AREA, PEBS_ENABLE and GLOBAL_CTRL, entry by exit.

pebslab only. :func:`switching_run` drives one short, real guest session
(boot, ``perf record`` of a precise event, ``perf`` stopped, the guest
clearing its DS_AREA) and, after each phase, reads the two MSR-load lists
KVM left in the VMCS (``vm.kvm.autoload``). From the lists it derives what
the CPU holds in each of the three PEBS MSRs in guest mode (after the
VM-entry MSR-load list ran) and in host mode (after the VM-exit MSR-load
list ran): an MSR on a list takes the list's value, an MSR on no list keeps
the value it had (Intel SDM Vol. 3, VM entries load the VM-entry MSR-load
area, VM exits the VM-exit MSR-load area; FACTS c.5). :func:`switch_timeline`
draws that as a timeline; :func:`switch_table` prints it.

This module is the only place in the course that overrides design knobs, and
only the VMX switching ones (:data:`SWITCH_KNOBS`), so a later rename is a
one-file fix.

Used in: notebook 07 (the opening picture, the explorer, sections 4-6) and
the exercise checkers of :mod:`pebslab.exercises.nb07`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from .._check import check_choice, check_int

__all__ = ["SWITCH_KNOBS", "MSRS", "PHASES", "Phase", "SwitchRun", "switching_run",
           "switch_table", "switch_timeline", "knob_outcomes", "host_ds_area", "EXPLORERS"]

#: The design knobs of the VMX MSR switching (pebslab.kvm.designs.Design).
SWITCH_KNOBS = ("switch_global_ctrl", "switch_pebs_enable", "switch_ds_area",
                "ds_area_clear_on_zero", "autoload_full")

#: The three MSRs the chapter follows, by their Linux names.
MSRS = ("MSR_CORE_PERF_GLOBAL_CTRL", "MSR_IA32_PEBS_ENABLE", "MSR_IA32_DS_AREA")
_SHORT = {"MSR_CORE_PERF_GLOBAL_CTRL": "GLOBAL_CTRL", "MSR_IA32_PEBS_ENABLE": "PEBS_ENABLE",
          "MSR_IA32_DS_AREA": "DS_AREA"}

#: The phases of the session, in order: (key, what the guest does before the VM runs on).
PHASES = (
    ("boot", "guest booted, no perf yet"),
    ("record", "perf record -e <precise event>"),
    ("stop", "perf stopped: PEBS_ENABLE = 0, GLOBAL_CTRL = 0"),
    ("ds_zero", "guest writes DS_AREA = 0"),
)

#: The session's precise event and period (Silvermont: PEBS on PMC0 only).
EVENT = "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp"
PERIOD = 101
CHUNK = 40_000          # guest instructions run after each phase's guest action

_FIG_LABEL = {"boot": "guest boots\n(no perf yet)", "record": "perf record\n(precise event)",
              "stop": "perf stopped\n(PEBS_ENABLE = 0)", "ds_zero": "guest writes\nDS_AREA = 0"}

# colour-blind-safe (Okabe-Ito): value from the entry list, from the exit list, carried over
_C_GUEST, _C_HOST, _C_CARRY, _C_BAD = "#0072B2", "#E69F00", "#BBBBBB", "#D55E00"


@dataclass(frozen=True)
class Phase:
    """What one phase of the session left in the lists, the CPU and the trace."""

    key: str
    label: str
    autoload: tuple                 # ((msr name, guest value, host value), ...) as vm.kvm.autoload.table()
    guest_mode: dict                # short MSR name -> value the CPU holds in guest mode
    host_mode: dict                 # short MSR name -> value after the VM exit
    guest_src: dict                 # short name -> "entry list" or "carried over"
    host_src: dict                  # short name -> "exit list" or "carried over"
    guest_wrote: dict               # short name -> what the guest last wrote (KVM's copy)
    records: int = 0                # PEBS records the CPU wrote in this phase
    pmis: int = 0                   # PMIs injected into the guest in this phase
    samples: int = 0                # samples the guest's perf holds after the phase
    full: int = 0                   # AUTOLOAD_FULL warnings in this phase
    host_faults: int = 0            # HOST_FAULT events (host left exposed) in this phase
    crashed: bool = False
    crash_reason: str = ""
    hazards: tuple = ()             # ("guest"|"host", short MSR name, why)
    note: str = ""                  # e.g. the guest's perf record was refused


@dataclass(frozen=True)
class SwitchRun:
    """The whole session: the design used and its phases."""

    design: str
    knobs: dict
    extra_autoload: int
    phases: tuple = field(default_factory=tuple)

    def phase(self, key: str) -> Phase:
        for p in self.phases:
            if p.key == key:
                return p
        raise ValueError(f"key must be one of {', '.join(repr(p.key) for p in self.phases)}; "
                         f"got {key!r}")


def _design(design: str, knobs: dict):
    """The design with VMX switching knobs overridden (the course's only override point)."""
    import pebslab as pl
    for k in knobs:
        check_choice("knob", k, SWITCH_KNOBS)
    return pl.get_design(design, **knobs)


@functools.lru_cache(maxsize=1)
def host_ds_area() -> int:
    """The host's own DS_AREA (perf_get_ds_area()), read off a patch VM's exit-load list.

    pebslab only. Patches 1-3, which define perf_get_ds_area(), are not
    archived (FACTS e); the model's value is the host column of the DS_AREA
    entry KVM adds once a guest has a DS area.
    """
    import pebslab as pl
    host = pl.Host(cpu="silvermont", frames=256, seed=0)
    vm = host.create_vm(design="patch", memory_pages=64)
    try:
        guest = pl.GuestKernel(vm)
        vm.vcpus[0].wrmsr(pl.msr.MSR_IA32_DS_AREA, guest.mm.alloc(1))
        vm.run(pl.workloads.hot_loop(), instructions=100)
        for name, _, host_val in vm.kvm.autoload.table():
            if name == "MSR_IA32_DS_AREA":
                return int(host_val)
    finally:
        vm.destroy()
    raise RuntimeError("the patch design did not switch DS_AREA")   # pragma: no cover


def _check_knobs(switch_global_ctrl, switch_pebs_enable, switch_ds_area, ds_area_clear_on_zero,
                 autoload_full, extra_autoload, design):
    for name, v in (("switch_global_ctrl", switch_global_ctrl),
                    ("switch_pebs_enable", switch_pebs_enable),
                    ("switch_ds_area", switch_ds_area),
                    ("ds_area_clear_on_zero", ds_area_clear_on_zero)):
        if v is not None and not isinstance(v, bool):
            raise TypeError(f"{name} must be a bool or None; got {type(v).__name__} {v!r}")
    if autoload_full is not None:
        check_choice("autoload_full", autoload_full, ("warn", "disable_pebs"))
    check_int("extra_autoload", extra_autoload, 0, 8)
    import pebslab as pl
    check_choice("design", design, tuple(pl.DESIGN_NAMES))


def switching_run(design: str = "patch", *, switch_global_ctrl: bool | None = None,
                  switch_pebs_enable: bool | None = None, switch_ds_area: bool | None = None,
                  ds_area_clear_on_zero: bool | None = None, autoload_full: str | None = None,
                  extra_autoload: int = 0, seed: int = 0) -> SwitchRun:
    """Run the session under ``design`` (knobs None = the design's own) and return its phases.

    pebslab only. Silvermont host, one VM; the guest boots, records
    :data:`EVENT` every :data:`PERIOD` events, stops, then writes DS_AREA = 0
    (as Linux does when it tears a CPU's DS area down); after each guest
    action the VM runs :data:`CHUNK` instructions of ``hot_loop``.
    ``extra_autoload`` fills that many list slots with other MSRs first (the
    2014 list holds NR_AUTOLOAD_MSRS = 8). The session stops at a guest crash.
    """
    import pebslab as pl

    _check_knobs(switch_global_ctrl, switch_pebs_enable, switch_ds_area, ds_area_clear_on_zero,
                 autoload_full, extra_autoload, design)
    seed = check_int("seed", seed, 0, 2**63 - 1)
    knobs = {k: v for k, v in (("switch_global_ctrl", switch_global_ctrl),
                               ("switch_pebs_enable", switch_pebs_enable),
                               ("switch_ds_area", switch_ds_area),
                               ("ds_area_clear_on_zero", ds_area_clear_on_zero),
                               ("autoload_full", autoload_full)) if v is not None}
    d = _design(design, knobs)
    host_ds = host_ds_area()
    host = pl.Host(cpu="silvermont", frames=1024, seed=seed)
    vm = host.create_vm(design=d, memory_pages=256, extra_autoload=extra_autoload)
    work = pl.workloads.hot_loop()
    phases = []
    # host-mode values before the first entry: perf has no event, the host's own DS area
    hw = {"GLOBAL_CTRL": 0, "PEBS_ENABLE": 0, "DS_AREA": host_ds}
    guest = rec = None
    try:
        for key, label in PHASES:
            n0 = len(vm.trace)
            note = ""
            if key == "boot":
                guest = pl.GuestKernel(vm)
            elif key == "record":
                try:
                    rec = guest.perf.record(EVENT, period=PERIOD)
                except (ValueError, RuntimeError) as e:     # perf_event_open fails in the guest
                    note = f"perf record refused in the guest: {e}"
            elif key == "stop" and rec is not None:
                rec.stop()
            elif key == "ds_zero":
                try:
                    vm.vcpus[0].wrmsr(pl.msr.MSR_IA32_DS_AREA, 0)
                except pl.GuestFault as e:
                    note = f"the guest's WRMSR took {e}"
            vm.run(work, instructions=CHUNK)
            phases.append(_phase(vm, key, label, n0, hw, rec, note))
            hw = dict(phases[-1].host_mode)
            if vm.crashed:
                break
    finally:
        vm.destroy()
    return SwitchRun(design=design, knobs=knobs, extra_autoload=extra_autoload,
                     phases=tuple(phases))


def _phase(vm, key, label, n0, hw_before, rec, note) -> Phase:
    table = tuple((n, int(g), int(h)) for n, g, h in vm.kvm.autoload.table())
    on_list = {n: (g, h) for n, g, h in table}
    guest_mode, host_mode, gsrc, hsrc = {}, {}, {}, {}
    for name in MSRS:
        s = _SHORT[name]
        if name in on_list:
            guest_mode[s], gsrc[s] = on_list[name][0], "entry list"
            host_mode[s], hsrc[s] = on_list[name][1], "exit list"
        else:
            guest_mode[s], gsrc[s] = hw_before[s], "carried over"
            host_mode[s], hsrc[s] = guest_mode[s], "carried over"
    pmu = vm.kvm.pmu
    wrote = {"GLOBAL_CTRL": int(pmu.global_ctrl), "PEBS_ENABLE": int(pmu.pebs_enable),
             "DS_AREA": int(pmu.ds_area)}
    rows = vm.trace.array[n0:]
    from ..trace import KIND_ID
    count = {k: int((rows["kind"] == KIND_ID[k]).sum())
             for k in ("PEBS_WRITE", "PMI_INJECT", "AUTOLOAD_FULL", "HOST_FAULT")}
    hazards = []
    if guest_mode["PEBS_ENABLE"] and guest_mode["DS_AREA"] != wrote["DS_AREA"]:
        hazards.append(("guest", "DS_AREA",
                        f"guest PEBS on with DS_AREA {guest_mode['DS_AREA']:#x}, not the "
                        f"guest's {wrote['DS_AREA']:#x}"))
    if wrote["PEBS_ENABLE"] and wrote["GLOBAL_CTRL"] and not guest_mode["PEBS_ENABLE"]:
        hazards.append(("guest", "PEBS_ENABLE",
                        "the guest enabled PEBS but the CPU runs it with PEBS_ENABLE = 0"))
    if wrote["GLOBAL_CTRL"] and not guest_mode["GLOBAL_CTRL"]:
        hazards.append(("guest", "GLOBAL_CTRL",
                        "the guest enabled its counter but the CPU runs it with GLOBAL_CTRL = 0"))
    if not wrote["DS_AREA"] and gsrc["DS_AREA"] == "entry list" \
            and guest_mode["DS_AREA"] != host_ds_area():
        hazards.append(("guest", "DS_AREA",
                        f"stale entry: the guest wrote DS_AREA = 0, the CPU still loads "
                        f"{guest_mode['DS_AREA']:#x}"))
    if host_mode["PEBS_ENABLE"] and host_mode["DS_AREA"] != host_ds_area():
        hazards.append(("host", "DS_AREA", "host mode with PEBS on and a guest DS_AREA"))
    if host_mode["PEBS_ENABLE"] and hsrc["PEBS_ENABLE"] == "carried over":
        hazards.append(("host", "PEBS_ENABLE", "guest PEBS bits still set in host mode"))
    return Phase(key=key, label=label, autoload=table, guest_mode=guest_mode,
                 host_mode=host_mode, guest_src=gsrc, host_src=hsrc, guest_wrote=wrote,
                 records=count["PEBS_WRITE"], pmis=count["PMI_INJECT"],
                 samples=len(rec.samples()) if rec is not None else 0,
                 full=count["AUTOLOAD_FULL"], host_faults=count["HOST_FAULT"],
                 crashed=bool(vm.crashed), crash_reason=vm.crash_reason if vm.crashed else "",
                 hazards=tuple(hazards), note=note)


def switch_table(design: str = "patch", **kwargs) -> str:
    """The session as text: per phase, the lists and the three MSRs in guest and host mode.

    pebslab only. Keyword arguments as :func:`switching_run`.
    """
    run = kwargs.pop("_run", None) or switching_run(design, **kwargs)
    lines = []
    for i, p in enumerate(run.phases, 1):
        lines.append(f"{i}. {p.label}")
        names = ", ".join(_SHORT.get(n, n) for n, _, _ in p.autoload) or "(empty)"
        lines.append(f"   MSR-load lists ({len(p.autoload)} of 8): {names}")
        for s in ("GLOBAL_CTRL", "PEBS_ENABLE", "DS_AREA"):
            lines.append(f"   {s:<12} guest wrote {p.guest_wrote[s]:#x}; guest mode "
                         f"{p.guest_mode[s]:#x} ({p.guest_src[s]}); host mode "
                         f"{p.host_mode[s]:#x} ({p.host_src[s]})")
        out = f"   records {p.records}, PMIs injected {p.pmis}, samples so far {p.samples}"
        if p.full:
            out += f", list full x{p.full}"
        if p.host_faults:
            out += f", HOST_FAULT x{p.host_faults}"
        lines.append(out)
        if p.note:
            lines.append(f"   {p.note}")
        for who, _, why in p.hazards:
            lines.append(f"   ! {who} mode: {why}")
        if p.crashed:
            lines.append(f"   GUEST CRASHED: {p.crash_reason}")
    return "\n".join(lines)


def _fmt_val(v: int) -> str:
    """A register value for a small cell: 64-bit addresses on two lines."""
    if v >= 1 << 32:
        return f"{v >> 32:08x}\n{v & 0xFFFFFFFF:08x}"
    return f"{v:#x}"


def switch_timeline(switch_global_ctrl: bool = True, switch_pebs_enable: bool = True,
                    switch_ds_area: bool = True, ds_area_clear_on_zero: bool = False,
                    extra_autoload: int = 0, autoload_full: str = "warn",
                    design: str = "patch"):
    """Draw DS_AREA, PEBS_ENABLE and GLOBAL_CTRL in guest and host mode across the session.

    pebslab only. One column pair per phase (guest mode after the VM entry,
    host mode after the VM exit); each cell is coloured by where the value
    came from: the VM-entry list, the VM-exit list, or carried over because
    the MSR is on no list. A red outline marks a hazard (guest PEBS aimed at
    a DS area that is not the guest's, a guest counter the CPU never enables,
    PEBS left on in host mode). Below: records, injected PMIs, crashes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    run = switching_run(design, switch_global_ctrl=switch_global_ctrl,
                        switch_pebs_enable=switch_pebs_enable, switch_ds_area=switch_ds_area,
                        ds_area_clear_on_zero=ds_area_clear_on_zero, autoload_full=autoload_full,
                        extra_autoload=extra_autoload)
    rows = ("GLOBAL_CTRL", "PEBS_ENABLE", "DS_AREA")
    fig, ax = plt.subplots(figsize=(11, 4.4))
    n = len(PHASES)
    colour = {"entry list": _C_GUEST, "exit list": _C_HOST, "carried over": _C_CARRY}
    for j, (key, label) in enumerate(PHASES):
        x0 = 2 * j
        ax.text(x0 + 1, 3.45, f"{j + 1}. {_FIG_LABEL[key]}", ha="center", va="bottom",
                fontsize=8.5)
        ax.text(x0 + 0.5, 3.15, "guest mode", ha="center", fontsize=7, color="0.3")
        ax.text(x0 + 1.5, 3.15, "host mode", ha="center", fontsize=7, color="0.3")
        if j >= len(run.phases):
            ax.text(x0 + 1, 1.5, "(VM crashed)", ha="center", va="center", fontsize=9,
                    color=_C_BAD)
            continue
        p = run.phases[j]
        bad = {(who, msr) for who, msr, _ in p.hazards}
        for i, s in enumerate(rows):
            y = 2 - i
            for k, (mode, vals, src) in enumerate((("guest", p.guest_mode, p.guest_src),
                                                   ("host", p.host_mode, p.host_src))):
                hatch = "//" if src[s] == "carried over" else None
                ax.add_patch(Rectangle((x0 + k + 0.04, y + 0.08), 0.92, 0.84,
                                       fc=colour[src[s]], ec=_C_BAD if (mode, s) in bad else "white",
                                       lw=3 if (mode, s) in bad else 1, hatch=hatch, alpha=0.85))
                ax.text(x0 + k + 0.5, y + 0.5, _fmt_val(vals[s]), ha="center", va="center",
                        fontsize=7.5, color="black" if src[s] == "carried over" else "white",
                        fontweight="bold")
        verdict = f"records {p.records}, PMIs {p.pmis}"
        if p.note:
            verdict += "\nperf record refused (no PEBS in the guest)"
        if p.full:
            verdict += f"\nlist full ×{p.full}"
        if p.crashed:
            verdict += "\nGUEST CRASHED"
        ax.text(x0 + 1, -0.15, verdict, ha="center", va="top", fontsize=8,
                color=_C_BAD if p.crashed else "black")
    for i, s in enumerate(rows):
        ax.text(-0.1, 2 - i + 0.5, s, ha="right", va="center", fontsize=9, fontweight="bold")
    for j in range(1, n):
        ax.axvline(2 * j, color="0.5", lw=0.8)
    ax.set_xlim(-1.6, 2 * n)
    ax.set_ylim(-0.9, 4.2)
    ax.axis("off")
    off = [k for k, v in run.knobs.items() if v is False and k.startswith("switch_")]
    what = ("all three switched" if not off else "not switched: "
            + ", ".join(k.replace("switch_", "").upper() for k in off))
    if extra_autoload:
        what += f"; {extra_autoload} other MSRs on the list first"
    ax.set_title(f"The PEBS MSRs in guest and host mode, phase by phase ({design}: {what})",
                 fontsize=10)
    ax.legend(handles=[Patch(fc=_C_GUEST, label="loaded by the VM-entry MSR-load list"),
                       Patch(fc=_C_HOST, label="loaded by the VM-exit MSR-load list"),
                       Patch(fc=_C_CARRY, hatch="//", label="on no list: carried over"),
                       Patch(fc="white", ec=_C_BAD, lw=3, label="hazard")],
              loc="lower center", bbox_to_anchor=(0.5, -0.2), ncol=4, fontsize=8, frameon=False)
    # fixed margins: tight_layout would cost more than the whole simulated session
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.14)
    return fig


def knob_outcomes(seed: int = 0) -> list[dict]:
    """Run the session with each switch turned off in turn (and full lists); summarise each.

    pebslab only. One dict per setting: the setting, samples the guest got,
    records written, whether the guest crashed and why, HOST_FAULT count,
    list-full warnings.
    """
    settings = (
        ("all switched (patch)", {}, 0),
        ("GLOBAL_CTRL not switched", {"switch_global_ctrl": False}, 0),
        ("PEBS_ENABLE not switched", {"switch_pebs_enable": False}, 0),
        ("DS_AREA not switched", {"switch_ds_area": False}, 0),
        ("6 other MSRs on the list", {}, 6),
        ("6 other MSRs, fixed's rule", {"autoload_full": "disable_pebs"}, 6),
        ("7 other MSRs on the list", {}, 7),
    )
    out = []
    for name, knobs, extra in settings:
        run = switching_run("patch", extra_autoload=extra, seed=seed, **knobs)
        rec = [p for p in run.phases if p.key == "record"]
        p = rec[0] if rec else run.phases[-1]
        out.append({"setting": name, "samples": p.samples, "records": p.records,
                    "crashed": p.crashed, "crash_reason": p.crash_reason,
                    "host_faults": sum(q.host_faults for q in run.phases),
                    "list_full": sum(q.full for q in run.phases),
                    "on_list": [(_SHORT.get(n, n)) for n, _, _ in p.autoload]})
    return out


#: Explorers of notebook 07 and their defaults (bench/bench_explorers.py times them).
EXPLORERS = {
    "switch_timeline": (switch_timeline, {"switch_global_ctrl": True, "switch_pebs_enable": True,
                                          "switch_ds_area": True, "ds_area_clear_on_zero": False,
                                          "extra_autoload": 0, "autoload_full": "warn",
                                          "design": "patch"}),
}
