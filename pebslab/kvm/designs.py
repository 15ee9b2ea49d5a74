"""The design variants a learner compares: ``patch``, ``review``, ``fixed``, ``icelake``.

pebslab only. A design is a frozen dataclass of knobs; the few KVM functions
whose behaviour differs read a knob. ``patch`` is the 2014 posting exactly;
every knob that ``fixed`` changes is one named correction (see FIXES).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .._check import check_int

DESIGN_NAMES = ("patch", "review", "fixed", "icelake")


@dataclass(frozen=True)
class Design:
    """Knobs of the KVM PEBS implementation.

    pebslab only. Defaults are the 2014 patch's behaviour.
    """

    name: str = "patch"
    # --- who may see the PEBS MSRs (kvm_pmu_msr) ---------------------------------
    #: "host": PEBS MSRs exist iff the host supports PEBS virtualization (patch);
    #: "guest_cpuid": only if the guest's CPUID advertises DS/DTES64/PDCM (review).
    pebs_msrs_gate: str = "host"
    # --- pinning (kvm_pmu_pebs_pin) -----------------------------------------------
    #: "patch": the posted page range and 17-page cap; "fixed": every page of
    #: the DS area and of [base, absolute_maximum), or refuse; "none": no pinning.
    pin: str = "patch"
    pin_limit: int = 17                    # MAX_PINNED_PAGES in the patch
    #: re-pin when DS_AREA changes while PEBS is enabled (patch: only on a new
    #: PEBS_ENABLE value)
    repin_on_ds_area_write: bool = False
    #: track writes to the guest page-table pages that map DS and buffer
    #: (KVM page tracking) and re-pin when the guest remaps them
    track_guest_page_tables: bool = False
    #: also pin the guest page-table pages the CPU walks to reach DS and buffer
    #: (the assist translates through them; the patch pins only the data pages)
    pin_page_tables: bool = False
    #: reprogram the counters whose PEBS_ENABLE bit flips (the patch only looks at
    #: PEBS_ENABLE when an event select or GLOBAL_CTRL is written, so a counter
    #: keeps a precise host event after PEBS_ENABLE = 0 while its pins are gone)
    reprogram_on_pebs_enable: bool = False
    #: pin failure: "ignore" (printk_once, PEBS stays enabled) or "gp" (refuse)
    pin_failure: str = "ignore"
    # --- MSR checks -----------------------------------------------------------------
    #: "patch": PEBS_ENABLE valid bits 0xf0000000f; "model": the CPU's PEBS counters
    pebs_enable_mask: str = "patch"
    ds_area_canonical_check: bool = False
    #: PERF_CAPABILITIES bits reported: "patch" (trap, arch_reg, format only)
    #: or "full" (host value filtered to what KVM supports)
    perf_cap_bits: str = "patch"
    #: vCPU reset clears PEBS_ENABLE/DS_AREA and drops pins (patch: it does not)
    reset_clears_pebs: bool = False
    # --- VMX MSR switching ------------------------------------------------------------
    switch_global_ctrl: bool = True
    switch_pebs_enable: bool = True
    switch_ds_area: bool = True
    #: remove DS_AREA from the autoload list when the guest writes 0 (patch leaves
    #: a stale entry)
    ds_area_clear_on_zero: bool = False
    #: what to do when the autoload list is full: "warn" (2014: printk, MSR not
    #: switched) or "disable_pebs" (do not run the guest with PEBS enabled)
    autoload_full: str = "warn"
    # --- what KVM exposes (kvm_pmu_cpuid_update / intel_pmu_refresh) ------------------
    #: highest PMU version KVM exposes, whatever CPUID userspace passes. 2014:
    #: __do_cpuid_ent caps CPUID.0AH at version 2; upstream kvm_pmu_cap keeps the
    #: same cap (kvm_init_pmu_capability, pmu.h/pmu.c)
    pmu_version_cap: int = 2
    #: fixed counters KVM can back with a perf event (fixed_pmc_events[] has 3
    #: entries; INTEL_PMC_MAX_FIXED was 3 in 2014, KVM_PMC_MAX_FIXED 3 upstream)
    max_fixed_counters: int = 3
    # --- later upstream design (Ice Lake server) -----------------------------------
    #: host condition for guest PEBS: "silvermont" (the patch: perf_pebs_virtualization,
    #: ASSUMPTION from the cover text) or "pebs_ept" (EPT-friendly PEBS, x86_pmu.pebs_ept)
    require_pebs_ept: bool = False
    #: cross-mapped counters (host counter != guest counter) lose guest PEBS
    cross_mapped_disable: bool = False
    #: host PEBS use disables guest PEBS while the guest runs
    host_pebs_disables_guest: bool = False
    #: MSR_PEBS_DATA_CFG emulated and switched at VM entry (adaptive PEBS groups)
    data_cfg: bool = False
    #: extended PEBS: PEBS_ENABLE bits 32+i for fixed counters, and a fixed
    #: counter's host event is precise when its bit is set (PERF_CAP_PEBS_BASELINE)
    fixed_counter_pebs: bool = False
    #: the adaptive-record bits (EVENTSEL bit 34, FIXED_CTR_CTRL bit 32+4i) are
    #: writable on a host with adaptive PEBS (intel_pmu_refresh with BASELINE)
    adaptive_pebs: bool = False
    #: later KVM MSR rules: the full-width counter alias 0x4C1 (when the guest's
    #: PERF_CAPABILITIES has FW_WRITES), fixed counters written full width
    #: (commit 2924b52117b2), IN_TXCP only on counter 2
    upstream_msr_semantics: bool = False
    # --- migration / dirty logging ----------------------------------------------------
    #: dirty logging leaves pinned PEBS pages writable and reports them dirty
    dirty_log_skips_pinned: bool = False
    #: a host-initiated (KVM_SET_MSRS) write of DS_AREA/PEBS_ENABLE/PEBS_DATA_CFG only
    #: records the value; counters are reprogrammed and pages pinned once at the end
    #: (upstream since 68fb4757e867, v6.2: reprogramming deferred to KVM_REQ_PMU)
    restore_defers_pmu: bool = False
    # --- MMU notifier (issue 9 item 8; kvm/mmu_notifier.py) -----------------------
    #: after the MMU notifier zaps the EPT entry of a pinned page, re-establish the
    #: EPT entries of every pinned page (DS, buffer, guest page tables) before the
    #: next VM entry, guest PEBS off until then (as KVM_REQ_APIC_PAGE_RELOAD does
    #: for the APIC-access page, ~v3.18; FACTS g.1). The patch: nothing reloads.
    reload_pinned_ept: bool = False

    def __post_init__(self):
        choices = {
            "pebs_msrs_gate": ("host", "guest_cpuid"),
            "pin": ("patch", "fixed", "none"),
            "pin_failure": ("ignore", "gp"),
            "pebs_enable_mask": ("patch", "model"),
            "perf_cap_bits": ("patch", "full"),
            "autoload_full": ("warn", "disable_pebs"),
        }
        for name, allowed in choices.items():
            v = getattr(self, name)
            if v not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; "
                                 f"got {v!r}")
        for f in fields(self):
            if f.type in ("bool", bool) and not isinstance(getattr(self, f.name), bool):
                raise TypeError(f"{f.name} must be a bool; got "
                                f"{type(getattr(self, f.name)).__name__} {getattr(self, f.name)!r}")
        for name, lo, hi in (("pin_limit", 1, 4096), ("pmu_version_cap", 1, 5),
                             ("max_fixed_counters", 0, 4)):
            check_int(name, getattr(self, name), lo, hi)

    def diff(self, other: "Design") -> dict[str, tuple]:
        """Knobs that differ from ``other``: name -> (self value, other value)."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name))
                for f in fields(self) if f.name != "name"
                and getattr(self, f.name) != getattr(other, f.name)}


PATCH = Design()
REVIEW = replace(PATCH, name="review", pebs_msrs_gate="guest_cpuid")
FIXED = replace(
    REVIEW, name="fixed", pin="fixed", pin_limit=33, repin_on_ds_area_write=True,
    track_guest_page_tables=True, pin_page_tables=True, pin_failure="gp",
    reprogram_on_pebs_enable=True, pebs_enable_mask="model",
    ds_area_canonical_check=True, reset_clears_pebs=True, ds_area_clear_on_zero=True,
    autoload_full="disable_pebs", dirty_log_skips_pinned=True, restore_defers_pmu=True,
    reload_pinned_ept=True,
)
ICELAKE = replace(
    REVIEW, name="icelake", pin="none", pebs_enable_mask="model",
    ds_area_canonical_check=True, reset_clears_pebs=True, ds_area_clear_on_zero=True,
    perf_cap_bits="full", require_pebs_ept=True, cross_mapped_disable=True,
    host_pebs_disables_guest=True, data_cfg=True, fixed_counter_pebs=True, adaptive_pebs=True,
    autoload_full="disable_pebs", reprogram_on_pebs_enable=True, upstream_msr_semantics=True,
    restore_defers_pmu=True,
)
DESIGNS = {"patch": PATCH, "review": REVIEW, "fixed": FIXED, "icelake": ICELAKE}

#: Each correction in ``fixed``, named, with the patch behaviour it replaces.
FIXES = {
    "pebs_msrs_gate": "PEBS MSRs #GP unless the guest's CPUID advertises DS, DTES64 and PDCM "
                      "(Eric Northup's review)",
    "pin": "pin every page the DS area and the buffer [base, absolute_maximum) touch; the patch "
           "misses the last page of an unaligned buffer",
    "pin_limit": "room for a 128 KiB buffer plus a straddling DS area instead of silently "
                 "pinning only the first 17 pages",
    "repin_on_ds_area_write": "a new DS_AREA while PEBS is on re-pins (the patch keeps the old "
                              "pins and leaves the new area unpinned)",
    "track_guest_page_tables": "write-track the guest page-table pages that map DS and buffer and "
                               "re-pin when the guest remaps them",
    "pin_page_tables": "pin the guest page-table pages the PEBS assist walks; the patch pins "
                       "only the data pages, so reclaiming a page-table page crashes the guest",
    "reprogram_on_pebs_enable": "a PEBS_ENABLE change reprograms the counters it flips, so "
                                "PEBS_ENABLE = 0 really stops the CPU's PEBS writes before the "
                                "pins are dropped",
    "pin_failure": "a failed pin refuses PEBS_ENABLE (#GP) instead of leaving PEBS on over "
                   "unpinned memory",
    "pebs_enable_mask": "PEBS_ENABLE accepts only the CPU's PEBS-capable counters",
    "ds_area_canonical_check": "non-canonical DS_AREA is #GP (as upstream KVM does)",
    "reset_clears_pebs": "vCPU reset clears PEBS_ENABLE and DS_AREA and drops the pins",
    "ds_area_clear_on_zero": "DS_AREA = 0 removes the stale autoload entry",
    "autoload_full": "a full MSR autoload list keeps guest PEBS off instead of running the guest "
                     "with the host's DS_AREA",
    "dirty_log_skips_pinned": "dirty logging does not write-protect pinned PEBS pages (the CPU "
                              "cannot take that fault); they are always reported dirty",
    "reload_pinned_ept": "a pin keeps the frame, not the EPT entry: after the MMU notifier zaps "
                         "one, the EPT entries of the pinned pages are re-established before the "
                         "next entry (guest PEBS off until then)",
}


def pebs_virtualization_supported(cpu, design: Design) -> bool:
    """Can this host CPU virtualize PEBS under this design? The one answer.

    `patch`/`review`/`fixed`: perf_pebs_virtualization() of the 2014 series
    (patches 1-3, not archived; FACTS e). ASSUMPTION from the cover text "it
    currently only works on Silvermont based systems": true on Silvermont
    only. `icelake` (``require_pebs_ept``): EPT-friendly PEBS
    (x86_pmu.pebs_ept, FACTS c.2). Used by the CPUID filter (kvm/cpuid.py),
    kvm_pmu_msr (kvm/pmu.py) and the VMM's migration check (vmm/migrate.py).
    """
    if design.require_pebs_ept:
        return bool(cpu.pebs_ept)
    return cpu.name == "silvermont"


def get_design(design="patch", **overrides) -> Design:
    """Return a design by name (or pass one through), with knob overrides."""
    if isinstance(design, Design):
        base = design
    elif isinstance(design, str):
        try:
            base = DESIGNS[design]
        except KeyError:
            raise ValueError(f"design must be one of {', '.join(map(repr, DESIGN_NAMES))}; "
                             f"got {design!r}") from None
    else:
        raise TypeError(f"design must be a str or Design; got {type(design).__name__}")
    if overrides:
        valid = {f.name for f in fields(Design)}
        for k in overrides:
            if k not in valid:
                raise ValueError(f"knob must be one of {', '.join(sorted(valid))}; got {k!r}")
        base = replace(base, **overrides)
    return base
