"""Host perf_events: the events that back guest counters, and sample throttling.

KVM never programs the PMU itself: for every guest counter it asks the host's
perf subsystem for a kernel counter (``perf_event_create_kernel_counter``)
and perf decides which hardware counter the event lands on, or whether it
runs at all. ``HostPerf`` models that bookkeeping for one CPU.

The second half of the module is perf's interrupt throttling
(``perf_sample_event_took`` in kernel/events/core.c) as pure functions,
in two eras: the halving rule of 2014 (Andi Kleen's time) and today's
rule with a 25% headroom. The 2014 patch's cover letter warns that PEBS
emulation "may trigger the expensive PMI detection in the guest".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from .._check import check_int as _check_int

# ----------------------------------------------------------------------
# struct perf_event_attr (the fields KVM fills)
# ----------------------------------------------------------------------

#: enum perf_type_id (include/uapi/linux/perf_event.h)
PERF_TYPE_HARDWARE = 0
PERF_TYPE_RAW = 4

#: enum perf_hw_id (include/uapi/linux/perf_event.h)
PERF_COUNT_HW_CPU_CYCLES = 0
PERF_COUNT_HW_INSTRUCTIONS = 1
PERF_COUNT_HW_CACHE_REFERENCES = 2
PERF_COUNT_HW_CACHE_MISSES = 3
PERF_COUNT_HW_BRANCH_INSTRUCTIONS = 4
PERF_COUNT_HW_BRANCH_MISSES = 5
PERF_COUNT_HW_BUS_CYCLES = 6
PERF_COUNT_HW_STALLED_CYCLES_FRONTEND = 7
PERF_COUNT_HW_STALLED_CYCLES_BACKEND = 8
PERF_COUNT_HW_REF_CPU_CYCLES = 9
PERF_COUNT_HW_MAX = 10

#: Index of fixed counter 0 in perf/KVM counter numbering (INTEL_PMC_IDX_FIXED).
INTEL_PMC_IDX_FIXED = 32

#: Which generic hardware event each Intel fixed counter counts
#: (fixed 0: INST_RETIRED.ANY, 1: CPU_CLK_UNHALTED.CORE, 2: .REF).
FIXED_COUNTER_EVENTS = {
    PERF_COUNT_HW_INSTRUCTIONS: 0,
    PERF_COUNT_HW_CPU_CYCLES: 1,
    PERF_COUNT_HW_REF_CPU_CYCLES: 2,
}

OWNERS = ("kvm", "host")


@dataclass
class PerfEventAttr:
    """The attributes of a perf event that KVM sets when it reprograms a counter.

    Models the subset of struct perf_event_attr (include/uapi/linux/perf_event.h)
    that reprogram_counter() in arch/x86/kvm/pmu.c fills.
    """

    type: int = PERF_TYPE_HARDWARE
    config: int = PERF_COUNT_HW_CPU_CYCLES
    sample_period: int = 0
    precise_ip: int = 0
    exclude_user: bool = False
    exclude_kernel: bool = False
    exclude_host: bool = False
    exclude_guest: bool = False
    pinned: bool = False
    #: pebslab: a precise event's counter writes adaptive records (host perf sets
    #: ICL_EVENTSEL_ADAPTIVE / ICL_FIXED_0_ADAPTIVE); KVM sets it from the guest's bit
    adaptive: bool = False

    def validate(self) -> None:
        """Raise TypeError/ValueError if a field is out of its range.

        Models the checks of perf_event_open()/perf_copy_attr() that matter here.
        """
        t = _check_int("attr.type", self.type, 0)
        if t not in (PERF_TYPE_HARDWARE, PERF_TYPE_RAW):
            raise ValueError(
                f"attr.type must be PERF_TYPE_HARDWARE (0) or PERF_TYPE_RAW (4); got {t}")
        cfg = _check_int("attr.config", self.config, 0, (1 << 64) - 1)
        if t == PERF_TYPE_HARDWARE and cfg >= PERF_COUNT_HW_MAX:
            raise ValueError(
                f"attr.config must be a perf_hw_id 0..{PERF_COUNT_HW_MAX - 1} "
                f"for PERF_TYPE_HARDWARE; got {cfg}")
        _check_int("attr.sample_period", self.sample_period, 0, (1 << 64) - 1)
        _check_int("attr.precise_ip", self.precise_ip, 0, 3)
        for name in ("exclude_user", "exclude_kernel", "exclude_host",
                     "exclude_guest", "pinned", "adaptive"):
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"attr.{name} must be a bool; got {type(v).__name__} {v!r}")


class PerfEvent:
    """One perf event: attributes, where it is scheduled, its count, its handler.

    Models struct perf_event (include/linux/perf_event.h), reduced to what
    KVM's vPMU touches: hw.idx, the count, overflow_handler and its
    context, and the 2014 series' ``guest_owned`` flag.
    """

    def __init__(self, perf: "HostPerf", attr: PerfEventAttr,
                 overflow_handler: Callable[["PerfEvent", int], Any] | None,
                 context: Any, guest_owned: bool, owner: str, counter_mask: int):
        self._perf = perf
        self.attr = attr
        self.overflow_handler = overflow_handler
        self.context = context
        self.guest_owned = guest_owned
        self.owner = owner
        self.counter_mask = counter_mask
        #: hardware counter: GP i, or 32 + i for fixed i; -1 when not on the PMU.
        self.hw_idx = -1
        self.count = 0
        self.enabled = True
        #: pinned event that could not get a counter (PERF_EVENT_STATE_ERROR).
        self.error = False
        self.released = False
        self.overflows = 0
        #: a precise event that may take the fixed counter it counts (see HostPerf._fixed_slot)
        self.precise_fixed = False

    @property
    def state(self) -> str:
        """Return 'ACTIVE', 'INACTIVE' (multiplexed out), 'ERROR' or 'DEAD'.

        Models enum perf_event_state (include/linux/perf_event.h).
        """
        if self.released:
            return "DEAD"
        if self.error:
            return "ERROR"
        return "ACTIVE" if self.hw_idx >= 0 else "INACTIVE"

    def read(self) -> int:
        """Return the event's count.

        Models perf_event_read_value() in kernel/events/core.c.
        """
        return self.count

    def overflow(self, sample_ip: int) -> Any:
        """Deliver an overflow: call the handler with (event, sample_ip).

        Models perf_event_overflow() in kernel/events/core.c, which ends in
        event->overflow_handler (for KVM: kvm_perf_overflow or
        kvm_perf_overflow_intr). Returns what the handler returns.
        """
        if self.released:
            raise ValueError("overflow on a released perf event")
        sample_ip = _check_int("sample_ip", sample_ip, 0, (1 << 64) - 1)
        self.overflows += 1
        if self.overflow_handler is None:
            return None
        return self.overflow_handler(self, sample_ip)

    def release(self) -> None:
        """Free the event and its hardware counter.

        Models perf_event_release_kernel() in kernel/events/core.c.
        """
        self._perf.release(self)

    def __repr__(self) -> str:
        return (f"PerfEvent(type={self.attr.type}, config={self.attr.config:#x}, "
                f"precise_ip={self.attr.precise_ip}, hw_idx={self.hw_idx}, "
                f"owner={self.owner!r}, guest_owned={self.guest_owned}, state={self.state})")


class HostPerf:
    """The host's perf events on one CPU and the hardware counters they occupy.

    Models the counter scheduling of perf's x86 core
    (x86_schedule_events() in arch/x86/events/core.c with Intel's fixed
    counter constraints) in a simple, deterministic form: an event gets a
    counter when it is created, or waits (INACTIVE) until one is released.
    """

    def __init__(self, n_gp: int, n_fixed: int, pebs_fixed_mask: int = 0):
        self.n_gp = _check_int("n_gp", n_gp, 1, INTEL_PMC_IDX_FIXED)
        self.n_fixed = _check_int("n_fixed", n_fixed, 0, 16)
        #: fixed counters that can do PEBS (extended PEBS, Ice Lake: bit i = fixed i)
        self.pebs_fixed_mask = _check_int("pebs_fixed_mask", pebs_fixed_mask, 0,
                                          (1 << self.n_fixed) - 1)
        self._events: list[PerfEvent] = []
        self._by_idx: dict[int, PerfEvent] = {}

    @property
    def all_gp_mask(self) -> int:
        """Return the bitmask of every GP counter."""
        return (1 << self.n_gp) - 1

    def _fixed_slot(self, attr: PerfEventAttr, allow_precise: bool = False) -> int:
        """Return the fixed counter index (32+i) this event may use, or -1.

        A precise event may use fixed counter i only where the CPU has PEBS on
        it (extended PEBS: intel_pebs_constraints() returns no PEBS constraint
        with PMU_FL_PEBS_ALL, so the event's fixed-counter constraint holds)
        and its creator allows it (KVM, for a guest fixed counter: the host
        counter of the same index, so it is not cross-mapped).
        """
        if attr.type != PERF_TYPE_HARDWARE:
            return -1
        i = FIXED_COUNTER_EVENTS.get(int(attr.config), -1)
        if i < 0 or i >= self.n_fixed:
            return -1
        if attr.precise_ip and not (allow_precise and self.pebs_fixed_mask >> i & 1):
            return -1
        return INTEL_PMC_IDX_FIXED + i

    def _place(self, ev: PerfEvent) -> int:
        """Return a free hardware counter for ``ev``, or -1."""
        fixed = self._fixed_slot(ev.attr, ev.precise_fixed)
        if fixed >= 0 and fixed not in self._by_idx:
            return fixed
        for i in range(self.n_gp):
            if ev.counter_mask >> i & 1 and i not in self._by_idx:
                return i
        return -1

    def _schedule(self, ev: PerfEvent) -> None:
        idx = self._place(ev)
        if idx >= 0:
            ev.hw_idx = idx
            self._by_idx[idx] = ev
        elif ev.attr.pinned:
            ev.error = True

    def create_kernel_counter(self, attr: PerfEventAttr,
                              handler: Callable[[PerfEvent, int], Any] | None = None,
                              context: Any = None, guest_owned: bool = False,
                              counter_mask: int | None = None,
                              owner: str = "kvm", precise_fixed: bool = False) -> PerfEvent:
        """Create an in-kernel perf event and put it on a hardware counter if one is free.

        Models perf_event_create_kernel_counter() in kernel/events/core.c
        and the 2014 series' __perf_event_create_kernel_counter(), which
        also sets ``guest_owned``. Placement: a non-precise hardware event
        that a fixed counter counts (instructions -> 32, cycles -> 33,
        ref-cycles -> 34) takes that fixed counter if free; otherwise the
        lowest free GP counter in ``counter_mask`` (default: all; PEBS on
        Silvermont is PMC0 only, so pass 0x1). With none free the event
        exists but is not counting (hw_idx -1); a pinned one is in ERROR.
        ``owner`` is 'kvm' (backs a guest counter) or 'host' (the host's
        own perf or the NMI watchdog). ``precise_fixed``: a precise event
        may take its fixed counter too, where the CPU has PEBS on it
        (``pebs_fixed_mask``; extended PEBS).
        """
        if not isinstance(attr, PerfEventAttr):
            raise TypeError(f"attr must be a PerfEventAttr; got {type(attr).__name__}")
        attr.validate()
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable or None; got {type(handler).__name__}")
        if not isinstance(guest_owned, (bool, np.bool_)):
            raise TypeError(f"guest_owned must be a bool; got {type(guest_owned).__name__}")
        if owner not in OWNERS:
            raise ValueError(f"owner must be one of {', '.join(map(repr, OWNERS))}; got {owner!r}")
        if guest_owned and owner != "kvm":
            raise ValueError("guest_owned=True requires owner='kvm'")
        if counter_mask is None:
            counter_mask = self.all_gp_mask
        counter_mask = _check_int("counter_mask", counter_mask, 1, self.all_gp_mask)
        ev = PerfEvent(self, dataclasses.replace(attr), handler, context,
                       bool(guest_owned), owner, counter_mask)
        ev.precise_fixed = bool(precise_fixed)
        self._events.append(ev)
        self._schedule(ev)
        return ev

    def enable_nmi_watchdog(self, sample_period: int = 2_000_000_000) -> PerfEvent:
        """Create the host's hard-lockup watchdog event (pinned cycles).

        Models hardlockup_detector_event_create() in kernel/watchdog_perf.c:
        a pinned CPU_CYCLES event, which lands on fixed counter 1.
        """
        attr = PerfEventAttr(type=PERF_TYPE_HARDWARE, config=PERF_COUNT_HW_CPU_CYCLES,
                             sample_period=sample_period, pinned=True)
        return self.create_kernel_counter(attr, owner="host")

    def release(self, event: PerfEvent) -> None:
        """Free an event; waiting events may then get its counter.

        Models perf_event_release_kernel() in kernel/events/core.c; the
        re-scheduling of waiting events (in creation order) stands in for
        perf's next sched-in/rotation.
        """
        if not isinstance(event, PerfEvent):
            raise TypeError(f"event must be a PerfEvent; got {type(event).__name__}")
        if event._perf is not self or event.released:
            raise ValueError(f"event is not a live event of this HostPerf: {event!r}")
        if event.hw_idx >= 0:
            del self._by_idx[event.hw_idx]
        event.hw_idx = -1
        event.released = True
        event.enabled = False
        self._events.remove(event)
        for ev in self._events:
            if ev.hw_idx < 0 and not ev.error:
                self._schedule(ev)

    def events(self) -> list[PerfEvent]:
        """Return the live events in creation order."""
        return list(self._events)

    def by_idx(self, idx: int) -> PerfEvent | None:
        """Return the event on hardware counter ``idx`` (GP i or 32+i), or None."""
        idx = _check_int("idx", idx, 0)
        if not (idx < self.n_gp or INTEL_PMC_IDX_FIXED <= idx < INTEL_PMC_IDX_FIXED + self.n_fixed):
            raise ValueError(
                f"idx must be a GP counter 0..{self.n_gp - 1} or a fixed counter "
                f"{INTEL_PMC_IDX_FIXED}..{INTEL_PMC_IDX_FIXED + self.n_fixed - 1}; got {idx}")
        return self._by_idx.get(idx)

    def __repr__(self) -> str:
        return f"HostPerf(n_gp={self.n_gp}, n_fixed={self.n_fixed}, events={len(self._events)})"


# ----------------------------------------------------------------------
# Sample throttling (kernel/events/core.c)
# ----------------------------------------------------------------------

DEFAULT_MAX_SAMPLE_RATE = 100000
DEFAULT_CPU_TIME_MAX_PERCENT = 25
HZ = 1000
NSEC_PER_SEC = 1_000_000_000
DEFAULT_SAMPLE_PERIOD_NS = NSEC_PER_SEC // DEFAULT_MAX_SAMPLE_RATE
NR_ACCUMULATED_SAMPLES = 128
ERAS = ("today", "2014")

#: The warning each era prints (format: avg, allowed, new rate).
WARNING_FORMAT = {
    "today": "perf: interrupt took too long ({} > {}), lowering "
             "kernel.perf_event_max_sample_rate to {}",
    "2014": "perf interrupt took too long ({} > {}), lowering "
            "kernel.perf_event_max_sample_rate to {}",
}


def _check_era(era: str) -> str:
    if era not in ERAS:
        raise ValueError(f"era must be one of 'today', '2014'; got {era!r}")
    return era


def div_round_up(n: int, d: int) -> int:
    """Return n / d rounded up.

    Models DIV_ROUND_UP() in include/linux/math.h.
    """
    return -(-n // d)


def tick_nsec(hz: int = HZ) -> int:
    """Return the length of one timer tick in ns.

    Models TICK_NSEC in include/vdso/jiffies.h: (NSEC_PER_SEC + HZ/2) / HZ.
    """
    hz = _check_int("hz", hz, 1)
    return (NSEC_PER_SEC + hz // 2) // hz


def update_perf_cpu_limits(sample_rate: int, cpu_time_max_percent: int,
                           era: str = "today") -> int:
    """Return perf_sample_allowed_ns: the time one sample may take.

    Models update_perf_cpu_limits() in kernel/events/core.c: the sample
    period (NSEC_PER_SEC / rate) times cpu_time_max_percent / 100. Today
    the result is at least 1; in 2014 it could be 0 (which disables
    throttling). The sysctl handler's "0 or 100 disables" rule of today
    is in ``perf_cpu_time_max_percent_handler``.
    """
    sample_rate = _check_int("sample_rate", sample_rate, 1, NSEC_PER_SEC)
    cpu_time_max_percent = _check_int("cpu_time_max_percent", cpu_time_max_percent, 0, 100)
    _check_era(era)
    period_ns = NSEC_PER_SEC // sample_rate
    allowed = period_ns * cpu_time_max_percent // 100
    if era == "today" and allowed == 0:
        allowed = 1
    return allowed


def perf_cpu_time_max_percent_handler(sample_rate: int, cpu_time_max_percent: int,
                                      era: str = "today") -> int:
    """Return perf_sample_allowed_ns after writing kernel.perf_cpu_time_max_percent.

    Models perf_cpu_time_max_percent_handler() in kernel/events/core.c:
    today, 0 and 100 both disable throttling (allowed 0, with the warning
    "perf: Dynamic interrupt throttling disabled, can hang your system!");
    in 2014 it just called update_perf_cpu_limits(), so only 0 disabled.
    """
    cpu_time_max_percent = _check_int("cpu_time_max_percent", cpu_time_max_percent, 0, 100)
    if _check_era(era) == "today" and cpu_time_max_percent in (0, 100):
        return 0
    return update_perf_cpu_limits(sample_rate, cpu_time_max_percent, era)


@dataclass
class ThrottleState:
    """Perf's per-CPU throttling state and the sysctls it rewrites.

    Models the globals around perf_sample_event_took() in
    kernel/events/core.c: running_sample_length (per CPU),
    perf_sample_allowed_ns, sysctl_perf_event_sample_rate,
    max_samples_per_tick, sysctl_perf_cpu_time_max_percent, and HZ.
    ``warnings`` collects the printed messages. Functions never mutate a
    state: they return a new one.
    """

    running_len: int = 0
    allowed_ns: int = DEFAULT_SAMPLE_PERIOD_NS * DEFAULT_CPU_TIME_MAX_PERCENT // 100
    sample_rate: int = DEFAULT_MAX_SAMPLE_RATE
    max_samples_per_tick: int = div_round_up(DEFAULT_MAX_SAMPLE_RATE, HZ)
    cpu_time_max_percent: int = DEFAULT_CPU_TIME_MAX_PERCENT
    hz: int = HZ
    warnings: list[str] = field(default_factory=list)

    @property
    def period_ns(self) -> int:
        """Return perf_sample_period_ns = NSEC_PER_SEC / sample_rate."""
        return NSEC_PER_SEC // self.sample_rate

    @property
    def avg(self) -> int:
        """Return the running average sample length, running_len / 128."""
        return self.running_len // NR_ACCUMULATED_SAMPLES

    @classmethod
    def initial(cls, sample_rate: int = DEFAULT_MAX_SAMPLE_RATE,
                cpu_time_max_percent: int = DEFAULT_CPU_TIME_MAX_PERCENT,
                hz: int = HZ, era: str = "today") -> "ThrottleState":
        """Return the state after boot and writing the two sysctls.

        Models perf_event_max_sample_rate_handler() (max_samples_per_tick =
        DIV_ROUND_UP(rate, HZ)) followed by perf_cpu_time_max_percent_handler().
        """
        sample_rate = _check_int("sample_rate", sample_rate, 1, NSEC_PER_SEC)
        hz = _check_int("hz", hz, 1)
        allowed = perf_cpu_time_max_percent_handler(sample_rate, cpu_time_max_percent, era)
        return cls(running_len=0, allowed_ns=allowed, sample_rate=sample_rate,
                   max_samples_per_tick=div_round_up(sample_rate, hz),
                   cpu_time_max_percent=int(cpu_time_max_percent), hz=hz, warnings=[])


def _took(running_len: int, allowed_ns: int, sample_rate: int, mspt: int,
          pct: int, hz: int, sample_len_ns: int, era: str):
    """One step of perf_sample_event_took on plain ints.

    Returns (running_len, allowed_ns, sample_rate, mspt, warning or None).
    """
    if allowed_ns == 0:
        return running_len, allowed_ns, sample_rate, mspt, None
    running_len = running_len - running_len // NR_ACCUMULATED_SAMPLES + sample_len_ns
    avg = running_len // NR_ACCUMULATED_SAMPLES
    if avg <= allowed_ns:
        return running_len, allowed_ns, sample_rate, mspt, None
    if era == "today":
        reported_allowed = allowed_ns
        avg_len = avg + avg // 4
        mx = (tick_nsec(hz) // 100) * pct
        mx = mx // avg_len if avg_len < mx else 1
        allowed_ns, mspt = avg_len, mx
        sample_rate = mx * hz
    else:
        if mspt <= 1:
            return running_len, allowed_ns, sample_rate, mspt, None
        mspt = div_round_up(mspt, 2)
        sample_rate = mspt * hz
        allowed_ns = (NSEC_PER_SEC // sample_rate) * pct // 100
        # perf_duration_warn() runs later and prints the new allowed_ns >> 1.
        reported_allowed = allowed_ns >> 1
    msg = WARNING_FORMAT[era].format(avg, reported_allowed, sample_rate)
    return running_len, allowed_ns, sample_rate, mspt, msg


def perf_sample_event_took(state: ThrottleState, sample_len_ns: int,
                           era: str = "today") -> ThrottleState:
    """Account one sample's handling time; lower the sample rate if samples run long.

    Models perf_sample_event_took() in kernel/events/core.c. Both eras:
    nothing at all if allowed_ns == 0 (throttling disabled); else
    running_len -= running_len/128, running_len += sample_len_ns,
    avg = running_len/128, and nothing more if avg <= allowed_ns.
    Otherwise, today: avg += avg/4 (25% headroom), max = (TICK_NSEC/100)
    * cpu_time_max_percent, max_samples_per_tick = max/avg if avg < max
    else 1, allowed_ns = avg, rate = max_samples_per_tick * HZ; warning
    "perf: interrupt took too long (avg > old allowed), ...".
    2014: nothing if max_samples_per_tick <= 1; else max_samples_per_tick
    = DIV_ROUND_UP(max_samples_per_tick, 2), rate = that * HZ, allowed_ns
    = update_perf_cpu_limits(); warning "perf interrupt took too long
    (avg > new allowed >> 1), ..." (as perf_duration_warn() printed it).
    """
    if not isinstance(state, ThrottleState):
        raise TypeError(f"state must be a ThrottleState; got {type(state).__name__}")
    sample_len_ns = _check_int("sample_len_ns", sample_len_ns, 0, (1 << 64) - 1)
    _check_era(era)
    r, allowed, rate, mspt, msg = _took(
        state.running_len, state.allowed_ns, state.sample_rate, state.max_samples_per_tick,
        state.cpu_time_max_percent, state.hz, sample_len_ns, era)
    warnings = list(state.warnings) + ([msg] if msg else [])
    return dataclasses.replace(state, running_len=r, allowed_ns=allowed, sample_rate=rate,
                               max_samples_per_tick=mspt, warnings=warnings)


def simulate_throttling(sample_lens_ns, era: str = "today",
                        cpu_time_max_percent: int = DEFAULT_CPU_TIME_MAX_PERCENT,
                        sample_rate: int = DEFAULT_MAX_SAMPLE_RATE,
                        hz: int = HZ) -> dict[str, np.ndarray]:
    """Run perf_sample_event_took over a sequence of sample lengths, for plotting.

    pebslab only (drives the model of perf_sample_event_took() in
    kernel/events/core.c from ``ThrottleState.initial``). Returns arrays,
    one entry per sample, holding the state *after* that sample:
    'allowed_ns', 'sample_rate', 'avg' (running_len/128),
    'running_len', 'max_samples_per_tick' (int64) and 'warned' (bool).
    """
    _check_era(era)
    lens = np.asarray(sample_lens_ns)
    if lens.ndim != 1 or not (np.issubdtype(lens.dtype, np.integer) or lens.size == 0):
        raise TypeError(
            f"sample_lens_ns must be a 1-D sequence of ints; got dtype {lens.dtype}, "
            f"shape {lens.shape}")
    if lens.size and lens.min() < 0:
        raise ValueError(f"sample_lens_ns must be >= 0; got a minimum of {int(lens.min())}")
    st = ThrottleState.initial(sample_rate, cpu_time_max_percent, hz, era)
    n = lens.size
    out = {k: np.zeros(n, dtype=np.int64) for k in
           ("allowed_ns", "sample_rate", "avg", "running_len", "max_samples_per_tick")}
    out["warned"] = np.zeros(n, dtype=bool)
    r, allowed, rate, mspt = st.running_len, st.allowed_ns, st.sample_rate, st.max_samples_per_tick
    pct, hz = st.cpu_time_max_percent, st.hz
    for i, length in enumerate(lens.tolist()):
        r, allowed, rate, mspt, msg = _took(r, allowed, rate, mspt, pct, hz, length, era)
        out["allowed_ns"][i] = allowed
        out["sample_rate"][i] = rate
        out["avg"][i] = r // NR_ACCUMULATED_SAMPLES
        out["running_len"][i] = r
        out["max_samples_per_tick"][i] = mspt
        out["warned"][i] = msg is not None
    return out
