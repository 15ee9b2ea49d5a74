"""CPU models: the PMU facts of each simulated Intel core.

pebslab only. Each :class:`CpuModel` gathers what Linux learns from CPUID
leaf 0xA, IA32_PERF_CAPABILITIES and its per-model tables in
arch/x86/events/intel/core.c and ds.c. Values marked ASSUMPTION are not
confirmed by a source in the project's FACTS notes; they are named here so a
notebook can say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from . import msr as M
from .pebs import record_size

# Instruction kinds of a workload trace (pebslab.workloads builds them, the
# core decides from them which events an instruction signals). Calls,
# returns, jumps and syscall/sysret are all branches.
KIND_ALU = 0         # register arithmetic, 1 cycle in the model
KIND_LOAD = 1        # a load: has a data address and a latency
KIND_STORE = 2       # a store: has a data address
KIND_BRANCH = 3      # any control transfer (updates the last-branch record)
KIND_DIV = 4         # a long-latency ALU operation
KIND_NAMES = ("ALU", "LOAD", "STORE", "BRANCH", "DIV")

# Internal event ids: what the simulated core can count (one column of the
# per-instruction activity). The event tables below map real encodings to these.
EV_NONE = 0          # an encoding the model does not implement: counts nothing
EV_CYCLES = 1        # core cycles
EV_INST = 2          # instructions retired
EV_REF_CYCLES = 3    # reference cycles (the model runs at the TSC rate: = cycles)
EV_LOADS = 4         # retired loads
EV_STORES = 5        # retired stores
EV_BRANCHES = 6      # retired branches
EV_BR_MISP = 7       # retired mispredicted branches
EV_LLC_REF = 8       # last-level-cache references (loads that reached the LLC)
EV_LLC_MISS = 9      # loads that missed the LLC
N_EVENTS = 10


@dataclass(frozen=True)
class EventDesc:
    """One hardware event encoding of a CPU model.

    pebslab only (the encodings are Intel's, as in the SDM's event tables).
    """

    name: str
    event: int
    umask: int
    kind: int            # EV_* id
    pebs: bool           # may this event use PEBS on this model
    cmask: int = 0
    inv: bool = False

    def __post_init__(self):
        for fname, hi in (("event", 0xFF), ("umask", 0xFF), ("cmask", 0xFF),
                          ("kind", N_EVENTS - 1)):
            v = getattr(self, fname)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"{fname} must be an int in 0..{hi:#x}; got {v!r}")

    @property
    def code(self) -> int:
        """The eventsel bits 31:0 this encoding sets (event, umask, inv, cmask)."""
        return (self.event | self.umask << 8 | (M.ARCH_PERFMON_EVENTSEL_INV if self.inv else 0)
                | self.cmask << 24)


# Architectural events (CPUID.0AH EBX bit order), the same on every model.
_ARCH = (
    EventDesc("CPU_CLK_UNHALTED.CORE_P", 0x3C, 0x00, EV_CYCLES, False),
    EventDesc("INST_RETIRED.ANY_P", 0xC0, 0x00, EV_INST, True),
    EventDesc("CPU_CLK_UNHALTED.REF_P", 0x3C, 0x01, EV_REF_CYCLES, False),
    EventDesc("LONGEST_LAT_CACHE.REFERENCE", 0x2E, 0x4F, EV_LLC_REF, False),
    EventDesc("LONGEST_LAT_CACHE.MISS", 0x2E, 0x41, EV_LLC_MISS, False),
    EventDesc("BR_INST_RETIRED.ALL_BRANCHES", 0xC4, 0x00, EV_BRANCHES, True),
    EventDesc("BR_MISP_RETIRED.ALL_BRANCHES", 0xC5, 0x00, EV_BR_MISP, True),
)

# Model-specific PEBS memory events. ASSUMPTION: encodings as in Intel's
# published event lists for each family (not in the FACTS notes).
_SLM = (
    EventDesc("MEM_UOPS_RETIRED.ALL_LOADS", 0x04, 0x40, EV_LOADS, True),
    EventDesc("MEM_UOPS_RETIRED.L2_MISS_LOADS", 0x04, 0x04, EV_LLC_MISS, True),
)
_HSW = (
    EventDesc("UOPS_RETIRED.ALL", 0xC2, 0x01, EV_INST, True),   # one uop per instruction in the model
    EventDesc("MEM_UOPS_RETIRED.ALL_LOADS", 0xD0, 0x81, EV_LOADS, True),
    EventDesc("MEM_UOPS_RETIRED.ALL_STORES", 0xD0, 0x82, EV_STORES, True),
    EventDesc("MEM_LOAD_UOPS_RETIRED.L3_MISS", 0xD1, 0x20, EV_LLC_MISS, True),
)
_SKL = (
    EventDesc("MEM_INST_RETIRED.ALL_LOADS", 0xD0, 0x81, EV_LOADS, True),
    EventDesc("MEM_INST_RETIRED.ALL_STORES", 0xD0, 0x82, EV_STORES, True),
    EventDesc("MEM_LOAD_RETIRED.L3_MISS", 0xD1, 0x20, EV_LLC_MISS, True),
)


@dataclass(frozen=True)
class CpuModel:
    """The PMU of one simulated CPU model.

    pebslab only: the facts Linux reads from CPUID 0xA and PERF_CAPABILITIES
    plus its per-model PEBS constraints (arch/x86/events/intel/ds.c).
    """

    name: str
    family: int
    model: int
    pmu_version: int
    n_gp: int
    n_fixed: int
    width: int                 # GP and fixed counter width in bits
    pebs_format: int
    pebs_counter_mask: int     # GP counters that may use PEBS (bit i = PMC i)
    pebs_fixed_mask: int       # fixed counters that may use PEBS (extended PEBS)
    perf_capabilities: int
    pebs_ept: bool             # does PEBS tolerate (and report) EPT faults
    has_tsx: bool
    skid_min: int              # instructions between overflow and PMI delivery
    skid_max: int
    # Legacy records (formats 1-3): does the record carry the data linear
    # address, data source and latency at 0x98, 0xA0, 0xA8? Silvermont's are
    # Reserved (SDM 18.6.1.1, Table 18-13; FACTS g.3): it writes zeros there.
    pebs_mem_info: bool = True
    # The load-latency facility: PEBS_ENABLE.LL_EN_PMCx (bits 32 + i) and
    # MSR_PEBS_LD_LAT_THRESHOLD. Silvermont has none (FACTS g.3).
    load_latency: bool = True
    events: tuple[EventDesc, ...] = field(default=(), repr=False)
    notes: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self):
        """Refuse a model the run loop could not simulate (message names the field)."""
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str; got {self.name!r}")
        for fname, lo, hi in (("family", 0, 0xFFF), ("model", 0, 0xFF), ("pmu_version", 1, 255),
                              ("n_gp", 1, M.INTEL_PMC_MAX_GENERIC),
                              ("n_fixed", 0, M.INTEL_PMC_MAX_FIXED),
                              # 33..63: wider than the 32 bits the legacy alias
                              # sign-extends, and 2**width still fits a uint64
                              ("width", 33, 63),
                              ("pebs_format", 0, 4), ("pebs_counter_mask", 0, 0xFF),
                              ("pebs_fixed_mask", 0, 0xF), ("perf_capabilities", 0, (1 << 64) - 1),
                              ("skid_min", 0, 1 << 16), ("skid_max", 0, 1 << 16)):
            v = getattr(self, fname)
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"{fname} must be an int; got {type(v).__name__} {v!r}")
            if not lo <= v <= hi:
                raise ValueError(f"{fname} must be in {lo}..{hi}; got {v}")
        for fname in ("pebs_ept", "has_tsx", "pebs_mem_info", "load_latency"):
            if not isinstance(getattr(self, fname), bool):
                raise TypeError(f"{fname} must be True or False; got {getattr(self, fname)!r}")
        if self.pebs_counter_mask >> self.n_gp:
            raise ValueError(f"pebs_counter_mask must only name GP counters 0..{self.n_gp - 1} "
                             f"(mask {(1 << self.n_gp) - 1:#x}); got {self.pebs_counter_mask:#x}")
        if self.pebs_fixed_mask >> self.n_fixed:
            raise ValueError(f"pebs_fixed_mask must only name fixed counters 0..{self.n_fixed - 1}"
                             f" (mask {(1 << self.n_fixed) - 1:#x}); got {self.pebs_fixed_mask:#x}")
        if self.pebs_fixed_mask and self.pebs_format < 4:
            # FACTS b.5: PEBS on fixed counters is "extended PEBS", part of baseline (format 4+)
            raise ValueError(f"pebs_fixed_mask must be 0 below PEBS format 4 (extended PEBS "
                             f"comes with baseline); got {self.pebs_fixed_mask:#x} with "
                             f"pebs_format {self.pebs_format}")
        cap_fmt = (self.perf_capabilities & M.PERF_CAP_PEBS_FORMAT) >> M.PERF_CAP_PEBS_FORMAT_SHIFT
        if cap_fmt != self.pebs_format:
            raise ValueError(f"perf_capabilities bits 11:8 (PEBS format) must equal pebs_format "
                             f"{self.pebs_format}; got {cap_fmt} in {self.perf_capabilities:#x}")
        if self.skid_max < self.skid_min:
            raise ValueError(f"skid_max must be >= skid_min ({self.skid_min}); got {self.skid_max}")
        if not isinstance(self.events, tuple) or not all(isinstance(e, EventDesc)
                                                         for e in self.events):
            raise TypeError("events must be a tuple of EventDesc")

    @property
    def pebs_record_size(self) -> int:
        """Size in bytes of one legacy PEBS record (basic group for format 4)."""
        return record_size(self.pebs_format)

    @property
    def counter_mask(self) -> int:
        """Bits of GLOBAL_CTRL that exist: GP counters, then fixed at bit 32."""
        return ((1 << self.n_gp) - 1) | (((1 << self.n_fixed) - 1) << M.INTEL_PMC_IDX_FIXED)

    @property
    def adaptive(self) -> bool:
        """True if the model writes format-4 (adaptive, "baseline") records."""
        return self.pebs_format >= 4

    def event(self, name: str) -> EventDesc:
        """Look up an event of this model by its Intel name (case-insensitive)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str; got {type(name).__name__}")
        for ev in self.events:
            if ev.name.lower() == name.lower():
                return ev
        raise ValueError(f"event must be one of {', '.join(e.name for e in self.events)} "
                         f"on {self.name}; got {name!r}")

    def event_by_code(self, code: int) -> EventDesc | None:
        """Return the event whose (event, umask) matches an eventsel value, or None."""
        key = code & 0xFFFF
        for ev in self.events:
            if ev.event | ev.umask << 8 == key:
                return ev
        return None


class CoreParams(NamedTuple):
    """What the run loop reads of a CPU model: plain numbers numba takes as one argument.

    pebslab only. Built once per :class:`pebslab.hw.core.Core` by
    :func:`core_params`; the loop never sees the CpuModel itself.
    """

    n_gp: int              # GP counters (CPUID.0AH:EAX[15:8])
    n_fixed: int           # fixed counters (CPUID.0AH:EDX[4:0])
    width: int             # counter width in bits, GP and fixed alike
    pebs_format: int       # PERF_CAPABILITIES.PEBS_FMT: record layout 0..4
    pebs_gp_mask: int      # GP counters that can arm PEBS (bit i = PMC i)
    pebs_fixed_mask: int   # fixed counters that can arm PEBS (bit i = FIXED_CTRi)
    pebs_trap: bool        # PERF_CAPABILITIES.PEBS_TRAP: record IP is the next instruction's
    pebs_ept: bool         # an EPT violation in the assist exits and retries (EPT-friendly PEBS)
    pebs_mem_info: bool    # legacy records carry data address, source, latency (not Silvermont)
    skid_min: int          # an interrupt-based PMI arrives skid_min..skid_max
    skid_max: int          # instructions after the overflowing one


def core_params(model: "CpuModel") -> CoreParams:
    """The run loop's view of ``model`` (see :class:`CoreParams`). pebslab only."""
    model = get_model(model)
    return CoreParams(
        n_gp=model.n_gp, n_fixed=model.n_fixed, width=model.width,
        pebs_format=model.pebs_format, pebs_gp_mask=model.pebs_counter_mask,
        pebs_fixed_mask=model.pebs_fixed_mask,
        pebs_trap=bool(model.perf_capabilities & M.PERF_CAP_PEBS_TRAP),
        pebs_ept=model.pebs_ept, pebs_mem_info=model.pebs_mem_info,
        skid_min=model.skid_min, skid_max=model.skid_max)


def _cap(lbr_fmt: int, fmt: int, *, trap=True, arch_reg=True, smm=False, fw=False,
         baseline=False, metrics=False) -> int:
    v = lbr_fmt | fmt << M.PERF_CAP_PEBS_FORMAT_SHIFT
    v |= M.PERF_CAP_PEBS_TRAP if trap else 0
    v |= M.PERF_CAP_ARCH_REG if arch_reg else 0
    v |= M.PERF_CAP_FREEZE_WHILE_SMM if smm else 0
    v |= M.PERF_CAP_FW_WRITES if fw else 0
    v |= M.PERF_CAP_PEBS_BASELINE if baseline else 0
    v |= M.PERF_CAP_PERF_METRICS if metrics else 0
    return v


# Counter width. ASSUMPTION: 48 bits on all four models (FACTS b.8: typical
# width 48, the KVM default PMC_DEFAULT_WIDTH).
COUNTER_WIDTH = 48
# Skid. ASSUMPTION: an interrupt-based PMI arrives 1..8 instructions after the
# overflowing one (seeded); real skid depends on the pipeline.
SKID_MIN, SKID_MAX = 1, 8

MODELS: dict[str, CpuModel] = {
    "silvermont": CpuModel(
        name="silvermont", family=6, model=0x37, pmu_version=3, n_gp=2, n_fixed=3,
        width=COUNTER_WIDTH,
        # ASSUMPTION: PEBS_FMT 2. FACTS a.7: the SLM record has the 192-byte
        # format-2 shape (EventingRIP at 0xB0); the reported value is unverified.
        pebs_format=2, pebs_counter_mask=0x1, pebs_fixed_mask=0,
        # ASSUMPTION: LBR format 0, trap-like PEBS, no full-width writes.
        perf_capabilities=_cap(0, 2),
        pebs_ept=False, has_tsx=False, skid_min=SKID_MIN, skid_max=SKID_MAX,
        pebs_mem_info=False, load_latency=False,
        events=_ARCH + _SLM,
        notes=("PEBS only on PMC0, trap-like (SDM 18.6.1.1; Linux "
               "intel_slm_pebs_event_constraints)",
               "record: 0x98, 0xA0, 0xA8 Reserved (zeros), EventingRIP at 0xB0 "
               "(SDM Table 18-13)",
               "no load-latency facility: no LL_EN bits in PEBS_ENABLE",
               "PEBS_FMT=2 assumed from the record layout"),
    ),
    "haswell": CpuModel(
        name="haswell", family=6, model=0x3C, pmu_version=3, n_gp=4, n_fixed=3,
        width=COUNTER_WIDTH, pebs_format=2, pebs_counter_mask=0xF, pebs_fixed_mask=0,
        # ASSUMPTION: LBR format 4 and FW_WRITES.
        perf_capabilities=_cap(4, 2, smm=True, fw=True),
        pebs_ept=False, has_tsx=True, skid_min=SKID_MIN, skid_max=SKID_MAX,
        events=_ARCH + _HSW,
        notes=("PEBS on PMC0-3 (Linux constraint mask 0xf)",),
    ),
    "skylake": CpuModel(
        name="skylake", family=6, model=0x5E, pmu_version=4, n_gp=4, n_fixed=3,
        width=COUNTER_WIDTH, pebs_format=3, pebs_counter_mask=0xF, pebs_fixed_mask=0,
        # ASSUMPTION: LBR format 5 (LBR_INFO), FREEZE_WHILE_SMM, FW_WRITES.
        perf_capabilities=_cap(5, 3, smm=True, fw=True),
        pebs_ept=False, has_tsx=True, skid_min=SKID_MIN, skid_max=SKID_MAX,
        events=_ARCH + _SKL,
        notes=("PEBS on PMC0-3; format 3 adds the TSC at 0xC0",),
    ),
    "icelake": CpuModel(
        name="icelake", family=6, model=0x6A, pmu_version=5, n_gp=8, n_fixed=4,
        width=COUNTER_WIDTH, pebs_format=4, pebs_counter_mask=0xFF, pebs_fixed_mask=0xF,
        perf_capabilities=_cap(5, 4, smm=True, fw=True, baseline=True, metrics=True),
        # Ice Lake *server* (ICX): EPT-friendly PEBS (FACTS c.2, commit fb358e0b811e).
        pebs_ept=True, has_tsx=True, skid_min=SKID_MIN, skid_max=SKID_MAX,
        events=_ARCH + _SKL,
        notes=("Ice Lake server: adaptive PEBS (format 4), extended PEBS on fixed counters,"
               " EPT-friendly PEBS",),
    ),
}


def get_model(name) -> CpuModel:
    """Return the CPU model called ``name`` (or pass a CpuModel through)."""
    if isinstance(name, CpuModel):
        return name
    if not isinstance(name, str):
        raise TypeError(f"cpu must be a str naming a CPU model; got {type(name).__name__}")
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise ValueError(f"cpu must be one of {', '.join(repr(k) for k in MODELS)}; "
                         f"got {name!r}") from None
