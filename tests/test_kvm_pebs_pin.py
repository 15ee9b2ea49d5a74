"""kvm/pebs_pin.py: what the patch pins (DS area + buffer, 17 pages) and what `fixed` pins.

Expected values come from the patch text (shared seed): the 96-byte
struct debug_store copied with one pin per page it touches, buffer pages
from pebs_buffer_base in PAGE_SIZE steps while below pebs_absolute_maximum,
MAX_PINNED_PAGES = 17 ("64k buffer + ds").
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.hw import msr as M
from pebslab.kvm import pebs_pin
from kvm_support import HOT, HOT_IP, NEXT_IP, baseline, make  # noqa: F401  (tests/ is on sys.path)


# --------------------------------------------------------------------------- pinning

def test_patch_pins_ds_plus_16_buffer_pages_and_samples_are_exact():
    host, vm, guest = make("patch")
    st = S.manual_pebs(guest)
    pinned = vm.kvm.pmu.pinned_pages
    assert len(pinned) == 17
    assert all(host.mm.refcount[f] == 2 for f in pinned)
    vm.run(HOT, 2_000_000)
    assert st.samples, "PEBS produced no samples"
    assert set(st.sample_ips("real_ip")) == {HOT_IP}   # eventing IP: exact
    assert set(st.sample_ips("ip")) == {NEXT_IP}        # trap-like: one later
    frames = S.frames_written_by_pebs(vm)
    assert frames <= set(pinned)


def test_patch_misses_last_page_of_unaligned_buffer_fixed_does_not():
    for design, expect_all in (("patch", False), ("fixed", True)):
        host, vm, guest = make(design)
        st = S.manual_pebs(guest, buf_offset=2048)
        need = pebs_pin.needed_pages(st.ds, st.buffer, st.absolute_maximum)
        plan = pebs_pin.patch_pin_plan(st.ds, st.buffer, st.absolute_maximum)
        assert len(need) == 18 and len(plan) == 17
        assert set(need) - set(plan) == {(st.absolute_maximum - 1) & ~0xFFF}
        pinned = set(vm.kvm.pmu.pinned_pages)
        last_gpa = vm.vcpus[0].gva_to_gpa((st.absolute_maximum - 1) & ~0xFFF)
        last_frame = host.mm.hfn_of(vm.id, last_gpa >> 12)
        assert (last_frame in pinned) is expect_all


def test_ds_area_straddling_two_pages_is_pinned_twice():
    host, vm, guest = make("patch")
    st = S.manual_pebs(guest, ds_offset=4096 - 64)
    plan = pebs_pin.patch_pin_plan(st.ds, st.buffer, st.absolute_maximum)
    assert plan[1] - plan[0] == 4096
    # 2 DS pages + 15 buffer pages = the 17-page cap: the last buffer page is not pinned
    assert len(vm.kvm.pmu.pinned_pages) == 17
    need = pebs_pin.needed_pages(st.ds, st.buffer, st.absolute_maximum)
    assert len(need) == 18


def test_reclaim_unmaps_pinned_frames_and_the_patch_guest_crashes_on_its_buffer():
    # FACTS g.1 (3.15 shrink_page_list -> try_to_unmap -> MMU notifier -> kvm_unmap_hva):
    # a pin keeps the frame, not the EPT entry. (This test used to assert that reclaim
    # skipped pinned frames and left their EPT entries: the behaviour item 8 corrects.)
    host, vm, guest = make("patch", frames=4096)
    other = host.create_vm(design="patch", memory_pages=256)
    # one record per hot load; no PMI before the buffer is full
    st = S.manual_pebs(guest, buf_offset=2048, period=1, threshold_records=65536)
    pinned = list(vm.kvm.pmu.pinned_pages)
    gfns = [int(host.mm.gfn[f]) for f in pinned]
    host.reclaim(10_000)                           # everything that can go, goes
    for f, g in zip(pinned, gfns):
        assert host.mm.owner[f] == vm.id and host.mm.ref(f) == 2   # frame kept, still pinned
        assert host.mm.hfn_of(vm.id, g) == -1                       # ... but not in EPT
        assert host.mm.is_unmapped(vm.id, g) and not host.mm.is_swapped(vm.id, g)
        assert f in host.mm.swap_cache
    zaps = vm.trace.of("EPT_ZAP")
    assert set(pinned) <= set(zaps["frame"].tolist())
    st.debug_store()          # the guest touches its DS: page tables and DS page come back
    assert host.mm.hfn_of(vm.id, gfns[0]) == pinned[0]         # the same frame refaults
    res = vm.run(HOT, 2_000_000)
    # the first record goes to the pinned first buffer page, whose EPT entry is gone:
    # an EPT violation Silvermont cannot deliver from a PEBS assist
    assert res.crashed and vm.crashed and "PEBS assist" in vm.crash_reason
    fault = vm.trace.of("PEBS_FAULT")
    assert len(fault) == 1 and int(fault["gva"][0]) & ~0xFFF == st.buffer & ~0xFFF
    assert int(fault["gpa"][0]) >> 12 in gfns[1:]
    assert vm.trace.of("PEBS_WRITE").size == 0
    assert len(vm.trace.of("GUEST_CRASH")) == 1
    # the other VM is unaffected
    assert not other.crashed
    r2 = other.run(HOT, 10_000)
    assert r2.instructions == 10_000
    host.mm.check_invariants()


def test_fixed_design_survives_the_same_pressure():
    host, vm, guest = make("fixed", frames=4096)
    st = S.manual_pebs(guest, buf_offset=2048, threshold_records=20)
    host.reclaim(10_000)
    res = vm.run(HOT, 30_000_000)
    assert not res.crashed
    assert st.samples and set(st.sample_ips()) == {HOT_IP}


def test_guest_remap_after_setup_hurts_only_itself_under_patch_fixed_repins():
    for design in ("patch", "fixed"):
        host, vm, guest = make(design, frames=4096)
        other = host.create_vm(design=design, memory_pages=256)
        st = S.manual_pebs(guest, threshold_records=4)
        old, new = S.remap_buffer_page(guest, st, page=0)
        host.reclaim(10_000)
        res = vm.run(HOT, 20_000_000)
        if design == "patch":
            assert res.crashed
        else:
            assert not res.crashed and st.samples
            # the new page is pinned now
            hfn = host.mm.hfn_of(vm.id, new >> 12)
            assert hfn in vm.kvm.pmu.pinned_pages
        assert not other.crashed
        owned = {f for f in range(host.mm.frames) if host.mm.owner[f] == vm.id}
        assert S.frames_written_by_pebs(vm) <= owned


def test_ds_area_change_while_enabled_patch_keeps_old_pins_fixed_repins():
    for design in ("patch", "fixed"):
        host, vm, guest = make(design)
        st = S.manual_pebs(guest)
        before = list(vm.kvm.pmu.pinned_pages)
        new_ds = guest.mm.alloc(1)
        guest.write(new_ds, st.debug_store().to_bytes())
        vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, new_ds)
        after = vm.kvm.pmu.pinned_pages
        new_frame = host.mm.hfn_of(vm.id, vm.vcpus[0].gva_to_gpa(new_ds) >> 12)
        if design == "patch":
            assert after == before and new_frame not in after
        else:
            assert new_frame in after


def test_vcpu_reset_patch_keeps_pebs_state_and_pins_fixed_clears():
    for design in ("patch", "fixed"):
        host, vm, guest = make(design)
        S.manual_pebs(guest)
        vm.vcpus[0].reset()
        pmu = vm.kvm.pmu
        if design == "patch":
            assert pmu.pebs_enable == 1 and pmu.num_pinned_pages == 17
        else:
            assert pmu.pebs_enable == 0 and pmu.num_pinned_pages == 0 and pmu.ds_area == 0


def test_destroy_returns_every_frame_and_refcount():
    for design in ("patch", "review", "fixed"):
        host = pl.Host(frames=2048)
        ref0, owner0 = baseline(host)
        vm = host.create_vm(design=design, memory_pages=512)
        guest = pl.GuestKernel(vm)
        S.manual_pebs(guest, buf_offset=1024, ds_offset=4032)
        vm.run(HOT, 500_000)
        host.reclaim(100)
        assert vm.destroy() == []
        assert np.array_equal(host.mm.refcount, ref0)
        assert np.array_equal(host.mm.owner, owner0)
        host.mm.check_invariants()


# --------------------------------------------------------------------------- the patch's arithmetic

def test_patch_pin_plan_follows_the_posted_loops():
    # len = min(PAGE_SIZE - offset, sizeof(struct debug_store) = 96): a DS area at offset
    # 0xFA0 leaves 96 bytes in its page (one pin), at 0xFA1 it straddles (two pins)
    assert pebs_pin.DS_SIZE_PATCH == 96
    assert pebs_pin.patch_pin_plan(0x10FA0, 0x20000, 0x21000) == [0x10000, 0x20000]
    assert pebs_pin.patch_pin_plan(0x10FA1, 0x20000, 0x21000) == [0x10000, 0x11000, 0x20000]
    # for (addr = base; addr < absolute_maximum && pg < MAX_PINNED_PAGES; addr += PAGE_SIZE):
    # an unaligned base steps past the last page; the total stops at 17
    assert pebs_pin.patch_pin_plan(0x10000, 0x20800, 0x22800) == [0x10000, 0x20000, 0x21000]
    big = pebs_pin.patch_pin_plan(0x10000, 0x20000, 0x20000 + 64 * 4096)
    assert len(big) == pebs_pin.MAX_PINNED_PAGES == 17
    assert big[-1] == 0x20000 + 15 * 4096


def test_needed_pages_covers_every_byte_the_cpu_may_touch():
    assert pebs_pin.needed_pages(0x10FA1, 0x20800, 0x22800) == [0x10000, 0x11000, 0x20000,
                                                                 0x21000, 0x22000]
    with pytest.raises(ValueError, match="absolute_maximum"):
        pebs_pin.needed_pages(0x10000, 0, 1 << 40, limit=33)


def test_pin_of_an_unmapped_ds_area_pins_nothing():
    # get_guest_page: gva_to_gpa == UNMAPPED_GVA -> NULL; pin_and_copy -> -EIO; return
    host, vm, guest = make("patch")
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_DS_AREA, 0x7000_0000_0000)         # canonical, not mapped
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)
    assert v.pmu.pinned_pages == []
    assert any("Cannot translate guest page" in i for i in vm.trace.info_of("NOTE"))


def test_vm_gva_to_gpa_uses_the_guest_page_tables():
    host, vm, guest = make("patch")
    gva = guest.mm.alloc(2)
    v = vm.vcpus[0]
    gpa = v.gva_to_gpa(gva)
    assert gpa >= 0 and gpa & 0xFFF == gva & 0xFFF
    assert v.gva_to_gpa(gva + 4096 + 5) & 0xFFF == 5
    assert v.gva_to_gpa(0x0000_8000_0000_0000) == pebs_pin.UNMAPPED_GVA     # non-canonical
    # four levels of tables map a 4 KiB page: four table frames, the PML4 (CR3) first
    tables = vm.table_gfns(v.cr3, gva)
    assert len(tables) == 4 and tables[0] == v.cr3 >> 12
