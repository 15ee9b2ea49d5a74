"""The guest's perf driver: counting, sampling and PEBS, modeled on Linux.

Models the x86 perf driver of a Linux guest: arch/x86/events/core.c (counter
scheduling, period arithmetic), arch/x86/events/intel/core.c (probing,
enable/disable, the PMI handler) and arch/x86/events/intel/ds.c (the DS
area, the PEBS buffer, draining). Each method names the Linux function it
models. The version followed is the ~v6.5 one the project's FACTS notes
quote (ds.c@c058e7a), simplified where the docstrings say so.

The driver only has instructions, as real guest code does:

* every PMU access is ``vcpu.rdmsr`` / ``vcpu.wrmsr`` / ``vcpu.cpuid`` (under
  KVM each one is a VM exit; on bare metal the instruction itself);
* the DS area and the PEBS records are read and written through guest
  memory (``kernel.mm``), never through a back door.

One CPU: the driver manages vCPU 0, where the machine runs the workload.

Simplifications (pebslab only): no multiplexing (an event that finds no free
counter fails), no frequency mode (``freq=`` raises NotImplementedError),
no throttling, no LBR (so the format 0/1 ``:pp`` IP fix-up is not done:
the sample keeps the record's IP and is marked inexact), precise events use
GP counters only (Linux on Ice Lake would also put ``instructions:pp`` on
fixed counter 0), no load-latency (PEBS_ENABLE bits 32+) or precise-store
events, counter reads use RDMSR where Linux uses RDPMC (same value).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..hw.errors import GuestFault
from ..hw import msr as M
from ..hw import pebs as P
from ..hw.models import (EV_LLC_MISS, EV_LLC_REF, EV_LOADS, EV_STORES, MODELS, CpuModel,
                         EventDesc)

__all__ = [
    "PEBS_BUFFER_SIZE", "PEBS_BUFFER_PAGES", "X86_RAW_EVENT_MASK", "GENERIC_EVENTS",
    "PEBS_CYCLES_ALIAS_CORE2", "PEBS_CYCLES_ALIAS_SNB", "SAMPLE_DTYPE", "PmuInfo",
    "EventSpec", "PerfOpenError", "GuestPerf", "Recording", "Counting", "parse_event",
    "model_from_signature", "decode_signature", "LINUX_ERAS", "check_linux",
]

PAGE_SIZE = P.PAGE_SIZE
#: PEBS_BUFFER_SIZE = PAGE_SIZE << 4 (arch/x86/events/intel/ds.c; FACTS a.4).
PEBS_BUFFER_SIZE = PAGE_SIZE << 4
PEBS_BUFFER_PAGES = PEBS_BUFFER_SIZE // PAGE_SIZE

#: The guest kernel eras pebslab models (``GuestKernel(vm, linux=...)``):
#: "current" is the driver described above (the PMI handler leaves
#: PEBS_ENABLE alone since 6c1c07b33eb0, v5.7); "3.15" is the patch's era
#: (arch/x86/kernel/cpu/perf_event_intel.c and perf_event_intel_ds.c of
#: v3.15; FACTS g.2): its PMI handler writes PEBS_ENABLE = 0 on entry and the
#: value back on exit, its PEBS buffer is one page (PEBS_BUFFER_SIZE =
#: PAGE_SIZE) with a one-record threshold (alloc_pebs_buffer(): thresh = 1),
#: no auto-reload (the drain re-arms the counter, intel_pmu_save_and_restart())
#: and no large PEBS.
LINUX_ERAS = ("current", "3.15")
#: PEBS_BUFFER_SIZE of the 3.15 driver: one page (perf_event_intel_ds.c).
PEBS_BUFFER_SIZE_3_15 = PAGE_SIZE
#: PEBS formats the 3.15 intel_ds_init() knows: 0, 1, 2; any other prints
#: "no PEBS fmtN" and leaves PEBS off (perf_event_intel_ds.c, intel_ds_init()).
PEBS_FORMATS_3_15 = (0, 1, 2)


def check_linux(linux) -> str:
    """Validate a guest kernel era name; return it.

    pebslab only. Allowed: the names in LINUX_ERAS.
    """
    if not isinstance(linux, str):
        raise TypeError(f"linux must be a str, one of {', '.join(map(repr, LINUX_ERAS))}; "
                        f"got {type(linux).__name__} {linux!r}")
    if linux not in LINUX_ERAS:
        raise ValueError(f"linux must be one of {', '.join(map(repr, LINUX_ERAS))}; "
                         f"got {linux!r}")
    return linux
#: MAX_PEBS_EVENTS_FMT4: GP counters with a DS reset slot (intel_ds.h).
MAX_PEBS_EVENTS = P.MAX_PEBS_EVENTS_FMT4
#: X86_RAW_EVENT_MASK (arch/x86/include/asm/perf_event.h): event, umask,
#: edge, inv, cmask: the eventsel bits a raw event may set.
X86_RAW_EVENT_MASK = (M.ARCH_PERFMON_EVENTSEL_EVENT | M.ARCH_PERFMON_EVENTSEL_UMASK
                      | M.ARCH_PERFMON_EVENTSEL_EDGE | M.ARCH_PERFMON_EVENTSEL_INV
                      | M.ARCH_PERFMON_EVENTSEL_CMASK)

#: Generic events: name -> (eventsel code, CPUID.0AH EBX "unavailable" bit).
#: Models intel_perfmon_event_map[] in arch/x86/events/intel/core.c; 0x0300
#: is Linux's pseudo-encoding for ref-cycles (fixed counter 2 only).
GENERIC_EVENTS = {
    "cycles": (0x003C, 0),
    "instructions": (0x00C0, 1),
    "ref-cycles": (0x0300, 2),
    "cache-references": (0x4F2E, 3),
    "cache-misses": (0x412E, 4),
    "branches": (0x00C4, 5),
    "branch-misses": (0x00C5, 6),
}
#: Fixed-counter constraints: eventsel code -> fixed counter index.
#: Models FIXED_EVENT_CONSTRAINT(0x00c0, 0), (0x003c, 1), (0x0300, 2) in
#: intel_core_event_constraints (arch/x86/events/intel/core.c).
FIXED_EVENTS = {0x00C0: 0, 0x003C: 1, 0x0300: 2}
REF_CYCLES_PSEUDO = 0x0300

#: cycles:p on PEBS hardware: INST_RETIRED.ANY_P with inv=1 cmask=16, which
#: counts every cycle. Models intel_pebs_aliases_core2() (Core2, Atom/SLM,
#: and Skylake for precise_ip < 3: intel_pebs_aliases_skl()); FACTS a.7.
PEBS_CYCLES_ALIAS_CORE2 = 0x108000C0
#: The Sandy Bridge..Haswell alias: UOPS_RETIRED.ALL inv=1 cmask=16.
#: Models intel_pebs_aliases_snb() (via intel_pebs_aliases_ivb() on Haswell).
PEBS_CYCLES_ALIAS_SNB = 0x108001C2
_PEBS_ALIAS = {"haswell": PEBS_CYCLES_ALIAS_SNB}

_MEMORY_KINDS = (EV_LOADS, EV_STORES, EV_LLC_MISS, EV_LLC_REF)

# GLOBAL_STATUS bits the PMI handler ignores (handle_pmi_common).
GLOBAL_STATUS_ASIF = 1 << 60
GLOBAL_STATUS_LBRS_FROZEN = 1 << 58
_IRQ_LOOP_LIMIT = 100      # "perfevents: irq loop stuck!" in intel_pmu_handle_irq()

#: One sample, as perf script would print it.
SAMPLE_DTYPE = np.dtype([
    ("ip", np.uint64), ("sym", "U32"), ("addr", np.uint64), ("latency", np.uint32),
    ("time", np.uint64), ("cpl", np.uint8), ("counter", np.int8), ("precise", np.uint8),
    ("kind", "U8"),
])


class PerfOpenError(RuntimeError):
    """perf_event_open() failed: the machine refused what the driver programmed.

    pebslab only. Raised by ``record``/``stat`` when an MSR access #GPs
    (``fault`` holds the GuestFault), when there is no PMU, or when no
    counter is free. The counter is left disabled, as Linux leaves it when
    event creation fails.
    """

    def __init__(self, message: str, fault: GuestFault | None = None):
        super().__init__(message)
        self.fault = fault


def _bits(mask: int):
    """Indices of the set bits of ``mask``, lowest first (for_each_set_bit)."""
    i = 0
    while mask:
        if mask & 1:
            yield i
        mask >>= 1
        i += 1


# =============================================================================
# probing
# =============================================================================

def decode_signature(eax: int) -> tuple[int, int]:
    """Return (family, model) from a CPUID.1 EAX signature.

    Models x86_family() and x86_model() in arch/x86/lib/cpu.c (extended
    family added for family 0xF, extended model for family >= 6).
    """
    family = (eax >> 8) & 0xF
    model = (eax >> 4) & 0xF
    if family == 0xF:
        family += (eax >> 20) & 0xFF
    if family >= 6:
        model |= ((eax >> 16) & 0xF) << 4
    return family, model


def model_from_signature(eax: int) -> CpuModel | None:
    """Map a CPUID.1 EAX signature to a pebslab CPU model, or None.

    Models the switch on boot_cpu_data.x86_model in intel_pmu_init()
    (arch/x86/events/intel/core.c), over pebslab's models.
    """
    family, model = decode_signature(eax)
    for m in MODELS.values():
        if m.family == family and m.model == model:
            return m
    return None


@dataclass(frozen=True)
class PmuInfo:
    """What the guest learned about its PMU at boot.

    Models the fields of struct x86_pmu that intel_pmu_init() and
    intel_ds_init() (arch/x86/events/intel/core.c, ds.c) fill from CPUID
    leaves 0x1 and 0xA and IA32_PERF_CAPABILITIES.
    """

    version: int
    num_counters: int
    cntval_bits: int
    num_counters_fixed: int
    fixed_bits: int
    events_unavailable: int
    signature: int
    family: int
    model_id: int
    model: CpuModel | None
    has_ds: bool
    has_dtes64: bool
    has_pdcm: bool
    perf_capabilities: int
    perf_cap_gp: bool            # reading PERF_CAPABILITIES raised #GP
    pebs_format: int
    pebs_trap: bool
    pebs_arch_reg: bool
    fw_writes: bool
    pebs_baseline: bool
    has_pebs: bool
    pebs_record_size: int
    pebs_counter_mask: int
    max_pebs_events: int
    max_precise: int
    #: the PEBS formats this kernel's intel_ds_init() knows
    pebs_formats_known: tuple = P.PEBS_FORMATS

    @property
    def cntval_mask(self) -> int:
        """x86_pmu.cntval_mask: (1 << cntval_bits) - 1."""
        return (1 << self.cntval_bits) - 1

    @property
    def max_period(self) -> int:
        """x86_pmu.max_period: cntval_mask >> 1 with full-width writes, else 2**31 - 1."""
        return self.cntval_mask >> 1 if self.fw_writes else (1 << 31) - 1

    @property
    def intel_ctrl(self) -> int:
        """x86_pmu.intel_ctrl: every GLOBAL_CTRL bit that exists."""
        return ((1 << self.num_counters) - 1) | \
            (((1 << self.num_counters_fixed) - 1) << M.INTEL_PMC_IDX_FIXED)

    @property
    def model_name(self) -> str | None:
        """The pebslab model the CPUID signature maps to, or None."""
        return self.model.name if self.model is not None else None

    @property
    def pebs_why(self) -> str:
        """Why PEBS is (not) usable, in the terms intel_ds_init() checks."""
        if self.has_pebs:
            return f"PEBS format {self.pebs_format}"
        parts = [f"CPUID DS={int(self.has_ds)} DTES64={int(self.has_dtes64)} "
                 f"PDCM={int(self.has_pdcm)}"]
        if self.perf_cap_gp:
            parts.append("RDMSR IA32_PERF_CAPABILITIES raised #GP")
        elif self.has_pdcm:
            fmt_ok = self.pebs_format in self.pebs_formats_known
            parts.append(f"PEBS format {self.pebs_format}"
                         + ("" if fmt_ok else " unknown (\"no PEBS fmt\" in intel_ds_init())"))
            if fmt_ok and self.has_ds and self.has_dtes64:
                parts.append(f"no PEBS-capable counter among {self.num_counters} GP counters")
        return ", ".join(parts)

    def summary(self) -> str:
        """A short text description (what dmesg's "Performance Events:" lines say)."""
        name = self.model_name or f"unknown family {self.family} model {self.model_id:#x}"
        pebs = (f"PEBS fmt{self.pebs_format}{'+' if self.pebs_trap else '-'}"
                f"{'-baseline' if self.pebs_baseline else ''}, counters {self.pebs_counter_mask:#x},"
                f" record {self.pebs_record_size} bytes" if self.has_pebs
                else f"no PEBS ({self.pebs_why})")
        return (f"Performance Events: {pebs}, {name} PMU v{self.version}\n"
                f"  generic registers {self.num_counters}, bit width {self.cntval_bits}, "
                f"fixed counters {self.num_counters_fixed}, max period {self.max_period:#x}, "
                f"max precise {self.max_precise}")


# =============================================================================
# event parsing
# =============================================================================

@dataclass(frozen=True)
class EventSpec:
    """A parsed event: what perf_event_attr and x86_pmu_hw_config() end up with.

    pebslab only as a record. ``config`` holds eventsel bits 31:0 (event,
    umask, edge, inv, cmask) after the PEBS alias; ``fixed`` is the fixed
    counter the event may use (or None); ``gp_ok`` whether a GP counter
    can count it; ``memory`` whether it is a memory event (PEBS DATA_CFG
    MEMINFO on format 4).
    """

    spec: str
    name: str
    config: int
    usr: bool
    os: bool
    precise_ip: int
    fixed: int | None
    gp_ok: bool
    memory: bool
    desc: EventDesc | None = None


def _allowed_names(info: PmuInfo) -> str:
    names = list(GENERIC_EVENTS)
    if info.model is not None:
        names += [e.name for e in info.model.events]
    return ", ".join(names) + ", r<hex>"


def parse_event(spec: str, info: PmuInfo) -> EventSpec:
    """Parse an event string like ``"cycles:pp"`` or ``"r412e:u"`` for this PMU.

    Models tools/perf/util/parse-events.c (names and modifiers) and the
    checks of x86_pmu_hw_config() / intel_pmu_hw_config() in
    arch/x86/events/core.c and intel/core.c: generic names from
    intel_perfmon_event_map[], Intel names from the CPU model's table (the
    one CPUID's signature maps to), raw ``r<hex>`` encodings; modifiers u
    (user only), k (kernel only), p/pp/ppp (precise_ip). A precise event
    needs PEBS, a precise_ip the CPU supports (x86_pmu_max_precise()) and an
    event the model can PEBS (intel_pebs_constraints()); precise cycles use
    the model's PEBS alias (intel_pebs_aliases_*()). Errors are ValueError
    (where Linux returns -EINVAL, -ENOENT or -EOPNOTSUPP).
    """
    if not isinstance(spec, str):
        raise TypeError(f"event must be a str such as 'cycles:pp'; got {type(spec).__name__}")
    text = spec.strip()
    base, sep, mods = text.partition(":")
    if not base:
        raise ValueError(f"event must name an event before any ':' modifiers; got {spec!r}")
    if sep and not mods:
        raise ValueError(f"event {spec!r} has an empty modifier after ':'; "
                         "modifiers are u, k, p, pp, ppp")
    if ":" in mods:
        raise ValueError(f"event {spec!r} has more than one ':'; write all modifiers "
                         "together, e.g. 'cycles:upp'")
    mod_u = mod_k = False
    precise = 0
    for ch in mods:
        if ch == "u":
            mod_u = True
        elif ch == "k":
            mod_k = True
        elif ch == "p":
            precise += 1
        else:
            raise ValueError(f"modifier {ch!r} in {spec!r} is not supported; modifiers "
                             "must be u (user), k (kernel), p, pp or ppp (precise_ip)")
    if precise > 3:
        raise ValueError(f"precise_ip must be 0..3 (at most 'ppp'); got {precise} in {spec!r}")
    usr = mod_u or not mod_k
    os_ = mod_k or not mod_u

    desc = None
    key = base.lower()
    if key in GENERIC_EVENTS:
        config, bit = GENERIC_EVENTS[key]
        name = key
        if info.events_unavailable >> bit & 1:
            raise ValueError(f"event {key!r} is not available on this CPU: CPUID.0AH EBX "
                             f"bit {bit} is set (Linux: -ENOENT)")
    elif key.startswith("r") and len(key) > 1 and all(c in "0123456789abcdef" for c in key[1:]):
        config = int(key[1:], 16)
        name = key
        bad = config & ~X86_RAW_EVENT_MASK
        if bad:
            raise ValueError(f"raw event {base!r} sets bits {bad:#x} outside event, umask, "
                             f"edge, inv and cmask (X86_RAW_EVENT_MASK {X86_RAW_EVENT_MASK:#x}); "
                             "the driver sets USR/OS/INT/EN itself")
    else:
        ev = None
        if info.model is not None:
            for e in info.model.events:
                if e.name.lower() == key:
                    ev = e
                    break
        if ev is None:
            where = (f"the {info.model.name} event table" if info.model is not None
                     else "no model event table (CPUID signature not recognized)")
            raise ValueError(f"event must be a generic name, an Intel event name of {where}, "
                             f"or r<hex>; allowed: {_allowed_names(info)}; got {base!r}")
        config = ev.code
        name = ev.name
        desc = ev
    if info.model is not None and desc is None:
        desc = info.model.event_by_code(config)

    fixed = None
    gp_ok = True
    if precise:
        if not info.has_pebs:
            raise ValueError(f"event {spec!r}: precise_ip {precise} needs PEBS, which this CPU "
                             f"does not offer ({info.pebs_why}); Linux returns -EOPNOTSUPP")
        if precise > info.max_precise:
            raise ValueError(
                f"event {spec!r}: precise_ip {precise} is more than this CPU supports "
                f"(x86_pmu_max_precise() = {info.max_precise}); 'ppp' needs a PDIR / "
                "PREC_DIST counter (x86_pmu.pebs_prec_dist), which none of pebslab's "
                "models provide (Ice Lake's PDIR on fixed counter 0 is not modelled); "
                "Linux returns -EOPNOTSUPP")
        alias = _PEBS_ALIAS.get(info.model_name, PEBS_CYCLES_ALIAS_CORE2)
        if config == 0x003C:
            config = alias
            if info.model is not None:
                desc = info.model.event_by_code(config)
        elif config & (M.ARCH_PERFMON_EVENTSEL_EDGE | M.ARCH_PERFMON_EVENTSEL_INV
                       | M.ARCH_PERFMON_EVENTSEL_CMASK) and config != alias:
            raise ValueError(f"event {spec!r}: a precise event must have edge, inv and cmask "
                             f"0 (SDM; FACTS a.7), except the cycles alias {alias:#x}")
        if info.model is not None and (desc is None or not desc.pebs):
            able = ", ".join(e.name for e in info.model.events if e.pebs)
            raise ValueError(f"event {spec!r} cannot use PEBS on {info.model.name} "
                             f"(PEBS-capable events: {able}, and cycles via its alias); "
                             "Linux returns -EOPNOTSUPP")
    else:
        fixed = FIXED_EVENTS.get(config)
        gp_ok = config != REF_CYCLES_PSEUDO
    memory = desc is not None and desc.kind in _MEMORY_KINDS
    return EventSpec(spec=text, name=name, config=config, usr=usr, os=os_,
                     precise_ip=precise, fixed=fixed, gp_ok=gp_ok, memory=memory, desc=desc)


# =============================================================================
# events, recordings, countings
# =============================================================================

class _Event:
    """One active event: the parts of struct perf_event / hw_perf_event we model."""

    def __init__(self, spec: EventSpec, period: int, sampling: bool, large_pebs: bool):
        self.spec = spec
        self.period = period                 # hwc->sample_period
        self.sampling = sampling
        self.large_pebs = large_pebs
        self.auto_reload = spec.precise_ip > 0    # fixed period: PERF_X86_EVENT_AUTO_RELOAD
        self.idx = -1
        self.config = 0                      # hwc->config (eventsel without EN)
        self.period_left = period            # hwc->period_left
        self.prev_count = 0                  # hwc->prev_count
        self.count = 0                       # event->count
        self.samples: list[tuple] = []
        self.lost = 0
        self.active = False

    @property
    def pebs(self) -> bool:
        return self.spec.precise_ip > 0

    @property
    def is_fixed(self) -> bool:
        return self.idx >= M.INTEL_PMC_IDX_FIXED


class Recording:
    """A sampling event (``perf record -e EVENT -c PERIOD``) on the guest.

    pebslab only as an object; what it holds is what perf's ring buffer
    would receive. ``samples()`` returns them as a SAMPLE_DTYPE array;
    ``lost`` counts PEBS records dropped as collisions
    (perf_log_lost_samples()); ``stop()`` removes the event.
    """

    def __init__(self, perf: "GuestPerf", ev: _Event):
        self._perf = perf
        self._ev = ev
        self.throttled = 0

    @property
    def event(self) -> str:
        """The event string as given."""
        return self._ev.spec.spec

    @property
    def spec(self) -> EventSpec:
        return self._ev.spec

    @property
    def counter(self) -> int:
        """The counter the event was scheduled on (GP i, or 32 + i for fixed i)."""
        return self._ev.idx

    @property
    def period(self) -> int:
        return self._ev.period

    @property
    def pebs(self) -> bool:
        """True if the event samples with PEBS (precise_ip > 0)."""
        return self._ev.pebs

    @property
    def large_pebs(self) -> bool:
        return self._ev.large_pebs

    @property
    def eventsel(self) -> int:
        """The IA32_PERFEVTSELx value (or fixed-counter bits) the driver wrote, EN included."""
        return self._ev.config | (M.ARCH_PERFMON_EVENTSEL_ENABLE if not self._ev.is_fixed else 0)

    @property
    def lost(self) -> int:
        return self._ev.lost

    @property
    def active(self) -> bool:
        return self._ev.active

    def __len__(self) -> int:
        return len(self._ev.samples)

    def samples(self) -> np.ndarray:
        """All samples so far, in the order the driver produced them."""
        return np.array(self._ev.samples, dtype=SAMPLE_DTYPE)

    def stop(self) -> None:
        """Remove the event: disable its counter and PEBS bit, drain a large-PEBS buffer.

        Models x86_pmu_del() / x86_pmu_stop() (arch/x86/events/core.c) with
        intel_pmu_disable_event() and intel_pmu_pebs_disable(). The DS area
        and PEBS buffer stay allocated (Linux keeps them per CPU).
        """
        self._perf._del(self._ev)

    def __repr__(self) -> str:
        state = "active" if self.active else "stopped"
        return (f"Recording({self.event!r}, counter {self.counter}, period {self.period}, "
                f"{len(self)} samples, {self.lost} lost, {state})")


class Counting:
    """Counting events (``perf stat -e A,B``) on the guest.

    pebslab only as an object. ``read()`` returns {event: count}; counts
    are 64-bit totals, rebuilt across 48-bit counter overflows by the PMI
    handler as Linux does. Usable as a context manager (stops on exit).
    """

    def __init__(self, perf: "GuestPerf", evs: list[_Event]):
        self._perf = perf
        self._evs = evs

    @property
    def events(self) -> list[str]:
        return [ev.spec.spec for ev in self._evs]

    @property
    def counters(self) -> dict[str, int]:
        """Which counter each event was scheduled on."""
        return {ev.spec.spec: ev.idx for ev in self._evs}

    def read(self) -> dict[str, int]:
        """Read every counter (RDMSR) and return {event: count}.

        Models x86_perf_event_update() (arch/x86/events/core.c) per event.
        """
        out = {}
        for ev in self._evs:
            if ev.active:
                self._perf.x86_perf_event_update(ev)
            out[ev.spec.spec] = ev.count
        return out

    def stop(self) -> dict[str, int]:
        """Remove the events; return their final counts."""
        for ev in self._evs:
            self._perf._del(ev)
        return {ev.spec.spec: ev.count for ev in self._evs}

    def __enter__(self) -> "Counting":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Counting({', '.join(self.events)})"


# =============================================================================
# the driver
# =============================================================================

class GuestPerf:
    """The guest kernel's perf driver for vCPU 0.

    pebslab only as a class; it holds what Linux keeps in struct x86_pmu
    (``info``) and the per-CPU struct cpu_hw_events (``events``,
    ``pebs_enabled``, the DS area). ``record()`` and ``stat()`` are
    ``perf record`` / ``perf stat``. Teaching counters: ``pmi_count``
    (PMIs handled), ``drain_count`` (PEBS buffer drains), ``spurious_pebs``
    (bit 62 with no DS area), ``unchecked_msr_errors`` (MSR accesses that
    #GP'd inside the PMI handler, where Linux only warns).
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.machine = kernel.machine
        self.vcpu = self.machine.vcpus[0]
        #: the kernel's era (LINUX_ERAS): "current" or "3.15"
        self.linux = check_linux(getattr(kernel, "linux", "current"))
        self.info: PmuInfo | None = None
        self.events: dict[int, _Event] = {}
        self.pebs_enabled = 0
        self.enabled = True                 # cpuc->enabled
        self.fixed_ctrl_val = 0
        self.active_fixed_ctrl_val = 0
        self.pebs_data_cfg = 0
        self.active_pebs_data_cfg = 0
        self.pebs_record_size = 0           # cpuc->pebs_record_size
        self.ds_gva: int | None = None
        self.pebs_buffer_gva: int | None = None
        self.pebs_buffer_size = 0
        self.pebs_threshold = None
        self.pmi_count = 0
        self.drain_count = 0
        self.spurious_pebs = 0
        self.irq_loop_stuck = 0
        self.bad_pebs_index = 0
        self.unchecked_msr_errors: list[str] = []
        self._in_irq = False

    # --- instructions -----------------------------------------------------------
    def _rdmsr(self, index: int) -> int:
        try:
            return self.vcpu.rdmsr(index)
        except GuestFault as f:
            if not self._in_irq:
                raise
            self.unchecked_msr_errors.append(
                f"unchecked MSR access error: RDMSR from {index:#x}: {f}")
            return 0        # the exception fixup of rdmsrl() returns 0

    def _wrmsr(self, index: int, value: int) -> None:
        try:
            self.vcpu.wrmsr(index, value)
        except GuestFault as f:
            if not self._in_irq:
                raise
            self.unchecked_msr_errors.append(
                f"unchecked MSR access error: WRMSR to {index:#x} "
                f"(tried to write {value:#018x}): {f}")

    # --- probing ----------------------------------------------------------------
    def probe(self, force: bool = False) -> PmuInfo:
        """Learn the PMU from CPUID and PERF_CAPABILITIES; install the PMI handler.

        Models intel_pmu_init() (CPUID.0AH: version, counters, widths,
        unavailable events; the model switch on the CPUID.1 signature) and
        intel_ds_init() (DS, DTES64, PDCM; PERF_CAPABILITIES read only if
        PDCM; PEBS format -> record size) in arch/x86/events/intel/core.c
        and ds.c, and perf_events_lapic_init() (the PMI vector). A #GP on
        the PERF_CAPABILITIES read means "no PEBS". The PEBS counter mask
        comes from the model table if the signature maps to a pebslab model,
        else 0xF, and is always cut down to the GP counters CPUID reports:
        a guest whose host lies must cope. Called lazily by record/stat.
        """
        if self.info is not None and not force:
            return self.info
        vcpu = self.vcpu
        eax_a, ebx_a, _ecx_a, edx_a = vcpu.cpuid(0xA)
        eax_1, _ebx_1, ecx_1, edx_1 = vcpu.cpuid(0x1)
        version = eax_a & 0xFF
        num_gp = min((eax_a >> 8) & 0xFF, M.INTEL_PMC_MAX_GENERIC)
        bits = (eax_a >> 16) & 0xFF
        mask_len = (eax_a >> 24) & 0xFF
        num_fixed = min(edx_a & 0x1F, M.INTEL_PMC_MAX_FIXED) if version > 1 else 0
        fixed_bits = (edx_a >> 5) & 0xFF
        # events at or beyond the EBX vector length count as unavailable too
        unavailable = (ebx_a | ~((1 << mask_len) - 1)) & ((1 << len(GENERIC_EVENTS)) - 1)
        has_ds = bool(edx_1 >> 21 & 1)
        has_dtes64 = bool(ecx_1 >> 2 & 1)
        has_pdcm = bool(ecx_1 >> 15 & 1)
        caps = 0
        cap_gp = False
        if has_pdcm:
            try:
                caps = vcpu.rdmsr(M.MSR_IA32_PERF_CAPABILITIES)
            except GuestFault:
                cap_gp = True
        fmt = (caps & M.PERF_CAP_PEBS_FORMAT) >> M.PERF_CAP_PEBS_FORMAT_SHIFT
        known = PEBS_FORMATS_3_15 if self.linux == "3.15" else P.PEBS_FORMATS
        has_pebs = (has_ds and has_dtes64 and has_pdcm and not cap_gp and fmt in known
                    and version > 0 and num_gp > 0)
        model = model_from_signature(eax_1)
        gp_mask = (1 << num_gp) - 1
        if has_pebs:
            pebs_mask = (model.pebs_counter_mask if model is not None else 0xF) & gp_mask
            rec_size = P.record_size(fmt)
            if pebs_mask == 0:
                has_pebs = False
        else:
            pebs_mask = 0
            rec_size = 0
        family, model_id = decode_signature(eax_1)
        info = PmuInfo(
            version=version, num_counters=num_gp, cntval_bits=bits,
            num_counters_fixed=num_fixed, fixed_bits=fixed_bits,
            events_unavailable=unavailable, signature=eax_1,
            family=family, model_id=model_id,
            model=model, has_ds=has_ds, has_dtes64=has_dtes64, has_pdcm=has_pdcm,
            perf_capabilities=caps, perf_cap_gp=cap_gp, pebs_format=fmt,
            pebs_trap=bool(caps & M.PERF_CAP_PEBS_TRAP),
            pebs_arch_reg=bool(caps & M.PERF_CAP_ARCH_REG),
            fw_writes=bool(caps & M.PERF_CAP_FW_WRITES),
            pebs_baseline=bool(caps & M.PERF_CAP_PEBS_BASELINE) and fmt >= 4 and fmt in known,
            has_pebs=has_pebs, pebs_record_size=rec_size, pebs_counter_mask=pebs_mask,
            max_pebs_events=min(MAX_PEBS_EVENTS, num_gp),
            # x86_pmu_max_precise(): 1 for constant skid, +1 for the eventing IP
            # (format >= 2) or the LBR fix-up (format 0/1: here reported inexact)
            max_precise=2 if has_pebs else 0,
            pebs_formats_known=known,
        )
        self.info = info
        self.pebs_record_size = rec_size
        vcpu.set_pmi_handler(self.intel_pmu_handle_irq)
        return info

    def parse_event(self, spec: str) -> EventSpec:
        """Parse an event string for this guest's PMU (see module function parse_event)."""
        return parse_event(spec, self.probe())

    def _need_pmu(self) -> PmuInfo:
        info = self.probe()
        if info.version < 2 or info.num_counters == 0 or info.cntval_bits < 32:
            raise PerfOpenError(
                f"no usable architectural PMU (CPUID.0AH version {info.version}, "
                f"{info.num_counters} GP counters of {info.cntval_bits} bits): pebslab's guest "
                "driver needs architectural perfmon v2+ with counters of at least 32 bits; "
                "Linux would fall back to software events")
        return info

    # --- counter scheduling ----------------------------------------------------
    def x86_schedule_events(self, spec: EventSpec) -> int:
        """Pick a counter for an event: fixed if eligible and free, else the lowest free GP.

        Models x86_schedule_events() / perf_assign_events() in
        arch/x86/events/core.c, simplified: no multiplexing, fixed counters
        first (__perf_sched_find_counter prefers them), precise events only
        on the PEBS counter mask (intel_pebs_constraints()).
        """
        info = self.info
        used = set(self.events)
        if spec.fixed is not None and spec.fixed < info.num_counters_fixed:
            idx = M.INTEL_PMC_IDX_FIXED + spec.fixed
            if idx not in used:
                return idx
        if spec.gp_ok:
            mask = info.pebs_counter_mask if spec.precise_ip else (1 << info.num_counters) - 1
            for i in range(info.num_counters):
                if mask >> i & 1 and i not in used:
                    return i
        want = []
        if spec.fixed is not None:
            want.append(f"fixed counter {spec.fixed}" +
                        ("" if spec.fixed < info.num_counters_fixed else " (absent)"))
        if spec.gp_ok:
            mask = info.pebs_counter_mask if spec.precise_ip else (1 << info.num_counters) - 1
            want.append(f"GP counters {mask:#x}" + (" (PEBS-capable)" if spec.precise_ip else ""))
        busy = ", ".join(f"{i}: {e.spec.spec}" for i, e in sorted(self.events.items())) or "none"
        raise PerfOpenError(f"no free counter for {spec.spec!r}: it needs "
                            f"{' or '.join(want) or 'a counter'}; in use: {busy} "
                            "(pebslab does not multiplex)")

    # --- period arithmetic -------------------------------------------------------
    def x86_perf_event_set_period(self, ev: _Event) -> None:
        """Preset the counter so it overflows after the period left: write (-left) & mask.

        Models x86_perf_event_set_period() in arch/x86/events/core.c: left
        = period_left (rolled by one period if it went <= 0), at least 2
        ("certain CPUs don't like it if just 1 event is left"), at most
        max_period. GP counters are written through the legacy alias 0xC1+i
        (bits 31:0, sign-extended) while left < 2**31, through the
        full-width alias 0x4C1+i beyond (PERF_CAPABILITIES.FW_WRITES; Linux
        uses 0x4C1 for every write once it has FW_WRITES).
        """
        info = self.info
        period = ev.period
        left = ev.period_left
        if left <= -period:
            left = period
        elif left <= 0:
            left += period
        ev.period_left = left
        left = max(left, 2)
        left = min(left, info.max_period)
        value = (-left) & info.cntval_mask
        ev.prev_count = value
        if ev.is_fixed:
            msr = M.MSR_CORE_PERF_FIXED_CTR0 + ev.idx - M.INTEL_PMC_IDX_FIXED
        elif left < 1 << 31:
            msr = M.MSR_IA32_PERFCTR0 + ev.idx
        else:
            msr = M.MSR_IA32_PMC0 + ev.idx     # only reachable with FW_WRITES (max_period)
        self._wrmsr(msr, value)

    def x86_perf_event_update(self, ev: _Event) -> int:
        """Read the counter and fold the events since the last read into the count.

        Models x86_perf_event_update() in arch/x86/events/core.c: delta =
        (new - prev) modulo the counter width (Linux's shift trick), count +=
        delta, period_left -= delta. Linux reads with RDPMC; the vCPU
        protocol has RDMSR, which returns the same value.
        """
        if ev.is_fixed:
            msr = M.MSR_CORE_PERF_FIXED_CTR0 + ev.idx - M.INTEL_PMC_IDX_FIXED
        else:
            msr = M.MSR_IA32_PERFCTR0 + ev.idx
        new = self._rdmsr(msr) & self.info.cntval_mask
        delta = (new - ev.prev_count) & self.info.cntval_mask
        ev.prev_count = new
        ev.count += delta
        ev.period_left -= delta
        return new

    # --- global enable/disable ---------------------------------------------------
    @property
    def active_mask(self) -> int:
        """GLOBAL_CTRL bits of the counters in use."""
        m = 0
        for idx in self.events:
            m |= 1 << idx
        return m

    def _intel_pmu_disable_all(self) -> None:
        """GLOBAL_CTRL = 0. Models __intel_pmu_disable_all() (intel/core.c)."""
        self._wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 0)

    def intel_pmu_disable_all(self) -> None:
        """Stop every counter and PEBS. Models intel_pmu_disable_all() and
        intel_pmu_pebs_disable_all() (intel/core.c, ds.c)."""
        self.enabled = False
        self._intel_pmu_disable_all()
        if self.pebs_enabled:
            self._wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)

    def _intel_pmu_enable_all(self) -> None:
        """FIXED_CTR_CTRL if it changed, then GLOBAL_CTRL = the counters in use.

        Models __intel_pmu_enable_all() (intel/core.c). Linux writes
        x86_pmu.intel_ctrl (every counter) and relies on each counter's EN
        bits; pebslab writes only the counters in use, which reads better
        in a trace and counts the same.
        """
        if self.fixed_ctrl_val != self.active_fixed_ctrl_val:
            self._wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, self.fixed_ctrl_val)
            self.active_fixed_ctrl_val = self.fixed_ctrl_val
        self._wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, self.active_mask)

    def intel_pmu_enable_all(self) -> None:
        """PEBS_ENABLE, then the counters. Models intel_pmu_enable_all() with
        intel_pmu_pebs_enable_all() (intel/core.c, ds.c)."""
        if self.pebs_enabled:
            self._wrmsr(M.MSR_IA32_PEBS_ENABLE, self.pebs_enabled)
        self._intel_pmu_enable_all()
        self.enabled = True

    # --- the DS area -------------------------------------------------------------
    def _ds_write(self, offset: int, value: int) -> None:
        self.kernel.write(self.ds_gva + offset, int(value).to_bytes(8, "little"))

    def read_ds(self) -> P.DebugStore:
        """Read the DS area from guest memory (what ``ds->...`` loads see)."""
        if self.ds_gva is None:
            raise ValueError("the DS area is not allocated yet: record a precise event first")
        return P.DebugStore.from_bytes(self.kernel.read(self.ds_gva, P.DS_SIZE))

    def reserve_ds_buffers(self) -> None:
        """Allocate the DS area (1 page) and the PEBS buffer, fill DS, write IA32_DS_AREA.

        Models alloc_ds_buffer(), alloc_pebs_buffer() and
        init_debug_store_on_cpu() in arch/x86/events/intel/ds.c: a 64 KiB
        buffer (one page for format 0, the Core2 hang), pebs_buffer_base =
        pebs_index = buffer, pebs_absolute_maximum = base + record_size *
        (size // record_size) with the boot-time record size. Done once;
        Linux keeps both per CPU while any event needs them. The pages come
        from kernel.mm.alloc (kernel virtual memory; Linux maps them in the
        cpu_entry_area).

        The 3.15 guest (``linux="3.15"``) allocates one page for every
        format (PEBS_BUFFER_SIZE = PAGE_SIZE) and writes the threshold here,
        one record above the base (alloc_pebs_buffer() in v3.15
        arch/x86/kernel/cpu/perf_event_intel_ds.c: thresh = 1).
        """
        if self.ds_gva is not None:
            return
        info = self.info
        pages = 1 if info.pebs_format == 0 else PEBS_BUFFER_PAGES
        if self.linux == "3.15":
            pages = PEBS_BUFFER_SIZE_3_15 // PAGE_SIZE     # one page, every format
        mm = self.kernel.mm
        ds = mm.alloc(1)
        buf = mm.alloc(pages)
        bsize = pages * PAGE_SIZE
        size = info.pebs_record_size
        self.ds_gva = ds
        self.pebs_buffer_gva = buf
        self.pebs_buffer_size = bsize
        self._ds_write(P.DS_OFF_PEBS_BUFFER_BASE, buf)
        self._ds_write(P.DS_OFF_PEBS_INDEX, buf)
        self._ds_write(P.DS_OFF_PEBS_ABS_MAX, buf + size * (bsize // size))
        self.pebs_threshold = None
        if self.linux == "3.15":
            # 3.15 alloc_pebs_buffer(): thresh = 1, "always use a single PEBS record"
            self._ds_write(P.DS_OFF_PEBS_THRESHOLD, buf + size)
            self.pebs_threshold = buf + size
        try:
            self._wrmsr(M.MSR_IA32_DS_AREA, ds)       # init_debug_store_on_cpu()
        except GuestFault:
            self.ds_gva = self.pebs_buffer_gva = None
            mm.free(buf, pages)
            mm.free(ds, 1)
            raise

    def pebs_update_threshold(self) -> None:
        """Write pebs_interrupt_threshold: one record, or nearly full for large PEBS.

        Models pebs_update_threshold() in arch/x86/events/intel/ds.c: if
        every PEBS event is large-PEBS, threshold = absolute_maximum -
        reserved * record_size with reserved = max_pebs_events (+ the fixed
        counters with PMU_FL_PEBS_ALL, i.e. baseline); otherwise threshold =
        base + record_size, a PMI after every record (FACTS a.4).
        """
        pebs = [e for e in self.events.values() if e.pebs]
        if not pebs or self.ds_gva is None:
            return
        info = self.info
        base = self.pebs_buffer_gva
        size = self.pebs_record_size
        absmax = base + info.pebs_record_size * (self.pebs_buffer_size // info.pebs_record_size)
        if all(e.large_pebs for e in pebs):
            reserved = info.max_pebs_events
            if info.pebs_baseline:
                reserved += info.num_counters_fixed
            threshold = absmax - reserved * size
        else:
            threshold = base + size
        if threshold != self.pebs_threshold:
            self._ds_write(P.DS_OFF_PEBS_THRESHOLD, threshold)
            self.pebs_threshold = threshold

    def pebs_update_adaptive_cfg(self, ev: _Event) -> int:
        """The PEBS_DATA_CFG groups an event needs: MEMINFO for memory events,
        GP when precise_ip < 2 (the off-by-one IP lives in the GPR group).

        Models pebs_update_adaptive_cfg() in arch/x86/events/intel/ds.c for
        the sample types pebslab records (IP, TIME, ADDR, WEIGHT).
        """
        cfg = 0
        if ev.spec.memory:
            cfg |= P.PEBS_DATACFG_MEMINFO
        if ev.spec.precise_ip < 2:
            cfg |= P.PEBS_DATACFG_GP
        return cfg

    def intel_pmu_pebs_add(self, ev: _Event) -> None:
        """Account a new PEBS event: data groups, record size, threshold.

        Models intel_pmu_pebs_add() / pebs_update_state() in
        arch/x86/events/intel/ds.c (the record never shrinks on del).
        """
        info = self.info
        if info.pebs_baseline:
            if not any(e.pebs for e in self.events.values() if e is not ev):
                self.pebs_data_cfg = 0
                self.pebs_record_size = P.record_size(4, 0)
            cfg = self.pebs_update_adaptive_cfg(ev)
            if cfg & ~self.pebs_data_cfg:
                self.pebs_data_cfg |= cfg
                self.pebs_record_size = P.adaptive_record_size(self.pebs_data_cfg)
        self.pebs_update_threshold()

    def intel_pmu_pebs_enable(self, ev: _Event) -> None:
        """Arm PEBS for an event (software state and DS; the MSR is written by enable_all).

        Models intel_pmu_pebs_enable() in arch/x86/events/intel/ds.c:
        clear EVENTSEL.INT (no normal PMI for PEBS counters), set the
        pebs_enabled bit; with baseline set EVENTSEL bit 34 (adaptive) and,
        if the groups changed, drain and write MSR_PEBS_DATA_CFG; store the
        auto-reload value (-period) & cntval_mask in the counter's
        pebs_event_reset slot (0 without auto-reload).
        """
        info = self.info
        ev.config &= ~M.ARCH_PERFMON_EVENTSEL_INT
        self.pebs_enabled |= 1 << ev.idx
        if info.pebs_baseline:
            ev.config |= M.ICL_EVENTSEL_ADAPTIVE
            if self.pebs_data_cfg != self.active_pebs_data_cfg:
                self.drain_pebs()               # intel_pmu_drain_pebs_buffer()
                self._wrmsr(M.MSR_PEBS_DATA_CFG, self.pebs_data_cfg)
                self.active_pebs_data_cfg = self.pebs_data_cfg
        reset = (-ev.period) & info.cntval_mask if ev.auto_reload else 0
        self._ds_write(P.DS_OFF_PEBS_RESET + 8 * P.ds_reset_slot(ev.idx), reset)

    def intel_pmu_pebs_disable(self, ev: _Event) -> None:
        """Disarm PEBS for an event; drain first if the buffer holds many records.

        Models intel_pmu_pebs_disable() in arch/x86/events/intel/ds.c.
        """
        pebs = [e for e in self.events.values() if e.pebs]
        if pebs and all(e.large_pebs for e in pebs):
            self.drain_pebs()                   # intel_pmu_drain_pebs_buffer()
        self.pebs_enabled &= ~(1 << ev.idx)
        if self.enabled:
            self._wrmsr(M.MSR_IA32_PEBS_ENABLE, self.pebs_enabled)
        ev.config |= M.ARCH_PERFMON_EVENTSEL_INT

    # --- one counter ---------------------------------------------------------------
    def intel_pmu_enable_event(self, ev: _Event) -> None:
        """Arm PEBS if precise, then switch the counter on (EVTSEL.EN / FIXED_CTR_CTRL bits).

        Models intel_pmu_enable_event() with __x86_pmu_enable_event() and
        intel_pmu_enable_fixed() in arch/x86/events/intel/core.c. Fixed
        counters get PMI (0x8), USR (0x2), OS (0x1) in their 4-bit field;
        the FIXED_CTR_CTRL write itself happens in enable_all, as in Linux.
        """
        if ev.pebs:
            self.intel_pmu_pebs_enable(ev)
        if ev.is_fixed:
            i = ev.idx - M.INTEL_PMC_IDX_FIXED
            shift = M.INTEL_FIXED_BITS_STRIDE * i
            self.fixed_ctrl_val = (self.fixed_ctrl_val & ~(0xF << shift)) | (ev.config << shift)
        else:
            self._wrmsr(M.MSR_P6_EVNTSEL0 + ev.idx, ev.config | M.ARCH_PERFMON_EVENTSEL_ENABLE)

    def intel_pmu_disable_event(self, ev: _Event) -> None:
        """Switch the counter off, then disarm PEBS.

        Models intel_pmu_disable_event() (x86_pmu_disable_event() /
        intel_pmu_disable_fixed(), then intel_pmu_pebs_disable()) in
        arch/x86/events/intel/core.c.
        """
        if ev.is_fixed:
            shift = M.INTEL_FIXED_BITS_STRIDE * (ev.idx - M.INTEL_PMC_IDX_FIXED)
            self.fixed_ctrl_val &= ~(0xF << shift)
        else:
            self._wrmsr(M.MSR_P6_EVNTSEL0 + ev.idx, ev.config)
        if ev.pebs:
            self.intel_pmu_pebs_disable(ev)

    def _eventsel(self, ev: _Event) -> int:
        """hwc->config: the event bits, USR/OS from the modifiers, and INT.

        Models x86_pmu_hw_config() (arch/x86/events/core.c), which sets INT
        on every event, counting ones included (so a 48-bit wrap raises a
        PMI that folds it into the count), and intel_pmu_enable_fixed() for
        the 4-bit fixed-counter field (PMI 0x8, USR 0x2, OS 0x1).
        """
        s = ev.spec
        if ev.is_fixed:
            bits = M.INTEL_FIXED_0_ENABLE_PMI
            bits |= M.INTEL_FIXED_0_USER if s.usr else 0
            bits |= M.INTEL_FIXED_0_KERNEL if s.os else 0
            return bits
        cfg = s.config | M.ARCH_PERFMON_EVENTSEL_INT
        cfg |= M.ARCH_PERFMON_EVENTSEL_USR if s.usr else 0
        cfg |= M.ARCH_PERFMON_EVENTSEL_OS if s.os else 0
        return cfg

    # --- add / del ---------------------------------------------------------------
    def _add(self, evs: list[_Event]) -> None:
        """Schedule and start events with the PMU disabled around it.

        Models perf_pmu_disable() / x86_pmu_add() / x86_pmu_enable() ->
        x86_pmu_start() (arch/x86/events/core.c): schedule (software only),
        disable all, (first PEBS event) reserve the DS buffers, account PEBS
        (threshold, groups), preset each counter (set_period), enable each
        event (PEBS arming, EVTSEL), enable all (PEBS_ENABLE, FIXED_CTR_CTRL,
        GLOBAL_CTRL). The counter is preset *before* its EVTSEL enables it,
        as Linux's x86_pmu_start() does.
        """
        placed: list[_Event] = []
        try:
            for ev in evs:
                ev.idx = self.x86_schedule_events(ev.spec)
                ev.config = self._eventsel(ev)
                self.events[ev.idx] = ev
                placed.append(ev)
        except PerfOpenError:
            for ev in placed:
                del self.events[ev.idx]
                ev.idx = -1
            raise
        try:
            self.intel_pmu_disable_all()
            if any(ev.pebs for ev in evs):
                self.reserve_ds_buffers()
            for ev in evs:
                if ev.pebs:
                    self.intel_pmu_pebs_add(ev)
            for ev in evs:
                self.x86_perf_event_set_period(ev)
                self.intel_pmu_enable_event(ev)
                ev.active = True
            self.intel_pmu_enable_all()
        except GuestFault as f:
            self._rollback(evs)
            names = ", ".join(repr(ev.spec.spec) for ev in evs)
            pebs = " (and its PEBS_ENABLE bit clear)" if any(ev.pebs for ev in evs) else ""
            raise PerfOpenError(
                f"perf_event_open({names}) failed: {f}. The machine refused a write the "
                "driver needs, so event creation fails as in Linux; the counter is left "
                f"disabled{pebs}", fault=f) from f

    def _rollback(self, evs: list[_Event]) -> None:
        """Leave the failed events' counters disabled and the others running (best effort)."""
        saved = self._in_irq
        self._in_irq = True             # failures here are only noted
        try:
            self.intel_pmu_disable_all()
            for ev in evs:
                ev.active = False
                self.events.pop(ev.idx, None)
                self.pebs_enabled &= ~(1 << ev.idx)
                if ev.is_fixed:
                    shift = M.INTEL_FIXED_BITS_STRIDE * (ev.idx - M.INTEL_PMC_IDX_FIXED)
                    self.fixed_ctrl_val &= ~(0xF << shift)
                else:
                    self._wrmsr(M.MSR_P6_EVNTSEL0 + ev.idx, 0)
            self.intel_pmu_enable_all()
        finally:
            self._in_irq = saved

    def _del(self, ev: _Event) -> None:
        """Stop and remove one event.

        Models perf_pmu_disable() / x86_pmu_del() -> x86_pmu_stop() /
        perf_pmu_enable() (arch/x86/events/core.c): disable all, disable
        the event (draining a large-PEBS buffer first), fold the last
        counter value into the count, update the PEBS threshold, enable
        the rest.
        """
        if not ev.active:
            return
        self.intel_pmu_disable_all()
        self.intel_pmu_disable_event(ev)
        self.x86_perf_event_update(ev)
        ev.active = False
        del self.events[ev.idx]
        self.pebs_update_threshold()
        self.intel_pmu_enable_all()

    def stop_all(self) -> None:
        """Remove every active event."""
        for ev in list(self.events.values()):
            self._del(ev)

    # --- perf record / perf stat ---------------------------------------------------
    def record(self, event: str, period: int = 10007, *, large_pebs: bool = False,
               freq=None) -> Recording:
        """Start sampling ``event`` every ``period`` events: ``perf record -e EVENT -c PERIOD``.

        Models perf_event_open() for a sampling event with a fixed period
        (sys_perf_event_open() -> x86_pmu_event_init() -> x86_pmu_add()).
        Precise events (``:p``, ``:pp``) use PEBS with auto-reload; with
        ``large_pebs`` the PMI comes only when the buffer is nearly full
        (Linux's large PEBS, chosen when the sample type allows it).
        Other events sample from the PMI, with skid. ``freq`` (perf record
        -F) is not implemented.
        """
        if freq is not None:
            raise NotImplementedError(
                "freq (perf record -F, period adjusted per tick) is not implemented in "
                "pebslab; give a fixed period instead, as perf record -c does")
        info = self._need_pmu()
        if isinstance(period, (bool, np.bool_)) or not isinstance(period, (int, np.integer)):
            raise TypeError(f"period must be an int; got {type(period).__name__} {period!r}")
        period = int(period)
        if period < 1:
            raise ValueError(f"period must be >= 1; got {period}")
        if period > info.max_period:
            how = ("" if info.fw_writes else
                   "; without PERF_CAPABILITIES.FW_WRITES the counter can only be preset "
                   "through the 32-bit legacy alias 0xC1+i")
            raise ValueError(f"period must be at most max_period {info.max_period:#x} "
                             f"({info.max_period}) on this CPU{how}; got {period}")
        if not isinstance(large_pebs, (bool, np.bool_)):
            raise TypeError(f"large_pebs must be True or False; got {large_pebs!r}")
        spec = parse_event(event, info)
        if large_pebs and not spec.precise_ip:
            raise ValueError(f"large_pebs applies to precise (PEBS) events only; {event!r} has "
                             "no :p modifier")
        if large_pebs and self.linux == "3.15":
            raise ValueError("large_pebs must be False on the 3.15 guest: its driver always "
                             "uses a one-record threshold (alloc_pebs_buffer(), thresh = 1)")
        ev = _Event(spec, period, sampling=True, large_pebs=bool(large_pebs))
        if self.linux == "3.15":
            ev.auto_reload = False          # 3.15 has no PEBS auto-reload: the drain re-arms
        self._add([ev])
        return Recording(self, ev)

    def stat(self, events) -> Counting:
        """Start counting ``events`` (a name or a list): ``perf stat -e A,B``.

        Models perf_event_open() for counting events: Linux programs them
        with INT set and the longest period (x86_pmu_hw_config() sets
        sample_period = max_period), so a counter that wraps its 48 bits
        raises a PMI that folds the wrap into the 64-bit count. Precise
        modifiers are accepted and dropped: counting does not need PEBS
        (Linux would arm PEBS with that long period; the count is the same).
        """
        info = self._need_pmu()
        if isinstance(events, str):
            events = [events]
        if not isinstance(events, (list, tuple)):
            raise TypeError(f"events must be an event name or a non-empty list of names; got "
                            f"{type(events).__name__} {events!r}")
        if not events:
            raise ValueError(f"events must be an event name or a non-empty list of names; "
                             f"got {events!r}")
        evs = []
        for e in events:
            spec = parse_event(e, info)
            if spec.precise_ip:
                base, _, mods = spec.spec.partition(":")
                mods = mods.replace("p", "")
                spec = parse_event(base + (":" + mods if mods else ""), info)
                spec = dataclasses.replace(spec, spec=e.strip())
            evs.append(_Event(spec, info.max_period, sampling=False, large_pebs=False))
        self._add(evs)
        return Counting(self, evs)

    # --- the PMI ------------------------------------------------------------------
    def intel_pmu_handle_irq(self, vcpu, ip: int, cpl: int) -> int:
        """The PMI handler: disable, read and ack GLOBAL_STATUS, handle, re-enable.

        Models intel_pmu_handle_irq() in arch/x86/events/intel/core.c:
        GLOBAL_CTRL = 0; status = GLOBAL_STATUS; loop { ack it through
        GLOBAL_OVF_CTRL (intel_pmu_ack_status()); handle_pmi_common(); read
        status again } (at most 100 times: "irq loop stuck"); then
        GLOBAL_CTRL back. ``ip``/``cpl`` are the interrupted context. MSR
        accesses that #GP here are noted in ``unchecked_msr_errors`` and
        read as 0, as Linux's rdmsrl()/wrmsrl() exception fix-up does.
        Returns the number of things handled.
        """
        if vcpu is not self.vcpu:
            return 0
        if self.linux == "3.15":
            return self.intel_pmu_handle_irq_3_15(ip, cpl)
        self.pmi_count += 1
        self._in_irq = True
        handled = 0
        try:
            pmu_enabled = self.enabled
            self.enabled = False
            self._intel_pmu_disable_all()
            handled += self._ack_and_handle(ip, cpl)
            self.enabled = pmu_enabled
            if pmu_enabled:
                self._intel_pmu_enable_all()
        finally:
            self._in_irq = False
        return handled

    def _ack_and_handle(self, ip: int, cpl: int) -> int:
        """The loop both eras' PMI handlers share: read GLOBAL_STATUS, ack it, handle, repeat.

        Models the ``again:`` loop of intel_pmu_handle_irq() (at most
        _IRQ_LOOP_LIMIT rounds, then the "irq loop stuck" path).
        """
        handled = 0
        status = self._rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS)
        loops = 0
        while status:
            loops += 1
            if loops > _IRQ_LOOP_LIMIT:
                self.irq_loop_stuck += 1
                break
            self._wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, status)
            handled += self.handle_pmi_common(ip, cpl, status)
            status = self._rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS)
        return handled

    def intel_pmu_handle_irq_3_15(self, ip: int, cpl: int) -> int:
        """The 3.15 guest's PMI handler: PEBS_ENABLE = 0 on entry, the value back at the end.

        Models intel_pmu_handle_irq() in arch/x86/kernel/cpu/perf_event_intel.c
        of v3.15 (FACTS g.2): intel_pmu_disable_all() (GLOBAL_CTRL = 0, then
        intel_pmu_pebs_disable_all(): PEBS_ENABLE = 0 when any PEBS event is
        on); read GLOBAL_STATUS; if it is 0, intel_pmu_enable_all() and
        return; else loop { ack, drain the PEBS buffer on bit 62, handle the
        other counters, re-read } (at most 100 times); then
        intel_pmu_enable_all(0) unconditionally (intel_pmu_pebs_enable_all():
        PEBS_ENABLE = cpuc->pebs_enabled, then GLOBAL_CTRL). Under the 2014
        patch each of the two PEBS_ENABLE writes exits, and each releases or
        takes every pin. 6c1c07b33eb0 (v5.7) stopped these writes; see
        :meth:`intel_pmu_handle_irq`.
        """
        self.pmi_count += 1
        self._in_irq = True
        handled = 0
        try:
            self.intel_pmu_disable_all()
            handled += self._ack_and_handle(ip, cpl)
            self.intel_pmu_enable_all()
        finally:
            self._in_irq = False
        return handled

    def handle_pmi_common(self, ip: int, cpl: int, status: int) -> int:
        """Turn one GLOBAL_STATUS snapshot into samples.

        Models handle_pmi_common() in arch/x86/events/intel/core.c: ignore
        CondChgd/ASIF/LBR-frozen; drop the PEBS counters from the status
        (their samples only come from the buffer); bit 62 -> drain the PEBS
        buffer; every other overflowed counter -> intel_pmu_save_and_restart()
        (fold the count, re-arm with the period left) and one sample at the
        interrupted IP: that IP is where skid shows.
        """
        info = self.info
        handled = 0
        status &= ~(M.GLOBAL_STATUS_COND_CHG | GLOBAL_STATUS_ASIF | GLOBAL_STATUS_LBRS_FROZEN)
        if not status:
            return 0
        status &= ~self.pebs_enabled
        if status & M.GLOBAL_STATUS_BUFFER_OVF:
            status &= ~M.GLOBAL_STATUS_BUFFER_OVF
            handled += 1
            self.drain_pebs()
            status &= info.intel_ctrl
        for bit in _bits(status):
            ev = self.events.get(bit)
            if ev is None or not ev.active:
                continue
            handled += 1
            self.x86_perf_event_update(ev)          # intel_pmu_save_and_restart()
            self.x86_perf_event_set_period(ev)
            if ev.sampling:
                ev.samples.append(self._sample(ip, 0, 0, self.vcpu.guest_time(), cpl, bit,
                                               False, "pmi"))
        return handled

    def _sample(self, ip, addr, latency, time, cpl, counter, exact, kind) -> tuple:
        w = getattr(self.machine, "workload", None)
        sym = w.symbol_of(int(ip)) if w is not None else "[unknown]"
        return (int(ip), sym, int(addr), min(int(latency), 0xFFFFFFFF), int(time), int(cpl),
                int(counter), int(bool(exact)), kind)

    # --- draining -----------------------------------------------------------------
    def drain_pebs(self) -> int:
        """Read the PEBS records out of the buffer into samples; reset pebs_index.

        Models x86_pmu.drain_pebs, i.e. intel_pmu_drain_pebs_core() (format
        0), intel_pmu_drain_pebs_nhm() (1..3) or intel_pmu_drain_pebs_icl()
        (4) in arch/x86/events/intel/ds.c. The DS area and the records are
        read through guest memory. With no DS area (bit 62 from nowhere:
        Linux's ``!x86_pmu.pebs_active``) it only counts ``spurious_pebs``.
        Returns the number of records read.
        """
        self.drain_count += 1
        trace = self.machine.trace
        if self.ds_gva is None:
            self.spurious_pebs += 1
            trace.add("NOTE", self.vcpu.guest_time(), vcpu=0,
                      info="PEBS buffer overflow (status bit 62) but no DS area: ignored")
            return 0
        info = self.info
        ds = self.read_ds()
        base, top = ds.pebs_buffer_base, ds.pebs_index
        if top <= base:
            return 0
        self._ds_write(P.DS_OFF_PEBS_INDEX, base)        # ds->pebs_index = ds->pebs_buffer_base
        if top > base + self.pebs_buffer_size:
            self.bad_pebs_index += 1
            trace.add("NOTE", self.vcpu.guest_time(), vcpu=0, gva=top,
                      info=f"pebs_index {top:#x} beyond the buffer: records dropped")
            return 0
        raw = self.kernel.read(base, top - base)
        if info.pebs_format >= 4:
            n = self._drain_icl(raw)
        else:
            n = self._drain_legacy(raw)
        trace.add("DRAIN", self.vcpu.guest_time(), vcpu=0, gva=base, value=n,
                  info=f"{n} PEBS records ({top - base} bytes)")
        return n

    def _drain_legacy(self, raw: bytes) -> int:
        """intel_pmu_drain_pebs_core() / _nhm(): fixed-size records, collision rule for fmt < 3."""
        info = self.info
        fmt = info.pebs_format
        size = P.record_size(fmt)
        n = len(raw) // size
        recs = P.decode(raw[:n * size], fmt)
        now = self.vcpu.guest_time()
        mask = (1 << info.max_pebs_events) - 1
        enabled = self.pebs_enabled
        error: dict[int, int] = {}
        for rec in recs:
            if fmt == 0:
                bits = [0]                      # intel_pmu_drain_pebs_core(): PMC0 only
            else:
                st = int(rec["status"]) & enabled & mask
                if fmt >= 3:
                    bits = list(_bits(st))
                else:
                    if not st and enabled and not enabled & (enabled - 1):
                        st = enabled            # the single PEBS event takes it
                    if not st:
                        continue
                    bits = list(_bits(st))
                    if len(bits) > 1:           # collision: the record is dropped
                        for b in bits:
                            error[b] = error.get(b, 0) + 1
                        continue
            for b in bits:
                ev = self.events.get(b)
                if ev is None or not ev.pebs:
                    continue
                if not ev.auto_reload:
                    # __intel_pmu_pebs_event() -> intel_pmu_save_and_restart() (3.15)
                    self.x86_perf_event_update(ev)
                    self.x86_perf_event_set_period(ev)
                ev.samples.append(self._legacy_sample(rec, ev, b, now))
        for b, k in error.items():
            ev = self.events.get(b)
            if ev is not None and ev.pebs:
                ev.lost += k                    # perf_log_lost_samples()
        return n

    def _legacy_sample(self, rec, ev: _Event, bit: int, now: int) -> tuple:
        """setup_pebs_fixed_sample_data(): the IP per precise_ip, address, latency, time.

        precise_ip 1: the record's IP (trap-like: the next instruction).
        precise_ip >= 2: the eventing IP (real_ip, format >= 2) with EXACT;
        format 0/1 would need intel_pmu_pebs_fixup_ip() (LBR walk), not
        modelled: the record IP, exact only if the assist is fault-like
        (pebs_trap = 0: nothing to fix).
        """
        info = self.info
        fmt = info.pebs_format
        ip = int(rec["ip"])
        exact = False
        if ev.spec.precise_ip >= 2:
            if fmt >= 2:
                ip = int(rec["real_ip"])
                exact = True
            else:
                exact = not info.pebs_trap
        addr = int(rec["dla"]) if fmt >= 1 else 0
        lat = int(rec["lat"]) if fmt >= 1 else 0
        time = int(rec["tsc"]) if fmt >= 3 else now
        return self._sample(ip, addr, lat, time, 0 if ip >> 63 else 3, bit, exact, "pebs")

    def _drain_icl(self, raw: bytes) -> int:
        """intel_pmu_drain_pebs_icl(): adaptive records walked by their own size."""
        info = self.info
        mask = ((1 << info.max_pebs_events) - 1)
        if info.pebs_baseline:
            mask |= ((1 << info.num_counters_fixed) - 1) << M.INTEL_PMC_IDX_FIXED
        try:
            recs = [P.decode(raw[off:off + size], 4)[0] for off, _cfg, size in P.walk_adaptive(raw)]
        except ValueError as e:
            self.machine.trace.add("NOTE", self.vcpu.guest_time(), vcpu=0,
                                   info=f"PEBS buffer not walkable, dropped: {e}")
            return 0
        for rec in recs:
            st = int(rec["basic"]["applicable_counters"]) & self.pebs_enabled & mask
            for b in _bits(st):
                ev = self.events.get(b)
                if ev is None or not ev.pebs:
                    continue
                ev.samples.append(self._adaptive_sample(rec, ev, b))
        return len(recs)

    def _adaptive_sample(self, rec, ev: _Event, bit: int) -> tuple:
        """setup_pebs_adaptive_sample_data(): basic.ip is the eventing IP (EXACT);
        with a GPR group and precise_ip < 2, gprs.ip (the next instruction), inexact."""
        names = rec.dtype.names
        basic = rec["basic"]
        ip = int(basic["ip"])
        exact = True
        if "gprs" in names and ev.spec.precise_ip < 2:
            ip = int(rec["gprs"]["ip"])
            exact = False
        addr = lat = 0
        if "meminfo" in names:
            addr = int(rec["meminfo"]["address"])
            lat = int(rec["meminfo"]["latency"])
        return self._sample(ip, addr, lat, int(basic["tsc"]), 0 if ip >> 63 else 3, bit,
                            exact, "pebs")

    def __repr__(self) -> str:
        evs = ", ".join(f"{i}: {e.spec.spec}" for i, e in sorted(self.events.items()))
        return f"GuestPerf(events {{{evs}}}, {self.pmi_count} PMIs, {self.drain_count} drains)"
