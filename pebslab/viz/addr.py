"""Explorers for notebook 05: the DS area and the PEBS buffer in three address spaces.

pebslab only. Every view is built from a real simulated system set up with
:func:`pebslab.scenarios.manual_pebs` (DS area + buffer in guest kernel
memory, MSRs programmed through the vCPU) and read back with the real
walkers, never re-derived:

* :func:`page_walk` - the CPU's two-dimensional walk of one address
  (:func:`pebslab.hw.mmu.describe_walk`): each level's index, entry bytes,
  flags and next table, then the final GPA and HPA;
* :func:`address_spaces` - the DS and buffer pages as guest virtual pages,
  guest physical frames (with the page-table pages the walk reads) and host
  frames, with the guest page tables and EPT as lines between them.

``reclaim`` swaps out that many unpinned guest pages (host memory pressure,
seeded) after the set-up, so both views can show what the host did behind
the guest's back. The data behind each figure comes from :func:`walk_view`
and :func:`address_map`.
"""

from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from .. import scenarios
from ..kvm.designs import DESIGN_NAMES
from ..hw.errors import GuestFault
from ..hw import mmu
from ..hw.models import MODELS, get_model

__all__ = ["WHICH", "setup", "walk_view", "page_walk", "address_map", "address_spaces",
           "EXPLORERS"]

PAGE = mmu.PAGE_SIZE
#: What :func:`page_walk` can look at.
WHICH = ("ds", "buffer", "user", "unmapped")
#: Guest memory of the VM these views build (pages); enough for DS, buffer and tables.
MEMORY_PAGES = 96

_LEVEL_COLORS = {"PML4": "#4C72B0", "PDPT": "#55A868", "PD": "#C44E52", "PT": "#8172B2",
                 "offset": "#937860"}
_PINNED = "#b7e4b0"
_RESIDENT = "#ffffff"
_TABLE = "#e6e6e6"
_SWAPPED = "#f4b6b6"


# -----------------------------------------------------------------------------
# argument checks and the shared set-up
# -----------------------------------------------------------------------------

def _check_int(name, value, lo, hi) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int in {lo}..{hi}; got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}; got {value}")
    return value


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def _precise_load(cpu: str) -> int:
    """event | umask << 8 of the running example's precise load event on ``cpu``.

    Silvermont: MEM_UOPS_RETIRED.L2_MISS_LOADS (0x0404); elsewhere the model's
    L3-miss load event, so the hot load of ``hot_loop`` produces records.
    """
    name = {"silvermont": "MEM_UOPS_RETIRED.L2_MISS_LOADS"}.get(
        cpu, "LONGEST_LAT_CACHE.MISS" if cpu in ("haswell", "skylake") else
        "MEM_LOAD_RETIRED.L3_MISS")
    for e in get_model(cpu).events:
        if e.name == name:
            return e.event | e.umask << 8
    return 0x0404


def setup(cpu="silvermont", design="patch", ds_offset=0, buf_offset=0, buf_pages=4,
          period=10007):
    """Build host, VM and guest, allocate a user page, then run ``manual_pebs``.

    ``manual_pebs`` programs PMC0 with the running example's precise load
    event for ``cpu`` at ``period``.
    pebslab only. Returns ``(host, vm, guest, st, user_gva)`` where ``st``
    is the :class:`pebslab.scenarios.ManualPebs` state. Raises ValueError if
    the design exposes no PEBS MSRs on this CPU (e.g. 'patch' on 'haswell').
    """
    import pebslab as pl   # late import: the package never imports viz
    _check_choice("cpu", cpu, tuple(MODELS))
    _check_choice("design", design, DESIGN_NAMES)
    ds_offset = _check_int("ds_offset", ds_offset, 0, PAGE - 8)
    buf_offset = _check_int("buf_offset", buf_offset, 0, PAGE - 8)
    buf_pages = _check_int("buf_pages", buf_pages, 1, 16)
    period = _check_int("period", period, 2, 2**31 - 1)
    if ds_offset % 8 or buf_offset % 8:
        raise ValueError(f"ds_offset and buf_offset must be multiples of 8; got "
                         f"{ds_offset} and {buf_offset}")
    host = pl.Host(cpu=cpu, frames=MEMORY_PAGES + 64, seed=0)
    vm = host.create_vm(design=design, memory_pages=MEMORY_PAGES)
    guest = pl.GuestKernel(vm)
    user = guest.mm.alloc(1, user=True)
    try:
        st = scenarios.manual_pebs(guest, ds_offset=ds_offset, buf_offset=buf_offset,
                                   buf_pages=buf_pages, event=_precise_load(cpu),
                                   period=period)
    except GuestFault as e:
        raise ValueError(f"design {design!r} exposes no PEBS MSRs on {cpu!r} ({e}); use "
                         f"cpu='silvermont' with 'patch', 'review' or 'fixed', or "
                         f"cpu='icelake' with 'icelake'") from None
    return host, vm, guest, st, user


def _swapped_entry(host, vm, entry_gpa: int):
    """The 8-byte entry at entry_gpa read from the host's swap store, or None."""
    data = host.mm.swap.get((vm.id, entry_gpa >> 12))
    if data is None:
        return None
    off = entry_gpa & (PAGE - 1)
    return int.from_bytes(data[off:off + 8], "little")


# -----------------------------------------------------------------------------
# the page walk
# -----------------------------------------------------------------------------

def walk_view(which="ds", offset=0, cpu="silvermont", design="patch", reclaim=0) -> dict:
    """The CPU's 2-D walk of one address of the PEBS set-up, level by level.

    pebslab only. ``which`` picks the base address: 'ds' (the DS area),
    'buffer' (pebs_buffer_base), 'user' (a user page the guest mapped),
    'unmapped' (the page after the buffer, which nothing maps); ``offset``
    (0..16383) is added to it. Returns a dict with gva, cr3, ``rows`` (from
    :func:`pebslab.hw.mmu.describe_walk` on host memory and the VM's EPT,
    i.e. what the hardware sees), ``ok``, ``result`` (one line) and, for a
    table page that reclaim swapped out, ``rows[i]['swapped_entry']``: the
    entry as the guest wrote it, now sitting in host swap.
    """
    _check_choice("which", which, WHICH)
    offset = _check_int("offset", offset, 0, 4 * PAGE - 1)
    reclaim = _check_int("reclaim", reclaim, 0, MEMORY_PAGES)
    host, vm, guest, st, user = setup(cpu, design)
    if reclaim:
        host.reclaim(reclaim)
    base = {"ds": st.ds, "buffer": st.buffer, "user": user,
            "unmapped": st.buf_region[0] + st.buf_region[1] * PAGE}[which]
    gva = base + offset
    cr3 = guest.mm.cr3
    rows = mmu.describe_walk(host.mm.mem, vm.ept, cr3, gva, write=True)
    for r in rows:
        if "fault" in r and r["fault"].startswith("EPT") and r["level"] != "page":
            r["swapped_entry"] = _swapped_entry(host, vm, r["entry_gpa"])
    last = rows[-1]
    if "fault" not in last and last["level"] == "page":
        result = f"GVA {gva:#x} -> GPA {last['gpa']:#x} -> HPA {last['hpa']:#x}"
        ok = True
    else:
        bad = next(r for r in rows if "fault" in r)
        result = f"GVA {gva:#x}: {bad['fault']} (at {bad['level']})"
        ok = False
    return {"which": which, "offset": offset, "gva": gva, "cr3": cr3, "rows": rows,
            "ok": ok, "result": result, "cpu": cpu, "design": design, "reclaim": reclaim}


def _box(ax, x, y, w, h, face, edge="black", ls="-", lw=1.2):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.06",
                                facecolor=face, edgecolor=edge, linestyle=ls, linewidth=lw))


def _arrow(ax, x0, y0, x1, y1, color="black", ls="-", lw=1.3):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12,
                                 color=color, linestyle=ls, linewidth=lw,
                                 shrinkA=0, shrinkB=0))


def page_walk(which="ds", offset=0, cpu="silvermont", design="patch", reclaim=0) -> Figure:
    """Draw the 2-D walk of one address: GVA bit fields, then PML4 -> PDPT -> PD -> PT -> page.

    pebslab only; the picture of :func:`walk_view` (same parameters). Each
    table box shows where the table page is (GPA -> HPA through EPT), the
    index used, the 8-byte entry, its flags and the next GPA. A failing
    level is red; levels the walk never reached are dashed.
    """
    v = walk_view(which, offset, cpu, design, reclaim)
    gva = v["gva"]
    fig = Figure(figsize=(13, 5.3))
    ax = fig.add_axes([0.01, 0.02, 0.98, 0.86])
    ax.set_xlim(0, 13)
    ax.set_ylim(0.2, 6.2)
    ax.axis("off")
    fig.suptitle(f"The walk of GVA {gva:#018x} ({v['which']} + {v['offset']:#x}) - "
                 f"{cpu}, design '{design}', {reclaim} page(s) reclaimed", fontsize=12)
    ax.text(6.5, 5.95, v["result"], ha="center", va="center", fontsize=10.5,
            color="#1a7f1a" if v["ok"] else "#b00000", fontweight="bold")

    # --- the GVA's bit fields --------------------------------------------------------
    fields = [("63:48", "sign ext.", (gva >> 48) & 0xFFFF, "#bbbbbb", "{:#06x}"),
              ("47:39", "PML4", mmu.pt_index(gva, 4), _LEVEL_COLORS["PML4"], "{}"),
              ("38:30", "PDPT", mmu.pt_index(gva, 3), _LEVEL_COLORS["PDPT"], "{}"),
              ("29:21", "PD", mmu.pt_index(gva, 2), _LEVEL_COLORS["PD"], "{}"),
              ("20:12", "PT", mmu.pt_index(gva, 1), _LEVEL_COLORS["PT"], "{}"),
              ("11:0", "offset", gva & 0xFFF, _LEVEL_COLORS["offset"], "{:#05x}")]
    widths = [1.6, 1.8, 1.8, 1.8, 1.8, 2.2]
    x = 1.0
    for (bits, name, val, color, fmt), w in zip(fields, widths):
        ax.add_patch(Rectangle((x, 4.75), w, 0.75, facecolor=color, alpha=0.35,
                               edgecolor="black"))
        ax.text(x + w / 2, 5.3, f"bits {bits}", ha="center", va="center", fontsize=8.5)
        ax.text(x + w / 2, 4.95, f"{name} = {fmt.format(val)}", ha="center", va="center",
                fontsize=9.5, fontweight="bold")
        x += w
    ax.text(0.95, 5.12, "GVA", ha="right", va="center", fontsize=10, fontweight="bold")

    # --- the table boxes ---------------------------------------------------------------
    levels = ["PML4", "PDPT", "PD", "PT", "page"]
    by_level = {r["level"]: r for r in v["rows"]}
    bx, bw, bh, by = 0.15, 2.35, 3.3, 0.35
    ax.text(bx, by + bh + 0.2, f"CR3 = GPA {v['cr3']:#x}", fontsize=9, va="bottom")
    reached_fault = False
    for i, level in enumerate(levels):
        x0 = bx + i * (bw + 0.25)
        r = by_level.get(level)
        color = _LEVEL_COLORS.get(level, _LEVEL_COLORS["offset"])
        if r is None or reached_fault:
            _box(ax, x0, by, bw, bh, "#fafafa", edge="#999999", ls="--")
            ax.text(x0 + bw / 2, by + bh / 2, f"{level}\n\nnot reached", ha="center",
                    va="center", fontsize=9, color="#777777")
            continue
        fault = r.get("fault")
        face = "#fde0e0" if fault else ("#eef5ee" if level == "page" else "#ffffff")
        _box(ax, x0, by, bw, bh, face, edge="#b00000" if fault else color, lw=2)
        lines = []
        if level == "page":
            lines.append((f"4 KiB page" if r["size"] == PAGE else f"{r['size'] >> 10} KiB page",
                          "bold"))
            lines.append((f"GPA {r['gpa']:#x}", None))
            lines.append((f"HPA {r['hpa']:#x}" if r["hpa"] is not None else "HPA: none", None))
            lines.append((f"host frame {r['hpa'] >> 12}" if r["hpa"] is not None else "", None))
        else:
            tgpa = r["entry_gpa"] & ~(PAGE - 1)
            lines.append((f"{level} table", "bold"))
            lines.append((f"at GPA {tgpa:#x}", None))
            lines.append((f"-> HPA {r['entry_hpa'] & ~(PAGE - 1):#x}"
                          if r["entry_hpa"] is not None else "-> HPA: not in EPT", None))
            lines.append((f"index {r['index']} (+{8 * r['index']:#x})", "idx"))
            if r["entry"] is not None:
                lines.append((f"entry {r['entry']:#018x}", "mono"))
                lines.append((f"flags: {r['flags'] or '-'}", None))
                if r["next"] is not None:
                    lines.append((f"next: GPA {r['next']:#x}", None))
            elif r.get("swapped_entry") is not None:
                se = r["swapped_entry"]
                lines.append(("in host swap, the guest's", None))
                lines.append((f"entry {se:#018x}", "mono"))
                lines.append((f"flags: {mmu.pte_flags(se) or '-'}", None))
        if fault:
            lines.append((textwrap.fill(fault, 34), "fault"))
        yy = by + bh - 0.3
        for text, style in lines:
            kw = {"fontsize": 8.6}
            if style == "bold":
                kw.update(fontweight="bold", fontsize=10, color=color)
            elif style == "idx":
                kw.update(color=color, fontweight="bold")
            elif style == "mono":
                kw.update(family="monospace", fontsize=8)
            elif style == "fault":
                kw.update(color="#b00000", fontsize=8, wrap=True)
            ax.text(x0 + 0.1, yy, text, va="top", ha="left", **kw)
            yy -= 0.36
        if i < len(levels) - 1:
            _arrow(ax, x0 + bw, by + bh / 2, x0 + bw + 0.25, by + bh / 2)
        if fault:
            reached_fault = True
    return fig


# -----------------------------------------------------------------------------
# three address spaces side by side
# -----------------------------------------------------------------------------

def address_map(ds_offset=0, buf_offset=0, buf_pages=4, design="patch", reclaim=0,
                cpu="silvermont") -> dict:
    """Where the DS area, the buffer and their page tables are in GVA, GPA and host frames.

    pebslab only. After :func:`setup` and ``host.reclaim(reclaim)``, returns
    a dict with ``pages`` (one row per guest virtual page of the DS
    allocation and of the buffer allocation: label, gva, gfn, hfn (-1 if EPT no longer maps it),
    hfn_before (before reclaim), pinned, swapped), ``tables`` (the guest
    page-table pages the walks of those pages read: label, gfn, hfn, pinned,
    swapped), ``pinned`` (the host frames KVM pins), ``ds_walk`` (one line:
    what the CPU's walk of the DS address finds now) and the DS fields.
    The GVA -> GPA mapping is read before reclaim; reclaim changes only EPT.
    """
    reclaim = _check_int("reclaim", reclaim, 0, MEMORY_PAGES)
    host, vm, guest, st, _user = setup(cpu, design, ds_offset, buf_offset, buf_pages)
    cr3 = guest.mm.cr3
    # Read the guest's view while everything is resident: reclaim changes EPT
    # only, never the bytes of the guest's page tables, so this stays true.
    walked = []
    for (start, n), name in ((st.ds_region, "DS"), (st.buf_region, "buf")):
        for i in range(n):
            gva = start + i * PAGE
            label = name if n == 1 else f"{name} {i}"
            walked.append((label, gva, guest.mm.translate(gva) >> 12,
                           vm.table_gfns(cr3, gva)))
    before = {gfn: host.mm.hfn_of(vm.id, gfn) for gfn in range(vm.memory_pages)}
    if reclaim:
        host.reclaim(reclaim)
    pinned = list(vm.kvm.pmu.pinned_pages)

    def frame(gfn):
        hfn = host.mm.hfn_of(vm.id, gfn)
        return {"gfn": gfn, "hfn": hfn, "hfn_before": before[gfn],
                "pinned": hfn >= 0 and host.mm.ref(hfn) > 1,
                "swapped": host.mm.is_swapped(vm.id, gfn)}

    pages = [{"label": label, "gva": gva, **frame(gfn)} for label, gva, gfn, _ in walked]
    names = ("PML4", "PDPT", "PD", "PT")
    tables, seen = [], set()
    for *_, tgfns in walked:
        for depth, gfn in enumerate(tgfns):
            if gfn not in seen:
                seen.add(gfn)
                tables.append({"label": f"{names[depth]} table", **frame(gfn)})
    walk = mmu.describe_walk(host.mm.mem, vm.ept, cr3, st.ds, write=True)
    bad = next((r for r in walk if "fault" in r), None)
    # An EPT violation is fatal to the assist only on a CPU without EPT-friendly
    # PEBS (the model's ASSUMPTION for Silvermont); with it (Ice Lake server on,
    # FACTS c.2) it is an ordinary VM exit: KVM maps the page back, the record
    # is written (notebook 05 runs it).
    ept_friendly = bad is not None and get_model(cpu).pebs_ept
    # `fixed` (reload_pinned_ept) maps its pinned pages again before the next VM
    # entry, so a hole that only pinned pages left never reaches the assist.
    walked_rows = pages + tables
    reloaded = (bad is not None and not ept_friendly
                and getattr(vm.design, "reload_pinned_ept", False)
                and all(not r["swapped"] for r in walked_rows))
    recoverable = ept_friendly or reloaded
    ds_walk = (f"the CPU's walk of DS_AREA {st.ds:#x}: "
               + ("reaches the DS page" if bad is None
                  else f"{bad['fault']} (at {bad['level']})"
                  + ("\n  -> recovered: on this CPU an EPT violation of the PEBS assist is an "
                     "ordinary VM exit (EPT-friendly PEBS); KVM maps the page back and the "
                     "record is written" if ept_friendly else
                     "\n  -> mended before the next VM entry: every page here is pinned, and "
                     "this design re-establishes the EPT entries of pinned pages "
                     "(reload_pinned_ept)" if reloaded else
                     "\n  -> fatal for the PEBS assist on this CPU (the model's assumption "
                     "for pre-Ice-Lake PEBS): record lost, guest stopped")))
    return {"pages": pages, "tables": tables, "pinned": pinned, "ds": st.ds,
            "buffer": st.buffer, "absolute_maximum": st.absolute_maximum,
            "ds_walk": ds_walk, "ds_walk_ok": bad is None,
            "ds_walk_recoverable": bool(recoverable), "cpu": cpu, "design": design,
            "reclaim": reclaim}


def address_spaces(ds_offset=0, buf_offset=0, buf_pages=4, design="patch", reclaim=0,
                   cpu="silvermont") -> Figure:
    """Draw the DS and buffer pages as GVA pages, guest frames and host frames, with lines.

    pebslab only; the picture of :func:`address_map` (same parameters).
    Left: guest virtual pages; middle: guest physical frames (the data pages,
    then the page-table pages); right: host frames. Blue lines are the
    guest's page tables, orange lines EPT; a red dashed line goes to host
    swap where reclaim removed the EPT entry. Green host frames are pinned.
    """
    d = address_map(ds_offset, buf_offset, buf_pages, design, reclaim, cpu)
    pages, tables = d["pages"], d["tables"]
    y_tables = len(pages) + 0.9                 # first row of the page-table block
    y_end = y_tables + len(tables)              # below the last row
    height = 0.46 * (y_end + 3.2) + 0.9
    fig = Figure(figsize=(11, height))
    ax = fig.add_axes([0.01, 0.01, 0.98, 1 - 0.01 - 0.75 / height])
    ax.set_xlim(-0.2, 10.6)
    ax.set_ylim(y_end + 2.0, -1.1)              # y grows downwards
    ax.axis("off")
    n_swapped = sum(r["swapped"] for r in pages + tables)
    fig.suptitle(f"DS area and PEBS buffer in three address spaces\n{d['cpu']}, design "
                 f"'{d['design']}', {d['reclaim']} guest page(s) reclaimed: "
                 f"{len(d['pinned'])} host frames pinned, {n_swapped} of the pages shown "
                 f"swapped out", fontsize=11)
    cols = {"gva": 0.0, "gpa": 4.0, "hpa": 7.9}
    w = {"gva": 2.6, "gpa": 2.3, "hpa": 2.5}
    bh = 0.72
    for key, title in (("gva", "guest virtual pages (GVA)"),
                       ("gpa", "guest physical frames (GPA)"),
                       ("hpa", "host frames (HPA)")):
        ax.text(cols[key] + w[key] / 2, -0.75, title, ha="center", va="center",
                fontsize=10, fontweight="bold")
    ax.text((cols["gva"] + w["gva"] + cols["gpa"]) / 2, -0.2, "guest page tables",
            ha="center", fontsize=8.5, color="#1f4e9c")
    ax.text((cols["gpa"] + w["gpa"] + cols["hpa"]) / 2, -0.2, "EPT", ha="center",
            fontsize=8.5, color="#c56a00")

    def host_box(y, r):
        mid = y + bh / 2
        if r["hfn"] >= 0:
            _box(ax, cols["hpa"], y, w["hpa"], bh, _PINNED if r["pinned"] else _RESIDENT)
            tag = " pinned" if r["pinned"] else ""
            moved = (f" (was {r['hfn_before']})" if r["hfn_before"] not in (r["hfn"], -1)
                     else "")
            ax.text(cols["hpa"] + 0.1, mid, f"frame {r['hfn']}{tag}{moved}", va="center",
                    fontsize=8.5)
            _arrow(ax, cols["gpa"] + w["gpa"], mid, cols["hpa"], mid, color="#c56a00")
        else:
            _box(ax, cols["hpa"], y, w["hpa"], bh, _SWAPPED, edge="#b00000", ls="--")
            ax.text(cols["hpa"] + 0.1, mid, f"swapped out (was frame {r['hfn_before']})"
                    if r["swapped"] else "no frame", va="center", fontsize=8.2,
                    color="#8b0000")
            _arrow(ax, cols["gpa"] + w["gpa"], mid, cols["hpa"], mid, color="#b00000",
                   ls="--")

    for y, r in enumerate(pages):
        face = "#dbe8f7" if r["label"].startswith("DS") else "#fff3d6"
        _box(ax, cols["gva"], y, w["gva"], bh, face)
        ax.text(cols["gva"] + 0.08, y + bh / 2, f"{r['label']:<6} {r['gva']:#x}", va="center",
                fontsize=8, family="monospace")
        _box(ax, cols["gpa"], y, w["gpa"], bh, face)
        ax.text(cols["gpa"] + 0.1, y + bh / 2, f"GPA {r['gfn'] << 12:#x}", va="center",
                fontsize=8.5, family="monospace")
        _arrow(ax, cols["gva"] + w["gva"], y + bh / 2, cols["gpa"], y + bh / 2,
               color="#1f4e9c")
        host_box(y, r)
    ax.text(cols["gva"], y_tables + bh / 2,
            "the page-table pages\nthe CPU reads to\ntranslate these GVAs\n(guest memory, "
            "no GVA here)", ha="left", va="top", fontsize=8.3, style="italic")
    for j, r in enumerate(tables):
        y = y_tables + j
        _box(ax, cols["gpa"], y, w["gpa"], bh, _TABLE)
        ax.text(cols["gpa"] + 0.1, y + bh / 2, f"{r['label']}  GPA {r['gfn'] << 12:#x}",
                va="center", fontsize=8.3)
        host_box(y, r)
    # legend and the walk's verdict, under everything
    ly = y_end + 0.35
    for x, face, edge, ls, text in ((0.0, _PINNED, "black", "-", "pinned host frame"),
                                    (2.8, _RESIDENT, "black", "-", "resident, not pinned"),
                                    (5.6, _SWAPPED, "#b00000", "--",
                                     "EPT entry gone (page in host swap)")):
        ax.add_patch(Rectangle((x, ly), 0.35, 0.4, facecolor=face, edgecolor=edge,
                               linestyle=ls))
        ax.text(x + 0.45, ly + 0.2, text, va="center", fontsize=8.5)
    ax.text(0.0, ly + 1.3, d["ds_walk"], fontsize=9, va="center",
            color="#1a7f1a" if d["ds_walk_ok"] else
            ("#0072B2" if d["ds_walk_recoverable"] else "#b00000"))
    return fig


#: Every explorer of this module at its defaults (bench/bench_explorers.py times them).
EXPLORERS = {
    "page_walk": (page_walk, {"which": "ds", "offset": 0, "cpu": "silvermont",
                              "design": "patch", "reclaim": 0}),
    "address_spaces": (address_spaces, {"ds_offset": 0, "buf_offset": 0, "buf_pages": 4,
                                        "design": "patch", "reclaim": 0,
                                        "cpu": "silvermont"}),
}
