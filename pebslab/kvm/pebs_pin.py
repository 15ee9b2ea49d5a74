"""Pinning the guest's DS area and PEBS buffer in host memory.

Models the four functions the 2014 patch adds to arch/x86/kvm/pmu.c, in the
patch's order: kvm_pmu_release_pin, get_guest_page, pin_and_copy,
kvm_pmu_pebs_pin. The CPU cannot take an EPT fault while it writes a PEBS
record, so KVM takes a reference (get_page via gfn_to_pfn) on every host
frame the hardware may write. That keeps the *frames*, not their EPT
entries: reclaim and the other host zappers still unmap the pages and the
MMU notifier zaps the entries (FACTS g.1; kvm/mmu_notifier.py).

``kvm_pmu_pebs_pin`` reproduces the posted code exactly, limitations
included; ``kvm_pmu_pebs_pin_fixed`` is the `fixed` design's version. The
page ranges both compute are exposed as pure functions
(:func:`patch_pin_plan`, :func:`needed_pages`) so a notebook can compare
them without a VM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .._check import check_int
from ..hw.pebs import DS_SIZE_PATCH, PAGE_SIZE



@dataclass(frozen=True)
class PinCosts:
    """Cycles charged to the guest's clock for pinning and for keeping pinned pages mapped.

    pebslab only, in the style of :class:`pebslab.kvm.vm.Costs` (kept apart
    so the VM's Costs table stays as the timing notebook prints it).
    ASSUMPTIONS, order-of-magnitude figures for a 2014-era core; FACTS has
    no figure for any of them: get_page()/put_page() are one atomic on the
    page count (~30); KVM's software walk of the guest page tables
    (walk_mmu->gva_to_gpa: four kvm_read_guest() of 8 bytes) ~600;
    gfn_to_pfn() on a resident page (memslot lookup, get_user_pages_fast)
    ~400; the MMU notifier zapping a range and flushing (kvm_unmap_hva +
    kvm_flush_remote_tlbs) ~1,000; re-establishing one EPT entry of a
    pinned page before entry (the `fixed` reload) ~500.
    """

    get_page: int = 30
    put_page: int = 30
    guest_walk: int = 600
    gfn_to_pfn: int = 400
    mmu_notifier_zap: int = 1000
    ept_reload: int = 500


def _costs(vcpu) -> PinCosts:
    return vcpu.vm.pin_costs


def _settle(vcpu, bill: list[int] | None, cycles: int) -> None:
    """Add ``cycles`` of pinning work to ``bill``, or straight to the vCPU's debt."""
    if bill is None:
        vcpu.pin_debt += cycles
    else:
        bill.append(cycles)


def settle_pin_debt(vcpu) -> int:
    """Charge the pinning work done in this exit to the guest's clock; return the cycles.

    pebslab only. The pin functions run inside an exit handler (a WRMSR,
    page tracking, a reset); their cycles are owed (``vcpu.pin_debt``) and
    paid once the handler is done, so every trace row of one handler shares
    the exit's timestamp. Called by the vCPU after an MSR write and before
    every VM entry.
    """
    debt = vcpu.pin_debt
    if debt:
        vcpu.pin_debt = 0
        vcpu.charge(debt)
    return debt


PAGE_MASK = ~(PAGE_SIZE - 1)
MAX_PINNED_PAGES = 17          # "64k buffer + ds"
UNMAPPED_GVA = -1
U64_MAX = (1 << 64) - 1
#: needed_pages() refuses ranges larger than this (1 GiB of 4 KiB pages)
MAX_NEEDED_PAGES = 1 << 18


def kvm_pmu_release_pin(vcpu) -> None:
    """Put every pinned page and forget them (kvm_pmu_release_pin)."""
    pmu = vcpu.pmu
    cost = _costs(vcpu).put_page
    for hfn in pmu.pinned_pages:
        vcpu.host_mm.put_page(hfn)
        vcpu.trace("UNPIN", frame=hfn, cost=cost, info=f"put_page(frame {hfn})")
    vcpu.pin_debt += cost * len(pmu.pinned_pages)
    pmu.pinned_pages = []
    pmu.pin_view = {}
    vcpu.untrack_all()


def get_guest_page(vcpu, addr: int, bill: list[int] | None = None) -> int | None:
    """Translate a guest virtual address and take a reference on its host frame.

    Models get_guest_page(): walk_mmu->gva_to_gpa with a write access, then
    gfn_to_pfn (which faults the page in and takes a reference). Returns the
    host frame number, or None (the patch's printk_once and NULL). Costs
    ``PinCosts.guest_walk``, then gfn_to_pfn + get_page (charged now, or
    added to ``bill``).
    """
    costs = _costs(vcpu)
    _settle(vcpu, bill, costs.guest_walk)
    gpa = vcpu.gva_to_gpa(addr, write=True)
    if gpa == UNMAPPED_GVA:
        vcpu.trace("NOTE", gva=addr, info=f"Cannot translate guest page {addr:#x}")
        return None
    hfn = vcpu.gfn_to_pfn(gpa >> 12)
    if hfn is None:
        vcpu.trace("NOTE", gpa=gpa, info=f"gfn_to_pfn failed for {gpa:#x}")
        return None
    cost = costs.gfn_to_pfn + costs.get_page
    _settle(vcpu, bill, cost)
    vcpu.trace("PIN", gva=addr, gpa=gpa, hpa=hfn << 12, frame=hfn,
               cost=costs.guest_walk + cost, info=f"get_page(frame {hfn}) for gva {addr:#x}")
    return hfn


def pin_and_copy(vcpu, addr: int, length: int,
                 bill: list[int] | None = None) -> tuple[int | None, bytes]:
    """Pin the page holding ``addr`` and copy ``length`` bytes from it (pin_and_copy).

    Returns (host frame or None, bytes). The copy stays inside the page.
    """
    offset = addr & ~PAGE_MASK
    hfn = get_guest_page(vcpu, addr, bill)
    if hfn is None:
        return None, b""
    data = vcpu.host_mm.read_phys(hfn * PAGE_SIZE + offset, length)
    return hfn, data


def _unpack_ds(raw: bytes) -> dict[str, int]:
    raw = raw.ljust(DS_SIZE_PATCH, b"\0")
    vals = struct.unpack("<12Q", raw[:DS_SIZE_PATCH])
    names = ("bts_buffer_base", "bts_index", "bts_absolute_maximum",
             "bts_interrupt_threshold", "pebs_buffer_base", "pebs_index",
             "pebs_absolute_maximum", "pebs_interrupt_threshold")
    out = dict(zip(names, vals[:8]))
    out["pebs_event_reset"] = vals[8:12]
    return out


def kvm_pmu_pebs_pin(vcpu) -> list[int]:
    """Pin the DS area and the PEBS buffer while PEBS is enabled (the patch's version).

    Models kvm_pmu_pebs_pin() of the 2014 patch, step by step:

    1. copy the 96-byte ``struct debug_store`` of the patch from the guest
       (two pins if it straddles a page boundary; a failure on the first page
       pins nothing, on the second keeps the first);
    2. pin buffer pages starting at ``pebs_buffer_base`` in PAGE_SIZE steps
       while the address is below ``pebs_absolute_maximum`` and fewer than
       MAX_PINNED_PAGES (17) pages are pinned in all; a failure stops there.

    What it leaves out (by construction): the last page of a buffer whose
    base is not page-aligned; pages past the 17th; anything the guest maps
    later. Returns the host frames pinned, in order. The work (a page walk,
    gfn_to_pfn and get_page per page, :class:`PinCosts`) is charged to the
    guest's clock when the exit handler is done (:func:`settle_pin_debt`).
    """
    bill: list[int] = []
    try:
        return _kvm_pmu_pebs_pin(vcpu, bill)
    finally:
        vcpu.pin_debt += sum(bill)


def _kvm_pmu_pebs_pin(vcpu, bill: list[int]) -> list[int]:
    pmu = vcpu.pmu
    ds_area = pmu.ds_area
    offset = ds_area & ~PAGE_MASK
    length = min(PAGE_SIZE - offset, DS_SIZE_PATCH)
    hfn, raw = pin_and_copy(vcpu, ds_area, length, bill)
    if hfn is None:
        vcpu.trace("NOTE", gva=ds_area, info=f"Cannot pin ds area {ds_area:#x}")
        return list(pmu.pinned_pages)
    pmu.pinned_pages.append(hfn)
    if length < DS_SIZE_PATCH:
        hfn2, raw2 = pin_and_copy(vcpu, ds_area + length, DS_SIZE_PATCH - length, bill)
        if hfn2 is None:
            return list(pmu.pinned_pages)
        pmu.pinned_pages.append(hfn2)
        raw = raw + raw2
    ds = _unpack_ds(raw)
    pmu.pin_view = {"ds": ds}
    addr = ds["pebs_buffer_base"]
    limit = vcpu.design.pin_limit          # MAX_PINNED_PAGES = 17 in the patch
    while addr < ds["pebs_absolute_maximum"] and len(pmu.pinned_pages) < limit:
        page = get_guest_page(vcpu, addr, bill)
        if page is None:
            vcpu.trace("NOTE", gva=addr, info=(
                f"Cannot pin PEBS buffer {addr:#x} ({ds['pebs_buffer_base']:#x}-"
                f"{ds['pebs_absolute_maximum']:#x})"))
            break
        pmu.pinned_pages.append(page)
        addr += PAGE_SIZE
    return list(pmu.pinned_pages)


# -----------------------------------------------------------------------------
# page ranges as pure functions
# -----------------------------------------------------------------------------

def patch_pin_plan(ds_area: int, buffer_base: int, absolute_maximum: int,
                   limit: int = MAX_PINNED_PAGES) -> list[int]:
    """The guest virtual pages (page-aligned GVAs) the patch pins, in order.

    pebslab only: the address arithmetic of kvm_pmu_pebs_pin without the
    memory accesses, for notebooks and tests.
    """
    for name, v in (("ds_area", ds_area), ("buffer_base", buffer_base),
                    ("absolute_maximum", absolute_maximum)):
        check_int(name, v, 0, U64_MAX, as_hex=True)
    check_int("limit", limit, 1)
    pages = [ds_area & PAGE_MASK]
    offset = ds_area & ~PAGE_MASK
    if PAGE_SIZE - offset < DS_SIZE_PATCH:
        pages.append((ds_area & PAGE_MASK) + PAGE_SIZE)
    addr = buffer_base
    while addr < absolute_maximum and len(pages) < limit:
        pages.append(addr & PAGE_MASK)
        addr += PAGE_SIZE
    return pages


def needed_pages(ds_area: int, buffer_base: int, absolute_maximum: int,
                 ds_size: int = DS_SIZE_PATCH, limit: int | None = None) -> list[int]:
    """Every guest virtual page the CPU may touch: the DS area and [base, absolute_maximum).

    pebslab only: what a correct pin must cover. The values come from guest
    memory, so the count is computed first: with ``limit`` set, more pages
    than that raise ValueError instead of building a huge list (a guest must
    not be able to make one WRMSR take the host forever).
    """
    for name, v in (("ds_area", ds_area), ("buffer_base", buffer_base),
                    ("absolute_maximum", absolute_maximum), ("ds_size", ds_size)):
        check_int(name, v, 0, U64_MAX, as_hex=True)
    first_ds = ds_area & PAGE_MASK
    last_ds = (ds_area + max(ds_size, 1) - 1) & PAGE_MASK
    n = (last_ds - first_ds) // PAGE_SIZE + 1
    if absolute_maximum > buffer_base:
        n += (((absolute_maximum - 1) & PAGE_MASK) - (buffer_base & PAGE_MASK)) // PAGE_SIZE + 1
    cap = MAX_NEEDED_PAGES if limit is None else limit
    if n > cap:
        raise ValueError(f"absolute_maximum {absolute_maximum:#x} makes the DS area and buffer "
                         f"span {n} pages; at most {cap} allowed")
    pages: list[int] = list(range(first_ds, last_ds + PAGE_SIZE, PAGE_SIZE))
    seen = set(pages)
    if absolute_maximum > buffer_base:
        first = buffer_base & PAGE_MASK
        last = (absolute_maximum - 1) & PAGE_MASK
        for p in range(first, last + PAGE_SIZE, PAGE_SIZE):
            if p not in seen:
                seen.add(p)
                pages.append(p)
    return pages


def kvm_pmu_pebs_pin_fixed(vcpu) -> bool:
    """Pin every page in :func:`needed_pages`, or nothing (the `fixed` design).

    pebslab only (a v2 the patch never had). Refuses (returns False, pins
    nothing) if a page cannot be pinned or more than ``design.pin_limit``
    pages would be needed. Also records which guest page-table pages map
    those addresses so a later remap is noticed (KVM page tracking,
    kvm_slot_page_track_add_page in arch/x86/kvm/mmu/page_track.c).
    """
    bill: list[int] = []
    try:
        return _kvm_pmu_pebs_pin_fixed(vcpu, bill)
    finally:
        vcpu.pin_debt += sum(bill)


def _kvm_pmu_pebs_pin_fixed(vcpu, bill: list[int]) -> bool:
    pmu = vcpu.pmu
    ds_area = pmu.ds_area
    raw = b""
    try:
        raw = vcpu.read_guest_virt(ds_area, DS_SIZE_PATCH)
    except Exception:  # noqa: BLE001 - any translation failure means "cannot pin"
        vcpu.trace("NOTE", gva=ds_area, info=f"Cannot read ds area {ds_area:#x}")
        return False
    ds = _unpack_ds(raw)
    try:
        pages = needed_pages(ds_area, ds["pebs_buffer_base"], ds["pebs_absolute_maximum"],
                             limit=vcpu.design.pin_limit)
    except ValueError as e:
        vcpu.trace("NOTE", info=f"PEBS buffer refused: {e}")
        return False
    pinned = []
    if vcpu.design.pin_page_tables:
        table_gfns = []
        for gva in pages:
            for gfn in vcpu.vm.table_gfns(vcpu.cr3, gva):
                if gfn not in table_gfns:
                    table_gfns.append(gfn)
        for gfn in table_gfns:
            hfn = vcpu.gfn_to_pfn(gfn)
            if hfn is None:
                continue
            cost = _costs(vcpu).gfn_to_pfn + _costs(vcpu).get_page
            bill.append(cost)
            vcpu.trace("PIN", gpa=gfn << 12, hpa=hfn << 12, frame=hfn, cost=cost,
                       info=f"get_page(frame {hfn}) for a guest page-table page")
            pinned.append(hfn)
    for gva in pages:
        hfn = get_guest_page(vcpu, gva, bill)
        if hfn is None:
            for h in pinned:
                vcpu.host_mm.put_page(h)
                bill.append(_costs(vcpu).put_page)
                vcpu.trace("UNPIN", frame=h, cost=_costs(vcpu).put_page,
                           info=f"put_page(frame {h}) (rollback)")
            return False
        pinned.append(hfn)
    pmu.pinned_pages = pinned
    pmu.pin_view = {"ds": ds, "pages": pages,
                    "gpas": [vcpu.gva_to_gpa(g, write=True) for g in pages]}
    for gva in pages:
        vcpu.track_page_tables(gva)
    return True


def pin_for_design(vcpu) -> bool:
    """Pin with the design's method; True if the CPU's writes are now safe."""
    if vcpu.design.pin == "patch":
        kvm_pmu_pebs_pin(vcpu)
        return bool(vcpu.pmu.pinned_pages)
    if vcpu.design.pin == "fixed":
        return kvm_pmu_pebs_pin_fixed(vcpu)
    return True
