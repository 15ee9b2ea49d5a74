"""KVM's side of the MMU notifier: zap EPT entries; the `fixed` design's reload.

Models kvm_mmu_notifier_invalidate_page() / _invalidate_range_start() in
virt/kvm/kvm_main.c of v3.15, which call kvm_unmap_hva() /
kvm_unmap_hva_range() (arch/x86/kvm/mmu.c) and kvm_flush_remote_tlbs():
whenever the host unmaps or write-protects a page of the VM's memory, KVM
drops the EPT entry. A reference KVM holds on the frame (the 2014 patch's
pin, get_page through gfn_to_pfn) keeps the *frame*, never the EPT entry
(FACTS g.1). On a CPU without EPT-friendly PEBS the next PEBS assist that
touches such a page takes an EPT violation it cannot deliver, and the guest
dies.

The `fixed` design (``Design.reload_pinned_ept``) does what really holds:
the notifier raises a per-vCPU request, and before the next VM entry KVM
re-establishes the EPT entries of every pinned page (DS area, buffer,
guest page-table pages), keeping guest PEBS off for an entry where it
could not. This is the mechanism KVM came to use for the APIC-access page
(KVM_REQ_APIC_PAGE_RELOAD from the MMU notifier's arch hook, ~v3.18;
FACTS g.1): a 3.15 kernel has no such hook, so a correct PEBS pin needs
3.18 or later (or the hook added with it). ``icelake`` pins nothing: its
assist takes an ordinary EPT violation and KVM resolves it.

pebslab names: the request is ``KvmMmuNotifier.reload_pending`` (KVM would
spell it KVM_REQ_PEBS_RELOAD, after KVM_REQ_APIC_PAGE_RELOAD).
"""

from __future__ import annotations

from .._check import check_int
from ..hw import msr as M
from ..hw.mmu import EPT_ADDR_MASK, EPT_R

PAGE_SHIFT = 12


class KvmMmuNotifier:
    """The MMU notifier KVM registers on the VM's memory (struct mmu_notifier of struct kvm).

    Models kvm_mmu_notifier_ops in virt/kvm/kvm_main.c: ``invalidate_range``
    is what every host zapper reaches (through HostMM.register_vm).
    """

    def __init__(self, vm):
        self.vm = vm
        #: vCPU indexes with a pending reload of their pinned pages' EPT entries
        self.reload_pending: set[int] = set()
        #: EPT entries zapped since the VM was created (for notebooks)
        self.zapped = 0

    def invalidate_range(self, gfns, why: str) -> None:
        """Zap the EPT entries of ``gfns`` and flush the VM's TLBs.

        Models kvm_mmu_notifier_invalidate_page()/_range_start() ->
        kvm_unmap_hva() and kvm_flush_remote_tlbs(). Each zapped entry is
        traced (EPT_ZAP, naming the frame and whether a pin holds it).
        Under ``reload_pinned_ept`` a zapped page that a vCPU has pinned
        raises that vCPU's reload request.
        """
        vm = self.vm
        mm = vm.host_mm
        pinned_by = {}
        for v in getattr(vm, "vcpus", []):
            for hfn in v.pmu.pinned_pages:
                pinned_by.setdefault(hfn, []).append(v.index)
        v0 = vm.vcpus[0] if getattr(vm, "vcpus", None) else None
        zapped = []
        for gfn in gfns:
            gfn = check_int("gfn", gfn, 0, vm.memory_pages - 1)
            entry = int(vm.ept[gfn])
            if not entry & EPT_R:
                continue
            hfn = (entry & EPT_ADDR_MASK) >> PAGE_SHIFT
            vm.ept[gfn] = 0
            zapped.append(gfn)
            who = pinned_by.get(hfn, [])
            if who and vm.design.reload_pinned_ept:
                self.reload_pending.update(who)
            if v0 is not None:
                pin = (f"; pinned (refcount {mm.ref(hfn)}): the frame stays, the EPT entry "
                       f"does not" if who else "")
                v0.trace("EPT_ZAP", gpa=gfn << PAGE_SHIFT, hpa=hfn << PAGE_SHIFT, frame=hfn,
                         info=f"{why}: MMU notifier zapped EPT[gfn {gfn:#x}] (frame {hfn}){pin}")
        if not zapped:
            return
        self.zapped += len(zapped)
        vm._invept()
        if v0 is not None:
            cost = vm.pin_costs.mmu_notifier_zap
            v0.charge(cost)

    def kvm_check_request(self, vcpu) -> bool:
        """Before VM entry: serve a pending reload; return whether guest PEBS may run.

        pebslab only (the reload KVM_REQ_APIC_PAGE_RELOAD does for the
        APIC-access page, applied to the PEBS pins): every pinned frame
        whose EPT entry is gone is mapped again at its gfn, which must give
        back the same frame (the pin kept it). If one cannot be, the
        request stays pending and the caller keeps guest PEBS off for this
        entry (:func:`force_guest_pebs_off`).
        """
        if vcpu.index not in self.reload_pending:
            return True
        vm = self.vm
        mm = vm.host_mm
        cost = vm.pin_costs.ept_reload
        ok = True
        for hfn in vcpu.pmu.pinned_pages:
            gfn = int(mm.gfn[hfn])
            if int(mm.owner[hfn]) != vm.id or not 0 <= gfn < vm.memory_pages:
                ok = False
                continue
            if mm.hfn_of(vm.id, gfn) == hfn:
                continue
            got = mm.populate(vm.id, gfn)
            if got != hfn:
                ok = False
                continue
            vcpu.charge(cost)
            vcpu.trace("NOTE", gpa=gfn << PAGE_SHIFT, hpa=hfn << PAGE_SHIFT, frame=hfn,
                       cost=cost, info=f"PEBS reload before entry: EPT[gfn {gfn:#x}] -> "
                                       f"pinned frame {hfn} again")
        if ok:
            self.reload_pending.discard(vcpu.index)
        return ok


def force_guest_pebs_off(vcpu) -> None:
    """Load PEBS_ENABLE = 0 for the guest at this entry (its pins are not all mapped).

    pebslab only: the `fixed` design's "guest PEBS forced off until the
    EPT entries are back", done on the VM-entry MSR-load list.
    """
    for g in vcpu.autoload.guest:
        if g[0] == M.MSR_IA32_PEBS_ENABLE:
            g[1] = 0
    vcpu.trace("NOTE", info="PEBS pins not all mapped in EPT: guest PEBS kept off for this entry")


def gfn_to_pfn(vcpu, gfn: int) -> int:
    """The host frame of a guest frame, made resident if needed; EPT is not touched.

    Models gfn_to_pfn() -> hva_to_pfn() (virt/kvm/kvm_main.c): the page is
    faulted into the *host's* mapping of guest memory (a swapped page is
    read back), which creates no EPT entry: that only happens on the
    guest's next access (tdp_page_fault). No reference is taken here.
    """
    vm = vcpu.vm
    mm = vm.host_mm
    if mm.hfn_of(vm.id, gfn) >= 0 or mm.is_unmapped(vm.id, gfn):
        return mm.hva_to_pfn(vm.id, gfn)
    swapped = mm.is_swapped(vm.id, gfn)
    hfn = mm.hva_to_pfn(vm.id, gfn)
    cost = vm.costs.ept_swapin if swapped else vm.costs.ept_populate
    vcpu.charge(cost)
    vcpu.trace("SWAPIN" if swapped else "NOTE", gpa=gfn << PAGE_SHIFT, hpa=hfn << PAGE_SHIFT,
               frame=hfn, cost=cost, info=f"gfn_to_pfn: gfn {gfn:#x} -> frame {hfn} in host "
                                          f"memory (no EPT entry until the guest touches it)")
    return hfn
