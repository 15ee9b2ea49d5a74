"""Migrating a VM whose guest uses PEBS: save/restore, compatibility, dirty logging.

The 2014 patch says of migration: "In theory it should be possible (as long
as we migrate to a host with the same PEBS event and the same PEBS format),
but I'm not sure the basic KVM PMU code supports it correctly: no code to
save/restore state". This module is that missing code, written the way KVM
and its userspace do it, so a notebook can watch where the patch's design
breaks when a VM moves:

* :func:`save_state` is KVM_GET_MSRS over every PMU MSR the guest can see,
  plus the registers and memory userspace copies (KVM_GET_SREGS, the TSC,
  the memslots).
* :func:`check_compatible` and :func:`restore_state` are the destination's
  side: refuse a host with another PEBS format, fewer or narrower counters, or
  no PEBS virtualization at all; otherwise create the VM, copy the memory and
  replay the MSRs with host-initiated ``kvm_pmu_set_msr`` (KVM_SET_MSRS), in
  an order that matters under the patch (``msr_order``).
* :func:`start_dirty_logging` / :func:`get_dirty_log` /
  :func:`stop_dirty_logging` are KVM_MEM_LOG_DIRTY_PAGES and
  KVM_GET_DIRTY_LOG: write-protect EPT and record the pages written. A PEBS
  assist that writes into a write-protected page is an EPT violation inside
  the assist, which a pre-Ice-Lake CPU cannot deliver: the patch's "pinning"
  keeps pages resident but does not keep them writable.
* :func:`live_migrate` is a small pre-copy loop over all of the above.

pebslab only as a whole; each function names the KVM or QEMU code it models.
Until vm.py grows the hooks (see :data:`VM_HOOKS`), dirty logging installs
instance-level wrappers on one VM (``vm.handle_ept_violation``,
``vm.phys.write``, ``vcpu.wrmsr``) and removes them when logging stops.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

import numpy as np

from .designs import Design, get_design
from ..hw.errors import GuestFault
from ..host.mm import EPT_ADDR_MASK, EPT_R, EPT_W
from ..hw import core as C
from ..hw import cpuid as CPUID
from ..hw import msr as M
from ..hw.models import CpuModel
from ..hw.pebs import DS_SIZE_PATCH
from . import pebs_pin
from . import pmu as kpmu
from .vm import kvm_filter_cpuid

PAGE = 4096

MSR_ORDERS = ("userspace", "ds_first", "pebs_first")

#: PMU MSRs that exist in the MSR list but cannot be written (KVM_SET_MSRS of
#: them fails in the 2014 code): saved for the compatibility check only.
READ_ONLY_MSRS = (M.MSR_IA32_PERF_CAPABILITIES,)

#: The PERF_CAPABILITIES bits that describe PEBS records (what the patch reports).
PERF_CAP_PEBS_BITS = M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG | M.PERF_CAP_PEBS_FORMAT

#: Cycles charged for KVM's handling of a write-protection fault during dirty
#: logging (fast_page_fault: set W in the EPT entry, mark the gfn dirty).
#: ASSUMPTION: priced like a page-track exit; no source in FACTS.md.
DIRTY_FAULT_CYCLES = 1500

#: The PEBS record size of each format, for messages (FACTS a.2, a.3).
_RECORD_BYTES = {0: 144, 1: 176, 2: 192, 3: 200, 4: 32}

#: Where vm.py should grow hooks so the instance overrides here can go away.
VM_HOOKS = """\
1. Move dirty_write_fault into vm.py as VM.dirty_write_fault(gfn, source,
   count_exit) (no import of this module from vm.py: it imports vm.py), with
   a Costs.dirty_log_fault field instead of DIRTY_FAULT_CYCLES.
2. VM.handle_ept_violation(gpa, source): if self.dirty_logging and the entry
   is present (EPT_R) without EPT_W, call self.dirty_write_fault(gfn, source,
   count_exit=False) and return; after a fault_in while self.dirty_logging,
   self.dirty.add(gfn).
3. GuestPhys.write: per chunk, if self.vm.dirty_logging and the entry is
   present without EPT_W, self.vm.dirty_write_fault(gfn, "guest software",
   count_exit=True) before writing (GuestPhys._hpa only checks EPT_R).
4. VCPU.gfn_to_pfn (the pin path): if vm.dirty_logging and
   design.dirty_log_skips_pinned, set EPT_W on the gfn, INVEPT, and add the
   gfn to a VM set of always-dirty gfns (what sync_pinned does today from
   wrappers around vcpu.wrmsr and phys.write).
5. designs.Design: a knob restore_defers_pmu (fixed, icelake: True) read by
   defers_pmu_restore, and in kvm_pmu_set_msr: for host_initiated writes of
   DS_AREA/PEBS_ENABLE/PEBS_DATA_CFG under that knob, check and record only
   (kvm_pmu_set_msr_deferred here).
"""


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

def _probe(model: CpuModel, design: Design, cpuid: CPUID.Cpuid, vs: VcpuState):
    """A stand-in vCPU with the fields the pmu.py predicates read."""
    pmu = SimpleNamespace(nr_arch_gp_counters=min(vs.nr_gp, model.n_gp),
                          nr_arch_fixed_counters=min(vs.nr_fixed, model.n_fixed),
                          pebs_allowed=all(cpuid.has(f) for f in ("DS", "DTES64", "PDCM")))
    return SimpleNamespace(host_cpu=model, design=design, pmu=pmu, cpuid_has=cpuid.has)


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
        probe = _probe(model, d, dst_cpuid, vs)
        pebs = vs.pebs_enable
        if pebs:
            if not kpmu.perf_pebs_virtualization(probe):
                why = ("it requires EPT-friendly PEBS" if d.require_pebs_ept else
                       "the patch only supports Silvermont")
                reasons.append(f"{who}PEBS_ENABLE={pebs:#x} is active but the destination "
                               f"cannot virtualize PEBS: {model.name} under design "
                               f"{d.name!r} ({why})")
            else:
                bad = pebs & ~kpmu.pebs_enable_valid(probe)
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
    knob = getattr(design, "restore_defers_pmu", None)
    if knob is not None:
        return bool(knob)
    return design.pin == "fixed" or design.data_cfg


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


#: MSRs whose host-initiated write only records the value when restore is deferred.
DEFERRED_MSRS = (M.MSR_IA32_DS_AREA, M.MSR_IA32_PEBS_ENABLE, M.MSR_PEBS_DATA_CFG)


def kvm_pmu_set_msr_deferred(v, index: int, data: int) -> None:
    """A host-initiated write of a PEBS MSR that checks and records, nothing more.

    pebslab only: what kvm_pmu_set_msr() would do for DS_AREA, PEBS_ENABLE
    and PEBS_DATA_CFG under a design that defers its side effects (pinning,
    reprogramming) to the end of KVM_SET_MSRS (:func:`defers_pmu_restore`;
    VM_HOOKS item 4). Raises GuestFault where the write would #GP.
    """
    pmu = v.pmu
    if not kpmu.kvm_pmu_msr(v, index):
        raise GuestFault("#GP", msr=index, value=data, reason="not a PMU MSR for this guest")
    if index == M.MSR_IA32_DS_AREA:
        if v.design.ds_area_canonical_check and not C.is_canonical(data):
            raise GuestFault("#GP", msr=index, value=data, reason="non-canonical DS_AREA")
        pmu.ds_area = data
    elif index == M.MSR_IA32_PEBS_ENABLE:
        bad = data & ~kpmu.pebs_enable_valid(v)
        if bad:
            raise GuestFault("#GP", msr=index, value=data,
                             reason=f"reserved PEBS_ENABLE bits {bad:#x}")
        pmu.pebs_enable = data
    elif index == M.MSR_PEBS_DATA_CFG:
        if data & ~M.KVM_PEBS_DATA_CFG_VALID:
            raise GuestFault("#GP", msr=index, value=data, reason="reserved PEBS_DATA_CFG bits")
        pmu.pebs_data_cfg = data
    else:
        raise ValueError(f"index must be one of {', '.join(hex(m) for m in DEFERRED_MSRS)}; "
                         f"got {index:#x}")


def _finish_pmu_restore(v) -> bool:
    """Reprogram every counter and re-pin once all MSRs are in (the deferred design).

    pebslab only (kvm_pmu_handle_event after KVM_REQ_PMU, plus the pin the
    patch does on a PEBS_ENABLE write). Returns False if pinning failed.
    """
    pmu = v.pmu
    for pmc in pmu.pmcs():
        kpmu.reprogram_idx(v, pmc.idx)
    pebs_pin.kvm_pmu_release_pin(v)
    if pmu.pebs_enable and v.design.pin != "none":
        return pebs_pin.pin_for_design(v)
    return True


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
                if defer and msr in DEFERRED_MSRS:
                    kvm_pmu_set_msr_deferred(v, msr, value)
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
            ok = _finish_pmu_restore(v)
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
# dirty logging
# =============================================================================

@dataclass
class DirtyLogState:
    """Per-VM bookkeeping of dirty logging.

    pebslab only. ``protected``: gfns this module write-protected;
    ``always_dirty``: pinned gfns left writable (`fixed`), reported in every
    log until logging stops; ``faults``: write-protection faults taken;
    ``saved``: the methods the instance overrides replaced.
    """

    active: bool = True
    protected: set = field(default_factory=set)
    always_dirty: set = field(default_factory=set)
    faults: int = 0
    saved: dict = field(default_factory=dict)


_STATE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def dirty_log_state(vm) -> DirtyLogState | None:
    """The VM's dirty-logging bookkeeping, or None if logging never started."""
    return _STATE.get(vm)


def _pinned_gfns(vm) -> set[int]:
    mm = vm.host_mm
    out = set()
    for v in vm.vcpus:
        for hfn in v.pmu.pinned_pages:
            if int(mm.owner[hfn]) == vm.id and int(mm.gfn[hfn]) >= 0:
                out.add(int(mm.gfn[hfn]))
    return out


def sync_pinned(vm) -> list[int]:
    """Under `dirty_log_skips_pinned`: make every pinned gfn writable and always dirty.

    pebslab only (the hook get_guest_page needs, VM_HOOKS item 3): a pin taken
    while logging runs (a new PEBS_ENABLE, a re-pin after a remap) must be
    as safe as one taken before. Returns the gfns newly exempted. Sticky: a
    gfn stays always-dirty after its pin is dropped (over-reporting is safe,
    a missed dirty page is not).
    """
    st = _STATE.get(vm)
    if st is None or not st.active or not vm.design.dirty_log_skips_pinned:
        return []
    new = sorted(_pinned_gfns(vm) - st.always_dirty)
    changed = False
    for gfn in new:
        st.always_dirty.add(gfn)
        e = int(vm.ept[gfn])
        if e & EPT_R and not e & EPT_W:
            vm.ept[gfn] = np.uint64(e | EPT_W)
            changed = True
        st.protected.discard(gfn)
    if new:
        vm.vcpus[0].trace("DIRTY_LOG", info=f"pinned gfns {[hex(g) for g in new]} left "
                                            f"writable and always reported dirty")
    if changed:
        vm._invept()
    return new


def dirty_write_fault(vm, gfn: int, source: str, count_exit: bool = True) -> None:
    """A write hit a write-protected page while logging: mark dirty, make writable.

    Models KVM's handling of that EPT violation (fast_page_fault ->
    mark_page_dirty + restoring the W bit) followed by INVEPT. With
    ``count_exit`` the VM exit itself is modeled here too (a guest-software
    write); the run loop has already counted exits it takes.
    """
    st = _STATE.get(vm)
    v = vm.vcpus[0]
    if count_exit:
        v._exit("EPT_VIOLATION", vm.costs.vmexit, gpa=gfn << 12)
    v.charge(DIRTY_FAULT_CYCLES)
    e = int(vm.ept[gfn])
    vm.ept[gfn] = np.uint64(e | EPT_W)
    vm.dirty.add(gfn)
    if st is not None:
        st.faults += 1
        st.protected.discard(gfn)
    v.trace("DIRTY_LOG", gpa=gfn << 12, hpa=e & EPT_ADDR_MASK,
            frame=(e & EPT_ADDR_MASK) >> 12, cost=DIRTY_FAULT_CYCLES,
            info=f"write-protection fault ({source}): gfn {gfn:#x} dirty, W restored")
    vm._invept()


def enable_write_tracking(vm) -> None:
    """Make guest-software writes to write-protected pages take the dirty-log fault.

    pebslab only: GuestPhys only checks EPT_R, so this wraps the VM's
    ``phys.write`` (an instance attribute, not a class change; VM_HOOKS
    item 2). Each page a write touches that is present but not writable
    first takes :func:`dirty_write_fault` (an EPT-violation exit). Idempotent.
    """
    st = _STATE.setdefault(vm, DirtyLogState(active=False))
    if "phys.write" in st.saved:
        return
    phys = vm.phys
    orig = phys.write
    st.saved["phys.write"] = orig

    def write(gpa, data):
        data = bytes(data)
        s = _STATE.get(vm)
        if s is not None and s.active and data:
            first, last = gpa >> 12, (gpa + len(data) - 1) >> 12
            for gfn in range(max(first, 0), min(last, vm.memory_pages - 1) + 1):
                e = int(vm.ept[gfn])
                if e & EPT_R and not e & EPT_W:
                    dirty_write_fault(vm, gfn, "guest software", count_exit=True)
        orig(gpa, data)
        if s is not None and s.active:
            sync_pinned(vm)

    phys.write = write


def _install_ept_handler(vm, st: DirtyLogState) -> None:
    if "handle_ept_violation" in st.saved:
        return
    orig = vm.handle_ept_violation
    st.saved["handle_ept_violation"] = orig

    def handle_ept_violation(gpa, source):
        gfn = gpa >> 12
        s = _STATE.get(vm)
        if s is not None and s.active and 0 <= gfn < vm.memory_pages:
            e = int(vm.ept[gfn])
            if e & EPT_R and not e & EPT_W:
                dirty_write_fault(vm, gfn, source, count_exit=False)
                return
            orig(gpa, source)
            # a page faulted in while logging is reported dirty (its access may
            # have been a write; over-reporting is safe)
            if int(vm.ept[gfn]) & EPT_R:
                vm.dirty.add(gfn)
            return
        orig(gpa, source)

    vm.handle_ept_violation = handle_ept_violation


def _install_wrmsr_hooks(vm, st: DirtyLogState) -> None:
    for v in vm.vcpus:
        key = f"vcpu{v.index}.wrmsr"
        if key in st.saved:
            continue
        orig = v.wrmsr
        st.saved[key] = orig

        def wrmsr(index, value, _orig=orig):
            try:
                _orig(index, value)
            finally:
                sync_pinned(vm)

        v.wrmsr = wrmsr


def _protect(vm, st: DirtyLogState) -> int:
    present = (vm.ept & np.uint64(EPT_R)) != 0
    writable = (vm.ept & np.uint64(EPT_W)) != 0
    mask = present & writable
    if st.always_dirty:
        mask[list(st.always_dirty)] = False
    gfns = np.flatnonzero(mask)
    vm.ept[gfns] &= np.uint64(~EPT_W & 0xFFFFFFFFFFFFFFFF)
    st.protected.update(int(g) for g in gfns)
    vm._invept()
    return len(gfns)


def start_dirty_logging(vm) -> DirtyLogState:
    """Turn on dirty logging: write-protect every EPT entry and start recording writes.

    Models KVM_SET_USER_MEMORY_REGION with KVM_MEM_LOG_DIRTY_PAGES
    (kvm_mmu_slot_remove_write_access + a TLB flush). Under designs with
    ``dirty_log_skips_pinned`` the frames the vPMU pinned stay writable and
    are reported dirty in every log: the CPU cannot take a fault inside a
    PEBS assist. The `patch` write-protects them like any page: the next
    PEBS record into the buffer is an EPT violation inside the assist, which
    Silvermont cannot deliver (the guest crashes) - the patch's migration
    paragraph worries about the PMU state, not about this.
    """
    _check_vm(vm)
    st = _STATE.get(vm)
    if st is None:
        st = _STATE[vm] = DirtyLogState()
    if st.active and vm.dirty_logging:
        return st
    st.active = True
    st.protected = set()
    st.always_dirty = set()
    st.faults = 0
    vm.dirty_logging = True
    vm.dirty.clear()
    enable_write_tracking(vm)
    _install_ept_handler(vm, st)
    _install_wrmsr_hooks(vm, st)
    if vm.design.dirty_log_skips_pinned:
        st.always_dirty = _pinned_gfns(vm)
    n = _protect(vm, st)
    vm.vcpus[0].trace("DIRTY_LOG", value=n,
                      info=f"dirty logging on: {n} pages write-protected"
                           + (f", pinned gfns {sorted(hex(g) for g in st.always_dirty)} left "
                              f"writable (always dirty)" if st.always_dirty else ""))
    return st


def get_dirty_log(vm, clear: bool = True) -> list[int]:
    """Return the gfns written since the last call (KVM_GET_DIRTY_LOG), sorted.

    Models kvm_vm_ioctl_get_dirty_log: the bitmap of pages marked dirty,
    plus (under ``dirty_log_skips_pinned``) every pinned page, which is
    never write-protected and so must always be assumed written. With
    ``clear`` the bitmap is reset and the reported pages write-protected
    again (kvm_arch_mmu_enable_log_dirty_pt_masked).
    """
    st = _STATE.get(vm)
    if st is None or not st.active:
        raise ValueError("dirty logging is not enabled on this VM (start_dirty_logging)")
    sync_pinned(vm)
    out = sorted(set(vm.dirty) | st.always_dirty)
    if clear:
        vm.dirty.clear()
        _protect(vm, st)
    vm.vcpus[0].trace("DIRTY_LOG", value=len(out),
                      info=f"KVM_GET_DIRTY_LOG: {len(out)} dirty pages"
                           + (" (cleared, re-protected)" if clear else ""))
    return out


def stop_dirty_logging(vm) -> None:
    """Turn dirty logging off: make the protected pages writable, drop the wrappers.

    Models KVM_SET_USER_MEMORY_REGION without KVM_MEM_LOG_DIRTY_PAGES.
    """
    st = _STATE.get(vm)
    if st is None:
        return
    for gfn in st.protected:
        e = int(vm.ept[gfn])
        if e & EPT_R:
            vm.ept[gfn] = np.uint64(e | EPT_W)
    st.protected = set()
    st.active = False
    vm.dirty_logging = False
    for key, orig in st.saved.items():
        if key == "phys.write":
            del vm.phys.write
        elif key == "handle_ept_violation":
            del vm.handle_ept_violation
        else:
            idx = int(key[len("vcpu"):].split(".")[0])
            del vm.vcpus[idx].wrmsr
    st.saved = {}
    vm._invept()
    vm.vcpus[0].trace("DIRTY_LOG", info="dirty logging off")


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
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 0 <= rounds <= 100:
        raise ValueError(f"rounds must be an int in 0..100; got {rounds!r}")
    if isinstance(instructions_per_round, bool) or not isinstance(instructions_per_round, int) \
            or not 0 <= instructions_per_round <= 10**9:
        raise ValueError(f"instructions_per_round must be an int in 0..10**9; "
                         f"got {instructions_per_round!r}")
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
