"""Migrating a VM whose guest uses PEBS: save/restore, compatibility, live migration.

The VMM's side (QEMU's job, not KVM's). The 2014 patch says of migration:
"In theory it should be possible (as long as we migrate to a host with the
same PEBS event and the same PEBS format), but I'm not sure the basic KVM
PMU code supports it correctly: no code to save/restore state". This module
is that missing code, written the way a VMM drives KVM, so a notebook can
watch where the patch's design breaks when a VM moves:

* :func:`save_state` is KVM_GET_MSRS over every PMU MSR the guest can see,
  plus the registers and memory userspace copies (KVM_GET_SREGS, the TSC,
  the memslots).
* :func:`check_compatible` and :func:`restore_state` are the destination's
  side: refuse a host with another PEBS format, fewer or narrower counters, or
  no PEBS virtualization at all; otherwise create the VM, copy the memory and
  replay the MSRs with host-initiated ``kvm_pmu_set_msr`` (KVM_SET_MSRS), in
  an order that matters under the patch (``msr_order``).
* :func:`live_migrate` is a small pre-copy loop over KVM's dirty log
  (:mod:`pebslab.kvm.dirty_log`) and the above.
* :func:`move_guest` points a guest kernel at the VM it now runs in.

pebslab only as a whole; each function names the KVM or QEMU code it models.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .._check import check_int
from ..hw.errors import GuestFault
from ..hw import core as C
from ..hw import cpuid as CPUID
from ..hw import msr as M
from ..hw.models import CpuModel
from ..hw.pebs import DS_SIZE_PATCH
from ..kvm import pebs_pin
from ..kvm import pmu as kpmu
from ..kvm.cpuid import kvm_filter_cpuid
from ..kvm.designs import Design, get_design, pebs_virtualization_supported
from ..kvm.dirty_log import get_dirty_log, start_dirty_logging, stop_dirty_logging

PAGE = 4096

MSR_ORDERS = ("userspace", "ds_first", "pebs_first")

#: PMU MSRs that exist in the MSR list but cannot be written (KVM_SET_MSRS of
#: them fails in the 2014 code): saved for the compatibility check only.
READ_ONLY_MSRS = (M.MSR_IA32_PERF_CAPABILITIES,)

#: The PERF_CAPABILITIES bits that describe PEBS records (what the patch reports).
PERF_CAP_PEBS_BITS = M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG | M.PERF_CAP_PEBS_FORMAT

#: The PEBS record size of each format, for messages (FACTS a.2, a.3).
_RECORD_BYTES = {0: 144, 1: 176, 2: 192, 3: 200, 4: 32}

class MigrationError(Exception):
    """The destination cannot take this VM; ``reasons`` lists every reason.

    pebslab only (QEMU reports these as a failed incoming migration).
    """

    def __init__(self, reasons):
        self.reasons = list(reasons)
        super().__init__("cannot migrate: " + "; ".join(self.reasons))


# =============================================================================
# the state that travels
# =============================================================================

@dataclass(frozen=True)
class CpuFacts:
    """What the guest learned about the source CPU's PMU and PEBS at boot.

    pebslab only: the facts the patch's migration paragraph says must match
    ("the same PEBS event and the same PEBS format").
    """

    name: str
    pebs_format: int
    perf_cap_pebs: int          # host PERF_CAPABILITIES & (PEBS_TRAP|ARCH_REG|PEBS_FORMAT)
    n_gp: int
    n_fixed: int
    width: int
    pebs_counter_mask: int
    pebs_ept: bool

    @classmethod
    def of(cls, model: CpuModel) -> "CpuFacts":
        return cls(name=model.name, pebs_format=model.pebs_format,
                   perf_cap_pebs=model.perf_capabilities & PERF_CAP_PEBS_BITS,
                   n_gp=model.n_gp, n_fixed=model.n_fixed, width=model.width,
                   pebs_counter_mask=model.pebs_counter_mask, pebs_ept=model.pebs_ept)


@dataclass
class VcpuState:
    """One vCPU's saved state: its PMU MSRs and what it needs to resume.

    ``msrs`` maps MSR index -> value as KVM_GET_MSRS returns it, in
    ascending index order. ``pmi_handler`` and ``pmi_pending`` stand for
    the LAPIC (LVTPC) and the pending-event state (KVM_GET_LAPIC,
    KVM_GET_VCPU_EVENTS): the handler itself lives in guest memory.
    ``pinned_gfns`` is informational: pins are host state and do not travel.
    """

    index: int
    msrs: dict
    rip: int
    cr3: int
    tsc: int
    pmi_pending: bool = False
    pmi_handler: object = None
    nr_gp: int = 0
    nr_fixed: int = 0
    counter_width: int = 0
    pebs_visible: bool = False
    pinned_gfns: list = field(default_factory=list)

    def msr(self, index: int) -> int:
        return self.msrs[index]

    @property
    def pebs_enable(self) -> int:
        return self.msrs.get(M.MSR_IA32_PEBS_ENABLE, 0)

    @property
    def ds_area(self) -> int:
        return self.msrs.get(M.MSR_IA32_DS_AREA, 0)


@dataclass
class VmState:
    """Everything userspace sends to the destination for one VM.

    pebslab only. ``memory`` is the bytes of every guest page, in GFN order
    (None when saved with ``include_memory=False``, e.g. for a pre-flight
    compatibility check). ``workload`` is the guest's program (its text is in
    guest memory in reality; here it travels beside it).
    """

    design: str
    design_knobs: Design
    memory_pages: int
    cpuid: CPUID.Cpuid
    cpu: CpuFacts
    vcpus: list
    memory: bytes | None
    workload: object = None
    costs: object = None
    extra_autoload: int = 0
    source_vm: int = 0

    def page(self, gfn: int) -> bytes:
        """The saved bytes of one guest page."""
        if self.memory is None:
            raise ValueError("this state was saved without memory (include_memory=False)")
        if not 0 <= gfn < self.memory_pages:
            raise ValueError(f"gfn must be in 0..{self.memory_pages - 1}; got {gfn}")
        return self.memory[gfn * PAGE:(gfn + 1) * PAGE]

    def msr_table(self, vcpu: int = 0) -> list[tuple[str, int, int]]:
        """(name, index, value) per saved MSR of a vCPU, for notebooks."""
        return [(M.msr_name(i), i, v) for i, v in self.vcpus[vcpu].msrs.items()]

    def summary(self) -> str:
        v = self.vcpus[0]
        return (f"VM {self.source_vm} on {self.cpu.name} (design {self.design}): "
                f"{self.memory_pages} pages, {len(self.vcpus)} vCPU(s), "
                f"{len(v.msrs)} PMU MSRs, PEBS_ENABLE={v.pebs_enable:#x}, "
                f"DS_AREA={v.ds_area:#x}, PEBS format {self.cpu.pebs_format}")


# =============================================================================
# save
# =============================================================================

def pmu_msr_list(vcpu) -> list[int]:
    """The PMU MSRs this guest can see, ascending (what KVM reports to save).

    Models the PMU part of KVM_GET_MSR_INDEX_LIST (msrs_to_save, filtered by
    kvm_pmu_msr() for this vCPU): counters, event selects, fixed counters,
    the global control MSRs, and the patch's PERF_CAPABILITIES, PEBS_ENABLE
    and DS_AREA (plus PEBS_DATA_CFG where the design emulates it).
    """
    pmu = vcpu.pmu
    cands = [M.MSR_IA32_PERFCTR0 + i for i in range(pmu.nr_arch_gp_counters)]
    cands += [M.MSR_P6_EVNTSEL0 + i for i in range(pmu.nr_arch_gp_counters)]
    cands += [M.MSR_CORE_PERF_FIXED_CTR0 + i for i in range(pmu.nr_arch_fixed_counters)]
    cands += [M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
              M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
              M.MSR_IA32_PERF_CAPABILITIES, M.MSR_IA32_PEBS_ENABLE, M.MSR_PEBS_DATA_CFG,
              M.MSR_IA32_DS_AREA]
    return sorted(m for m in cands if kpmu.kvm_pmu_msr(vcpu, m))


def save_vcpu(vcpu) -> VcpuState:
    """Save one vCPU: its PMU MSRs (guest view) and CR3, RIP, TSC.

    Models KVM_GET_MSRS (kvm_get_msr_common -> kvm_pmu_get_msr, so counters
    are read_pmc() values: pmc->counter plus what the backing perf event
    counted) and the parts of KVM_GET_REGS / KVM_GET_SREGS the model has.
    """
    pmu = vcpu.pmu
    msrs = {m: kpmu.kvm_pmu_get_msr(vcpu, m) for m in pmu_msr_list(vcpu)}
    mm = vcpu.host_mm
    gfns = []
    for hfn in pmu.pinned_pages:
        if int(mm.owner[hfn]) == vcpu.vm.id:
            gfns.append(int(mm.gfn[hfn]))
    return VcpuState(
        index=vcpu.index, msrs=msrs, rip=int(vcpu.core.regs[C.R_RIP]), cr3=vcpu.cr3,
        tsc=vcpu.core.tsc, pmi_pending=vcpu.pmi_pending, pmi_handler=vcpu.pmi_handler,
        nr_gp=pmu.nr_arch_gp_counters, nr_fixed=pmu.nr_arch_fixed_counters,
        counter_width=pmu.counter_bitmask[0].bit_length(),
        pebs_visible=kpmu.pebs_msrs_visible(vcpu), pinned_gfns=gfns)


def save_state(vm, include_memory: bool = True) -> VmState:
    """Save a stopped VM: per-vCPU PMU MSRs and registers, memory, CPU facts, design.

    Models what a VMM does for the final "stop and copy" step of migration:
    KVM_GET_MSRS over the PMU MSRs (see :func:`pmu_msr_list`), KVM_GET_SREGS
    (CR3), the TSC and RIP, and a copy of every guest page (read through the
    guest's memory, so swapped-out pages are faulted back in first).

    The 2014 KVM PMU had no save/restore code at all (the patch: "no code to
    save/restore state, unless I'm missing something"): this is what it
    would need, and restoring it (:func:`restore_state`) shows why saving
    alone is not enough under the patch.
    """
    _check_vm(vm)
    vcpus = [save_vcpu(v) for v in vm.vcpus]
    memory = None
    if include_memory:
        memory = vm.phys.read(0, vm.memory_pages * PAGE)
    st = VmState(design=vm.design.name, design_knobs=vm.design, memory_pages=vm.memory_pages,
                 cpuid=vm.cpuid, cpu=CpuFacts.of(vm.cpu), vcpus=vcpus, memory=memory,
                 workload=vm.workload, costs=vm.costs, extra_autoload=vm.extra_autoload,
                 source_vm=vm.id)
    v = vm.vcpus[0]
    v.trace("MIGRATE", value=vcpus[0].pebs_enable,
            info=f"save_state: {len(vcpus[0].msrs)} PMU MSRs, "
                 f"{vm.memory_pages if include_memory else 0} pages, "
                 f"PEBS_ENABLE={vcpus[0].pebs_enable:#x} DS_AREA={vcpus[0].ds_area:#x}")
    return st


# =============================================================================
# compatibility
# =============================================================================

def _features_lost(src: CPUID.Cpuid, dst: CPUID.Cpuid) -> list[str]:
    return [f for f in ("DS", "DTES64", "PDCM") if src.has(f) and not dst.has(f)]


def check_compatible(state: VmState, host, design=None) -> list[str]:
    """Return why ``host`` cannot take this VM (an empty list: it can).

    pebslab only; models the checks a VMM and KVM would have to make for the
    patch's condition ("a host with the same PEBS event and the same PEBS
    format"): the guest's CPUID must survive KVM's filtering on the
    destination; the destination must have at least as many and as wide
    counters; PEBS records must have the same format and PERF_CAPABILITIES
    bits; an active PEBS_ENABLE needs a destination that virtualizes PEBS
    (host CPU *and* design), PEBS-capable counters for its bits and PEBS
    support for the programmed events; PEBS_DATA_CFG must exist if it is
    in use; and the destination needs the memory.
    """
    if not isinstance(state, VmState):
        raise TypeError(f"state must be a VmState; got {type(state).__name__}")
    _check_host(host)
    d = get_design(design if design is not None else state.design_knobs)
    model = host.cpu
    reasons: list[str] = []
    dst_cpuid = kvm_filter_cpuid(state.cpuid, model, d)
    lost = _features_lost(state.cpuid, dst_cpuid)
    if lost:
        reasons.append(f"the guest's CPUID advertises {', '.join(lost)} but KVM on "
                       f"{model.name} under design {d.name!r} would hide them "
                       f"(a guest's CPUID cannot change under it)")
    src_leaf = state.cpuid.pmu()
    dst_leaf = dst_cpuid.pmu()
    if dst_leaf["version"] < src_leaf["version"]:
        reasons.append(f"PMU version {dst_leaf['version']} on the destination < "
                       f"{src_leaf['version']} the guest saw (CPUID.0AH)")
    if model.pebs_format != state.cpu.pebs_format and any(v.pebs_visible for v in state.vcpus):
        reasons.append(
            f"different PEBS format: the guest's driver was set up for format "
            f"{state.cpu.pebs_format} ({_RECORD_BYTES.get(state.cpu.pebs_format, '?')}-byte "
            f"records, from {state.cpu.name}); {model.name} writes format {model.pebs_format} "
            f"({_RECORD_BYTES.get(model.pebs_format, '?')}-byte records)")
    elif (model.perf_capabilities & PERF_CAP_PEBS_BITS) != state.cpu.perf_cap_pebs and \
            any(v.pebs_visible for v in state.vcpus):
        reasons.append(f"PERF_CAPABILITIES PEBS bits differ: source "
                       f"{state.cpu.perf_cap_pebs:#x}, {model.name} "
                       f"{model.perf_capabilities & PERF_CAP_PEBS_BITS:#x}")
    for vs in state.vcpus:
        who = f"vCPU {vs.index}: " if len(state.vcpus) > 1 else ""
        if vs.nr_gp > model.n_gp:
            reasons.append(f"{who}fewer GP counters: the guest uses {vs.nr_gp}, "
                           f"{model.name} has {model.n_gp}")
        if vs.nr_fixed > model.n_fixed:
            reasons.append(f"{who}fewer fixed counters: the guest uses {vs.nr_fixed}, "
                           f"{model.name} has {model.n_fixed}")
        if vs.counter_width > model.width:
            reasons.append(f"{who}narrower counters: the guest's are {vs.counter_width} bits, "
                           f"{model.name}'s {model.width}")
        pebs = vs.pebs_enable
        if pebs:
            if not pebs_virtualization_supported(model, d):
                why = ("it requires EPT-friendly PEBS" if d.require_pebs_ept else
                       "the patch only supports Silvermont")
                reasons.append(f"{who}PEBS_ENABLE={pebs:#x} is active but the destination "
                               f"cannot virtualize PEBS: {model.name} under design "
                               f"{d.name!r} ({why})")
            else:
                bad = pebs & ~kpmu.pebs_enable_valid_bits(
                    model, d, min(vs.nr_gp, model.n_gp),
                    min(vs.nr_fixed, model.n_fixed, d.max_fixed_counters))
                if bad:
                    reasons.append(f"{who}PEBS_ENABLE bits {bad:#x} are not valid on "
                                   f"{model.name} under design {d.name!r}")
            for i in range(min(vs.nr_gp, 8)):
                if not pebs >> i & 1:
                    continue
                if not model.pebs_counter_mask >> i & 1:
                    reasons.append(f"{who}PMC{i} has PEBS enabled but is not PEBS-capable "
                                   f"on {model.name} (mask {model.pebs_counter_mask:#x})")
                sel = vs.msrs.get(M.MSR_P6_EVNTSEL0 + i, 0)
                if sel & M.ARCH_PERFMON_EVENTSEL_ENABLE:
                    ev = model.event_by_code(sel)
                    if ev is None or not ev.pebs:
                        reasons.append(f"{who}PMC{i} counts event {sel & 0xFFFF:#06x} with "
                                       f"PEBS, which is not a PEBS event on {model.name}")
        cfg = vs.msrs.get(M.MSR_PEBS_DATA_CFG, 0)
        if cfg and not (d.data_cfg and model.pebs_format >= 4):
            reasons.append(f"{who}PEBS_DATA_CFG={cfg:#x} is in use but the destination "
                           f"does not emulate it")
    free = host.mm.free_count()
    if free < state.memory_pages:
        reasons.append(f"the destination has {free} free frames, the VM needs "
                       f"{state.memory_pages}")
    return reasons


# =============================================================================
# restore
# =============================================================================

def restore_order(msrs, msr_order: str = "userspace") -> list[int]:
    """The order in which MSRs are written back (one KVM_SET_MSRS list).

    pebslab only. ``"userspace"``: ascending MSR index, as a list built by
    walking the index list would be (PMCs 0xC1.., EVNTSEL 0x186.., fixed
    0x309.., 0x38D-0x390, PEBS_ENABLE 0x3F1 *before* DS_AREA 0x600).
    ``"ds_first"``: DS_AREA first, then ascending. ``"pebs_first"``:
    DS_AREA, PEBS_ENABLE and PEBS_DATA_CFG first, then ascending (a VMM
    that knows both of the patch's ordering dependencies).
    """
    if msr_order not in MSR_ORDERS:
        raise ValueError(f"msr_order must be one of {', '.join(map(repr, MSR_ORDERS))}; "
                         f"got {msr_order!r}")
    idx = sorted(msrs)
    if msr_order == "userspace":
        first = []
    elif msr_order == "ds_first":
        first = [M.MSR_IA32_DS_AREA]
    else:
        first = [M.MSR_IA32_DS_AREA, M.MSR_IA32_PEBS_ENABLE, M.MSR_PEBS_DATA_CFG]
    first = [m for m in first if m in msrs]
    return first + [m for m in idx if m not in first]


def defers_pmu_restore(design: Design) -> bool:
    """Does KVM under this design finish the PMU only after all MSRs are restored?

    pebslab only. True for `fixed` and `icelake`: counters are reprogrammed
    and the PEBS pages pinned once, after the last MSR, so the order of the
    KVM_SET_MSRS list no longer matters. Upstream KVM got this property in
    commit 68fb4757e867 ("KVM: x86/pmu: Defer reprogram_counter() to
    kvm_pmu_handle_event", v6.2): a write only records the new value and
    raises KVM_REQ_PMU. The 2014 code (`patch`, `review`) acts on every
    write at once.
    """
    return design.restore_defers_pmu


def pin_coverage(vcpu) -> dict:
    """Which host frames PEBS needs pinned for this vCPU, and which are pinned.

    pebslab only. ``needed``: the frames behind every guest page the assist
    may write (the DS area and [pebs_buffer_base, pebs_absolute_maximum),
    :func:`pebs_pin.needed_pages`), looked up through the guest's page tables
    now; ``tables``: the frames of the guest page-table pages the assist
    walks to reach them (pinned only under ``pin_page_tables``);
    ``missing`` / ``missing_tables``: needed but not pinned; ``extra``:
    pinned but neither (e.g. what a pin of a stale DS_AREA left behind).
    """
    pmu = vcpu.pmu
    vm = vcpu.vm
    pinned = list(pmu.pinned_pages)
    needed: list[int] = []
    tables: list[int] = []
    note = ""
    if pmu.ds_area:
        try:
            ds = pebs_pin._unpack_ds(vcpu.read_guest_virt(pmu.ds_area, DS_SIZE_PATCH))
        except ValueError as e:
            note = str(e)
        else:
            for gva in pebs_pin.needed_pages(pmu.ds_area, ds["pebs_buffer_base"],
                                             ds["pebs_absolute_maximum"]):
                for gfn in vm.table_gfns(vcpu.cr3, gva):
                    hfn = vcpu.host_mm.hfn_of(vm.id, gfn)
                    if hfn not in tables:
                        tables.append(hfn)
                gpa = vcpu.gva_to_gpa(gva)
                if gpa < 0:
                    note = f"gva {gva:#x} is not mapped"
                    continue
                needed.append(vcpu.host_mm.hfn_of(vm.id, gpa >> 12))
    else:
        note = "DS_AREA is 0"
    return {"pebs_enable": pmu.pebs_enable, "ds_area": pmu.ds_area, "needed": needed,
            "tables": tables, "pinned": pinned,
            "missing": [h for h in needed if h not in pinned],
            "missing_tables": [h for h in tables if h not in pinned],
            "extra": [h for h in pinned if h not in needed and h not in tables], "note": note}


def pebs_armed(vcpu) -> dict[int, bool]:
    """For each enabled counter with its PEBS_ENABLE bit set: is its host event precise?

    pebslab only. The patch decides PEBS for a counter when it creates the
    host perf event (reprogram_gp_counter reads pmu->pebs_enable *then*);
    False here means the guest asked for PEBS and the host counts without it.
    """
    pmu = vcpu.pmu
    out = {}
    for pmc in pmu.pmcs():
        if pmu.pebs_enable >> pmc.idx & 1 and kpmu.pmc_enabled(pmu, pmc):
            ev = pmc.perf_event
            out[pmc.idx] = bool(ev is not None and ev.attr.precise_ip)
    return out


def restore_state(state: VmState, host, design=None, msr_order: str = "userspace", *,
                  fix_order: bool | None = None):
    """Create the VM on ``host`` from a saved state and return it.

    Models the destination of a migration: KVM_CREATE_VM + KVM_SET_CPUID2
    with the guest's CPUID, the memory copied into the new memslots,
    KVM_SET_SREGS (CR3) and RIP/TSC, then KVM_SET_MSRS: every PMU MSR through
    ``kvm_pmu_set_msr(vcpu, msr, value, host_initiated=True)``, in
    :func:`restore_order` ``msr_order``. Raises :class:`MigrationError` with
    every reason from :func:`check_compatible` (or if KVM rejects an MSR).

    Under the 2014 code each write acts at once, so the order matters twice:
    a PEBS_ENABLE write pins from the *current* DS_AREA (still 0 when the
    list is sorted: nothing, or the wrong page, is pinned), and GLOBAL_CTRL
    creates the host events from the *current* PEBS_ENABLE (still 0 unless
    it came first: the counters run without PEBS). With
    ``fix_order=True`` (default: :func:`defers_pmu_restore` of the design)
    counters are reprogrammed and pages pinned after the last MSR.

    The VM gets ``restore_report``: per vCPU the pins after the MSR list
    and at the end (:func:`pin_coverage`), and :func:`pebs_armed`.
    """
    if not isinstance(state, VmState):
        raise TypeError(f"state must be a VmState; got {type(state).__name__}")
    if state.memory is None:
        raise ValueError("state has no memory (saved with include_memory=False)")
    if msr_order not in MSR_ORDERS:
        raise ValueError(f"msr_order must be one of {', '.join(map(repr, MSR_ORDERS))}; "
                         f"got {msr_order!r}")
    d = get_design(design if design is not None else state.design_knobs)
    reasons = check_compatible(state, host, d)
    if reasons:
        raise MigrationError(reasons)
    defer = defers_pmu_restore(d) if fix_order is None else bool(fix_order)
    vm = host.create_vm(design=d, memory_pages=state.memory_pages, cpuid=state.cpuid,
                        vcpus=len(state.vcpus), costs=state.costs,
                        extra_autoload=state.extra_autoload)
    mm = vm.host_mm
    for gfn in range(state.memory_pages):
        hfn = mm.hfn_of(vm.id, gfn)
        mm.write_phys(hfn * PAGE, state.memory[gfn * PAGE:(gfn + 1) * PAGE])
    vm.workload = state.workload
    report = {"msr_order": msr_order, "fix_order": defer, "source_vm": state.source_vm,
              "from": state.cpu.name, "to": vm.cpu.name, "design": d.name, "vcpus": []}
    for vs, v in zip(state.vcpus, vm.vcpus):
        regs = v.core.regs
        v.cr3 = vs.cr3
        regs[C.R_CR3] = np.uint64(vs.cr3)
        regs[C.R_RIP] = np.uint64(vs.rip)
        v.core.flush_tlb()
        v.pmi_handler = vs.pmi_handler
        v.pmi_pending = vs.pmi_pending
        v.trace("MIGRATE", info=f"restore_state from VM {state.source_vm} "
                                f"({state.cpu.name} -> {vm.cpu.name}): CR3={vs.cr3:#x} "
                                f"RIP index {vs.rip}, TSC {vs.tsc}")
        at_pebs_enable = None
        for n, msr in enumerate(restore_order(vs.msrs, msr_order)):
            if msr in READ_ONLY_MSRS:
                continue
            value = vs.msrs[msr]
            try:
                if defer and msr in kpmu.DEFERRED_MSRS:
                    kpmu.kvm_pmu_set_msr_deferred(v, msr, value)
                else:
                    kpmu.kvm_pmu_set_msr(v, msr, value, host_initiated=True)
            except GuestFault as e:
                vm.destroy()
                raise MigrationError([f"KVM_SET_MSRS failed at entry {n} "
                                      f"({M.msr_name(msr)}={value:#x}): {e}"]) from None
            v.trace("MIGRATE", msr=msr, value=value,
                    info=f"KVM_SET_MSRS[{n}] {M.msr_name(msr)}")
            if msr == M.MSR_IA32_PEBS_ENABLE:
                at_pebs_enable = {"ds_area": v.pmu.ds_area,
                                  "pinned": list(v.pmu.pinned_pages)}
        after_list = pin_coverage(v)
        armed_list = pebs_armed(v)
        if defer:
            ok = kpmu.kvm_pmu_finish_restore(v)
            if not ok and v.pmu.pebs_enable:
                vm.destroy()
                raise MigrationError([f"cannot pin the DS area and PEBS buffer of vCPU "
                                      f"{vs.index} on the destination"])
        cov = pin_coverage(v)
        armed = pebs_armed(v)
        # the TSC last: KVM's work while the vCPU is stopped is not guest time
        regs[C.R_TSC] = np.uint64(vs.tsc)
        v.trace("MIGRATE", value=v.pmu.pebs_enable,
                info=f"restored: {len(cov['pinned'])} frames pinned, {len(cov['needed'])} "
                     f"needed, {len(cov['missing'])} missing; PEBS armed "
                     f"{sorted(i for i, a in armed.items() if a)} of {sorted(armed)}")
        report["vcpus"].append({"at_pebs_enable": at_pebs_enable,
                                "after_msr_list": after_list, "armed_after_msr_list": armed_list,
                                "final": cov, "armed": armed})
    vm.restore_report = report
    return vm


# =============================================================================
# live migration
# =============================================================================

def live_migrate(vm, dest_host, workload, rounds: int = 3, instructions_per_round: int = 200_000,
                 design=None, msr_order: str = "userspace", *, fix_order: bool | None = None,
                 destroy_source: bool = True):
    """Pre-copy live migration of ``vm`` to ``dest_host``; return (new VM or None, report).

    pebslab only, after QEMU's RAM migration loop: check the destination,
    turn on dirty logging, send every page, then ``rounds`` times let the
    guest run ``instructions_per_round`` instructions and send the pages it
    dirtied; finally stop the guest, send the last dirty pages and the
    device state (:func:`save_state`), and restore on the destination.

    The report: ``pages_sent`` per round (first the full copy, last the
    stop-and-copy), ``dirty`` (the gfns of each round), ``always_dirty``
    (pinned gfns), ``dirty_faults``, ``reasons`` (compatibility), ``crashed``
    / ``crash_reason`` (the source guest died during pre-copy),
    ``memory_consistent`` / ``stale_pages`` (does what arrived equal the
    source's final memory?) and ``restore`` (the new VM's restore_report).
    A refused or failed migration returns None and leaves the source running.
    """
    _check_vm(vm)
    _check_host(dest_host)
    check_int("rounds", rounds, 0, 100)
    check_int("instructions_per_round", instructions_per_round, 0, 10**9)
    report = {"from": vm.cpu.name, "to": dest_host.cpu.name, "design": vm.design.name,
              "pages_sent": [], "dirty": [], "always_dirty": [], "dirty_faults": 0,
              "reasons": [], "crashed": False, "crash_reason": "",
              "memory_consistent": None, "stale_pages": [], "restore": None,
              "source_destroyed": False}
    src = vm.vcpus[0]
    pre = check_compatible(save_state(vm, include_memory=False), dest_host, design)
    if pre:
        report["reasons"] = pre
        src.trace("MIGRATE", info="live migration refused: " + "; ".join(pre))
        return None, report
    st = start_dirty_logging(vm)
    sent: dict[int, bytes] = {}

    def send(gfns):
        for g in gfns:
            sent[g] = vm.phys.read(g * PAGE, PAGE)
        report["pages_sent"].append(len(gfns))

    try:
        send(range(vm.memory_pages))
        src.trace("MIGRATE", value=vm.memory_pages,
                  info=f"pre-copy: full copy of {vm.memory_pages} pages")
        for r in range(rounds):
            vm.run(workload, instructions_per_round)
            if vm.crashed:
                report["crashed"] = True
                report["crash_reason"] = vm.crash_reason
                src.trace("MIGRATE", info=f"live migration aborted in round {r + 1}: "
                                          f"the guest crashed")
                return None, report
            dirty = get_dirty_log(vm)
            report["dirty"].append(dirty)
            send(dirty)
            src.trace("MIGRATE", value=len(dirty),
                      info=f"pre-copy round {r + 1}: {len(dirty)} dirty pages sent")
        # stop and copy: the guest no longer runs
        dirty = get_dirty_log(vm)
        report["dirty"].append(dirty)
        send(dirty)
        report["always_dirty"] = sorted(st.always_dirty)
        report["dirty_faults"] = st.faults
        src.trace("MIGRATE", value=len(dirty),
                  info=f"stop-and-copy: {len(dirty)} pages and the vCPU state")
    finally:
        stop_dirty_logging(vm)
    state = save_state(vm, include_memory=True)
    arrived = b"".join(sent[g] for g in range(vm.memory_pages))
    stale = [g for g in range(vm.memory_pages)
             if arrived[g * PAGE:(g + 1) * PAGE] != state.memory[g * PAGE:(g + 1) * PAGE]]
    report["stale_pages"] = stale
    report["memory_consistent"] = not stale
    state = replace(state, memory=arrived)
    try:
        new_vm = restore_state(state, dest_host, design, msr_order, fix_order=fix_order)
    except MigrationError as e:
        report["reasons"] = e.reasons
        src.trace("MIGRATE", info="live migration failed at the destination: " + str(e))
        return None, report
    report["restore"] = new_vm.restore_report
    new_vm.vcpus[0].trace("MIGRATE", info=f"live migration from VM {vm.id} complete: "
                                          f"{sum(report['pages_sent'])} pages sent in "
                                          f"{len(report['pages_sent'])} passes")
    if destroy_source:
        vm.destroy()
        report["source_destroyed"] = True
    return new_vm, report


def _check_host(host) -> None:
    for attr in ("cpu", "mm", "create_vm"):
        if not hasattr(host, attr):
            raise TypeError(f"host must be a pebslab Host; {type(host).__name__} has no {attr!r}")


def _check_vm(vm) -> None:
    for attr in ("vcpus", "ept", "phys", "design", "host_mm"):
        if not hasattr(vm, attr):
            raise TypeError(f"vm must be a pebslab VM; {type(vm).__name__} has no {attr!r}")
    if vm.destroyed:
        raise ValueError("the VM has been destroyed")
