"""Pictures of the PMU on bare metal: the event-select register and interrupt skid.

pebslab only. Notebook 01 (PMU basics and skid) draws these. Each figure
function takes plain parameters, checks them (``ValueError`` naming the
argument, the value and the allowed range) and returns a matplotlib Figure;
the numbers behind each picture come from a ``*_data`` / ``*_fields``
function that drives the real model (pebslab.hw.msr, pebslab.baremetal, the
guest perf driver), so tests can check the data without looking at pixels.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .. import workloads as W
from ..hw import msr as M
from ..hw.models import MODELS, get_model

__all__ = ["eventsel_fields", "eventsel_explorer", "skid_data", "skid_histogram", "skid_title",
           "EXPLORERS", "SKID_WORKLOADS", "SKID_EVENTS", "MAX_SKID_SAMPLES"]

# ---------------------------------------------------------------------------
# IA32_PERFEVTSELx
# ---------------------------------------------------------------------------

# Short labels and one-line meanings of the fields (FACTS b.2; SDM Vol. 3B,
# "IA32_PERFEVTSELx MSRs").
_FIELD_INFO = {
    "event_select": ("event", "which event (with the unit mask)"),
    "umask": ("umask", "unit mask: which variant of the event"),
    "usr": ("USR", "count when CPL > 0 (user)"),
    "os": ("OS", "count when CPL = 0 (kernel)"),
    "edge": ("E", "count 0->1 transitions of the condition"),
    "pc": ("PC", "pin control (toggle a pin on overflow)"),
    "int": ("INT", "raise a PMI (APIC interrupt) on overflow"),
    "any": ("ANY", "count for both hyper-threads"),
    "en": ("EN", "enable the counter"),
    "inv": ("INV", "invert the CMASK comparison"),
    "cmask": ("cmask", "count cycles with >= cmask events"),
    "in_tx": ("TX", "only inside TSX transactions (Haswell+)"),
    "in_txcp": ("TXCP", "checkpointed TSX counting (PMC2 only)"),
    "adaptive": ("ADP", "adaptive PEBS record (Ice Lake)"),
}
_FIELD_COLORS = {
    "event_select": "#8ecae6", "umask": "#ffb703", "usr": "#90be6d", "os": "#43aa8b",
    "edge": "#f9c74f", "pc": "#e9edc9", "int": "#f94144", "any": "#e9edc9",
    "en": "#577590", "inv": "#f8961e", "cmask": "#b5838d", "in_tx": "#cdb4db",
    "in_txcp": "#cdb4db", "adaptive": "#a2d2ff",
}
_RESERVED_COLOR = "#f0f0f0"


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int in {lo}..{hi}; got {type(value).__name__} "
                        f"{value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}; got {v}")
    return v


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return bool(value)


def eventsel_fields(event_select: int = 0xC0, umask: int = 0, usr: bool = True, os: bool = True,
                    edge: bool = False, int_: bool = True, en: bool = True, inv: bool = False,
                    cmask: int = 0, cpu: str = "silvermont") -> dict:
    """Compose an IA32_PERFEVTSELx value and decode it back into its fields.

    pebslab only: a thin layer over pebslab.hw.msr.encode_eventsel and
    decode_eventsel. Returns ``{"value", "fields", "event", "summary"}``:
    ``fields`` is a list of (name, low bit, width, value) in bit order,
    ``event`` the Intel name of (event, umask) on ``cpu`` or None.
    """
    event_select = _check_int("event_select", event_select, 0, 0xFF)
    umask = _check_int("umask", umask, 0, 0xFF)
    cmask = _check_int("cmask", cmask, 0, 0xFF)
    flags = {n: _check_bool(n, v) for n, v in (("usr", usr), ("os", os), ("edge", edge),
                                               ("int_", int_), ("en", en), ("inv", inv))}
    if not isinstance(cpu, str) or cpu.lower() not in MODELS:
        raise ValueError(f"cpu must be one of {', '.join(map(repr, MODELS))}; got {cpu!r}")
    value = M.encode_eventsel(event_select, umask, usr=flags["usr"], os=flags["os"],
                              edge=flags["edge"], int=flags["int_"], en=flags["en"],
                              inv=flags["inv"], cmask=cmask)
    decoded = M.decode_eventsel(value)
    fields = [(name, lo, width, decoded[name]) for name, lo, width in M.EVENTSEL_FIELDS]
    ev = get_model(cpu).event_by_code(value)
    rings = {(1, 1): "user and kernel", (1, 0): "user only", (0, 1): "kernel only",
             (0, 0): "no privilege level (counts nothing)"}[(decoded["usr"], decoded["os"])]
    parts = [f"{ev.name if ev else 'an event ' + cpu + ' does not know'}",
             f"counts in {rings}"]
    if decoded["cmask"]:
        cmp = "<" if decoded["inv"] else ">="
        parts.append(f"counts cycles with {cmp} {decoded['cmask']} events")
    elif decoded["inv"]:
        parts.append("INV without CMASK has no effect")
    if decoded["edge"]:
        parts.append("edge: counts rising edges")
    parts.append("PMI on overflow" if decoded["int"] else "no PMI on overflow")
    parts.append("enabled" if decoded["en"] else "disabled (EN = 0)")
    return {"value": value, "fields": fields, "event": ev.name if ev else None,
            "summary": "; ".join(parts)}


def eventsel_explorer(event_select: int = 0xC0, umask: int = 0, usr: bool = True,
                      os: bool = True, edge: bool = False, int_: bool = True, en: bool = True,
                      inv: bool = False, cmask: int = 0, cpu: str = "silvermont"):
    """Draw the 64-bit IA32_PERFEVTSELx register with its fields colored, and its hex value.

    pebslab only. Bits 63..32 on the top row, 31..0 below; each cell shows
    the bit's value; bits no field uses are reserved (grey): writing 1 there
    raises #GP (the model's Core.wrmsr does the same).
    """
    d = eventsel_fields(event_select, umask, usr, os, edge, int_, en, inv, cmask, cpu)
    value = d["value"]
    owner = {}
    for name, lo, width, _v in d["fields"]:
        for b in range(lo, lo + width):
            owner[b] = name
    fig = Figure(figsize=(11.5, 3.6))
    ax = fig.subplots()
    ax.set_xlim(-0.5, 32.5)
    ax.set_ylim(-1.9, 3.4)
    ax.axis("off")
    for row, (hi_bit, y) in enumerate(((63, 2.0), (31, 0.0))):
        for col in range(32):
            bit = hi_bit - col
            name = owner.get(bit)
            color = _FIELD_COLORS[name] if name else _RESERVED_COLOR
            x = col
            ax.add_patch(Rectangle((x, y), 1, 0.8, facecolor=color, edgecolor="white", lw=1.2))
            on = value >> bit & 1
            ax.text(x + 0.5, y + 0.4, str(on), ha="center", va="center", fontsize=9,
                    fontweight="bold" if on else "normal", color="black" if on else "#666666")
            if bit % 4 == 0 or bit == hi_bit:
                ax.text(x + 0.5, y + 0.95, str(bit), ha="center", va="bottom", fontsize=6.5,
                        color="#555555")
        # field labels under each row
        for name, lo, width, v in d["fields"]:
            top = lo + width - 1
            if not (hi_bit - 31 <= lo <= hi_bit):
                continue
            x0 = hi_bit - top
            label = _FIELD_INFO[name][0]
            if width > 1:
                label = f"{label}\n{v:#04x}"
            ax.text(x0 + width / 2, y - 0.08, label, ha="center", va="top",
                    fontsize=7 if width == 1 else 8)
        if row == 0:
            ax.annotate("reserved (bits 63..35)", xy=(14.5, y - 0.15), ha="center", va="top",
                        fontsize=8, color="#777777")
    ev = d["event"] or "unknown event"
    ax.set_title(f"IA32_PERFEVTSELx = {value:#018x}   ({ev})", fontsize=12, loc="left")
    ax.text(-0.4, -1.5, d["summary"], fontsize=9.5, ha="left", va="bottom")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02)
    return fig


# ---------------------------------------------------------------------------
# skid
# ---------------------------------------------------------------------------

SKID_WORKLOADS = ("hot_loop", "pointer_chase")
SKID_EVENTS = ("cycles", "instructions")
#: At most this many samples per skid run (the run is shortened to fit), so
#: an explorer callback stays well under a second at every slider setting:
#: each sample is one PMI handled by the Python perf driver.
MAX_SKID_SAMPLES = 1000


@functools.lru_cache(maxsize=8)
def _workload(name: str):
    return W.by_name(name)


def _skid_run(period: int, skid_max: int, seed: int, workload: str, event: str,
              instructions: int, cpu: str):
    from ..baremetal import BareMetal
    from ..guest.kernel import GuestKernel

    base = get_model(cpu)
    model = dataclasses.replace(base, skid_max=skid_max, skid_min=min(base.skid_min, skid_max))
    w = _workload(workload)
    machine = BareMetal(model, frames=256, seed=seed)
    kernel = GuestKernel(machine)
    rec = kernel.perf.record(event, period=period)
    machine.run(w, instructions)
    pos = {int(ip): i for i, ip in enumerate(w.ip)}
    ovf = np.array([pos[r["gva"]] for r in machine.trace.rows("OVERFLOW")], dtype=np.int64)
    smp = np.array([pos[int(ip)] for ip in rec.samples()["ip"]], dtype=np.int64)
    n = min(len(ovf), len(smp))           # the last overflow's PMI may be after the budget
    for a in (ovf, smp):
        a.setflags(write=False)
    return ovf[:n], smp[:n], model.skid_min, rec.counter


def skid_data(period: int = 10007, skid_max: int = 8, seed: int = 0, workload: str = "hot_loop",
              event: str = "cycles", instructions: int = 1_000_000,
              cpu: str = "silvermont") -> dict:
    """Sample ``event`` with interrupts on bare metal; say where each sample landed.

    pebslab only. Runs the guest perf driver (``perf record -e EVENT -c
    PERIOD``, no ``:p``: a PMI per overflow) on a :class:`BareMetal`
    machine whose CPU model has the given ``skid_max`` (and ``seed`` for
    the skid draws), for ``instructions`` instructions of ``workload``.
    For every sample it pairs the instruction whose retirement made the
    counter overflow (the trace's OVERFLOW rows) with the sample IP (the
    interrupted instruction the PMI handler saw). Returns a dict with
    ``overflow_idx`` and ``sample_idx`` (positions in the workload's
    loop), ``offsets`` (instructions from the overflowing one to the
    sample, modulo the loop length), ``hot_index`` (the slowest
    instruction; ``hot`` lists every instruction as slow as it), ``n`` (the
    loop length), ``skid_min``, ``skid_max``,
    ``counter`` (the counter the driver used), ``instructions`` (actually
    run: the run is shortened so that it yields at most MAX_SKID_SAMPLES
    samples) and the workload object.
    """
    period = _check_int("period", period, 1000, 10_000_000)
    skid_max = _check_int("skid_max", skid_max, 0, 32)
    seed = _check_int("seed", seed, 0, 2**31 - 1)
    instructions = _check_int("instructions", instructions, 10_000, 2_000_000)
    if workload not in SKID_WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(map(repr, SKID_WORKLOADS))} "
                         f"(loops where every instruction has its own IP); got {workload!r}")
    if event not in SKID_EVENTS:
        raise ValueError(f"event must be one of {', '.join(map(repr, SKID_EVENTS))}; "
                         f"got {event!r}")
    if not isinstance(cpu, str) or cpu.lower() not in MODELS:
        raise ValueError(f"cpu must be one of {', '.join(map(repr, MODELS))}; got {cpu!r}")
    w = _workload(workload)
    n = len(w)
    per_instruction = w.total_cycles / n if event == "cycles" else 1.0
    instructions = min(instructions, int(MAX_SKID_SAMPLES * period / per_instruction))
    ovf, smp, skid_min, counter = _skid_run(period, skid_max, seed, workload, event,
                                            instructions, cpu.lower())
    return {
        "overflow_idx": ovf, "sample_idx": smp, "offsets": (smp - ovf) % n,
        "hot_index": int(np.argmax(w.cycles)),
        "hot": np.flatnonzero(w.cycles == w.cycles.max()), "n": n, "skid_min": skid_min,
        "skid_max": skid_max, "counter": counter, "workload": w, "event": event,
        "period": period, "instructions": instructions,
    }


def skid_title(skid_min: int, skid_max: int, samples: int, instructions: int) -> str:
    """The left panel's title: the model's skid and where the bars therefore are.

    pebslab only. The PMI is taken after ``skid_min..skid_max`` more
    instructions retire (the ASSUMPTION ``SKID_MIN, SKID_MAX`` of
    pebslab/hw/models.py) and reports the *next* instruction, so the
    sample IP is ``skid + 1`` instructions after the overflowing one.
    """
    return (f"skid {skid_min}..{skid_max} (assumed) + 1 = sample IP {skid_min + 1}.."
            f"{skid_max + 1} after the overflow\n{samples} samples in {instructions:,} "
            "instructions")


def skid_histogram(period: int = 10007, skid_max: int = 8, seed: int = 0,
                   workload: str = "hot_loop", event: str = "cycles",
                   instructions: int = 1_000_000):
    """Draw where interrupt-based samples land relative to the overflowing instruction.

    pebslab only. Left: how many instructions after the overflowing one the
    sample IP is (the PMI is taken after a skid of ``skid_min..skid_max``
    more instructions retire, and reports the *next* instruction to run).
    Right: per instruction of the loop, where the counter overflowed and
    where the samples were attributed, with the hot instruction marked.
    """
    d = skid_data(period, skid_max, seed, workload, event, instructions)
    offs, ovf, smp = d["offsets"], d["overflow_idx"], d["sample_idx"]
    n, hot = d["n"], d["hot_index"]
    fig = Figure(figsize=(12, 4.2))
    a1, a2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    hi = d["skid_max"] + 3
    counts = np.bincount(offs, minlength=hi)[:hi] if len(offs) else np.zeros(hi, int)
    a1.bar(np.arange(hi), counts, color="#f8961e", edgecolor="black", lw=0.5)
    a1.axvline(0, color="#d62828", lw=2)
    a1.text(0.15, a1.get_ylim()[1] * 0.95 if counts.any() else 0.95,
            "overflowing\ninstruction", color="#d62828", fontsize=8, va="top")
    a1.set_xticks(np.arange(hi))
    a1.set_xlabel("sample IP: instructions after the overflowing one")
    a1.set_ylabel("samples")
    a1.set_title(skid_title(d['skid_min'], d['skid_max'], len(offs), d['instructions']),
                 fontsize=10)

    x = np.arange(n)
    c_ovf = np.bincount(ovf, minlength=n)
    c_smp = np.bincount(smp, minlength=n)
    for h in d["hot"]:
        a2.axvspan(h - 0.5, h + 0.5, color="#d62828", alpha=0.15, lw=0)
    a2.bar(x - 0.2, c_ovf, width=0.4, color="#577590", label="counter overflowed here")
    a2.bar(x + 0.2, c_smp, width=0.4, color="#f8961e", label="sample IP (what perf reports)")
    top = max(int(c_ovf.max(initial=0)), int(c_smp.max(initial=0)), 1)
    cyc = int(d["workload"].cycles[hot])
    what = (f"hot instruction #{hot}\n({cyc} cycles)" if len(d["hot"]) == 1 else
            f"hot instructions (shaded):\n{len(d['hot'])} of {cyc} cycles")
    a2.annotate(what, xy=(hot, top), xytext=(hot - 0.45 * n if hot > n / 2 else 0.55 * n,
                                             top * 0.9),
                fontsize=8, color="#d62828", va="top",
                arrowprops={"arrowstyle": "->", "color": "#d62828"})
    a2.set_xlim(-1, n)
    a2.set_xlabel(f"instruction index in one pass of {d['workload'].name}")
    a2.set_ylabel("count")
    a2.set_title(f"{d['event']} every {d['period']}: where overflows happen vs where samples land",
                 fontsize=10)
    a2.legend(fontsize=8, loc="upper right")
    if not len(offs):
        a1.text(0.5, 0.5, "no samples: lower the period\nor run more instructions",
                transform=a1.transAxes, ha="center", va="center")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.13, top=0.92, wspace=0.18)
    return fig


EXPLORERS = {
    "eventsel_explorer": (eventsel_explorer, {}),
    "skid_histogram": (skid_histogram, {}),
}
