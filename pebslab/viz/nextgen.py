"""Figures and tables for notebook 12: what came after the 2014 patch.

pebslab only. Three views:

* :func:`layout_rows` / :func:`adaptive_layout` - adaptive PEBS (format 4):
  which groups a PEBS_DATA_CFG value puts in a record, at which offsets,
  and how big the record gets (FACTS a.3; read from the dtypes of
  :mod:`pebslab.hw.pebs`, not re-derived), beside the 32-byte basic record
  a counter writes when its own adaptive bit is clear;
* :func:`reclaim_run` / :func:`reclaim_timeline` - one guest whose PEBS
  buffer page is remapped and then reclaimed by the host, under ``patch``
  (Silvermont: reclaim zaps the EPT entries of the pinned pages too, FACTS
  g.1, so the first record faults; the assist cannot take the EPT
  violation, the guest dies) and
  under ``icelake`` (EPT-friendly PEBS: the violation exits to KVM, which
  faults the page back in, and the run goes on), drawn from the trace;
* :func:`compare_designs` / :func:`comparison_table` - every design on the
  same scenarios, each answer measured by running it.

Used in: notebook 12.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from .. import scenarios, workloads
from .._check import check_choice, check_int
from ..hw import pebs as PEBS
from ..hw.errors import GuestFault
from ..hw.models import MODELS, get_model
from ..kvm.designs import DESIGN_NAMES
from ..system import Host
from . import review as _review

__all__ = ["GROUPS", "HOME_CPU", "layout_rows", "adaptive_layout", "reclaim_run",
           "reclaim_timeline", "SCENARIOS", "compare_designs", "comparison_table",
           "EXPLORERS"]

PAGE = PEBS.PAGE_SIZE
#: Linux's PEBS buffer (PEBS_BUFFER_SIZE = PAGE_SIZE << 4, FACTS a.4).
PEBS_BUFFER_BYTES = 16 * PAGE

#: The record groups in the order the CPU writes them (FACTS a.3), with the
#: name of the group in :func:`pebslab.hw.pebs.adaptive_record_dtype`.
GROUPS = (("basic", "basic"), ("meminfo", "MEMINFO"), ("gprs", "GP"), ("xmm", "XMMS"),
          ("lbr", "LBRS"))

# Okabe-Ito palette + hatching per group, so colour is never the only cue.
_GROUP_STYLE = {
    "basic": ("#999999", None),
    "meminfo": ("#56B4E9", "//"),
    "gprs": ("#E69F00", ".."),
    "xmm": ("#009E73", "\\\\"),
    "lbr": ("#CC79A7", "xx"),
}

#: Where each design runs in notebook 12's comparisons: the 2014 designs on
#: the one CPU the patch supports (Silvermont, an assumption of pebslab, see
#: notebook 04), the upstream design on a CPU with EPT-friendly PEBS.
HOME_CPU = {"patch": "silvermont", "review": "silvermont", "fixed": "silvermont",
            "icelake": "icelake"}


# -----------------------------------------------------------------------------
# adaptive records
# -----------------------------------------------------------------------------

def _cfg(meminfo: bool, gp: bool, xmm: bool, lbr: bool, lbr_entries: int) -> int:
    for name, v in (("meminfo", meminfo), ("gp", gp), ("xmm", xmm), ("lbr", lbr)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False; got {type(v).__name__} {v!r}")
    n = check_int("lbr_entries", lbr_entries, 1, 256)
    cfg = (PEBS.PEBS_DATACFG_MEMINFO * meminfo | PEBS.PEBS_DATACFG_GP * gp
           | PEBS.PEBS_DATACFG_XMMS * xmm)
    if lbr:
        cfg |= PEBS.PEBS_DATACFG_LBRS | (n - 1) << PEBS.PEBS_DATACFG_LBR_SHIFT
    return cfg


def layout_rows(data_cfg: int) -> list[tuple[str, int, int]]:
    """The groups of an adaptive record built with ``data_cfg``: (group, offset, size).

    pebslab only: read from the fields of
    :func:`pebslab.hw.pebs.adaptive_record_dtype` (which models the record
    walk of setup_pebs_adaptive_sample_data() in arch/x86/events/intel/ds.c).
    """
    dt = PEBS.adaptive_record_dtype(data_cfg)
    rows = []
    for name in dt.names:
        fdt, off = dt.fields[name][:2]
        rows.append((name, int(off), int(fdt.itemsize)))
    return rows


def adaptive_layout(meminfo: bool = True, gp: bool = False, xmm: bool = False,
                    lbr: bool = False, lbr_entries: int = 8, adaptive_bit: bool = True):
    """Draw the record one PEBS assist writes for these PEBS_DATA_CFG groups.

    pebslab only. Top bar: the record of a counter whose adaptive bit
    (EVENTSEL bit 34, or FIXED_CTR_CTRL bit 32+4i) is set, group by group
    with byte offsets; bottom bar: what a counter without its adaptive bit
    writes (the 32-byte basic group only, FACTS a.3). With ``adaptive_bit``
    False the top bar is that basic record too. The title gives DATA_CFG,
    the size and how many records a 64 KiB buffer holds.
    """
    if not isinstance(adaptive_bit, bool):
        raise TypeError(f"adaptive_bit must be True or False; got "
                        f"{type(adaptive_bit).__name__} {adaptive_bit!r}")
    cfg = _cfg(meminfo, gp, xmm, lbr, lbr_entries)
    rows = layout_rows(cfg if adaptive_bit else 0)
    size = rows[-1][1] + rows[-1][2]
    fig, ax = plt.subplots(figsize=(9.5, 3.1))
    full = max(size, 32)
    bars = ((1.0, rows, "this counter's record" if adaptive_bit else
             "this counter's record (adaptive bit clear)"),
            (0.0, layout_rows(0), "a counter without its adaptive bit"))
    for y, rws, label in bars:
        for name, off, sz in rws:
            color, hatch = _GROUP_STYLE[name]
            ax.barh(y, sz, left=off, height=0.6, color=color, hatch=hatch,
                    edgecolor="black", linewidth=0.6)
            txt = f"{name}\n{sz} B" if name != "lbr" else \
                f"lbr x{sz // PEBS.LBR_ENTRY_DTYPE.itemsize}\n{sz} B"
            if sz / full > 0.07:
                ax.text(off + sz / 2, y, txt, ha="center", va="center", fontsize=8,
                        bbox=dict(facecolor="white", edgecolor="none", alpha=0.75, pad=1))
        end = rws[-1][1] + rws[-1][2]
        ax.text(end + full * 0.01, y, f"{end} B", va="center", fontsize=9)
        ax.text(-full * 0.01, y, label.replace(" (", "\n("), ha="right", va="center",
                fontsize=8)
    ax.set_xlim(-full * 0.3, full * 1.1)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= full])
    ax.set_ylim(-0.6, 1.6)
    ax.set_yticks([])
    ax.set_xlabel("byte offset in the record")
    per_buf = PEBS_BUFFER_BYTES // size
    shown = cfg if adaptive_bit else 0
    ax.set_title(f"PEBS_DATA_CFG = {cfg:#x}: record {size} bytes"
                 f"{'' if adaptive_bit else ' (adaptive bit clear: DATA_CFG ignored)'}\n"
                 f"a 64 KiB buffer holds {per_buf} records; word 0 (format_size) = "
                 f"{(size << PEBS.FORMAT_SIZE_SHIFT) | shown:#x}", fontsize=9)
    ax.legend(handles=[Patch(facecolor=c, hatch=h, edgecolor="black", label=n)
                       for n, (c, h) in _GROUP_STYLE.items()],
              loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=5, fontsize=8,
              frameon=False)
    for s in ("top", "right", "left"):
        ax.spines[s].set_visible(False)
    fig.tight_layout()
    return fig


# -----------------------------------------------------------------------------
# a reclaimed buffer page: patch (Silvermont) versus icelake (EPT-friendly PEBS)
# -----------------------------------------------------------------------------

_HOT = None


def _hot():
    global _HOT
    if _HOT is None:
        _HOT = workloads.hot_loop()
    return _HOT


def record_bytes(cpu: str) -> int:
    """Bytes of one PEBS record on ``cpu`` as the guest sets it up (basic record on fmt 4)."""
    fmt = get_model(cpu).pebs_format
    return PEBS.record_size(fmt) if fmt < 4 else PEBS.PEBS_BASIC_DTYPE.itemsize


def _setup(design: str, cpu: str, buf_pages: int = 16, threshold_pages: int = 2,
           frames: int = 1024, period: int = 97):
    """manual_pebs with a threshold of ``threshold_pages`` pages of records.

    A threshold in bytes, not records, so that a Silvermont (192-byte
    records) and an Ice Lake guest (32-byte basic records) both fill
    buffer pages 0 and 1 before their first PMI.
    """
    host = Host(cpu=cpu, frames=frames, seed=0)
    vm = host.create_vm(design=design, memory_pages=256)
    from ..guest.kernel import GuestKernel
    guest = GuestKernel(vm)
    ev, um = _review._pebs_event(cpu)
    st = scenarios.manual_pebs(guest, period=period,
                               threshold_records=threshold_pages * PAGE // record_bytes(cpu),
                               buf_pages=buf_pages, event=ev | um << 8)
    return host, vm, guest, st


def reclaim_run(design: str = "patch", cpu: str | None = None, remap: bool = True,
                instructions: int = 2_000_000) -> dict:
    """Set PEBS up, remap buffer page 1 (optional), let the host reclaim guest memory, run.

    pebslab only. Reclaim takes every unpinned frame and zaps the EPT entry
    of every page it passes, pinned or not (a pin keeps the frame only,
    FACTS g.1). The guest then reads its DS area through its own page
    tables (ordinary software: its tables and DS page fault back in), so
    what is left missing is what the assist alone must reach. ``reclaimed``
    counts the frames taken (pinned frames stay). Returns the
    run's outcome and its trace rows: ``crashed``, ``crash_reason``,
    ``records``, ``samples``, ``pebs_faults``, ``pinned``, ``reclaimed``,
    ``events`` (trace rows of the kinds the timeline draws, times relative
    to the start of the run).
    """
    design = check_choice("design", design, DESIGN_NAMES)
    cpu = HOME_CPU[design] if cpu is None else check_choice("cpu", cpu, tuple(MODELS))
    if not isinstance(remap, bool):
        raise TypeError(f"remap must be True or False; got {type(remap).__name__} {remap!r}")
    instructions = check_int("instructions", instructions, 1, 20_000_000)
    host, vm, guest, st = _setup(design, cpu)
    if remap:
        scenarios.remap_buffer_page(guest, st, page=1)
    reclaimed = len(host.reclaim(10_000))
    st.debug_store()
    t0 = int(vm.vcpus[0].guest_time())
    n0 = len(vm.trace)
    res = vm.run(_hot(), instructions)
    kinds = ("PEBS_WRITE", "PEBS_FAULT", "SWAPIN", "PMI_INJECT", "GUEST_CRASH")
    events = [dict(r, time=int(r["time"]) - t0) for r in vm.trace.rows()[n0:]
              if r["kind"] in kinds]
    return {"design": design, "cpu": cpu, "remap": remap, "crashed": bool(res.crashed),
            "crash_reason": vm.crash_reason, "records": len(vm.trace.of("PEBS_WRITE")),
            "samples": len(st.samples), "pebs_faults": len(vm.trace.of("PEBS_FAULT")),
            "pinned": len(vm.kvm.pmu.pinned_pages), "reclaimed": reclaimed,
            "instructions": res.instructions, "events": events}


_KIND_STYLE = {   # kind: (label, marker, colour, size)
    "PEBS_WRITE": ("PEBS record written", "|", "#0072B2", 60),
    "PMI_INJECT": ("PMI injected (guest drains)", "^", "#009E73", 40),
    "PEBS_FAULT": ("EPT violation in the assist", "x", "#E69F00", 70),
    "SWAPIN": ("KVM faults the page back in", "v", "#CC79A7", 45),
    "GUEST_CRASH": ("guest crash", "X", "#D55E00", 160),
}


def reclaim_timeline(remap: bool = True, instructions: int = 2_000_000):
    """Draw :func:`reclaim_run` for ``patch`` (Silvermont) and ``icelake`` (Ice Lake).

    pebslab only. One row per design; x is simulated guest time in cycles
    since the run started; markers by event kind (shape and colour).
    """
    runs = [reclaim_run(d, None, remap, instructions) for d in ("patch", "icelake")]
    fig, ax = plt.subplots(figsize=(9.5, 3.0))
    seen = set()
    for y, r in enumerate(reversed(runs)):
        for kind, (label, marker, color, size) in _KIND_STYLE.items():
            xs = [e["time"] for e in r["events"] if e["kind"] == kind]
            if not xs:
                continue
            ax.scatter(xs, [y] * len(xs), marker=marker, color=color, s=size,
                       label=label if kind not in seen else None, zorder=3,
                       linewidths=1.5 if marker in "|x" else None)
            seen.add(kind)
        verdict = ("GUEST CRASHED" if r["crashed"] else "survived") + \
            f": {r['records']} records, {r['pebs_faults']} assist EPT violation(s)"
        ax.text(0, y + 0.22, verdict, fontsize=8, va="bottom",
                color="#D55E00" if r["crashed"] else "black")
    ax.set_yticks(range(len(runs)))
    ax.set_yticklabels([f"{r['design']} on {r['cpu']}" for r in reversed(runs)])
    ax.set_ylim(-0.5, len(runs) - 0.3)
    ax.set_xlabel("simulated guest time since the run started (cycles)")
    ax.set_title(("Buffer page 1 remapped by the guest, then g" if remap else "G") +
                 "uest memory reclaimed:\npinned pages keep their frame, not their EPT "
                 "entry; what the PEBS assist does next (simulated)", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize=8,
              frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.subplots_adjust(left=0.17, right=0.98, top=0.80, bottom=0.38)
    return fig


# -----------------------------------------------------------------------------
# the designs side by side
# -----------------------------------------------------------------------------

def _no_pebs_guest_sees_msrs(design, cpu):
    row = _review.probe_guest(design, cpu, _review.PEBS_BITS, instructions=0)
    return "yes" if row["pebs_enable"] == "ok" or row["ds_area"] == "ok" else "no"


def _pinned_16(design, cpu):
    _h, vm, _g, _st = _setup(design, cpu, buf_pages=16)
    return sum(len(v.pmu.pinned_pages) for v in vm.vcpus)


def _survives(design, cpu, *, remap=False, buf_pages=16, instructions=2_000_000):
    """Set up, optionally remap buffer page 1, reclaim guest memory, run: 'yes' or 'crash'.

    With ``remap`` or a buffer beyond 16 pages the guest reads its DS area after
    reclaim (its page tables and DS page come back), so that only the effect
    asked about can kill it. A buffer beyond 16 pages is filled past its
    20th page before the first PMI (period 13, threshold = whole buffer).
    """
    big = buf_pages > 16
    period = 13 if big else 97
    try:
        host, vm, guest, st = _setup(design, cpu, buf_pages=buf_pages,
                                     threshold_pages=buf_pages if big else 2, period=period)
    except GuestFault as e:
        return f"refused ({e.vector})"
    if remap:
        scenarios.remap_buffer_page(guest, st, page=1)
    host.reclaim(10_000)
    if remap or big:
        st.debug_store()
    if big:   # enough instructions for 20 pages of records (one per 64 * period)
        instructions = 20 * PAGE // record_bytes(cpu) * 64 * period + 100_000
    res = vm.run(_hot(), instructions)
    return "crash" if res.crashed else "yes"


def _records(design, cpu, instructions=2_000_000):
    _h, vm, _g, _st = _setup(design, cpu)
    vm.run(_hot(), instructions)
    return len(vm.trace.of("PEBS_WRITE"))


#: The scenarios of the comparison: (key, question, function(design, cpu)).
SCENARIOS = (
    ("msrs_no_pebs", "PEBS MSRs work for a guest whose CPUID says no PEBS?",
     _no_pebs_guest_sees_msrs),
    ("pinned_16", "host frames pinned for a DS area + 16-page buffer", _pinned_16),
    ("reclaim", "survives host reclaim of guest memory?", _survives),
    ("remap", "survives a remapped buffer page + reclaim?",
     lambda d, c: _survives(d, c, remap=True)),
    ("buffer_32", "survives a 32-page buffer + reclaim?",
     lambda d, c: _survives(d, c, buf_pages=32)),
    ("records", "PEBS records written in 2M instructions (no pressure)", _records),
)


def compare_designs(designs: tuple = DESIGN_NAMES) -> list[dict]:
    """Run every scenario of :data:`SCENARIOS` under each design on its :data:`HOME_CPU`.

    pebslab only. Returns one dict per design: ``design``, ``cpu`` and one
    entry per scenario key.
    """
    if isinstance(designs, str) or not isinstance(designs, (tuple, list)) or not designs:
        raise TypeError(f"designs must be a non-empty tuple of design names from "
                        f"{', '.join(DESIGN_NAMES)}; got {designs!r}")
    out = []
    for d in designs:
        d = check_choice("design", d, DESIGN_NAMES)
        cpu = HOME_CPU[d]
        row = {"design": d, "cpu": cpu}
        for key, _q, fn in SCENARIOS:
            row[key] = fn(d, cpu)
        out.append(row)
    return out


def comparison_table(designs: tuple = DESIGN_NAMES) -> str:
    """:func:`compare_designs` as a text table: one row per scenario, one column per design."""
    rows = compare_designs(designs)
    w = max(len(q) for _k, q, _f in SCENARIOS) + 2
    head = f"{'':<{w}}" + "".join(f"{r['design']:>11}" for r in rows)
    sub = f"{'(host CPU)':<{w}}" + "".join(f"{r['cpu']:>11}" for r in rows)
    lines = [head, sub]
    for key, q, _f in SCENARIOS:
        lines.append(f"{q:<{w}}" + "".join(f"{str(r[key]):>11}" for r in rows))
    return "\n".join(lines)


EXPLORERS = {
    "adaptive_layout": (adaptive_layout, {"meminfo": True, "gp": False, "xmm": False,
                                          "lbr": False, "lbr_entries": 8,
                                          "adaptive_bit": True}),
    "reclaim_timeline": (reclaim_timeline, {"remap": True, "instructions": 2_000_000}),
}
