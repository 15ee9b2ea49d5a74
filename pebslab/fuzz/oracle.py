"""What each PMU MSR must do for a guest, written from the sources, not from pebslab.kvm.

pebslab only. The fuzzer compares every guest WRMSR / RDMSR with this
oracle. It is deliberately a second, independent statement of the rules:
it reads no mask or helper of ``pebslab/kvm`` (a mistake copied into both
would pass both) and only the *names* of the designs, never their knobs.
Its sources, per rule:

* the 2014 ``arch/x86/kvm/pmu.c`` (Linux 3.15) that the patch applies to,
  and the patch's own hunks (the seed document): ``kvm_pmu_msr``,
  ``kvm_pmu_get_msr``, ``kvm_pmu_set_msr``, ``kvm_pmu_cpuid_update``;
* FACTS.md: b.1 (MSR numbers), b.2 (EVENTSEL bits), b.3 (FIXED_CTR_CTRL),
  b.4 (GLOBAL_* reserved bits), b.5 (PEBS_ENABLE), b.6 (PERF_CAPABILITIES
  and the upstream gating), b.8 (width, sign extension, the 0x4C1 alias),
  c.4 (upstream DS_AREA / DATA_CFG checks), g.3 (Silvermont);
* DESIGN.md section 4 and the FIXES table for what the `review` and `fixed`
  designs promise beyond the patch.

Designs, as the oracle reads them:

``patch``
    2014 rules plus the patch: DS_AREA, PEBS_ENABLE and PERF_CAPABILITIES
    exist iff the host can virtualize PEBS (``perf_pebs_virtualization``,
    Silvermont only, FACTS e); PEBS_ENABLE accepts exactly 0xf0000000f;
    DS_AREA takes any value; PERF_CAPABILITIES reads the host's
    PEBS_TRAP | ARCH_REG | PEBS_FORMAT and is read-only.
``review``
    ``patch`` plus Eric Northup's request: the three PEBS MSRs also need
    DS, DTES64 and PDCM in the guest CPUID (and a vPMU).
``fixed``
    ``review`` plus: PEBS_ENABLE accepts only what the host CPU has (its
    PEBS-capable GP counters; the load-latency bits only on CPUs with the
    load-latency facility, which Silvermont lacks, FACTS g.3); a
    non-canonical DS_AREA is #GP; a PEBS set-up it cannot pin may be
    refused with #GP (the campaign accepts that #GP, see actions.py).
``icelake``
    upstream ``vmx/pmu_intel.c`` on EPT-friendly hosts (FACTS b.4-b.8,
    c.4): PEBS MSRs gated on the guest CPUID, extended PEBS bits from the
    guest's PERF_CAPABILITIES (BASELINE), the full-width alias with
    FW_WRITES, fixed counters written full width, IN_TXCP on counter 2.

Every design: KVM exposes at most three fixed counters, the ones it can
back (``fixed_pmc_events`` has three entries in the patch's pmu.c;
upstream caps ``num_counters_fixed`` at ``KVM_PMC_MAX_FIXED``), whatever
the host has; the guest's CPUID leaf 0xA says so too.

MSRs the model does not emulate yet (MISC_ENABLE, DEBUGCTL) are listed in
:data:`UNMODELED` with the rule real KVM follows; for them the campaign only
checks that the guest gets a modeled outcome (a value or ``#GP``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hw import msr as M
from ..hw.mmu import is_canonical
from ..hw.models import get_model

U64 = (1 << 64) - 1

#: the designs whose MSR rules are the 2014 pmu.c with the patch (upstream: `icelake`)
ERA_2014 = ("patch", "review", "fixed")

#: fixed counters KVM can back: fixed_pmc_events[] = {1, 0, 7} in the patch's pmu.c;
#: upstream min(num_counters_fixed, KVM_PMC_MAX_FIXED) in kvm_init_pmu_capability
KVM_MAX_FIXED = 3
#: 2014 kvm_pmu_cpuid_update: reserved EVENTSEL bits (ANY and 63:32) before TSX
EVENTSEL_RESERVED_2014 = 0xFFFF_FFFF_0020_0000
#: 2014 kvm_pmu_set_msr: FIXED_CTR_CTRL accepts bits 11:0 except AnyThread (2, 6, 10)
FIXED_CTR_CTRL_VALID_2014 = 0xBBB
#: the patch: "if (data & ~0xf0000000fULL) break;" (#GP)
PEBS_ENABLE_VALID_PATCH = 0xF_0000_000F
#: the patch's "Report host PEBS format to guest"
PERF_CAP_PATCH = M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG | M.PERF_CAP_PEBS_FORMAT
#: upstream: what KVM passes through of the host PERF_CAPABILITIES (FACTS b.6; ASSUMPTION
#: for the LBR format: an Ice Lake host's LBRs are compatible with the guest's)
PERF_CAP_UPSTREAM = (M.PERF_CAP_LBR_FMT | PERF_CAP_PATCH | M.PERF_CAP_FW_WRITES
                     | M.PERF_CAP_PEBS_BASELINE)
#: upstream pebs_data_cfg_rsvd = ~0xff00000f (FACTS a.3 / c.4)
DATA_CFG_VALID = 0xFF00_000F
#: GLOBAL_STATUS / OVF_CTRL bits beyond the counters: 62 OvfBuffer, 63 CondChgd (FACTS b.4)
STATUS_EXTRA = M.GLOBAL_STATUS_BUFFER_OVF | M.GLOBAL_STATUS_COND_CHG
#: CPUs with the load-latency facility (PEBS_ENABLE bits 35:32, FACTS b.5); Silvermont has
#: none (FACTS g.3: no load-latency event, no MSR_PEBS_LD_LAT_THRESHOLD)
LOAD_LATENCY = {"silvermont": False, "haswell": True, "skylake": True, "icelake": True}

MSR_IA32_DEBUGCTLMSR = 0x1D9
#: MSRs real KVM emulates that pebslab's KVM does not (yet): the rule, and its source
UNMODELED = {
    M.MSR_IA32_MISC_ENABLE: "always emulated: a read never faults; bit 12 (PEBS_UNAVAIL) "
                            "tells the guest whether PEBS exists (FACTS b.1, c.4; issue 9)",
    MSR_IA32_DEBUGCTLMSR: "3.x kvm_set_msr_common: a write of 0, or of LBR/BTF only "
                          "(ignored), is accepted; any other bit #GP (reads: UNVERIFIED)",
}


def pebs_possible(design: str, cpu: str) -> bool:
    """Can a guest get PEBS at all under this design on this host CPU?

    pebslab only. The patch's perf_pebs_virtualization(): Silvermont only
    (the commit message, FACTS e); `icelake`: EPT-friendly PEBS (FACTS c.2).
    """
    if design == "icelake":
        return get_model(cpu).pebs_ept
    return get_model(cpu).name == "silvermont"


def pmu_msr_indices(cpu: str) -> tuple[int, ...]:
    """Every MSR index a campaign on this host CPU must cover, in a fixed order.

    pebslab only. The PMU ranges of FACTS b.1 up to one index past the last
    counter the host has (past the third fixed counter at least), the global
    and PEBS MSRs, PERF_CAPABILITIES, MISC_ENABLE and DEBUGCTL.
    """
    m = get_model(cpu)
    gp = range(m.n_gp + 1)
    out = [M.MSR_IA32_PERFCTR0 + i for i in gp]
    out += [M.MSR_IA32_PMC0 + i for i in gp]
    out += [M.MSR_P6_EVNTSEL0 + i for i in gp]
    out += [M.MSR_CORE_PERF_FIXED_CTR0 + i for i in range(max(m.n_fixed, KVM_MAX_FIXED) + 1)]
    out += [M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
            M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
            M.MSR_IA32_PEBS_ENABLE, M.MSR_PEBS_DATA_CFG, M.MSR_PEBS_LD_LAT_THRESHOLD,
            M.MSR_IA32_DS_AREA, M.MSR_IA32_PERF_CAPABILITIES, M.MSR_IA32_MISC_ENABLE,
            MSR_IA32_DEBUGCTLMSR]
    return tuple(out)


def sext32(v: int) -> int:
    """Sign-extend the low 32 bits (what 2014 KVM does to a guest counter write)."""
    v &= 0xFFFF_FFFF
    return v - (1 << 32) if v & 0x8000_0000 else v


@dataclass(frozen=True)
class Verdict:
    """The oracle's answer for one WRMSR.

    ``accept``: True (no fault), False (#GP) or None (not modeled: either).
    ``readback``: the value an RDMSR right after must return (None: not
    checked). ``rule``: a short, stable name of the rule that decided; it
    is part of a violation's signature.
    """

    accept: bool | None
    readback: int | None
    rule: str


class MsrOracle:
    """The PMU MSRs one guest has, which bits it may set, what it reads back.

    pebslab only. Built from the design's *name*, the host CPU model and the
    guest CPUID as KVM filtered it (what ``kvm_pmu_cpuid_update`` reads).
    """

    def __init__(self, design: str, cpu: str, guest_cpuid):
        self.design = design
        self.host = get_model(cpu)
        host = self.host
        self.upstream = design not in ERA_2014
        leaf = guest_cpuid.pmu()
        self.version = leaf["version"]
        if self.version:
            self.nr_gp = min(leaf["num_counters"], host.n_gp)
            self.gp_mask = (1 << min(leaf["bit_width"], host.width)) - 1
        else:
            self.nr_gp, self.gp_mask = 0, 0
        if self.version > 1:
            self.nr_fixed = min(leaf["num_counters_fixed"], host.n_fixed, KVM_MAX_FIXED)
            self.fixed_mask = (1 << min(leaf["bit_width_fixed"], host.width)) - 1
        else:
            self.nr_fixed, self.fixed_mask = 0, 0
        self.counters = ((1 << self.nr_gp) - 1) | \
            (((1 << self.nr_fixed) - 1) << M.INTEL_PMC_IDX_FIXED)
        #: fixed counters of the host that KVM must not expose (beyond the ones it backs)
        self.absent_fixed = (((1 << host.n_fixed) - 1) << M.INTEL_PMC_IDX_FIXED) \
            & ~self.counters & (0xF << M.INTEL_PMC_IDX_FIXED)
        has = guest_cpuid.has
        pebs_cpuid = all(has(f) for f in ("DS", "DTES64", "PDCM")) and self.version > 0
        self.pebs_msrs = pebs_possible(design, host.name) and (design == "patch" or pebs_cpuid)
        # PERF_CAPABILITIES as the guest reads it
        if not self.pebs_msrs:
            self.perf_cap = 0
        elif self.upstream:
            self.perf_cap = host.perf_capabilities & PERF_CAP_UPSTREAM
        else:
            self.perf_cap = host.perf_capabilities & PERF_CAP_PATCH
        self.fw_writes = self.upstream and bool(self.perf_cap & M.PERF_CAP_FW_WRITES)
        fmt = (self.perf_cap & M.PERF_CAP_PEBS_FORMAT) >> M.PERF_CAP_PEBS_FORMAT_SHIFT
        self.baseline = self.upstream and bool(self.perf_cap & M.PERF_CAP_PEBS_BASELINE)
        self.data_cfg = self.baseline and fmt > 3
        # EVENTSEL reserved bits (2014 kvm_pmu_cpuid_update; ASSUMPTION: the guest's CPUID
        # leaf 7 advertises HLE/RTM exactly when the host has TSX)
        res = EVENTSEL_RESERVED_2014
        if self.version and host.has_tsx:
            res &= ~(M.HSW_IN_TX | M.HSW_IN_TX_CHECKPOINTED)
        if self.baseline:
            res &= ~M.ICL_EVENTSEL_ADAPTIVE
        self.eventsel_reserved = res
        # FIXED_CTR_CTRL: OS|USR|PMI per counter it has (+ Adaptive_Record with baseline)
        if self.upstream:
            fv = 0
            for i in range(self.nr_fixed):
                fv |= 0xB << 4 * i
                if self.baseline:
                    fv |= M.ICL_FIXED_0_ADAPTIVE << 4 * i
        else:
            fv = FIXED_CTR_CTRL_VALID_2014
        self.fixed_ctrl_valid = fv
        # PEBS_ENABLE
        if design in ("patch", "review"):
            pv = PEBS_ENABLE_VALID_PATCH
        elif design == "fixed":
            gp = host.pebs_counter_mask & ((1 << self.nr_gp) - 1)
            pv = gp | (gp << M.PEBS_LL_EN_SHIFT if LOAD_LATENCY[host.name] else 0)
        elif self.baseline:
            pv = self.counters           # pebs_enable_rsvd = global_ctrl_rsvd (FACTS b.5)
        else:
            pv = (1 << self.nr_gp) - 1
        self.pebs_enable_valid = pv

    # ---- which MSR is what --------------------------------------------------------
    def kind(self, msr: int) -> tuple[str, int] | None:
        """(kind, index) of an MSR this guest has, ("unmodeled", 0), or None (#GP)."""
        if msr in UNMODELED:
            return "unmodeled", 0
        for base, kind, n in ((M.MSR_IA32_PERFCTR0, "pmc", self.nr_gp),
                              (M.MSR_P6_EVNTSEL0, "evtsel", self.nr_gp),
                              (M.MSR_CORE_PERF_FIXED_CTR0, "fixed", self.nr_fixed),
                              (M.MSR_IA32_PMC0, "pmc_fw", self.nr_gp if self.fw_writes else 0)):
            if base <= msr < base + n:
                return kind, msr - base
        if self.version > 1:
            k = {M.MSR_CORE_PERF_FIXED_CTR_CTRL: "fixed_ctrl",
                 M.MSR_CORE_PERF_GLOBAL_STATUS: "status",
                 M.MSR_CORE_PERF_GLOBAL_CTRL: "ctrl",
                 M.MSR_CORE_PERF_GLOBAL_OVF_CTRL: "ovf"}.get(msr)
            if k:
                return k, 0
        if self.pebs_msrs:
            k = {M.MSR_IA32_DS_AREA: "ds", M.MSR_IA32_PEBS_ENABLE: "pebs_en",
                 M.MSR_IA32_PERF_CAPABILITIES: "perf_cap"}.get(msr)
            if k:
                return k, 0
        if self.data_cfg and msr == M.MSR_PEBS_DATA_CFG:
            return "data_cfg", 0
        return None

    def absent_rule(self, msr: int) -> str:
        """Why the guest has no such MSR (the rule named in a violation)."""
        f0 = M.MSR_CORE_PERF_FIXED_CTR0
        if f0 + self.nr_fixed <= msr < f0 + M.INTEL_PMC_MAX_FIXED + 1:
            return "absent-fixed-counter"
        for base in (M.MSR_IA32_PERFCTR0, M.MSR_P6_EVNTSEL0, M.MSR_IA32_PMC0):
            if base <= msr < base + M.INTEL_PMC_MAX_GENERIC + 1:
                return "absent-gp-counter"
        return "absent-msr"

    def valid_bits(self, msr: int) -> int:
        """Every bit the guest may set in a write of ``msr`` (0 if it may set none)."""
        k = self.kind(msr)
        if k is None or k[0] in ("unmodeled", "status", "perf_cap"):
            return 0
        kind, idx = k
        return {
            "pmc": U64, "pmc_fw": self.gp_mask, "fixed": U64,
            "evtsel": U64 & ~self._evtsel_reserved(idx),
            "fixed_ctrl": self.fixed_ctrl_valid, "ctrl": self.counters,
            "ovf": self.counters | STATUS_EXTRA, "pebs_en": self.pebs_enable_valid,
            "data_cfg": DATA_CFG_VALID, "ds": U64,
        }[kind]

    def _evtsel_reserved(self, idx: int) -> int:
        res = self.eventsel_reserved
        if self.upstream and self.host.has_tsx and idx != 2:
            res |= M.HSW_IN_TX_CHECKPOINTED        # upstream: IN_TXCP on counter 2 only (b.2)
        return res

    def _reserved_rule(self, msr: int, bad: int) -> str:
        """Name the rule a write with reserved bits ``bad`` breaks."""
        if msr in (M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
                   M.MSR_IA32_PEBS_ENABLE) and bad and not bad & ~self.absent_fixed:
            return "absent-fixed-counter"
        if msr == M.MSR_CORE_PERF_FIXED_CTR_CTRL:
            fields = 0
            for i in range(KVM_MAX_FIXED, M.INTEL_PMC_MAX_FIXED):
                if self.absent_fixed >> (M.INTEL_PMC_IDX_FIXED + i) & 1:
                    fields |= 0xF << 4 * i | M.ICL_FIXED_0_ADAPTIVE << 4 * i
            if bad and not bad & ~fields:
                return "absent-fixed-counter"
        adaptive = M.ICL_EVENTSEL_ADAPTIVE if msr != M.MSR_CORE_PERF_FIXED_CTR_CTRL else \
            sum(M.ICL_FIXED_0_ADAPTIVE << 4 * i for i in range(M.INTEL_PMC_MAX_FIXED))
        if self.upstream and not self.baseline and bad and not bad & ~adaptive \
                and (msr == M.MSR_CORE_PERF_FIXED_CTR_CTRL
                     or M.MSR_P6_EVNTSEL0 <= msr < M.MSR_P6_EVNTSEL0 + self.nr_gp):
            return "adaptive-without-baseline"
        if msr == M.MSR_IA32_PEBS_ENABLE and not LOAD_LATENCY[self.host.name] \
                and bad and not bad & ~(0xF << M.PEBS_LL_EN_SHIFT):
            return "no-load-latency"
        k = self.kind(msr)
        return f"reserved-bits:{k[0] if k else M.msr_name(msr)}"

    # ---- writes --------------------------------------------------------------------
    def write(self, msr: int, value: int, current: int | None = None) -> Verdict:
        """The verdict on a guest WRMSR of ``value`` (``current``: the MSR's value before)."""
        k = self.kind(msr)
        if k is None:
            return Verdict(False, None, self.absent_rule(msr))
        kind, idx = k
        if kind == "unmodeled":
            return Verdict(None, None, "unmodeled")
        if kind == "pmc":         # 2014 and upstream: the legacy alias sign-extends (b.8)
            return Verdict(True, sext32(value) & self.gp_mask, "counter-write")
        if kind == "pmc_fw":      # upstream: bits above the width #GP (b.8)
            if value & ~self.gp_mask:
                return Verdict(False, None, "reserved-bits:pmc_fw")
            return Verdict(True, value, "counter-write")
        if kind == "fixed":       # 2014 sign-extends fixed counters too; upstream full width
            v = value if self.upstream else sext32(value)
            return Verdict(True, v & self.fixed_mask, "counter-write")
        if kind in ("status", "perf_cap"):
            return Verdict(False, None, f"read-only:{kind}")
        if kind == "ds":
            if self.design in ("fixed", "icelake") and not is_canonical(value):
                return Verdict(False, None, "non-canonical-ds-area")
            return Verdict(True, value, "ds-area")
        valid = self.valid_bits(msr)
        # 2014 (and upstream for EVENTSEL) accept an unchanged value without a check
        unchanged_ok = kind == "evtsel" or (not self.upstream and kind in ("fixed_ctrl", "ctrl"))
        if value & ~valid and not (unchanged_ok and value == current):
            return Verdict(False, None, self._reserved_rule(msr, value & ~valid))
        if kind == "ovf" and self.upstream:
            return Verdict(True, None, "ovf-ctrl")     # UNVERIFIED what upstream reads back
        return Verdict(True, value, "control-write")

    # ---- reads ---------------------------------------------------------------------------
    def read_problem(self, msr: int, value: int) -> tuple[str, str] | None:
        """(rule, message) if ``value`` is impossible for an RDMSR of ``msr``, else None."""
        k = self.kind(msr)
        if k is None:
            return self.absent_rule(msr), "RDMSR of an MSR the guest does not have succeeded"
        kind, idx = k
        if kind == "unmodeled":
            return None
        if kind == "perf_cap":
            if value != self.perf_cap:
                return "perf-capabilities", f"reads {value:#x}, expected {self.perf_cap:#x}"
            return None
        allowed = {
            "pmc": self.gp_mask, "pmc_fw": self.gp_mask, "fixed": self.fixed_mask,
            "status": self.counters | STATUS_EXTRA, "ds": U64,
        }.get(kind)
        if allowed is None:
            allowed = self.valid_bits(msr)
        bad = value & ~allowed
        if kind == "ds" and self.design in ("fixed", "icelake") and not is_canonical(value):
            bad = value
        if bad:
            return (self._reserved_rule(msr, bad) if kind != "ds" else "non-canonical-ds-area",
                    f"reads {value:#x}: bits {bad:#x} are outside what the guest may see")
        return None


def cpuid_problems(design: str, cpu: str, requested, guest) -> list[tuple[str, str]]:
    """(rule, message) for each way the guest CPUID differs from what KVM must expose.

    pebslab only. The patch's __do_cpuid_ent hunk: DS, DTES64 and PDCM only
    when the host can virtualize PEBS (and userspace asked for them); leaf
    0xA: version at most 2 in the 2014 code; at most three fixed counters in
    every design (the ones KVM can back).
    """
    out = []
    for f in ("DS", "DTES64", "PDCM"):
        want = requested.has(f) and pebs_possible(design, cpu)
        if guest.has(f) != want:
            out.append((f"cpuid-{f}", f"guest CPUID {f}={guest.has(f)}, expected {want} "
                                      f"({design} on {cpu})"))
    leaf = guest.pmu()
    if design in ERA_2014 and leaf["version"] > 2:
        out.append(("cpuid-pmu-version", f"CPUID.0AH version {leaf['version']} > 2 (2014 KVM)"))
    if leaf["version"] > 1 and leaf["num_counters_fixed"] > KVM_MAX_FIXED:
        out.append(("absent-fixed-counter",
                    f"CPUID.0AH:EDX advertises {leaf['num_counters_fixed']} fixed counters; "
                    f"KVM can back {KVM_MAX_FIXED}"))
    return out
