"""Explorer for notebook 11: what a guest whose CPUID says "no PEBS" can still do.

pebslab only. Everything here is measured by driving a real simulated system
through the public API (``pl.Host`` -> ``create_vm(cpuid=...)`` ->
``pl.GuestKernel`` -> guest RDMSR/WRMSR -> ``vm.run``), never by restating
KVM's rules:

* :func:`probe_guest` - one VM: what the guest's CPUID and perf driver say,
  then what happens when guest code ignores them and programs PEBS anyway
  (PERF_CAPABILITIES read, DS_AREA / PEBS_ENABLE writes, host frames
  pinned, PEBS records the CPU writes into guest memory);
* :func:`gate_rows` / :func:`gate_table` - the same probe under every design,
  as rows and as text;
* :func:`gate_grid` - the picture: designs by guest actions, each cell
  coloured by outcome and hatched where KVM breaks the promise the guest's
  CPUID made (the reviewer's point, Eric Northup, in the course's seed).

Used in: notebook 11 (sections 1, 3 and the explorer).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from .. import workloads
from .._check import check_choice
from ..hw import cpuid as CPUID
from ..hw import msr as M
from ..hw import pebs as PEBS
from ..hw.errors import GuestFault
from ..hw.models import EV_LLC_MISS, MODELS, get_model
from ..kvm.designs import DESIGN_NAMES
from ..system import Host

__all__ = ["PEBS_BITS", "STEPS", "probe_guest", "gate_rows", "gate_table", "gate_grid",
           "broken_promises", "EXPLORERS"]

#: The CPUID bits that announce PEBS (FACTS b.7); "PMU" hides leaf 0xA as a whole.
PEBS_BITS = ("DS", "DTES64", "PDCM")
_HIDEABLE = PEBS_BITS + ("PMU",)

#: The rows of the probe, in the order the guest does them: (key, label).
STEPS = (
    ("cpuid", "guest CPUID.1: DS DTES64 PDCM"),
    ("driver", "guest perf driver concludes"),
    ("perf_cap", "RDMSR PERF_CAPABILITIES"),
    ("eventsel", "WRMSR EVENTSEL0 (plain PMU)"),
    ("ds_area", "WRMSR DS_AREA"),
    ("pebs_enable", "WRMSR PEBS_ENABLE = 1"),
    ("pinned", "host frames pinned"),
    ("records", "PEBS records in guest memory"),
)

_BUF_PAGES = 16              # Linux's 64 KiB PEBS buffer (FACTS a.4)
_PERIOD = 97
_INSTRUCTIONS = 100_000
_HOT = None


def _hot():
    global _HOT
    if _HOT is None:
        _HOT = workloads.hot_loop()
    return _HOT


def _check_hide(hide) -> tuple:
    if isinstance(hide, str) or not isinstance(hide, (tuple, list, set, frozenset)):
        raise TypeError(f"hide must be a tuple of CPUID feature names from "
                        f"{', '.join(_HIDEABLE)}; got {type(hide).__name__} {hide!r}")
    out = []
    for h in hide:
        if h not in _HIDEABLE:
            raise ValueError(f"hide must only name {', '.join(map(repr, _HIDEABLE))}; got {h!r}")
        if h not in out:
            out.append(h)
    return tuple(h for h in _HIDEABLE if h in out)


def _pebs_event(cpu: str) -> tuple[int, int]:
    """The model's PEBS-capable LLC-miss event (event select, umask)."""
    for ev in get_model(cpu).events:
        if ev.pebs and ev.kind == EV_LLC_MISS:
            return ev.event, ev.umask
    raise ValueError(f"cpu {cpu!r} has no PEBS-capable LLC-miss event")   # pragma: no cover


def _try(fn, *args):
    """Run one guest instruction; 'ok' or '#GP'."""
    try:
        fn(*args)
        return "ok"
    except GuestFault:
        return "#GP"


def probe_guest(design: str = "patch", cpu: str = "silvermont",
                hide: tuple = PEBS_BITS, instructions: int = _INSTRUCTIONS) -> dict:
    """Boot a guest with the given CPUID bits hidden and let it program PEBS anyway.

    pebslab only. The guest reads CPUID and lets its perf driver probe, then
    (as code that ignores the driver's verdict would) writes a DS area with a
    16-page buffer, EVENTSEL0/PERFCTR0 with the model's PEBS-capable LLC-miss
    event, DS_AREA, PEBS_ENABLE = 1 and GLOBAL_CTRL = 1, and runs ``hot_loop``
    for ``instructions``. Every guest instruction that KVM refuses is a
    modeled #GP, recorded as such. Returns a dict keyed by :data:`STEPS`
    plus ``design``, ``cpu``, ``hide``, ``crashed``.
    """
    design = check_choice("design", design, DESIGN_NAMES)
    cpu = check_choice("cpu", cpu, tuple(MODELS))
    hide = _check_hide(hide)
    if isinstance(instructions, bool) or not isinstance(instructions, int) or \
            not 0 <= instructions <= 10_000_000:
        raise ValueError(f"instructions must be an int in 0..10000000; got {instructions!r}")
    host = Host(cpu=cpu, frames=512, seed=0)
    cpuid = CPUID.default(cpu).without(*hide) if hide else None
    vm = host.create_vm(design=design, memory_pages=128, cpuid=cpuid)
    from ..guest.kernel import GuestKernel
    guest = GuestKernel(vm)
    v = vm.vcpus[0]
    out = {"design": design, "cpu": cpu, "hide": hide}
    _eax, _ebx, ecx, edx = v.cpuid(0x1)
    bits = (edx >> 21 & 1, ecx >> 2 & 1, ecx >> 15 & 1)
    out["cpuid"] = " ".join(str(b) for b in bits)
    out["cpuid_bits"] = dict(zip(PEBS_BITS, bits))
    info = guest.perf.probe()
    out["driver"] = f"PEBS fmt{info.pebs_format}" if info.has_pebs else "no PEBS"
    out["pmu_version"] = info.version
    try:
        out["perf_cap"] = f"{v.rdmsr(M.MSR_IA32_PERF_CAPABILITIES):#x}"
    except GuestFault:
        out["perf_cap"] = "#GP"
    # guest code that ignores the driver: a DS area and a 64 KiB buffer
    model = get_model(cpu)
    rec = PEBS.record_size(model.pebs_format) if model.pebs_format < 4 else 32
    ds = guest.mm.alloc(1)
    buf = guest.mm.alloc(_BUF_PAGES)
    absmax = buf + rec * (_BUF_PAGES * PEBS.PAGE_SIZE // rec)
    reset = [0] * PEBS.DS_RESET_SLOTS
    reset[0] = (-_PERIOD) & ((1 << model.width) - 1)
    guest.write(ds, PEBS.DebugStore(pebs_buffer_base=buf, pebs_index=buf,
                                    pebs_absolute_maximum=absmax,
                                    pebs_interrupt_threshold=absmax,
                                    pebs_event_reset=tuple(reset)).to_bytes())
    ev, um = _pebs_event(cpu)
    _try(v.wrmsr, M.MSR_IA32_PERFCTR0, (-_PERIOD) & 0xFFFFFFFF)
    out["eventsel"] = _try(v.wrmsr, M.MSR_P6_EVNTSEL0, M.encode_eventsel(ev, um))
    out["ds_area"] = _try(v.wrmsr, M.MSR_IA32_DS_AREA, ds)
    out["pebs_enable"] = _try(v.wrmsr, M.MSR_IA32_PEBS_ENABLE, 1)
    _try(v.wrmsr, M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    out["pinned"] = len(vm.kvm.pmu.pinned_pages)
    res = vm.run(_hot(), instructions)
    out["records"] = len(vm.trace.of("PEBS_WRITE"))
    out["crashed"] = bool(res.crashed)
    return out


def broken_promises(row: dict) -> set:
    """The steps of a probe where KVM contradicts the guest's CPUID.

    pebslab only. A guest whose CPUID lacks any of DS, DTES64, PDCM (or the
    whole PMU) was promised "no PEBS": a PEBS MSR that works, a host frame
    pinned for it, or a PEBS record written breaks that promise.
    """
    if not row["hide"]:
        return set()
    bad = set()
    if row["perf_cap"] != "#GP" and "PDCM" in row["hide"]:
        bad.add("perf_cap")
    for k in ("ds_area", "pebs_enable"):
        if row[k] == "ok":
            bad.add(k)
    for k in ("pinned", "records"):
        if row[k]:
            bad.add(k)
    return bad


def gate_rows(cpu: str = "silvermont", hide: tuple = PEBS_BITS,
              designs: tuple = DESIGN_NAMES, instructions: int = _INSTRUCTIONS) -> list[dict]:
    """:func:`probe_guest` under each design (same host CPU, same CPUID)."""
    if isinstance(designs, str) or not isinstance(designs, (tuple, list)) or not designs:
        raise TypeError(f"designs must be a non-empty tuple of design names from "
                        f"{', '.join(DESIGN_NAMES)}; got {designs!r}")
    return [probe_guest(d, cpu, hide, instructions) for d in designs]


def _cell(row: dict, key: str) -> str:
    return str(row[key])


def gate_table(cpu: str = "silvermont", hide: tuple = PEBS_BITS,
               designs: tuple = DESIGN_NAMES) -> str:
    """The probe under each design as a text table (a '!' marks a broken promise)."""
    rows = gate_rows(cpu, hide, designs)
    hidden = "+".join(rows[0]["hide"]) or "nothing"
    w = max(len(label) for _, label in STEPS) + 2
    lines = [f"host {cpu}, guest CPUID with {hidden} hidden; '!' = contradicts the guest's CPUID",
             " " * w + "".join(f"{r['design']:>12}" for r in rows)]
    for key, label in STEPS:
        cells = []
        for r in rows:
            mark = "!" if key in broken_promises(r) else " "
            cells.append(f"{_cell(r, key) + mark:>12}")
        lines.append(f"{label:<{w}}" + "".join(cells))
    return "\n".join(lines)


# Okabe-Ito colours (colour-blind safe); meaning is also carried by text and hatching.
_OK = "#56B4E9"        # sky blue: the instruction worked / something happened
_GP = "#E69F00"        # orange: #GP
_NEUTRAL = "#F0F0F0"   # information rows
_BROKEN = "#D55E00"    # vermillion edge + hatching: contradicts the guest's CPUID


def gate_grid(hide_ds: bool = True, hide_dtes64: bool = True, hide_pdcm: bool = True,
              hide_pmu: bool = False, cpu: str = "silvermont"):
    """Draw what a guest with these CPUID bits hidden can do under each design.

    pebslab only. Columns are the designs, rows the guest's steps of
    :func:`probe_guest`. Blue: the instruction worked (or frames/records
    exist); orange: #GP; hatched with a red edge: KVM contradicts the
    guest's CPUID. Returns a matplotlib Figure.
    """
    for name, v in (("hide_ds", hide_ds), ("hide_dtes64", hide_dtes64),
                    ("hide_pdcm", hide_pdcm), ("hide_pmu", hide_pmu)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False; got {type(v).__name__} {v!r}")
    hide = tuple(b for b, on in zip(_HIDEABLE, (hide_ds, hide_dtes64, hide_pdcm, hide_pmu))
                 if on)
    rows = gate_rows(cpu, hide)
    n_r, n_c = len(STEPS), len(rows)
    fig, ax = plt.subplots(figsize=(9.2, 4.6))
    for j, r in enumerate(rows):
        broken = broken_promises(r)
        for i, (key, _label) in enumerate(STEPS):
            val = _cell(r, key)
            if key in ("cpuid", "driver"):
                face = _NEUTRAL
            elif key in ("pinned", "records"):
                face = _OK if r[key] else _NEUTRAL
            else:
                face = _GP if val == "#GP" else _OK
            hatch = "///" if key in broken else None
            ax.add_artist(plt.Rectangle((j, n_r - 1 - i), 0.96, 0.9, facecolor=face,
                                       edgecolor=_BROKEN if hatch else "white",
                                       hatch=hatch, linewidth=2 if hatch else 1))
            ax.text(j + 0.48, n_r - 1 - i + 0.45, val, ha="center", va="center", fontsize=9,
                    fontweight="bold" if hatch else "normal",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.7, pad=1)
                    if hatch else None)
    ax.set_xlim(0, n_c)
    ax.set_ylim(0, n_r)
    ax.set_xticks([j + 0.48 for j in range(n_c)])
    ax.set_xticklabels([r["design"] for r in rows], fontsize=10)
    ax.xaxis.tick_top()
    ax.set_yticks([n_r - 1 - i + 0.45 for i in range(n_r)])
    ax.set_yticklabels([label for _, label in STEPS], fontsize=9)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    hidden = ", ".join(hide) or "nothing"
    ax.set_title(f"A guest on a {cpu} host, its CPUID with {hidden} hidden:\n"
                 f"what KVM lets it do (simulated)", fontsize=10, pad=24)
    ax.legend(handles=[Patch(facecolor=_OK, label="worked / happened"),
                       Patch(facecolor=_GP, label="#GP"),
                       Patch(facecolor="white", edgecolor=_BROKEN, hatch="///",
                             label="contradicts the guest's CPUID")],
              loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8,
              frameon=False)
    # fixed margins (tight_layout would cost more than the four VMs behind the figure)
    fig.subplots_adjust(left=0.26, right=0.99, top=0.80, bottom=0.08)
    return fig


EXPLORERS = {
    "gate_grid": (gate_grid, {"hide_ds": True, "hide_dtes64": True, "hide_pdcm": True,
                              "hide_pmu": False, "cpu": "silvermont"}),
}
