"""Figures for notebook 02: PEBS records, the PEBS assist, and sample precision.

pebslab only. Every explorer is a plain function that takes plain
parameters, checks them, drives the real model (pebslab.hw.pebs layouts,
pebslab.baremetal.BareMetal with the guest kernel, pebslab.scenarios) and
returns a matplotlib Figure. The numbers behind each picture come from a
data function (``layout_cells``, ``assist_series``, ``precision_data``)
that tests and notebooks can print.
"""

from __future__ import annotations

import re

import numpy as np

from .. import workloads as WL
from ..hw import pebs as P
from ..hw.models import EV_LLC_MISS, MODELS, get_model
from .._check import check_int as _check_int, is_int as _is_int

__all__ = [
    "FORMAT_GENERATION", "layout_cells", "record_layout", "assist_series", "assist_timeline",
    "PRECISION_EVENTS", "PRECISION_MODES", "precision_data", "precision_compare", "EXPLORERS",
]

#: Which processor generation writes each record format (FACTS a.7), and the
#: pebslab models that use it. Silvermont's format 2 is an ASSUMPTION of
#: pebslab.hw.models (its record has the format-2 shape; the value it
#: reports is unverified).
FORMAT_GENERATION = {
    0: "Core 2",
    1: "Nehalem / Westmere",
    2: "Haswell / Broadwell (pebslab: haswell, silvermont*)",
    3: "Skylake (pebslab: skylake)",
    4: "Ice Lake, adaptive (pebslab: icelake)",
}

# colours of the field groups (colour-blind friendly, light enough for black text)
_GROUP_STYLE = {
    "registers (fmt 0)": "#c6dbef",
    "fmt 1: status, data address, source, latency": "#c7e9c0",
    "fmt 2: eventing IP, TSX": "#fdd0a2",
    "fmt 3: TSC": "#dadaeb",
    "basic group (always)": "#fdd0a2",
    "meminfo group (bit 0)": "#c7e9c0",
    "gprs group (bit 1)": "#c6dbef",
    "xmm group (bit 2)": "#dadaeb",
    "lbr group (bit 3)": "#fcbba1",
}
_FMT1_FIELDS = ("status", "dla", "dse", "lat")
_FMT2_FIELDS = ("real_ip", "tsx_tuning")
_BYTES_PER_ROW = 64
_MAX_LBR_SHOWN = 2          # LBR entries drawn one by one; the rest become one block


def _check_choice(name: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _check_fmt(fmt) -> int:
    return _check_int("fmt", fmt, 0, 4)


def _check_cpu(cpu) -> str:
    if not isinstance(cpu, str):
        raise TypeError(f"cpu must be one of {', '.join(map(repr, MODELS))}; got "
                        f"{type(cpu).__name__}")
    return _check_choice("cpu", cpu.lower(), tuple(MODELS))


# =============================================================================
# record_layout
# =============================================================================

def _group_of(fmt: int, name: str) -> str:
    if fmt == 4:
        g = name.split(".", 1)[0].split("[", 1)[0]
        return {"basic": "basic group (always)", "meminfo": "meminfo group (bit 0)",
                "gprs": "gprs group (bit 1)", "xmm": "xmm group (bit 2)",
                "lbr": "lbr group (bit 3)"}[g]
    if name in _FMT1_FIELDS:
        return "fmt 1: status, data address, source, latency"
    if name in _FMT2_FIELDS:
        return "fmt 2: eventing IP, TSX"
    if name == "tsc":
        return "fmt 3: TSC"
    return "registers (fmt 0)"


def _role_of(fmt: int, name: str) -> str:
    """'eventing' for the field that holds the eventing IP, 'next' for the trap-like IP."""
    if fmt == 4:
        if name == "basic.ip":
            return "eventing"
        if name == "gprs.ip":
            return "next"
        return ""
    if name == "real_ip":
        return "eventing"
    if name == "ip":
        return "next"
    return ""


def layout_cells(fmt: int = 2, data_cfg: int = 0) -> list[tuple[int, int, str, str, str]]:
    """Return the record layout as (offset, size, name, group, role) rows, by offset.

    pebslab only: pebslab.hw.pebs.field_table() with each field's group
    (which format or adaptive group added it) and role ('eventing' for the
    eventing IP, 'next' for the trap-like IP of the next instruction, else
    ''). ``data_cfg`` (MSR_PEBS_DATA_CFG) is only read for format 4, as the
    hardware only reads it on adaptive parts; other formats ignore it. LBR
    entries beyond the first two are merged into one row
    ``lbr[2..N-1]`` so a long LBR group stays readable.
    """
    fmt = _check_fmt(fmt)
    cfg = _check_int("data_cfg", data_cfg, 0, (1 << 64) - 1)
    P.adaptive_record_size(cfg)     # checks the bits the model understands (names data_cfg)
    table = P.field_table(fmt, cfg if fmt == 4 else 0)
    n_lbr = sum(1 for _off, _size, name in table if name.endswith("].from"))
    out = []
    merged = None
    for off, size, name in table:
        m = re.match(r"lbr\[(\d+)\]\.", name)
        if m and int(m.group(1)) >= _MAX_LBR_SHOWN:
            if merged is None:
                merged = [off, 0]
            merged[1] = off + size - merged[0]
            continue
        out.append((off, size, name, _group_of(fmt, name), _role_of(fmt, name)))
    if merged is not None:
        out.append((merged[0], merged[1],
                    f"lbr[{_MAX_LBR_SHOWN}..{n_lbr - 1}] ({n_lbr - _MAX_LBR_SHOWN} x 24 B)",
                    "lbr group (bit 3)", ""))
    out.sort()
    return out


def _short(name: str) -> str:
    """The label drawn in a cell: the field name without its group prefix."""
    return name.split(".", 1)[1] if name.startswith(("basic.", "meminfo.", "gprs.", "xmm.")) \
        else name


def record_layout(fmt: int = 2, data_cfg: int = 0):
    """Draw one PEBS record of format ``fmt`` as a byte map: 64 bytes per row, one box per field.

    pebslab only. Boxes are coloured by the format (or adaptive group) that
    added the field; the eventing IP has a thick red edge, the trap-like IP
    of the next instruction a dashed one. ``data_cfg`` selects the adaptive
    groups of format 4 (bits 0 MEMINFO, 1 GP, 2 XMMS, 3 LBRS, 31:24 LBR
    entries - 1) and is ignored by formats 0-3. Returns a Figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    cells = layout_cells(fmt, data_cfg)
    size = P.record_size(fmt, data_cfg if fmt == 4 else 0)
    rows = -(-size // _BYTES_PER_ROW)
    fig, ax = plt.subplots(figsize=(10, min(1.6 + 0.55 * rows, 12)))
    used_groups = []
    for off, length, name, group, role in cells:
        if group not in used_groups:
            used_groups.append(group)
        color = _GROUP_STYLE[group]
        pos, left, first = off, length, True
        while left > 0:                       # a field may wrap over several rows
            row, col = divmod(pos, _BYTES_PER_ROW)
            span = min(left, _BYTES_PER_ROW - col)
            lw, ls, ec, z = 0.8, "-", "0.3", 1
            if role == "eventing":
                lw, ec, z = 3.0, "#cb181d", 3
            elif role == "next":
                lw, ls, ec, z = 2.0, "--", "#08519c", 2
            ax.add_patch(Rectangle((col, row), span, 1, facecolor=color, edgecolor=ec,
                                   linewidth=lw, linestyle=ls, zorder=z))
            if first:
                label = f"{_short(name)}\n{off:#x}"
                fs = 8 if span >= 16 or len(_short(name)) <= 8 else 6.5
                ax.text(col + span / 2, row + 0.5, label, ha="center", va="center",
                        fontsize=fs, family="monospace", zorder=4)
                first = False
            pos += span
            left -= span
    ax.set_xlim(0, _BYTES_PER_ROW)
    ax.set_ylim(rows, 0)
    ax.set_xticks(range(0, _BYTES_PER_ROW + 1, 8))
    ax.set_xlabel("byte within the row (each box of width 8 is one u64)")
    ax.set_yticks([r + 0.5 for r in range(rows)])
    ax.set_yticklabels([f"{r * _BYTES_PER_ROW:#05x}" for r in range(rows)], family="monospace")
    ax.set_ylabel("row offset")
    title = f"PEBS record format {fmt}: {size} bytes - {FORMAT_GENERATION[fmt]}"
    if fmt == 4:
        title += f"\nMSR_PEBS_DATA_CFG = {data_cfg:#x}"
    elif data_cfg:
        title += f"\n(data_cfg {data_cfg:#x} ignored: only format 4 has data groups)"
    ax.set_title(title, fontsize=11)
    handles = [Patch(facecolor=_GROUP_STYLE[g], edgecolor="0.3", label=g) for g in used_groups]
    if any(c[4] == "eventing" for c in cells):
        handles.append(Patch(facecolor="white", edgecolor="#cb181d", linewidth=3,
                             label="eventing IP (the instruction that caused the event)"))
    if any(c[4] == "next" for c in cells):
        handles.append(Patch(facecolor="white", edgecolor="#08519c", linewidth=2,
                             linestyle="--", label="IP after the assist (next instruction)"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.2 / rows),
              ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# =============================================================================
# assist_timeline
# =============================================================================

def _bare_guest(cpu: str, seed: int = 0):
    from ..baremetal import BareMetal
    from ..guest.kernel import GuestKernel
    machine = BareMetal(cpu, frames=256, seed=seed)
    return machine, GuestKernel(machine)


def assist_series(period: int = 10007, threshold_records: int = 4,
                  instructions: int = 200_000, cpu: str = "silvermont") -> dict:
    """Run a hand-programmed PEBS counter on bare metal; return pebs_index over time.

    pebslab only. Programs INST_RETIRED.ANY_P with PEBS on PMC0 through
    pebslab.scenarios.manual_pebs (auto-reload from pebs_event_reset, an
    interrupt threshold ``threshold_records`` records above the base), runs
    ``hot_loop`` for ``instructions`` instructions on a BareMetal machine
    and reads the trace: every PEBS_WRITE raises pebs_index by one record,
    every PMI (the handler drains the buffer) brings it back to the base.
    Returns a dict: ``times`` and ``records`` (the step series, in TSC
    cycles and records in the buffer), ``pmi_times``,
    ``write_times``/``write_records`` (each assist and the count after it),
    ``record_size``, ``threshold_records``, ``samples`` (records drained),
    ``pending`` (records still in the buffer at the end), ``cpu``, ``period``.
    """
    from ..scenarios import manual_pebs
    period = _check_int("period", period, 1_000, 1_000_000)
    threshold_records = _check_int("threshold_records", threshold_records, 1, 64)
    instructions = _check_int("instructions", instructions, 1_000, 1_000_000)
    cpu = _check_cpu(cpu)
    machine, kernel = _bare_guest(cpu)
    st = manual_pebs(kernel, period=period, event=0x00C0, threshold_records=threshold_records)
    start = len(machine.trace)
    machine.run(WL.hot_loop(), instructions)
    rows = machine.trace.array[start:]
    from ..trace import KIND_ID
    k_write, k_pmi = KIND_ID["PEBS_WRITE"], KIND_ID["PMI"]
    times, records, pmis, writes, levels = [0], [0], [], [], []
    for r in rows:
        if r["kind"] == k_write:
            n = (int(r["gva"]) - st.buffer) // st.record_size + 1
            t = int(r["time"])
            times.append(t)
            records.append(n)
            writes.append(t)
            levels.append(n)
        elif r["kind"] == k_pmi:
            t = int(r["time"])
            times.append(t)
            records.append(0)
            pmis.append(t)
    end = machine.core.tsc
    times.append(end)
    records.append(records[-1])
    return {
        "times": np.array(times, dtype=np.int64), "records": np.array(records, dtype=np.int64),
        "pmi_times": np.array(pmis, dtype=np.int64), "write_times": np.array(writes, np.int64),
        "write_records": np.array(levels, np.int64),
        "record_size": st.record_size, "threshold_records": threshold_records,
        "samples": len(st.samples), "pending": int(records[-1]), "cpu": cpu, "period": period,
        "instructions": instructions, "end": int(end),
    }


def assist_timeline(period: int = 10007, threshold_records: int = 4,
                    instructions: int = 200_000, cpu: str = "silvermont"):
    """Draw pebs_index (records in the buffer) over time, the threshold, and the PMIs.

    pebslab only: the picture of :func:`assist_series`. Returns a Figure.
    """
    import matplotlib.pyplot as plt

    s = assist_series(period, threshold_records, instructions, cpu)
    fig, ax = plt.subplots(figsize=(10, 4))
    t = s["times"] / 1000.0
    ax.step(t, s["records"], where="post", color="#08519c", lw=1.6,
            label="records in the buffer ((pebs_index - base) / record size)")
    ax.plot(s["write_times"] / 1000.0, s["write_records"], "o", ms=3.5, color="#08519c",
            label="PEBS assist writes a record")
    ax.axhline(threshold_records, color="#cb181d", ls="--", lw=1.2,
               label=f"pebs_interrupt_threshold (base + {threshold_records} records)")
    for k, tp in enumerate(s["pmi_times"]):
        ax.axvline(tp / 1000.0, color="#cb181d", alpha=0.35, lw=1,
                   label="PMI (GLOBAL_STATUS bit 62), handler drains" if k == 0 else None)
    ax.set_xlabel("time (thousands of cycles, TSC)")
    ax.set_ylabel("records in buffer")
    ax.set_ylim(-0.3, (threshold_records + 0.6) * 1.5)
    ax.set_xlim(0, s["end"] / 1000.0)
    ax.set_title(f"PEBS assists on {s['cpu']}: INST_RETIRED.ANY_P, period {s['period']}, "
                 f"{s['record_size']}-byte records\n{len(s['write_times'])} records written, "
                 f"{len(s['pmi_times'])} PMIs, {s['samples']} drained, "
                 f"{s['pending']} still in the buffer", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.95, ncol=2)
    fig.tight_layout()
    return fig


# =============================================================================
# precision_compare
# =============================================================================

#: Event choices of precision_compare: "llc_miss" is the model's PEBS-capable
#: last-level-cache-miss load event (only the hot load of hot_loop misses).
PRECISION_EVENTS = ("llc_miss", "cycles", "instructions")
#: The three ways to sample, as perf modifiers.
PRECISION_MODES = ("", ":p", ":pp")
_DEFAULT_PERIOD = {"llc_miss": 23, "cycles": 5003, "instructions": 1009}
_MAX_SAMPLES = 5_000


def _event_name(event: str, cpu: str) -> str:
    if event == "cycles":
        return "cycles"
    if event == "instructions":
        return "INST_RETIRED.ANY_P"
    model = get_model(cpu)
    for ev in model.events:
        if ev.kind == EV_LLC_MISS and ev.pebs:
            return ev.name
    raise ValueError(f"cpu {cpu!r} has no PEBS-capable LLC-miss event")   # pragma: no cover


def precision_data(event: str = "llc_miss", period: int | None = None,
                   instructions: int = 150_000, cpu: str = "silvermont") -> dict:
    """Sample ``hot_loop`` three ways (no PEBS, :p, :pp); return sample IP offsets.

    pebslab only. Each mode runs on a fresh BareMetal machine (seed 0) with
    the guest perf driver: ``perf record -e EVENT[:p|:pp] -c PERIOD``, the
    PEBS modes in large-PEBS mode (drained when the event stops; the
    records, and so the IPs, are the same as with a PMI per record).
    ``period`` None (or 0, for a dropdown's "default" entry) picks a per-event default (llc_miss 23, cycles 5003,
    instructions 1009: about 100 samples per mode at the default length).
    Offsets are sample IP minus the IP of the hot load, in bytes. Returns
    {"event": perf event name, "hot_ip", "next_offset" (length of the hot
    load: where a trap-like IP lands), "period", "modes": {mode: {"offsets":
    int64 array, "n", "exact" (fraction at offset 0), "next" (fraction at
    the next instruction)}}}.
    """
    event = _check_choice("event", event, PRECISION_EVENTS)
    cpu = _check_cpu(cpu)
    instructions = _check_int("instructions", instructions, 10_000, 1_000_000)
    if period is None or (_is_int(period) and period == 0):
        period = _DEFAULT_PERIOD[event]
    period = _check_int("period", period, 1, 1_000_000)
    w = WL.hot_loop()
    per_pass = {"llc_miss": int(w.llc_miss.sum()), "cycles": w.total_cycles,
                "instructions": len(w)}[event]
    expected = instructions / len(w) * per_pass / period
    if expected > _MAX_SAMPLES:
        least = int(np.ceil(instructions / len(w) * per_pass / _MAX_SAMPLES))
        raise ValueError(f"period must be at least {least} for event {event!r} over "
                         f"{instructions} instructions (about {int(expected)} samples per "
                         f"mode; the limit is {_MAX_SAMPLES}); got {period}")
    hot_index = int(np.flatnonzero(w.llc_miss)[0])
    hot_ip = int(w.ip[hot_index])
    name = _event_name(event, cpu)
    modes = {}
    for mode in PRECISION_MODES:
        machine, kernel = _bare_guest(cpu)
        # PEBS modes use large PEBS (one drain when the event stops, not a PMI per
        # sample): the same records, far fewer interrupts to simulate
        rec = kernel.perf.record(name + mode, period=period, large_pebs=bool(mode))
        machine.run(w, instructions)
        rec.stop()
        ips = rec.samples()["ip"].astype(np.int64)
        off = ips - hot_ip
        n = len(off)
        modes[mode] = {
            "offsets": off, "n": n,
            "exact": float(np.mean(off == 0)) if n else 0.0,
            "next": float(np.mean(off == int(w.length[hot_index]))) if n else 0.0,
        }
    return {"event": name, "cpu": cpu, "hot_ip": hot_ip, "next_offset": int(w.length[hot_index]),
            "period": period, "instructions": instructions, "modes": modes,
            "loop_start": int(w.ip[0]) - hot_ip,
            "loop_end": int(w.ip[-1]) + int(w.length[-1]) - hot_ip}


_MODE_TITLE = {
    "": "no PEBS: sample IP = where the PMI interrupted (skid)",
    ":p": ":p  (PEBS, precise_ip=1): the record's IP, trap-like = the next instruction",
    ":pp": ":pp (PEBS, precise_ip=2): the eventing IP",
}


def precision_compare(event: str = "llc_miss", period: int | None = None,
                      instructions: int = 150_000, cpu: str = "silvermont"):
    """Draw three histograms of sample IP offsets from the hot load: no PEBS, :p, :pp.

    pebslab only: the picture of :func:`precision_data`. Returns a Figure.
    """
    import matplotlib.pyplot as plt

    d = precision_data(event, period, instructions, cpu)
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.6), sharex=True)
    lo, hi = d["loop_start"], d["loop_end"]
    for ax, mode in zip(axes, PRECISION_MODES):
        m = d["modes"][mode]
        if m["n"]:
            u, c = np.unique(m["offsets"], return_counts=True)
            ax.bar(u, c / m["n"] * 100, width=1.6, color="#3182bd")
        else:
            ax.text(0.5, 0.5, "no samples (period longer than the events in the run)",
                    transform=ax.transAxes, ha="center", va="center")
        ax.axvline(0, color="#cb181d", lw=1, ls="--")
        ax.axvline(d["next_offset"], color="0.4", lw=0.8, ls=":")
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of samples")
        ax.set_title(_MODE_TITLE[mode], fontsize=9.5, loc="left")
        ax.text(0.99, 0.9, f"{m['n']} samples; at the hot load {100 * m['exact']:.0f}%, "
                f"at the next instruction {100 * m['next']:.0f}%", transform=ax.transAxes,
                ha="right", va="top", fontsize=8.5,
                bbox=dict(facecolor="white", edgecolor="0.8"))
    axes[-1].set_xlim(lo - 2, hi + 2)
    axes[-1].set_xlabel("sample IP - IP of the hot load (bytes); red dashed: the hot load, "
                        "grey dotted: the next instruction")
    fig.suptitle(f"{d['event']} on {d['cpu']}, period {d['period']}, hot_loop "
                 f"({d['instructions']} instructions)", fontsize=11)
    fig.tight_layout()
    return fig


EXPLORERS = {
    "record_layout": (record_layout, {"fmt": 2, "data_cfg": 0}),
    "assist_timeline": (assist_timeline, {"period": 10007, "threshold_records": 4,
                                          "instructions": 200_000, "cpu": "silvermont"}),
    "precision_compare": (precision_compare, {"event": "llc_miss", "period": None,
                                              "instructions": 150_000, "cpu": "silvermont"}),
}
