"""The page-map explorer of notebook 06: which guest pages PEBS needs, which are pinned.

pebslab only. :func:`page_map` builds a small host with one VM under a
design, programs PEBS by hand (:func:`pebslab.scenarios.manual_pebs`) with
the DS area and the buffer at chosen offsets, lets the design's KVM pin
what it pins, applies ``pressure`` pages of host reclaim, and draws every
guest page the CPU's PEBS assist may touch: the DS area pages, the buffer
pages, and the guest page-table pages the assist walks through to reach
them. Each page is coloured pinned / not pinned / reclaimed.

Everything is recomputed from the real model on every call (nothing is
cached), so a widget can call it on every slider move.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .. import scenarios
from ..hw.errors import GuestFault
from ..guest.kernel import GuestKernel
from ..hw import pebs as PEBS
from ..kvm import pebs_pin
from ..system import Host

PAGE = 4096

#: designs the explorer offers (the ones that pin; `icelake` pins nothing)
DESIGNS = ("patch", "review", "fixed")

#: the small machine every call builds (fast to build; big enough for
#: 2 DS pages + 33 buffer pages + the page tables)
HOST_FRAMES = 1024
VM_PAGES = 256

PINNED = "pinned"
UNPINNED = "not pinned"
RECLAIMED = "reclaimed"
IDLE = "PEBS off"

COLORS = {PINNED: "#4c9a2a", UNPINNED: "#f0a030", RECLAIMED: "#d03030", IDLE: "#b0b0b0"}

LEVELS = ("PML4", "PDPT", "PD", "PT")

REGIONS = ("DS area", "PEBS buffer", "page tables")


@dataclass(frozen=True)
class PageRow:
    """One guest page the PEBS assist may touch, and what became of it."""

    region: str            # "DS area", "PEBS buffer" or "page tables"
    label: str             # "0", "1", ... within the region, or a table level
    gva: int | None        # page-aligned GVA (None for a page-table page)
    gpa: int               # guest physical address of the page
    frame: int             # host frame backing it before reclaim
    refcount: int          # that frame's reference count before reclaim
    state: str             # PINNED, UNPINNED, RECLAIMED or IDLE
    in_patch_plan: bool    # would the 2014 patch's loop pin it (ignoring the cap)?


@dataclass
class PageMap:
    """Everything :func:`page_map` draws, as data (tests and notebooks read it)."""

    design: str
    ds_offset: int
    buf_offset: int
    buf_pages: int
    pressure: int
    ds_area: int
    buffer_base: int
    absolute_maximum: int
    pebs_on: bool
    refused: str = ""                       # the #GP text if PEBS_ENABLE was refused
    reclaimed_total: int = 0                # guest pages host.reclaim took in all
    rows: list = field(default_factory=list)

    def of(self, region: str) -> list[PageRow]:
        return [r for r in self.rows if r.region == region]

    @property
    def data_rows(self) -> list[PageRow]:
        return [r for r in self.rows if r.region != "page tables"]

    @property
    def missing(self) -> list[PageRow]:
        """Pages the CPU may touch that are not pinned (reclaimed or not yet)."""
        if not self.pebs_on:
            return []
        return [r for r in self.rows if r.state in (UNPINNED, RECLAIMED)]

    def count(self, state: str, region: str | None = None) -> int:
        return sum(1 for r in self.rows if r.state == state
                   and (region is None or r.region == region))

    def summary(self) -> str:
        """A few lines of text: pages needed, pinned, missing, and what that means."""
        nds, nbuf, npt = (len(self.of(r)) for r in REGIONS)
        lines = [f"design={self.design}  DS at +{self.ds_offset:#x}, buffer at "
                 f"+{self.buf_offset:#x}, {self.buf_pages} buffer pages, pressure={self.pressure}",
                 f"needed: {nds + nbuf} data pages ({nds} DS + {nbuf} buffer) and {npt} "
                 f"page-table pages the assist walks"]
        if not self.pebs_on:
            lines.append(f"PEBS_ENABLE refused ({self.refused}): nothing pinned, PEBS stays "
                         f"off, the CPU writes nothing")
            return "\n".join(lines)
        pd = sum(1 for r in self.data_rows if r.state == PINNED)
        pt = self.count(PINNED, "page tables")
        lines.append(f"pinned: {pd} of {nds + nbuf} data pages, {pt} of {npt} page-table pages")
        miss = self.missing
        if miss:
            names = ", ".join(_name(r) for r in miss[:6]) + (" ..." if len(miss) > 6 else "")
            lines.append(f"not pinned: {len(miss)} ({names})")
        else:
            lines.append("not pinned: none")
        gone = [r for r in miss if r.state == RECLAIMED]
        if gone:
            # every assist walks the tables and reads the DS area; buffer pages in order
            first = min(gone, key=lambda r: (REGIONS[::-1].index(r.region), int(r.label)
                                             if r.label.isdigit() else 0))
            what = {"page tables": f"the very next PEBS assist walks the reclaimed {first.label} "
                                   f"page",
                    "DS area": f"the very next PEBS assist reads the reclaimed {_name(first)}",
                    }.get(first.region, f"the first record written to {_name(first)} faults")
            lines.append(f"reclaimed: {len(gone)} of them ({self.reclaimed_total} guest pages "
                         f"swapped out in all): {what}; an EPT violation the assist cannot "
                         f"handle crashes the guest")
        elif miss:
            lines.append(f"reclaimed: none of them yet ({self.reclaimed_total} other guest pages "
                         f"swapped out); safe only until reclaim picks one")
        else:
            lines.append(f"reclaimed: {self.reclaimed_total} other guest pages; every page the "
                         f"CPU may touch is pinned, so reclaim cannot hurt PEBS")
        return "\n".join(lines)


def _name(r: PageRow) -> str:
    if r.region == "page tables":
        return f"{r.label} page"
    if r.region == "DS area":
        return f"DS page {r.label}"
    return f"buffer page {r.label}"


def _check(name, value, lo, hi, step=1):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int in {lo}..{hi}; got {type(value).__name__} "
                        f"{value!r}")
    if not lo <= value <= hi or value % step:
        extra = f" in steps of {step}" if step > 1 else ""
        raise ValueError(f"{name} must be an int in {lo}..{hi}{extra}; got {value!r}")
    return value


def page_map_data(ds_offset: int = 0, buf_offset: int = 0, buf_pages: int = 16,
                  design: str = "patch", pressure: int = 0) -> PageMap:
    """Build the machine, program PEBS, pin, reclaim; return what happened to every page.

    pebslab only. ``ds_offset`` / ``buf_offset`` (0..4088, multiples of 8)
    place the DS area and the buffer base inside their first page;
    ``buf_pages`` (1..32) is the buffer size in pages; ``design`` is one of
    'patch', 'review', 'fixed'; ``pressure`` (0..2000) is how many guest
    pages ``host.reclaim`` is asked to swap out after PEBS is enabled.
    """
    _check("ds_offset", ds_offset, 0, PAGE - 8, 8)
    _check("buf_offset", buf_offset, 0, PAGE - 8, 8)
    _check("buf_pages", buf_pages, 1, 32)
    _check("pressure", pressure, 0, 2000)
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(map(repr, DESIGNS))}; "
                         f"got {design!r}")

    host = Host(frames=HOST_FRAMES, seed=0)
    vm = host.create_vm(design=design, memory_pages=VM_PAGES)
    guest = GuestKernel(vm)
    refused = ""
    try:
        scenarios.manual_pebs(guest, ds_offset=ds_offset, buf_offset=buf_offset,
                              buf_pages=buf_pages)
    except GuestFault as e:            # `fixed` refuses what it cannot pin
        refused = f"{e.vector}: {e.reason}" if e.reason else e.vector
    v = vm.vcpus[0]
    pmu = vm.kvm.pmu
    pebs_on = bool(pmu.pebs_enable)

    # the addresses, from the DS area the guest wrote (read as the patch does)
    ds_area = pmu.ds_area
    ds = PEBS.DebugStore.from_bytes(guest.read(ds_area, PEBS.DS_SIZE))
    base, absmax = ds.pebs_buffer_base, ds.pebs_absolute_maximum
    need = pebs_pin.needed_pages(ds_area, base, absmax)
    plan = set(pebs_pin.patch_pin_plan(ds_area, base, absmax, limit=1 << 20))
    ds_first = ds_area & ~(PAGE - 1)
    n_ds = (((ds_area + PEBS.DS_SIZE_PATCH - 1) & ~(PAGE - 1)) - ds_first) // PAGE + 1
    pinned = set(pmu.pinned_pages)

    # every translation happens before reclaim (a software walk faults pages back in)
    rows = []
    tables: dict[int, str] = {}
    for i, gva in enumerate(need):
        gpa = v.gva_to_gpa(gva, write=True)
        for level, gfn in enumerate(vm.table_gfns(v.cr3, gva)):
            tables.setdefault(gfn, LEVELS[level])
        region, label = ("DS area", str(i)) if i < n_ds else ("PEBS buffer", str(i - n_ds))
        rows.append((region, label, gva, gpa, gva in plan))
    rows += [("page tables", lvl, None, gfn << 12, False) for gfn, lvl in tables.items()]
    frames = [host.mm.hfn_of(vm.id, gpa >> 12) for _, _, _, gpa, _ in rows]
    refs = [host.mm.ref(f) for f in frames]

    reclaimed_total = len(host.reclaim(pressure)) if pressure else 0

    out = []
    for (region, label, gva, gpa, in_plan), frame, ref in zip(rows, frames, refs):
        if not pebs_on:
            state = IDLE
        elif frame in pinned:
            state = PINNED
        elif host.mm.hfn_of(vm.id, gpa >> 12) < 0:
            state = RECLAIMED
        else:
            state = UNPINNED
        out.append(PageRow(region, label, gva, gpa, frame, ref, state, in_plan))
    return PageMap(design=design, ds_offset=ds_offset, buf_offset=buf_offset,
                   buf_pages=buf_pages, pressure=pressure, ds_area=ds_area, buffer_base=base,
                   absolute_maximum=absmax, pebs_on=pebs_on, refused=refused,
                   reclaimed_total=reclaimed_total, rows=out)


def page_map(ds_offset: int = 0, buf_offset: int = 0, buf_pages: int = 16,
             design: str = "patch", pressure: int = 0) -> Figure:
    """Draw which guest pages PEBS needs and which are pinned, unpinned, reclaimed.

    pebslab only. Parameters as :func:`page_map_data`. One row of squares
    per region (DS area, PEBS buffer, the guest page-table pages the
    assist walks); each square is one 4 KiB guest page, coloured by its
    fate; a cross marks a data page the 2014 patch's loop does not reach
    even without its 17-page cap. The text summary is printed under the map.
    """
    pm = page_map_data(ds_offset, buf_offset, buf_pages, design, pressure)
    fig = Figure(figsize=(11, 4.2), layout="none")
    ax = fig.add_axes((0.11, 0.36, 0.87, 0.50))
    ncols = max(len(pm.of(r)) for r in REGIONS)
    width = max(ncols, 17)
    for y, region in zip((2, 1, 0), REGIONS):
        ax.text(-0.4, y + 0.4, region, ha="right", va="center", fontsize=10)
        for x, r in enumerate(pm.of(region)):
            ax.add_patch(Rectangle((x, y), 0.9, 0.8, facecolor=COLORS[r.state],
                                   edgecolor="black", linewidth=0.6))
            fs = 6.5 if len(r.label) > 2 else 8
            ax.text(x + 0.45, y + 0.4, r.label, ha="center", va="center", fontsize=fs,
                    color="white" if r.state in (PINNED, RECLAIMED) else "black")
            if region != "page tables" and not r.in_patch_plan:
                ax.plot([x + 0.05, x + 0.85], [y + 0.05, y + 0.75], color="black", lw=0.8)
                ax.plot([x + 0.05, x + 0.85], [y + 0.75, y + 0.05], color="black", lw=0.8)
    if pm.design in ("patch", "review") and len(pm.data_rows) > pebs_pin.MAX_PINNED_PAGES:
        # where the 17-page cap stops the patch (counted over DS + buffer pages)
        cap_x = pebs_pin.MAX_PINNED_PAGES - len(pm.of("DS area"))
        ax.plot([cap_x - 0.05, cap_x - 0.05], [0.9, 1.95], color="black", ls="--", lw=1)
        ax.text(cap_x, 1.97, "17-page cap", fontsize=8, va="bottom")
    ax.set_xlim(-0.2, width + 0.2)
    ax.set_ylim(-0.15, 3.05)
    ax.axis("off")
    ax.set_title(f"Guest pages the PEBS assist may touch ({pm.design} design, "
                 f"pressure {pm.pressure})", fontsize=11)
    handles = [Patch(facecolor=COLORS[s], edgecolor="black", label=s)
               for s in (PINNED, UNPINNED, RECLAIMED, IDLE)]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="xx",
                         label="outside the patch's loop"))
    fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.355))
    text = "\n".join(textwrap.fill(line, 128, subsequent_indent="    ")
                     for line in pm.summary().splitlines())
    fig.text(0.02, 0.02, text, fontsize=8, family="monospace", va="bottom")
    return fig


EXPLORERS = {
    "page_map": (page_map, {"ds_offset": 0, "buf_offset": 0, "buf_pages": 16,
                            "design": "patch", "pressure": 0}),
}
