"""The host paths that unmap guest pages (issue 9 item 8), each as FACTS g.1 says.

FACTS g.1 (checked against v3.15 mm/vmscan.c, mm/rmap.c, virt/kvm/kvm_main.c):
every one of these fires the MMU notifier before any reference-count check,
so KVM loses the EPT entry of a pinned page too; only compaction skips a
pinned anonymous page before unmapping it. The extra reference then keeps
the frame: reclaim leaves it in the swap cache, migration and khugepaged
refuse it, KSM refuses to merge it; aging (without EPT A/D bits), THP split
and NUMA balancing never move a frame at all.
"""

from __future__ import annotations

import numpy as np
import pytest

from pebslab.host.mm import EPT_R, EPT_RWX, FRAME_FREE, PAGE_SIZE, HostMM


class Notifier:
    """KVM's side, reduced to what the host may rely on: zap and remember the call."""

    def __init__(self, ept):
        self.ept = ept
        self.calls = []

    def invalidate_range(self, gfns, why):
        self.calls.append((list(gfns), why))
        for g in gfns:
            self.ept[g] = 0


def machine(pages=12, frames=48, seed=0, pinned=(2, 5, 9)):
    mm = HostMM(frames, seed=seed)
    ept = np.zeros(pages, np.uint64)
    note = Notifier(ept)
    mm.register_vm(1, ept, None, notifier=note)
    hfns = [mm.populate(1, g) for g in range(pages)]
    for g, h in enumerate(hfns):
        mm.write_phys(h * PAGE_SIZE, bytes([g + 1]) * PAGE_SIZE)
    for g in pinned:
        mm.get_page(hfns[g])
    return mm, ept, note, hfns


def frame_of(mm, gfn):
    """The frame that holds the page now, mapped or not (-1: swapped out)."""
    h = mm.hfn_of(1, gfn)
    return h if h >= 0 else mm.unmapped.get((1, gfn), -1)


# (zapper call, zaps pinned?, moves unpinned frames?, kernel function in the notifier's why)
ZAPPERS = {
    "age": (lambda mm: mm.age(100), True, False, "kvm_age_rmapp"),
    "migrate_pages": (lambda mm: mm.migrate_pages(100), True, True, "try_to_unmap"),
    "compact": (lambda mm: mm.compact(100), False, True, "migrate_pages"),
    "ksm_scan": (lambda mm: mm.ksm_scan(100), True, False, "write_protect_page"),
    "thp_split": (lambda mm: mm.thp_split(100), True, False, "split_huge_page"),
    "thp_collapse": (lambda mm: mm.thp_collapse(100), True, True, "khugepaged"),
    "numa_balance": (lambda mm: mm.numa_balance(100), True, False, "change_prot_numa"),
    "reclaim": (lambda mm: mm.reclaim(100), True, None, "try_to_unmap"),
}


@pytest.mark.parametrize("name", sorted(ZAPPERS))
def test_a_pin_keeps_the_frame_not_the_ept_entry(name):
    call, zaps_pinned, moves, fn = ZAPPERS[name]
    mm, ept, note, hfns = machine()
    pinned = {2, 5, 9}
    refs = mm.refcount.copy()
    call(mm)
    mm.check_invariants()
    assert note.calls and all(fn in why for _, why in note.calls)
    zapped = {g for gfns, _ in note.calls for g in gfns}
    for g in range(len(hfns)):
        if g in pinned:
            assert frame_of(mm, g) == hfns[g] and mm.ref(hfns[g]) == 2     # the frame stays
            assert (g in zapped) is zaps_pinned
            assert bool(int(ept[g]) & EPT_R) is not zaps_pinned
        else:
            assert g in zapped and not int(ept[g]) & EPT_R
            if moves is None:                                   # reclaim: swapped out
                assert mm.is_swapped(1, g) and mm.owner[hfns[g]] == FRAME_FREE
            elif moves:                                         # a fresh frame, same bytes
                h = frame_of(mm, g)
                assert h != hfns[g] and mm.gfn[hfns[g]] != g      # old frame freed (or reused)
                assert mm.read_phys(h * PAGE_SIZE, PAGE_SIZE) == bytes([g + 1]) * PAGE_SIZE
            else:
                assert frame_of(mm, g) == hfns[g]
    if not moves and moves is not None:
        assert np.array_equal(mm.refcount, refs)            # nothing but EPT changed
    # the next access maps the page again: the same frame where one was kept
    for g in range(len(hfns)):
        before = frame_of(mm, g)
        h = mm.populate(1, g)
        assert int(ept[g]) == (h << 12) | EPT_RWX
        if before >= 0:
            assert h == before
        assert mm.read_phys(h * PAGE_SIZE, PAGE_SIZE) == bytes([g + 1]) * PAGE_SIZE
    mm.check_invariants()
    assert mm.unmapped == {} and mm.swap_cache == set()


def test_aging_with_ept_ad_bits_zaps_nothing():
    mm, ept, note, hfns = machine()
    assert mm.age(100, ept_ad=True) == []
    assert note.calls == [] and all(int(e) & EPT_R for e in ept)


def test_every_frame_goes_back_to_the_host_after_zaps_and_unpin():
    mm, ept, note, hfns = machine(frames=64)
    free0 = mm.free_count() + len(hfns)
    for call, *_ in ZAPPERS.values():
        call(mm)
        mm.check_invariants()
    for g in (2, 5, 9):
        mm.put_page(frame_of(mm, g))
    assert mm.release_vm(1) == []
    mm.unregister_vm(1)
    assert mm.free_count() == free0 and mm.unmapped == {} and mm.swap == {}
    mm.check_invariants()


def test_victims_follow_the_seed():
    def order(seed):
        mm, _, note, _ = machine(pages=40, frames=80, seed=seed, pinned=())
        mm.numa_balance(7)
        mm.migrate_pages(5)
        return note.calls

    assert order(3) == order(3)
    assert order(3) != order(4)


def test_vm_id_restricts_a_zapper_to_one_vm():
    mm, ept, note, hfns = machine()
    ept2 = np.zeros(4, np.uint64)
    mm.register_vm(2, ept2, None)                       # no notifier: the host zaps itself
    for g in range(4):
        mm.populate(2, g)
    mm.thp_split(100, vm_id=2)
    assert note.calls == [] and not any(int(e) & EPT_R for e in ept2)
    assert all(int(e) & EPT_R for e in ept)
    mm.check_invariants()


def test_a_notifier_that_leaves_the_entry_is_caught():
    mm = HostMM(32)
    ept = np.zeros(4, np.uint64)

    class Lazy:
        def invalidate_range(self, gfns, why):
            pass

    mm.register_vm(1, ept, None, notifier=Lazy())
    mm.populate(1, 0)
    with pytest.raises(AssertionError, match="left EPT\\[gfn 0\\] present"):
        mm.numa_balance(1)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda mm: mm.age(-1), ValueError, "n must be in 0..inf"),
    (lambda mm: mm.age(1, ept_ad=1), TypeError, "ept_ad must be a bool; got int 1"),
    (lambda mm: mm.migrate_pages(1, vm_id=7), ValueError, "vm_id 7 is not registered"),
    (lambda mm: mm.reclaim(1, kept=()), TypeError, "kept must be a list or None; got tuple"),
    (lambda mm: mm.register_vm(3, np.zeros(2, np.uint64), None, notifier=5), TypeError,
     "notifier must have an invalidate_range"),
])
def test_bad_arguments(call, exc, msg):
    mm, *_ = machine()
    with pytest.raises(exc, match=msg):
        call(mm)
