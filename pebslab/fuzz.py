"""Fuzzing campaigns: random guest and host actions, every invariant checked after each step.

pebslab only. The 2014 patch argues that a guest that breaks its
assumptions "could only crash itself". A :class:`Campaign` puts that claim
(and the model's own contracts) under random load: one host with a VM under
test and a bystander VM, driven by a sequence of *actions*:

* guest actions: WRMSR / RDMSR of any MSR number with any value (biased
  towards the PMU MSRs and their interesting values), CPUID, changes to the
  guest's own page tables (map / unmap / remap, including the DS area and the
  PEBS buffer while PEBS is enabled, a context switch to a copied PML4),
  PEBS set up by hand (:func:`pebslab.scenarios.manual_pebs`) or by the perf
  driver (``guest.perf.record`` / ``stat``), running a workload;
* host actions: memory pressure (``host.reclaim``), dirty logging on, off
  and collected, save/restore to another host, vCPU reset, destroy.

After every step the invariants are checked (:meth:`Campaign.check`):

isolation
    every PEBS record lands in a frame the VM owns (each ``PEBS_WRITE`` row
    of the trace), every present EPT entry maps a frame of its VM
    (``host.mm.check_invariants``), no ``HOST_FAULT``, the bystander VM never
    crashes and its memory never changes.
accounting
    every frame of a live VM has refcount 1 + its pins (``pinned_pages`` of
    every vCPU), no pin holds a foreign frame, no VM owns a frame its EPT does
    not map; after ``destroy`` nothing of the VM is left and, at the end of a
    campaign, every host's frame table equals its state at creation.
MSR semantics
    an access either raises ``GuestFault('#GP')`` where :class:`MsrSpec`
    says so, or succeeds and reads back as the spec says (counters masked
    to their width, the legacy alias sign-extended from 32 bits, the 2014
    GLOBAL_STATUS / OVF_CTRL rules of pebslab/kvm/pmu.py); no other exception
    escapes a guest action; ``GuestCrash`` only after the VM crashed.
crashes
    a guest crash is reported as one (a ``GUEST_CRASH`` row, ``vm.crashed``,
    ``vm.crash_reason``, ``GuestCrash`` from later instructions), never as a
    Python exception, and only where :meth:`Campaign._classify_crash` can
    name the cause: the guest's own doing (self-harm), or a documented
    limitation of the design on a CPU without EPT-friendly PEBS.
determinism
    replaying the same configuration and actions gives the same trace
    digests (:meth:`Campaign.replay_digest`).

The same action and invariant code serves the hypothesis state machine of
tests/test_fuzz.py (which draws the parameters through a hypothesis-backed
:class:`Drawer`) and the command line::

    python -m pebslab.fuzz --actions 100000 [--seed N] [--profile long|short]

which spreads seeded campaigns over designs x CPU models and prints a
summary table; the exit status is non-zero on any violation.

Bugs already reported (see :data:`KNOWN_BUGS`) are labelled with their id
in the report; ``--tolerate-known`` (and the CI state machine) keep them from
failing the run. Remove an entry once its fix lands.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass

import numpy as np

from . import scenarios as S
from . import workloads as W
from .kvm.designs import DESIGN_NAMES, get_design
from .hw.errors import GuestCrash, GuestFault
from .guest.kernel import GuestKernel
from .guest.mm import GuestPageFault
from .guest.perf import PerfOpenError
from .host import perf_hw
from .host.mm import EPT_ADDR_MASK, EPT_R, HostOutOfMemory
from .hw import cpuid as CPUID
from .hw import msr as M
from .hw.core import is_canonical
from .hw.models import MODELS, get_model
from .kvm import pebs_pin
from .system import Host
from .trace import KIND_ID as _TRACE_KINDS

try:  # written in parallel; every use is guarded by hasattr
    from .kvm import migration as MIG
except ImportError:  # pragma: no cover - depends on the tree
    MIG = None

__all__ = ["Campaign", "CampaignConfig", "MsrSpec", "Drawer", "RandomDrawer", "Violation",
           "ACTIONS", "KNOWN_BUGS", "PROFILES", "COMBOS", "pebs_possible", "run_fuzz", "main"]

PAGE = 4096
U64 = (1 << 64) - 1
CPUS = tuple(MODELS)

#: Bugs found by these campaigns and reported to the lead, by id. A violation
#: whose cause matches one of them carries its id. Each has a strict xfail
#: regression test in tests/test_fuzz.py; remove the entry when it is fixed.
ALL_REPORTED_BUGS = {
    "fixed-stale-precise-event":
        "fixed: PEBS_ENABLE=0 (or a failed page-track re-pin) drops the pins but leaves the "
        "host perf event precise, so hardware PEBS keeps writing into now-unpinned memory "
        "(kvm/pmu.py kvm_pmu_set_msr reprograms flipped counters only when design.data_cfg)",
    "fixed-ds-area-repin-unchecked":
        "fixed: a DS_AREA write while PEBS is enabled re-pins but ignores a failed pin, "
        "leaving PEBS enabled over unpinned memory (kvm/pmu.py kvm_pmu_set_msr, DS_AREA branch)",
    "fixed-cr3-switch":
        "fixed: the pinned and tracked page-table pages are those of the CR3 at pin time; "
        "after a context switch the PEBS assist walks an unpinned PML4 (kvm/vm.py "
        "VCPU.load_cr3 takes no exit, nothing re-pins)",
    "icelake-fw-writes":
        "icelake: PERF_CAPABILITIES advertises FW_WRITES but the full-width counter alias "
        "MSR_IA32_PMC0+i (0x4c1) #GPs (kvm/pmu.py kvm_pmu_msr/get/set)",
    "icelake-fixed-ctr-sext":
        "icelake: guest writes to the fixed counters are sign-extended from 32 bits as in "
        "2014; upstream (commit 2924b52117b2) writes them full width (kvm/pmu.py kvm_pmu_set_msr)",
    "icelake-in-txcp":
        "icelake: IN_TXCP (eventsel bit 33) is accepted on every GP counter; upstream and the "
        "hardware allow it on counter 2 only (kvm/pmu.py kvm_pmu_cpuid_update reserved_bits)",
    "needed-pages-unbounded":
        "fixed: kvm_pmu_pebs_pin_fixed builds needed_pages() over the guest's "
        "[pebs_buffer_base, pebs_absolute_maximum) before checking pin_limit, so a DS area "
        "with a huge range makes one WRMSR hang the host (kvm/pebs_pin.py)",
    "ds-area-zero-unswitched":
        "fixed/icelake (ds_area_clear_on_zero): a guest DS_AREA of 0 removes DS_AREA from the "
        "autoload list, so the guest runs with the host's DS_AREA and its PEBS assist walks "
        "the host's DS address (kvm/vmx.py vmx_prepare_msrs; switch 0 in instead)",
    "pmi-handler-page-fault":
        "a page fault taken by the guest's PMI handler escapes vm.run as a Python "
        "GuestPageFault instead of crashing the guest (kvm/vm.py VM._inject_pmi catches only "
        "GuestFault)",
}

#: Reported bugs that are fixed now (kept so a regression is labelled by name in
#: reports, but no longer tolerated).
FIXED_BUGS = {k: ALL_REPORTED_BUGS[k] for k in (
    "fixed-stale-precise-event", "fixed-ds-area-repin-unchecked", "icelake-fw-writes",
    "icelake-fixed-ctr-sext", "icelake-in-txcp", "needed-pages-unbounded",
    "ds-area-zero-unswitched", "pmi-handler-page-fault")}
#: Still open: tolerated with --tolerate-known.
KNOWN_BUGS = {k: v for k, v in ALL_REPORTED_BUGS.items() if k not in FIXED_BUGS}

#: Workloads shared by every campaign (immutable arrays).
WORKLOADS = (W.hot_loop(), W.pointer_chase(), W.multi_function())

#: Profiles: campaign length, run lengths, PEBS periods, replay every n-th campaign.
PROFILES = {
    "short": {"campaign": 40, "runs": (1, 40, 400, 2000, 4000), "replay_every": 1},
    "long": {"campaign": 200, "runs": (1, 100, 1000, 4000, 12000), "replay_every": 4},
    "ci": {"campaign": 30, "runs": (1, 50, 500, 2000), "replay_every": 1},
}


def pebs_possible(design, cpu) -> bool:
    """Can a guest get PEBS at all under this design on this host CPU?

    pebslab only: the patch's perf_pebs_virtualization() (Silvermont only,
    FACTS e) or, for designs that require it, EPT-friendly PEBS (FACTS c.2).
    """
    d = get_design(design)
    m = get_model(cpu)
    return m.pebs_ept if d.require_pebs_ept else m.name == "silvermont"


#: (design, cpu, weight): PEBS-capable pairs are drawn three times as often.
COMBOS = tuple((d, c, 3 if pebs_possible(d, c) else 1) for d in DESIGN_NAMES for c in CPUS)


class ActionTimeout(BaseException):
    """An action ran past the watchdog: the simulated host hung (BaseException so no
    handler inside pebslab swallows it)."""


class _Watchdog:
    """SIGALRM after ``seconds`` of one action (main thread only; else a no-op)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.armed = False

    def _fire(self, signum, frame):
        raise ActionTimeout(f"action still running after {self.seconds} s")

    def __enter__(self):
        if self.seconds and threading.current_thread() is threading.main_thread() \
                and hasattr(signal, "setitimer"):
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.armed = True
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def page_count(ds_area: int, base: int, top: int, ds_size: int = pebs_pin.DS_SIZE_PATCH) -> int:
    """How many pages :func:`pebslab.kvm.pebs_pin.needed_pages` would list (upper bound), in O(1)."""
    n = ((ds_area + ds_size - 1) >> 12) - (ds_area >> 12) + 1
    if top > base:
        n += ((top - 1) >> 12) - (base >> 12) + 1
    return n


def sext32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


# =============================================================================
# drawing parameters
# =============================================================================

class Drawer:
    """Where a campaign's random choices come from (random.Random or hypothesis).

    pebslab only. ``integer(lo, hi)`` inclusive, ``choice(seq)``,
    ``boolean()``; weights are a RandomDrawer nicety (hypothesis ignores them).
    """

    def integer(self, lo: int, hi: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def choice(self, seq, weights=None):  # pragma: no cover - interface
        raise NotImplementedError

    def boolean(self, p: float = 0.5) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class RandomDrawer(Drawer):
    """A :class:`Drawer` over a seeded ``random.Random``."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)

    def choice(self, seq, weights=None):
        seq = list(seq)
        if weights is None:
            return seq[self.rng.randrange(len(seq))]
        return self.rng.choices(seq, weights=weights)[0]

    def boolean(self, p=0.5):
        return self.rng.random() < p


# =============================================================================
# the MSR spec the guest is promised
# =============================================================================

EVENTSEL_RESERVED_2014 = 0xFFFFFFFF00200000
FIXED_CTR_CTRL_RESERVED_2014 = 0xFFFFFFFFFFFFF444
PATCH_PEBS_ENABLE_VALID = 0xF0000000F
DATA_CFG_VALID = 0xFF00000F


class MsrSpec:
    """What each PMU MSR does for one guest: exists?, accepts?, reads back as?

    pebslab only, written from the specifications rather than from
    kvm/pmu.py: the 2014 arch/x86/kvm/pmu.c with the patch (and, for the
    `icelake` design, upstream arch/x86/kvm/vmx/pmu_intel.c: full-width
    counter alias with FW_WRITES, fixed counters written full width, IN_TXCP
    only on counter 2; FACTS b.4-b.8), narrowed by the design's knobs and the
    guest CPUID as KVM filtered it.
    """

    def __init__(self, vm):
        d = vm.design
        host = vm.cpu
        cp = vm.cpuid
        leaf = cp.pmu()
        self.design = d
        self.host = host
        #: upstream semantics (the `icelake` design is "the later upstream approach")
        self.upstream = d.require_pebs_ept
        cap = 5 if d.data_cfg else 2
        self.version = min(leaf["version"], host.pmu_version, cap)
        if self.version:
            self.nr_gp = min(leaf["num_counters"], host.n_gp)
            self.gp_mask = (1 << min(leaf["bit_width"], host.width)) - 1
        else:
            self.nr_gp, self.gp_mask = 0, 0
        if self.version > 1:
            self.nr_fixed = min(leaf["num_counters_fixed"], host.n_fixed,
                                host.n_fixed if d.data_cfg else 3)
            self.fixed_mask = (1 << min(leaf["bit_width_fixed"], host.width)) - 1
        else:
            self.nr_fixed, self.fixed_mask = 0, 0
        self.ctrl_valid = ((1 << self.nr_gp) - 1) | \
            (((1 << self.nr_fixed) - 1) << M.INTEL_PMC_IDX_FIXED)
        self.pebs_host = pebs_possible(d, host)
        gated = all(cp.has(f) for f in ("DS", "DTES64", "PDCM")) and self.version > 0
        self.pebs_visible = self.pebs_host and (d.pebs_msrs_gate == "host" or gated)
        self.data_cfg_visible = d.data_cfg and self.pebs_visible and host.pebs_format >= 4
        hc = host.perf_capabilities
        if d.perf_cap_bits == "patch":
            self.perf_cap = hc & (M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG
                                  | M.PERF_CAP_PEBS_FORMAT)
        elif cp.has("PDCM"):
            self.perf_cap = hc & (M.PERF_CAP_LBR_FMT | M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG
                                  | M.PERF_CAP_PEBS_FORMAT | M.PERF_CAP_FW_WRITES
                                  | M.PERF_CAP_PEBS_BASELINE)
        else:
            self.perf_cap = 0
        #: does the guest see (through PERF_CAPABILITIES) full-width counter writes?
        self.fw_writes = self.pebs_visible and bool(self.perf_cap & M.PERF_CAP_FW_WRITES)
        adaptive = d.data_cfg and host.adaptive
        if d.pebs_enable_mask == "patch":
            self.pebs_enable_valid = PATCH_PEBS_ENABLE_VALID
        else:
            gp = host.pebs_counter_mask & ((1 << self.nr_gp) - 1)
            if adaptive:
                fx = host.pebs_fixed_mask & ((1 << self.nr_fixed) - 1)
                self.pebs_enable_valid = gp | fx << M.INTEL_PMC_IDX_FIXED
            else:
                self.pebs_enable_valid = gp | gp << M.PEBS_LL_EN_SHIFT
        res = EVENTSEL_RESERVED_2014
        if self.version and host.has_tsx:
            res ^= M.HSW_IN_TX | M.HSW_IN_TX_CHECKPOINTED
        if self.version and adaptive:
            res &= ~M.ICL_EVENTSEL_ADAPTIVE
        self.eventsel_reserved = res
        fres = FIXED_CTR_CTRL_RESERVED_2014
        if self.nr_fixed > 3:
            fres &= ~(0xB << 12)
        if adaptive:
            for i in range(self.nr_fixed):
                fres &= ~(1 << (32 + 4 * i))
        self.fixed_ctrl_reserved = fres

    # --- which MSR is what ------------------------------------------------------
    def kind(self, msr: int) -> tuple[str, int] | None:
        """(kind, counter index) of a PMU MSR this guest has, or None (#GP)."""
        if M.MSR_IA32_PERFCTR0 <= msr < M.MSR_IA32_PERFCTR0 + self.nr_gp:
            return "pmc", msr - M.MSR_IA32_PERFCTR0
        if M.MSR_IA32_PMC0 <= msr < M.MSR_IA32_PMC0 + self.nr_gp and self.fw_writes:
            return "pmc_fw", msr - M.MSR_IA32_PMC0
        if M.MSR_P6_EVNTSEL0 <= msr < M.MSR_P6_EVNTSEL0 + self.nr_gp:
            return "evtsel", msr - M.MSR_P6_EVNTSEL0
        if M.MSR_CORE_PERF_FIXED_CTR0 <= msr < M.MSR_CORE_PERF_FIXED_CTR0 + self.nr_fixed:
            return "fixed", msr - M.MSR_CORE_PERF_FIXED_CTR0
        if self.version > 1:
            k = {M.MSR_CORE_PERF_FIXED_CTR_CTRL: "fixed_ctrl",
                 M.MSR_CORE_PERF_GLOBAL_STATUS: "status",
                 M.MSR_CORE_PERF_GLOBAL_CTRL: "ctrl",
                 M.MSR_CORE_PERF_GLOBAL_OVF_CTRL: "ovf"}.get(msr)
            if k:
                return k, 0
        if self.pebs_visible:
            k = {M.MSR_IA32_DS_AREA: "ds", M.MSR_IA32_PEBS_ENABLE: "pebs_en",
                 M.MSR_IA32_PERF_CAPABILITIES: "perf_cap"}.get(msr)
            if k:
                return k, 0
        if self.data_cfg_visible and msr == M.MSR_PEBS_DATA_CFG:
            return "data_cfg", 0
        return None

    def evtsel_reserved(self, idx: int) -> int:
        res = self.eventsel_reserved
        if self.upstream and self.host.has_tsx and idx != 2:
            res |= M.HSW_IN_TX_CHECKPOINTED
        return res

    # --- writes -------------------------------------------------------------------
    def write(self, msr: int, value: int, current: int | None) -> tuple[bool, int | None]:
        """(accepted?, expected read-back or None) of a guest WRMSR.

        ``current`` is the MSR's value before the write (KVM accepts an
        unchanged event select / FIXED_CTR_CTRL / GLOBAL_CTRL without checks).
        """
        k = self.kind(msr)
        if k is None:
            return False, None
        kind, idx = k
        if kind == "pmc":
            return True, sext32(value) & self.gp_mask
        if kind == "pmc_fw":
            if value & ~self.gp_mask:
                return False, None
            return True, value
        if kind == "fixed":
            v = value if self.upstream else sext32(value)
            return True, v & self.fixed_mask
        if kind == "evtsel":
            if value == current or not value & self.evtsel_reserved(idx):
                return True, value
            return False, None
        if kind == "fixed_ctrl":
            if value == current or not value & self.fixed_ctrl_reserved:
                return True, value
            return False, None
        if kind == "status" or kind == "perf_cap":
            return False, None
        if kind == "ctrl":
            if value == current or not value & ~self.ctrl_valid:
                return True, value
            return False, None
        if kind == "ovf":
            if value & ~(self.ctrl_valid | 3 << 62):
                return False, None
            return True, value
        if kind == "ds":
            if self.design.ds_area_canonical_check and not is_canonical(value):
                return False, None
            return True, value
        if kind == "pebs_en":
            if value & ~self.pebs_enable_valid:
                return False, None
            return True, value
        if kind == "data_cfg":
            if value & ~DATA_CFG_VALID:
                return False, None
            return True, value
        raise AssertionError(kind)  # pragma: no cover

    # --- reads --------------------------------------------------------------------
    def read_problem(self, msr: int, value: int) -> str | None:
        """Why a value RDMSR returned is impossible under the spec (or None)."""
        k = self.kind(msr)
        if k is None:
            return "RDMSR of a non-PMU MSR succeeded"
        kind, idx = k
        bad = {
            "pmc": value & ~self.gp_mask, "pmc_fw": value & ~self.gp_mask,
            "fixed": value & ~self.fixed_mask,
            "evtsel": value & self.evtsel_reserved(idx),
            "fixed_ctrl": value & self.fixed_ctrl_reserved,
            "ctrl": value & ~self.ctrl_valid,
            "status": value & ~(self.ctrl_valid | 3 << 62),
            "ovf": value & ~(self.ctrl_valid | 3 << 62),
            "pebs_en": value & ~self.pebs_enable_valid,
            "data_cfg": value & ~DATA_CFG_VALID,
            "perf_cap": value ^ self.perf_cap,
            "ds": 0 if (not self.design.ds_area_canonical_check or is_canonical(value)) else 1,
        }[kind]
        if bad:
            return f"{kind} read {value:#x}: bits {bad:#x} are outside what the spec allows"
        return None


# =============================================================================
# reading guest memory without side effects
# =============================================================================

def peek(vm, gpa: int, n: int) -> bytes | None:
    """Bytes of guest memory as they are now, without faulting anything in.

    pebslab only (a debugger's view): resident pages from host memory,
    swapped ones from the swap store. None if the range leaves guest memory.
    """
    out = bytearray()
    mm = vm.host_mm
    while n > 0:
        gfn, off = gpa >> 12, gpa & (PAGE - 1)
        chunk = min(n, PAGE - off)
        if not 0 <= gfn < vm.memory_pages:
            return None
        e = int(vm.ept[gfn])
        if e & EPT_R:
            base = (e & EPT_ADDR_MASK) + off
            out += mm.mem[base:base + chunk].tobytes()
        else:
            page = mm.swap.get((vm.id, gfn))
            out += page[off:off + chunk] if page is not None else bytes(chunk)
        gpa += chunk
        n -= chunk
    return bytes(out)


def walk(vm, cr3: int, gva: int) -> int | None:
    """The GPA ``gva`` maps to under ``cr3`` (side-effect free), or None."""
    if not 0 <= gva <= U64 or not is_canonical(gva):
        return None
    table = cr3 & ~0xFFF
    for shift in (39, 30, 21, 12):
        raw = peek(vm, table + 8 * ((gva >> shift) & 0x1FF), 8)
        if raw is None:
            return None
        e = int.from_bytes(raw, "little")
        if not e & 1:
            return None
        addr = e & 0x000FFFFFFFFFF000
        if shift in (30, 21) and e & 0x80:
            size = 1 << shift
            return (addr & ~(size - 1)) | (gva & (size - 1))
        table = addr
    return table | (gva & 0xFFF)


def read_virt(vm, cr3: int, gva: int, n: int) -> bytes | None:
    """Bytes at a guest virtual address under ``cr3`` (side-effect free), or None."""
    out = bytearray()
    while n > 0:
        chunk = min(n, PAGE - (gva & (PAGE - 1)))
        gpa = walk(vm, cr3, gva)
        data = None if gpa is None else peek(vm, gpa, chunk)
        if data is None:
            return None
        out += data
        gva += chunk
        n -= chunk
    return bytes(out)


def rebind_guest(guest, vm) -> None:
    """Point a GuestKernel at the machine it was migrated to.

    pebslab only. The guest's memory and registers travel with
    save_state/restore_state, but the Python objects that stand for its
    kernel (GuestMM over ``phys``, the perf driver's vCPU, the PMI handler's
    closures) still point at the source machine; pebslab has no API for
    this yet, so the fuzzer does it by hand.
    """
    guest.machine = vm
    guest.mm.phys = vm.phys
    guest.perf.machine = vm
    guest.perf.vcpu = vm.vcpus[0]


# =============================================================================
# a campaign
# =============================================================================

@dataclass(frozen=True)
class CampaignConfig:
    """Everything that, with the actions, determines a campaign."""

    design: str = "patch"
    cpu: str = "silvermont"
    seed: int = 0
    cpuid: str = "full"            # "full", "nopebs" (no DS/DTES64/PDCM), "nopmu"
    vcpus: int = 1
    extra_autoload: int = 0
    memory_pages: int = 192
    runs: tuple = PROFILES["short"]["runs"]

    def describe(self) -> str:
        extra = []
        if self.cpuid != "full":
            extra.append(f"cpuid={self.cpuid}")
        if self.vcpus != 1:
            extra.append(f"vcpus={self.vcpus}")
        if self.extra_autoload:
            extra.append(f"extra_autoload={self.extra_autoload}")
        return f"{self.design}/{self.cpu} seed {self.seed}" + (f" ({', '.join(extra)})"
                                                               if extra else "")


@dataclass
class Violation:
    """One broken invariant."""

    invariant: str
    message: str
    step: int
    action: str
    params: dict
    bug: str | None = None       # a KNOWN_BUGS id, if the cause is a reported bug

    def __post_init__(self):
        if self.bug is not None and self.bug not in KNOWN_BUGS:
            # a fixed bug is back: that is a plain violation again, with its old name
            self.message = f"{self.message} (regression of fixed bug {self.bug})"
            self.bug = None

    def __str__(self) -> str:
        tag = f" [known: {self.bug}]" if self.bug else ""
        return (f"step {self.step} {self.action}({_fmt_params(self.params)}): "
                f"{self.invariant}: {self.message}{tag}")


def _fmt_params(p: dict) -> str:
    return ", ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) and v > 9
                     else f"{k}={v!r}" for k, v in p.items())


class CampaignError(AssertionError):
    """Raised by :meth:`Campaign.step` (strict mode) when an invariant breaks."""


#: action name -> weight for the command line's random choice
ACTIONS = {
    "wrmsr": 14, "rdmsr": 7, "cpuid": 2,
    "alloc": 2, "map": 3, "unmap": 3, "remap": 3, "write_mem": 3, "read_mem": 1,
    "context_switch": 1, "manual_pebs": 5, "remap_buffer_page": 2,
    "perf_record": 4, "perf_stat": 2, "perf_stop": 3,
    "run": 14, "bystander_run": 1.5, "pressure_run": 0.2,
    "reclaim": 6, "dirty_log_start": 1, "dirty_log_get": 1, "dirty_log_stop": 1,
    "migrate": 1, "reset": 1.5, "destroy": 0.7,
}


#: where the guest can use PEBS, set it up and run it more often
PEBS_BIAS = {"manual_pebs": 1.6, "run": 1.4, "reclaim": 1.3, "wrmsr": 0.6, "rdmsr": 0.6,
             "perf_record": 0.7}


class Campaign:
    """One host, a VM under test and a bystander VM, driven step by step.

    pebslab only. ``step(name, params)`` runs one action (``draw(name,
    drawer)`` makes its parameters), then checks every invariant; broken
    ones are appended to ``violations`` (and raised as
    :class:`CampaignError` in strict mode unless their bug id is in
    ``tolerate``). ``finish()`` destroys everything and checks the hosts are
    back to their initial frame tables; ``replay_digest()`` re-runs the
    recorded actions from scratch and compares trace digests.
    """

    def __init__(self, config: CampaignConfig, *, strict: bool = False, tolerate=(),
                 watchdog: float = 20.0):
        self.config = config
        self.watchdog = watchdog
        self.aborted = False
        self.strict = strict
        self.tolerate = frozenset(tolerate)
        self.violations: list[Violation] = []
        self.stats: Counter = Counter()
        self.log: list[tuple[str, dict]] = []
        self.step_no = 0
        self._action = ("setup", {})
        self.hosts: list = []
        self.active_hosts: list = []     # hosts checked after every step
        self.baselines: dict = {}
        self.all_vms: list = []
        self._scanned: dict = {}
        self._crash_seen: set = set()
        self.host = self._new_host(config.cpu, config.seed)
        self.bystander = self.host.create_vm(design=config.design, memory_pages=48)
        self.all_vms.append(self.bystander)
        self.bguest = GuestKernel(self.bystander)
        try:    # the bystander counts instructions (no PEBS, no memory writes)
            self.bystander_count = self.bguest.perf.stat(["instructions"])
        except PerfOpenError:
            self.bystander_count = None
        self.bystander_digest = self._vm_digest(self.bystander)
        self._new_subject()
        self.check()

    # ---- set-up --------------------------------------------------------------------
    def _new_host(self, cpu: str, seed: int) -> Host:
        cfg = self.config
        frames = 16 + 2 * cfg.memory_pages + 48 + 64
        host = Host(cpu=cpu, frames=frames, seed=seed)
        self.hosts.append(host)
        self.active_hosts.append(host)
        self.baselines[id(host)] = (host.mm.refcount.copy(), host.mm.owner.copy())
        return host

    def _cpuid(self, cpu):
        base = CPUID.default(cpu)
        if self.config.cpuid == "nopebs":
            return base.without("DS", "DTES64", "PDCM")
        if self.config.cpuid == "nopmu":
            return base.without("PMU")
        return base

    def _new_subject(self, host=None) -> None:
        cfg = self.config
        host = host or self.host
        cp = self._cpuid(host.cpu)
        self.vm = host.create_vm(design=cfg.design, memory_pages=cfg.memory_pages, cpuid=cp,
                                 vcpus=cfg.vcpus, extra_autoload=cfg.extra_autoload)
        self.all_vms.append(self.vm)
        self.guest = GuestKernel(self.vm)
        self._adopt_vm(self.vm, cp)

    def _adopt_vm(self, vm, requested_cpuid) -> None:
        """Derive the spec and reset the per-VM bookkeeping for a new subject VM."""
        self.spec = MsrSpec(vm)
        self.regions: list[tuple[int, int, str]] = []   # (gva, pages, label)
        self.last_gpa: dict[int, int] = {}
        self.setups: list = []                         # ManualPebs objects
        self.recordings: list = []
        self.countings: list = []
        self.dirty_expect: set[int] = set()
        self.cr3_copies: list[int] = []
        self.scribbled = False
        self.pin_cr3: dict[int, int] = {v.index: v.cr3 for v in vm.vcpus}
        self.pins_seen: dict[int, list] = {v.index: [] for v in vm.vcpus}
        self.ds_repin_failed: dict[int, bool] = {v.index: False for v in vm.vcpus}
        self.dirty_on = False
        # KVM's CPUID filter: PEBS bits only where PEBS can be virtualized,
        # leaf 0xA version capped (2 in 2014, 5 with adaptive PEBS)
        d, host = vm.design, vm.cpu
        for f in ("DS", "DTES64", "PDCM"):
            want = requested_cpuid.has(f) and pebs_possible(d, host)
            if vm.cpuid.has(f) != want:
                self._violate("cpuid", f"guest CPUID {f}={vm.cpuid.has(f)}, expected {want} "
                                       f"({d.name} on {host.name})")
        cap = 5 if d.data_cfg else 2
        if vm.cpuid.pmu()["version"] > cap:
            self._violate("cpuid", f"guest CPUID.0AH version {vm.cpuid.pmu()['version']} > {cap}")

    # ---- bookkeeping helpers -----------------------------------------------------------
    def _violate(self, invariant: str, message: str, bug: str | None = None) -> None:
        name, params = self._action
        v = Violation(invariant, message, self.step_no, name, dict(params), bug)
        self.violations.append(v)
        self.stats["violations"] += 1
        if bug:
            self.stats[f"known:{bug}"] += 1
        if self.strict and (bug is None or bug not in self.tolerate):
            raise CampaignError(f"{self.config.describe()}: {v}")

    def _vm_digest(self, vm) -> str:
        return hashlib.sha256(peek(vm, 0, vm.memory_pages * PAGE)).hexdigest()[:16]

    def _vcpu(self, idx: int):
        return self.vm.vcpus[idx % len(self.vm.vcpus)]

    def _known_pages(self) -> list[int]:
        out = []
        for gva, pages, _ in self.regions:
            out.extend(gva + i * PAGE for i in range(pages))
        return out

    def _add_region(self, gva, pages, label):
        if gva is not None and (gva, pages, label) not in self.regions:
            self.regions.append((gva, pages, label))
            del self.regions[:-16]      # the most recent regions are the interesting ones

    def _pebs_active(self) -> bool:
        return any(v.pmu.pebs_enable for v in self.vm.vcpus)

    # =================================================================================
    # drawing an action's parameters (state-dependent; recorded concretely)
    # =================================================================================
    def draw(self, name: str, d: Drawer) -> dict | None:
        """Parameters for action ``name`` (None: not applicable now)."""
        return getattr(self, "_d_" + name)(d)

    def random_action(self, d: RandomDrawer) -> tuple[str, dict | None]:
        names = list(ACTIONS)
        weights = [ACTIONS[n] * (PEBS_BIAS.get(n, 1) if self.spec.pebs_visible else 1)
                   for n in names]
        if self.vm.crashed:      # a crashed guest is mostly interesting to tear down
            weights[names.index("destroy")] *= 12
        name = d.choice(names, weights)
        return name, self.draw(name, d)

    # --- MSR numbers and values ---------------------------------------------------------
    def _pmu_msrs(self) -> list[int]:
        out = [M.MSR_IA32_PERFCTR0 + i for i in range(9)]
        out += [M.MSR_IA32_PMC0 + i for i in range(9)]
        out += [M.MSR_P6_EVNTSEL0 + i for i in range(9)]
        out += [M.MSR_CORE_PERF_FIXED_CTR0 + i for i in range(5)]
        out += [M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
                M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
                M.MSR_IA32_PERF_CAPABILITIES, M.MSR_IA32_PEBS_ENABLE, M.MSR_PEBS_DATA_CFG,
                M.MSR_PEBS_LD_LAT_THRESHOLD, M.MSR_IA32_DS_AREA, M.MSR_IA32_MISC_ENABLE,
                0x3F4, 0x3F5]
        return out

    _HOT = (M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA, M.MSR_CORE_PERF_GLOBAL_CTRL,
            M.MSR_CORE_PERF_GLOBAL_STATUS, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
            M.MSR_IA32_PERFCTR0, M.MSR_P6_EVNTSEL0, M.MSR_CORE_PERF_FIXED_CTR0,
            M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_PEBS_DATA_CFG, M.MSR_IA32_PERF_CAPABILITIES,
            M.MSR_IA32_PMC0)

    def _draw_msr(self, d: Drawer) -> int:
        how = d.choice(("hot", "pmu", "any"), (6, 3, 1))
        if how == "hot":
            return d.choice(self._HOT)
        if how == "pmu":
            return d.choice(self._pmu_msrs())
        return d.integer(0, 0xFFFFFFFF)

    def _interesting_values(self, msr: int) -> list[int]:
        sp = self.spec
        vals = [0, U64, 1, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 47, 1 << 63]
        pages = self._known_pages()
        if msr == M.MSR_IA32_DS_AREA:
            vals += [perf_hw.HOST_DS_AREA, 0x0000800000000000, 0x8000000000000000,
                     0xFFFF7FFFFFFFF000, 0xFFFF888000000000 + (1 << 30), 0x1000, 0x401000]
            vals += [s.ds for s in self.setups[-3:]]
            if self.guest.perf.ds_gva is not None:
                vals.append(self.guest.perf.ds_gva)
            if pages:
                vals += pages[-4:] + [pages[0] + PAGE - 64, pages[-1] + PAGE - 8]
        elif msr == M.MSR_IA32_PEBS_ENABLE:
            vals += [0x1, 0x2, 0x3, 0xF, sp.pebs_enable_valid, PATCH_PEBS_ENABLE_VALID,
                     1 << 32, 0x1_0000_0001, 0x10, 1 << 35, (1 << sp.nr_gp) - 1]
        elif msr in (M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
                     M.MSR_CORE_PERF_GLOBAL_STATUS):
            vals += [sp.ctrl_valid, 0x1, 0x3, 0x7_0000_0003, 1 << 62, 3 << 62,
                     sp.ctrl_valid | 1 << 62, 0xFF, 1 << 35]
            if self.vm.vcpus[0].pmu.global_status:
                vals.append(self.vm.vcpus[0].pmu.global_status)
        elif M.MSR_P6_EVNTSEL0 <= msr < M.MSR_P6_EVNTSEL0 + 9:
            for code in (0x00C0, 0x003C, 0x0404, 0x81D0, 0x20D1, 0x00C4, 0x412E, 0x0300):
                vals.append(M.encode_eventsel(code & 0xFF, code >> 8))
                vals.append(M.encode_eventsel(code & 0xFF, code >> 8, int=True))
            vals += [M.encode_eventsel(0xC0, 0, en=False), M.encode_eventsel(0xC0, 0, any=True),
                     M.encode_eventsel(0xC0, 0, in_tx=True), M.encode_eventsel(0xC0, 0, in_txcp=True),
                     M.encode_eventsel(0xC0, 0, adaptive=True), M.encode_eventsel(0xC0, 0, cmask=1),
                     M.encode_eventsel(0xC0, 0, inv=True, cmask=16), 1 << 35]
        elif msr == M.MSR_CORE_PERF_FIXED_CTR_CTRL:
            vals += [0xB, 0xBB, 0xBBB, 0xBBBB, 0x444, 0x333, 1 << 32, 0xB | 1 << 32, 0x8]
        elif msr == M.MSR_PEBS_DATA_CFG:
            vals += [0xF, 0x1, 0x2, 0xFF00000F, 0x1F, 1 << 24, 3 << 24 | 8]
        else:   # counters and the rest
            vals += [(-97) & 0xFFFFFFFF, (-10007) & 0xFFFFFFFF, (1 << 48) - 1, 1 << 48,
                     0xFFFFFF0123456789, 0x7FFFFFFF, (1 << 48) - 2, 0x800000000001]
        return vals

    def _draw_value(self, d: Drawer, msr: int) -> int:
        how = d.choice(("interesting", "random64", "random32", "bit"), (6, 2, 1, 1))
        if how == "interesting":
            return d.choice(self._interesting_values(msr)) & U64
        if how == "random64":
            return d.integer(0, U64)
        if how == "random32":
            return d.integer(0, 0xFFFFFFFF)
        return 1 << d.integer(0, 63)

    def _d_wrmsr(self, d):
        msr = self._draw_msr(d)
        return {"vcpu": d.integer(0, self.config.vcpus - 1), "msr": msr,
                "value": self._draw_value(d, msr)}

    def _d_rdmsr(self, d):
        return {"vcpu": d.integer(0, self.config.vcpus - 1), "msr": self._draw_msr(d)}

    def _d_cpuid(self, d):
        return {"leaf": d.choice((0x1, 0xA, 0x0, 0x7, 0x80000001, d.integer(0, 0xFFFFFFFF)))}

    # --- guest memory -------------------------------------------------------------------
    def _d_alloc(self, d):
        return {"pages": d.choice((1, 2, 3, 8))}

    def _pick_page(self, d, mapped: bool) -> int | None:
        """A known guest page that is (or is not) mapped now; a few tries, else None."""
        pages = self._known_pages()
        if not pages:
            return None
        for _ in range(6):
            gva = pages[d.integer(0, len(pages) - 1)]
            # side-effect free (translate() would fault swapped table pages in, and a
            # draw that ends in a skip is not replayed)
            if (walk(self.vm, self.guest.mm.cr3, gva) is not None) == mapped:
                return gva
        return None

    def _target_gpa(self, d, gva):
        how = d.choice(("old", "fresh", "alias"), (4, 3, 1))
        if how == "old" and gva in self.last_gpa:
            return "old", 0
        if how == "alias":
            return "alias", d.integer(0, 1 << 16)
        return "fresh", 0

    def _d_map(self, d):
        gva = self._pick_page(d, False)
        if gva is None:
            return None
        how, pick = self._target_gpa(d, gva)
        return {"gva": gva, "target": how, "pick": pick}

    def _d_unmap(self, d):
        gva = self._pick_page(d, True)
        return None if gva is None else {"gva": gva}

    def _d_remap(self, d):
        gva = self._pick_page(d, True)
        if gva is None:
            return None
        how, pick = self._target_gpa(d, gva)
        return {"gva": gva, "target": how, "pick": pick, "copy": d.boolean()}

    def _d_write_mem(self, d):
        gva = self._pick_page(d, True)
        if gva is None:
            return None
        off = d.choice((0x20, 0x28, 0x30, 0x38, 0x40, 0, d.integer(0, PAGE - 8) & ~7))
        return {"gva": gva, "offset": off, "value": self._draw_value(d, M.MSR_IA32_DS_AREA)}

    def _d_read_mem(self, d):
        gva = self._pick_page(d, True)
        if gva is None:
            return None
        return {"gva": gva, "n": d.choice((8, 96, PAGE, 2 * PAGE))}

    def _d_context_switch(self, d):
        return {"to": d.choice(("copy", "original", "previous"))}

    # --- PEBS set-up -----------------------------------------------------------------------
    def _events(self) -> list[int]:
        m = self.vm.cpu
        codes = [0x00C0, 0x00C4, 0x003C]
        codes += [e.event | e.umask << 8 for e in m.events if e.pebs]
        return sorted(set(codes))

    def _d_manual_pebs(self, d):
        nr_gp = max(self.spec.nr_gp, 1)
        return {
            "ds_offset": d.choice((0, 0, 8 * d.integer(0, 511), PAGE - 64, PAGE - 8)),
            "buf_offset": d.choice((0, 0, 2048, 8 * d.integer(0, 511))),
            "buf_pages": d.choice((1, 2, 4, 16, 17, 20, 40)),
            "period": d.choice((97, 500, 2000, 10007)),
            "event": d.choice(self._events()),
            "counter": d.choice(tuple(range(min(nr_gp, 8))) + (min(nr_gp, 7),)),
            "threshold_records": d.choice((1, 1, 1, 2, 8, 40, 1 << 16)),
            "vcpu": d.integer(0, self.config.vcpus - 1),
        }

    def _d_remap_buffer_page(self, d):
        if not self.setups:
            return None
        return {"setup": d.integer(0, len(self.setups) - 1), "page": d.integer(0, 40)}

    def _d_perf_record(self, d):
        names = ["cycles", "instructions", "branches", "ref-cycles", "cache-misses",
                 "cycles:p", "cycles:pp", "instructions:pp", "branches:pp", "instructions:u",
                 "r00c0:pp", "cycles:ppp"]
        names += [e.name + ":pp" for e in self.vm.cpu.events if e.pebs]
        return {"event": d.choice(names), "period": d.choice((97, 1000, 10007, 100003,
                                                             (1 << 31) + 11)),
                "large": d.boolean(0.3)}

    def _d_perf_stat(self, d):
        pool = ["instructions", "cycles", "branches", "ref-cycles", "cache-references",
                "instructions:u", "cycles:k", "branch-misses"]
        n = d.integer(1, 3)
        return {"events": [d.choice(pool) for _ in range(n)]}

    def _d_perf_stop(self, d):
        live = len(self.recordings) + len(self.countings)
        if not live:
            return None
        return {"pick": d.integer(0, live - 1), "read_only": d.boolean(0.3)}

    # --- running -----------------------------------------------------------------------------
    def _d_run(self, d):
        return {"n": d.choice(self.config.runs), "workload": d.integer(0, len(WORKLOADS) - 1),
                "vcpu": d.integer(0, self.config.vcpus - 1)}

    def _d_bystander_run(self, d):
        return {"n": d.choice(self.config.runs)}

    def _d_pressure_run(self, d):
        return {"pressure": d.choice((1, 8, 64)), "n": 520_000}

    # --- host ----------------------------------------------------------------------------------
    def _d_reclaim(self, d):
        return {"n": d.choice((1, 4, 32, 1 << 20))}

    def _d_dirty_log_start(self, d):
        return {} if MIG is not None and hasattr(MIG, "start_dirty_logging") else None

    def _d_dirty_log_get(self, d):
        return {} if MIG is not None and hasattr(MIG, "get_dirty_log") else None

    def _d_dirty_log_stop(self, d):
        return {} if MIG is not None and hasattr(MIG, "stop_dirty_logging") else None

    def _d_migrate(self, d):
        if MIG is None or not all(hasattr(MIG, n) for n in ("save_state", "restore_state")):
            return None
        return {"cpu": d.choice((self.vm.cpu.name,) * 3 + CPUS),
                "order": d.choice(getattr(MIG, "MSR_ORDERS", ("userspace",))),
                "seed": d.integer(0, 1 << 16)}

    def _d_reset(self, d):
        return {"vcpu": d.integer(0, self.config.vcpus - 1)}

    def _d_destroy(self, d):
        return {}

    # =================================================================================
    # running one step
    # =================================================================================
    def step(self, name: str, params: dict | None, *, check: bool = True) -> str:
        """Run one action, then (by default) every invariant check. Returns the outcome."""
        if params is None:
            self.stats["skipped"] += 1
            return "SKIP"
        if self.aborted:
            return "SKIP"
        self.step_no += 1
        self._action = (name, params)
        self.log.append((name, dict(params)))
        self.stats["actions"] += 1
        self.stats[f"action:{name}"] += 1
        try:
            with _Watchdog(self.watchdog):
                outcome = getattr(self, "_a_" + name)(**params)
        except ActionTimeout as e:
            # the simulated host hung: the state is half-updated, stop this campaign
            self.aborted = True
            names = {f.name for f in traceback.extract_tb(e.__traceback__)}
            bug = "needed-pages-unbounded" if "needed_pages" in names else None
            where = " <- ".join(f.name for f in traceback.extract_tb(e.__traceback__)[-4:])
            self.stats["HANG"] += 1
            self._violate("liveness", f"{e} (in {where}); campaign aborted", bug)
            return "HANG"
        self.stats[f"outcome:{outcome}"] += 1
        if check:
            self.check()
        return outcome

    def _escaped(self, where: str, e: BaseException, bug: str | None = None) -> str:
        self._violate("exceptions", f"{type(e).__name__} escaped {where}: {e}", bug)
        return "ESCAPED"

    # --- guest instructions -----------------------------------------------------------------
    def _insn(self, fn, where: str):
        """Run a guest instruction; return (result, outcome)."""
        crashed = self.vm.crashed
        try:
            r = fn()
        except GuestCrash as e:
            if not crashed:
                self._escaped(where, e)
                return None, "ESCAPED"
            return None, "GUEST_CRASH"
        except GuestFault as e:
            if crashed:
                self._violate("crash", f"{where} on a crashed VM raised {e} instead of GuestCrash")
            if e.vector != "#GP":
                self._violate("msr", f"{where} raised {e.vector}, not #GP")
            self.stats["GP"] += 1
            return e, "GP"
        except Exception as e:  # noqa: BLE001 - the invariant is about exactly this
            self._escaped(where, e)
            return None, "ESCAPED"
        if crashed:
            self._violate("crash", f"{where} on a crashed VM did not raise GuestCrash")
        return r, "ok"

    def _a_wrmsr(self, vcpu, msr, value):
        v = self._vcpu(vcpu)
        sp = self.spec
        k = sp.kind(msr)
        cur = None
        if k is not None:
            kind, idx = k
            pmu = v.pmu
            if kind == "evtsel" and idx < len(pmu.gp_counters):
                cur = pmu.gp_counters[idx].eventsel
            elif kind == "fixed_ctrl":
                cur = pmu.fixed_ctr_ctrl
            elif kind == "ctrl":
                cur = pmu.global_ctrl
        r, out = self._insn(lambda: v.wrmsr(msr, value), f"WRMSR {M.msr_name(msr)}")
        if out in ("GUEST_CRASH", "ESCAPED"):
            return out
        accept, expect = sp.write(msr, value, cur)
        if msr == M.MSR_IA32_DS_AREA and out == "ok" and v.pmu.pebs_enable \
                and self.vm.design.repin_on_ds_area_write:
            self.ds_repin_failed[v.index] = not v.pmu.pinned_pages
        if out == "GP":
            if accept:
                if msr in (M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA) \
                        and self.vm.design.pin_failure == "gp" and "cannot pin" in r.reason:
                    return "GP"     # the `fixed` design refuses PEBS it cannot make safe
                self._msr_violation(msr, value, f"WRMSR {M.msr_name(msr)} {value:#x} #GP'd; "
                                                f"the spec accepts it")
            return "GP"
        if not accept:
            self._msr_violation(msr, value, f"WRMSR {M.msr_name(msr)} {value:#x} was accepted; "
                                            f"the spec says #GP")
            return "ok"
        # read back at once: nothing ran in between
        got, out2 = self._insn(lambda: v.rdmsr(msr), f"RDMSR {M.msr_name(msr)}")
        if out2 != "ok":
            self._violate("msr", f"RDMSR {M.msr_name(msr)} right after a successful WRMSR: {out2}")
            return "ok"
        if expect is not None and got != expect:
            self._msr_violation(msr, value, f"WRMSR {M.msr_name(msr)} {value:#x} reads back "
                                            f"{got:#x}; the spec says {expect:#x}")
        if sp.kind(msr)[0] == "ovf":
            st, _ = self._insn(lambda: v.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS), "RDMSR STATUS")
            if isinstance(st, int) and st & value:
                self._violate("msr", f"GLOBAL_STATUS {st:#x} still has bits of the OVF_CTRL "
                                     f"value {value:#x} just written")
        return "ok"

    def _msr_violation(self, msr, value, message):
        bug = None
        k = self.spec.kind(msr)
        if self.spec.upstream:
            if k and k[0] == "pmc_fw":
                bug = "icelake-fw-writes"
            elif k and k[0] == "fixed" and value & 0xFFFF_FFFF_8000_0000:
                bug = "icelake-fixed-ctr-sext"
            elif k and k[0] == "evtsel" and value & M.HSW_IN_TX_CHECKPOINTED:
                bug = "icelake-in-txcp"
        self._violate("msr", message, bug)

    def _a_rdmsr(self, vcpu, msr):
        v = self._vcpu(vcpu)
        r, out = self._insn(lambda: v.rdmsr(msr), f"RDMSR {M.msr_name(msr)}")
        k = self.spec.kind(msr)
        if out == "GP" and k is not None:
            bug = "icelake-fw-writes" if k[0] == "pmc_fw" else None
            self._violate("msr", f"RDMSR {M.msr_name(msr)} #GP'd; the spec says it exists", bug)
        elif out == "ok":
            why = self.spec.read_problem(msr, r)
            if why:
                self._violate("msr", f"RDMSR {M.msr_name(msr)}: {why}")
        return out

    def _a_cpuid(self, leaf):
        v = self.vm.vcpus[0]
        r, out = self._insn(lambda: v.cpuid(leaf), "CPUID")
        if out == "ok":
            if r != self.vm.cpuid.leaf(leaf):
                self._violate("cpuid", f"CPUID {leaf:#x} returned {r}, the VM's table says "
                                       f"{self.vm.cpuid.leaf(leaf)}")
        return out

    # --- guest memory -----------------------------------------------------------------------
    def _guest(self, fn, where: str):
        """Run guest kernel code: guest OOM and its own page faults are its business."""
        try:
            return fn(), "ok"
        except HostOutOfMemory as e:
            self._escaped(where, e)
            return None, "ESCAPED"
        except MemoryError:
            self.stats["GUEST_OOM"] += 1
            return None, "GUEST_OOM"
        except GuestPageFault:
            self.stats["GUEST_OOPS"] += 1
            return None, "GUEST_OOPS"
        except ValueError as e:
            if self.scribbled:      # GuestMM refusing page tables the guest itself corrupted
                self.stats["GUEST_OOPS"] += 1
                return None, "GUEST_OOPS"
            self._escaped(where, e)
            return None, "ESCAPED"
        except Exception as e:  # noqa: BLE001
            self._escaped(where, e)
            return None, "ESCAPED"

    def _a_alloc(self, pages):
        gva, out = self._guest(lambda: self.guest.mm.alloc(pages), "guest.mm.alloc")
        if out == "ok":
            self._add_region(gva, pages, "alloc")
            for i in range(pages):
                self.last_gpa[gva + i * PAGE] = self.guest.mm.translate(gva + i * PAGE)
        return out

    def _resolve_gpa(self, gva, target, pick):
        if target == "old" and gva in self.last_gpa:
            return self.last_gpa[gva], False
        if target == "alias":
            known = sorted({g for g in self.last_gpa.values() if g is not None}
                           | set(self.guest.mm.table_pages))
            if known:
                g = known[pick % len(known)]
                return g, g in self.guest.mm.table_pages
        gpa, out = self._guest(lambda: self.guest.mm.alloc_phys(1), "guest.mm.alloc_phys")
        return (gpa if out == "ok" else None), False

    def _note_remap(self, gva):
        """The guest edits the mapping of ``gva`` (a PTE write, page-tracked under `fixed`)."""
        for v in self.vm.vcpus:
            if v.pmu.pebs_enable:
                self.stats["remap_while_pebs"] += 1

    def _a_map(self, gva, target, pick):
        if self.guest.mm.translate(gva) is not None:
            return "SKIP"
        gpa, aliased_table = self._resolve_gpa(gva, target, pick)
        if gpa is None:
            return "GUEST_OOM"
        self.scribbled |= aliased_table
        _, out = self._guest(lambda: self.guest.mm.map(gva, gpa), "guest.mm.map")
        if out == "ok":
            self._note_remap(gva)
        return out

    def _a_unmap(self, gva):
        if self.guest.mm.translate(gva) is None:
            return "SKIP"
        old, out = self._guest(lambda: self.guest.mm.unmap(gva), "guest.mm.unmap")
        if out == "ok":
            self.last_gpa[gva] = old
            self._note_remap(gva)
        return out

    def _a_remap(self, gva, target, pick, copy):
        old_gpa = self.guest.mm.translate(gva)
        if old_gpa is None:
            return "SKIP"
        gpa, aliased_table = self._resolve_gpa(gva, target, pick)
        if gpa is None:
            return "GUEST_OOM"
        self.scribbled |= aliased_table
        data = None
        if copy:
            data, out = self._guest(lambda: self.guest.read(gva, PAGE), "guest.read")
            if out != "ok":
                return out
        old, out = self._guest(lambda: self.guest.mm.remap(gva, gpa), "guest.mm.remap")
        if out != "ok":
            return out
        self.last_gpa[gva] = old
        self._note_remap(gva)
        if data is not None and not aliased_table:
            _, out = self._guest(lambda: self.guest.write(gva, data), "guest.write")
        return out

    def _a_write_mem(self, gva, offset, value):
        gpa = self.guest.mm.translate(gva)
        if gpa is None:
            return "SKIP"
        if gpa & ~0xFFF in self.guest.mm.table_pages:
            self.scribbled = True
        if self.dirty_on:
            self.dirty_expect.add(gpa >> 12)
        _, out = self._guest(lambda: self.guest.write(gva + offset, value.to_bytes(8, "little")),
                             "guest.write")
        return out

    def _a_read_mem(self, gva, n):
        _, out = self._guest(lambda: self.guest.read(gva, n), "guest.read")
        return out

    def _a_context_switch(self, to):
        mm = self.guest.mm
        if to == "original":
            cr3 = mm.cr3
        elif to == "previous" and self.cr3_copies:
            cr3 = self.cr3_copies[-1]
        else:
            new, out = self._guest(lambda: mm.alloc_phys(1), "guest.mm.alloc_phys")
            if out != "ok":
                return out
            pml4, out = self._guest(lambda: self.vm.phys.read(mm.cr3, PAGE), "phys.read")
            if out != "ok":
                return out
            _, out = self._guest(lambda: self.vm.phys.write(new, pml4), "phys.write")
            if out != "ok":
                return out
            mm.table_pages.add(new)      # the guest kernel keeps it as a page table
            self.cr3_copies.append(new)
            cr3 = new
        for v in self.vm.vcpus:
            try:
                v.load_cr3(cr3)
            except Exception as e:  # noqa: BLE001
                return self._escaped("vcpu.load_cr3", e)
        return "ok"

    # --- PEBS set-up ----------------------------------------------------------------------------
    def _a_manual_pebs(self, vcpu, **kw):
        vcpu = vcpu % len(self.vm.vcpus)
        crashed = self.vm.crashed
        try:
            st = S.manual_pebs(self.guest, vcpu=vcpu, **kw)
        except GuestCrash as e:
            return "GUEST_CRASH" if crashed else self._escaped("manual_pebs", e)
        except GuestFault:
            self.stats["GP"] += 1
            return "GP"
        except HostOutOfMemory as e:
            return self._escaped("manual_pebs", e)
        except MemoryError:
            self.stats["GUEST_OOM"] += 1
            return "GUEST_OOM"
        except ValueError as e:
            # the helper refuses a counter the PMU does not have before touching the guest
            if "counter must be a GP counter" in str(e):
                self.stats["ARG_REJECTED"] += 1
                return "ARG_REJECTED"
            return self._escaped("manual_pebs", e)
        except Exception as e:  # noqa: BLE001
            return self._escaped("manual_pebs", e)
        if crashed:
            self._violate("crash", "manual_pebs on a crashed VM did not raise GuestCrash")
        self.setups.append(st)
        self._add_region(st.ds_region[0], st.ds_region[1], "ds")
        self._add_region(st.buf_region[0], st.buf_region[1], "buffer")
        for gva in self._known_pages():
            self.last_gpa.setdefault(gva, self.guest.mm.translate(gva))
        return "ok"

    def _a_remap_buffer_page(self, setup, page):
        st = self.setups[setup % len(self.setups)]
        page %= st.buf_region[1]
        gva = st.buf_region[0] + page * PAGE
        if self.guest.mm.translate(gva) is None:
            return "SKIP"
        r, out = self._guest(lambda: S.remap_buffer_page(self.guest, st, page),
                             "remap_buffer_page")
        if out == "ok":
            self.last_gpa[gva] = r[0]
            self._note_remap(gva)
        return out

    def _perf(self, fn, where):
        crashed = self.vm.crashed
        try:
            return fn(), "ok"
        except GuestCrash as e:
            if crashed:
                return None, "GUEST_CRASH"
            self._escaped(where, e)
            return None, "ESCAPED"
        except PerfOpenError:
            self.stats["PERF_ERR"] += 1
            return None, "PERF_ERR"
        except GuestFault:
            self.stats["GP"] += 1
            return None, "GP"
        except HostOutOfMemory as e:
            self._escaped(where, e)
            return None, "ESCAPED"
        except MemoryError:
            self.stats["GUEST_OOM"] += 1
            return None, "GUEST_OOM"
        except GuestPageFault:     # the guest kernel touched memory it unmapped: its oops
            self.stats["GUEST_OOPS"] += 1
            return None, "GUEST_OOPS"
        except ValueError:         # perf_event_open's -EINVAL / -EOPNOTSUPP
            self.stats["PERF_ERR"] += 1
            return None, "PERF_ERR"
        except Exception as e:  # noqa: BLE001
            self._escaped(where, e)
            return None, "ESCAPED"

    def _a_perf_record(self, event, period, large):
        p = self.guest.perf
        rec, out = self._perf(lambda: p.record(event, period, large_pebs=large),
                              f"guest.perf.record({event!r})")
        if out == "ok":
            self.recordings.append(rec)
        if p.ds_gva is not None:
            self._add_region(p.ds_gva, 1, "perf-ds")
            self._add_region(p.pebs_buffer_gva, p.pebs_buffer_size // PAGE, "perf-buffer")
            for gva in self._known_pages():
                self.last_gpa.setdefault(gva, self.guest.mm.translate(gva))
        return out

    def _a_perf_stat(self, events):
        c, out = self._perf(lambda: self.guest.perf.stat(events), "guest.perf.stat")
        if out == "ok":
            self.countings.append(c)
        return out

    def _a_perf_stop(self, pick, read_only):
        live = self.recordings + self.countings
        if not live:
            return "SKIP"
        obj = live[pick % len(live)]
        if read_only:
            fn = obj.read if hasattr(obj, "read") else obj.samples
            _, out = self._perf(fn, "perf read")
            return out
        _, out = self._perf(obj.stop, "perf stop")
        if obj in self.recordings:
            self.recordings.remove(obj)
        else:
            self.countings.remove(obj)
        return out

    # --- running ---------------------------------------------------------------------------
    def _run(self, vm, fn, where):
        crashed = vm.crashed
        try:
            res = fn()
        except GuestPageFault as e:
            return self._escaped(where, e, "pmi-handler-page-fault")
        except Exception as e:  # noqa: BLE001
            return self._escaped(where, e)
        if res.crashed != vm.crashed:
            self._violate("crash", f"RunResult.crashed={res.crashed} but vm.crashed={vm.crashed}")
        if crashed and res.instructions:
            self._violate("crash", f"a crashed VM retired {res.instructions} instructions")
        self.stats["instructions"] += res.instructions
        return "GUEST_CRASH" if vm.crashed else "ok"

    def _a_run(self, n, workload, vcpu):
        w = WORKLOADS[workload % len(WORKLOADS)]
        return self._run(self.vm, lambda: self.vm.run(w, n, vcpu=vcpu % len(self.vm.vcpus)),
                         "vm.run")

    def _a_bystander_run(self, n):
        return self._run(self.bystander, lambda: self.bystander.run(WORKLOADS[0], n),
                         "bystander.run")

    def _a_pressure_run(self, pressure, n):
        host = self.vm.host
        host.pressure = pressure
        try:
            return self._a_run(n, 0, 0)
        finally:
            host.pressure = 0

    # --- host -----------------------------------------------------------------------------
    def _host(self, fn, where, allowed=()):
        try:
            return fn(), "ok"
        except allowed as e:
            return e, type(e).__name__
        except Exception as e:  # noqa: BLE001
            self._escaped(where, e)
            return None, "ESCAPED"

    def _a_reclaim(self, n):
        out, res = self._host(lambda: self.vm.host.reclaim(n), "host.reclaim")
        if res == "ok":
            self.stats["reclaimed"] += len(out)
        return res

    def _a_dirty_log_start(self):
        if self.vm.destroyed:
            return "SKIP"
        _, out = self._host(lambda: MIG.start_dirty_logging(self.vm), "start_dirty_logging")
        if out == "ok":
            self.dirty_on = True
            self.dirty_expect = set()
        return out

    def _a_dirty_log_get(self):
        if not self.dirty_on:
            return "SKIP"
        got, out = self._host(lambda: MIG.get_dirty_log(self.vm), "get_dirty_log")
        if out == "ok":
            missed = self.dirty_expect - set(got)
            if missed and not self.vm.crashed:
                self._violate("dirty-log", f"pages written while logging but not reported "
                                           f"dirty: gfns {sorted(hex(g) for g in missed)[:8]}")
            self.dirty_expect = set()
        return out

    def _a_dirty_log_stop(self):
        if not self.dirty_on:
            return "SKIP"
        _, out = self._host(lambda: MIG.stop_dirty_logging(self.vm), "stop_dirty_logging")
        self.dirty_on = False
        return out

    def _a_migrate(self, cpu, order, seed):
        src = self.vm
        if src.crashed:
            return "SKIP"
        if self.dirty_on:
            self._a_dirty_log_stop()
        state, out = self._host(lambda: MIG.save_state(src), "save_state")
        if out != "ok":
            return out
        dest = self._new_host(cpu, seed)
        err = getattr(MIG, "MigrationError", ())
        new, out = self._host(lambda: MIG.restore_state(state, dest, None, order),
                              "restore_state", allowed=err)
        if out != "ok":
            self.stats["MIGRATION_REFUSED"] += 1
            return "MIGRATION_REFUSED" if out != "ESCAPED" else out
        self.all_vms.append(new)
        self._destroy_checked(src)
        rebind_guest(self.guest, new)
        self.vm = new
        self.host = dest
        old_setups, old_regions, old_last = self.setups, self.regions, self.last_gpa
        recs, cnts = self.recordings, self.countings
        self._adopt_vm(new, state.cpuid)
        self.setups, self.regions, self.last_gpa = old_setups, old_regions, old_last
        self.recordings, self.countings = recs, cnts
        self.stats["migrations"] += 1
        return "ok"

    def _a_reset(self, vcpu):
        v = self._vcpu(vcpu)
        _, out = self._host(v.reset, "vcpu.reset")
        if out != "ok":
            return out
        pmu = v.pmu
        bad = {"GLOBAL_CTRL": pmu.global_ctrl, "GLOBAL_STATUS": pmu.global_status,
               "FIXED_CTR_CTRL": pmu.fixed_ctr_ctrl}
        if self.vm.design.reset_clears_pebs:
            bad.update(PEBS_ENABLE=pmu.pebs_enable, DS_AREA=pmu.ds_area,
                       pinned=len(pmu.pinned_pages))
        bad = {k: x for k, x in bad.items() if x}
        if bad:
            self._violate("reset", f"after vCPU reset: {bad}")
        return "ok"

    def _destroy_checked(self, vm) -> None:
        leaked, out = self._host(vm.destroy, "vm.destroy")
        if out != "ok":
            return
        if leaked:
            self._violate("accounting", f"destroy leaked frames {leaked}")
        mm = vm.host_mm
        left = np.flatnonzero(mm.owner == vm.id)
        if left.size:
            self._violate("accounting", f"destroyed VM {vm.id} still owns frames "
                                        f"{left[:8].tolist()}")
        if any(k[0] == vm.id for k in mm.swap):
            self._violate("accounting", f"destroyed VM {vm.id} still has swapped pages")
        host = vm.host
        if host in self.active_hosts and host is not self.host and \
                not any(o.host is host for o in self._live_vms()):
            self.active_hosts.remove(host)      # empty: finish() checks it against its baseline

    def _a_destroy(self):
        self._destroy_checked(self.vm)
        self._scan_traces()
        self._new_subject(self.host)
        return "ok"

    # =================================================================================
    # invariants
    # =================================================================================
    def check(self) -> None:
        """Check every invariant now (side-effect free)."""
        self.stats["checks"] += 1
        for v in self.vm.vcpus:     # KVM pins through the CR3 of the moment
            if v.pmu.pinned_pages != self.pins_seen.get(v.index):
                self.pins_seen[v.index] = list(v.pmu.pinned_pages)
                self.pin_cr3[v.index] = v.cr3
        self._scan_traces()
        for vm in self._live_vms():
            self._check_crash(vm)
        self._check_accounting()
        if self.bystander.crashed:
            if id(self.bystander) not in self._crash_seen:
                self._crash_seen.add(id(self.bystander))
                self._violate("isolation", f"the bystander VM crashed: "
                                           f"{self.bystander.crash_reason}")
        elif self._vm_digest(self.bystander) != self.bystander_digest:
            self._violate("isolation", "the bystander VM's memory changed")
            self.bystander_digest = self._vm_digest(self.bystander)

    def _live_vms(self):
        return [vm for vm in self.all_vms if not vm.destroyed]

    def _scan_traces(self) -> None:
        kinds = _TRACE_KINDS
        for vm in self.all_vms:
            a = vm.trace.array
            start = self._scanned.get(id(vm), 0)
            if start == len(a):
                continue
            new = a[start:]
            self._scanned[id(vm)] = len(a)
            for name in ("PEBS_WRITE", "PEBS_FAULT", "HOST_FAULT", "EPT_VIOLATION", "SWAPIN",
                         "PMI_INJECT", "RECLAIM", "PIN"):
                n = int(np.count_nonzero(new["kind"] == kinds[name]))
                if n:
                    self.stats[name] += n
            hf = new[new["kind"] == kinds["HOST_FAULT"]]
            if hf.size:
                self._violate("isolation", f"VM {vm.id}: {hf.size} HOST_FAULT event(s): the "
                                           f"host ran with guest PEBS state")
            pw_idx = np.flatnonzero(new["kind"] == kinds["PEBS_WRITE"]) + start
            if pw_idx.size and not vm.destroyed:
                self._check_pebs_writes(vm, a, pw_idx)
            if self.dirty_on and vm is self.vm and pw_idx.size:
                mm = vm.host_mm
                for i in pw_idx:
                    f = int(a["frame"][i])
                    if int(mm.owner[f]) == vm.id:
                        self.dirty_expect.add(int(mm.gfn[f]))

    def _check_pebs_writes(self, vm, a, idx) -> None:
        mm = vm.host_mm
        frames = a["frame"][idx]
        owner = mm.owner[frames]
        bad = idx[owner != vm.id]
        if not bad.size:
            return
        reclaim = _TRACE_KINDS["RECLAIM"]
        for i in bad:
            f = int(a["frame"][i])
            later = a[i + 1:]
            if np.any((later["kind"] == reclaim) & (later["frame"] == f)):
                continue      # the VM owned it; reclaim took it after the write
            self._violate("isolation", f"VM {vm.id}: a PEBS record was written to host frame "
                                       f"{f} (hpa {int(a['hpa'][i]):#x}), owned by "
                                       f"{int(mm.owner[f])}")

    def _check_accounting(self) -> None:
        live = self._live_vms()
        for host in self.active_hosts:
            mm = host.mm
            try:
                mm.check_invariants()
            except AssertionError as e:
                self._violate("accounting", f"host.mm.check_invariants: {e}")
            pins = np.zeros(mm.frames, np.int64)
            for vm in live:
                if vm.host_mm is not mm:
                    continue
                for v in vm.vcpus:
                    for f in v.pmu.pinned_pages:
                        if int(mm.owner[f]) != vm.id:
                            self._violate("isolation", f"VM {vm.id} vCPU {v.index} pins frame "
                                                       f"{f}, owned by {int(mm.owner[f])}")
                        pins[f] += 1
                owned = np.flatnonzero(mm.owner == vm.id)
                mapped = (vm.ept[mm.gfn[owned]] & np.uint64(EPT_ADDR_MASK)) >> np.uint64(12)
                present = (vm.ept[mm.gfn[owned]] & np.uint64(EPT_R)) != 0
                orphan = owned[~present | (mapped != owned.astype(np.uint64))]
                if orphan.size:
                    self._violate("accounting", f"VM {vm.id} owns frames its EPT does not map: "
                                                f"{orphan[:8].tolist()}")
            vm_frames = mm.owner >= 1
            want = 1 + pins
            bad = np.flatnonzero(vm_frames & (mm.refcount != want))
            if bad.size:
                f = int(bad[0])
                self._violate("accounting", f"frame {f} (VM {int(mm.owner[f])}) has refcount "
                                            f"{int(mm.refcount[f])}, expected 1 + {int(pins[f])} "
                                            f"pins")
            ref0, _ = self.baselines[id(host)]
            r = mm.reserved_host_frames
            if not np.array_equal(mm.refcount[:r], ref0[:r]):
                self._violate("accounting", "the host kernel's reserved frames changed refcount")

    # --- crashes ---------------------------------------------------------------------
    def _check_crash(self, vm) -> None:
        if not vm.crashed or id(vm) in self._crash_seen:
            return
        self._crash_seen.add(id(vm))
        self.stats["GUEST_CRASH"] += 1
        rows = vm.trace.of("GUEST_CRASH")
        if len(rows) != 1:
            self._violate("crash", f"VM {vm.id} crashed with {len(rows)} GUEST_CRASH rows")
        if not vm.crash_reason:
            self._violate("crash", f"VM {vm.id} crashed without a crash_reason")
        if vm is self.bystander:
            return      # reported as an isolation violation by check()
        allowed, bug, why = self._classify_crash(vm)
        self.stats[f"crash:{why}"] += 1
        if not allowed:
            self._violate("crash", f"{vm.design.name} on {vm.cpu.name}: {why}: "
                                   f"{vm.crash_reason}", bug)

    def _classify_crash(self, vm) -> tuple[bool, str | None, str]:
        """(allowed?, known bug id, cause) of a guest crash.

        Allowed: the guest's own doing (its PMI handler faulted, PEBS pointed
        at memory its page tables do not map, the DS buffer rewritten or
        unmapped while PEBS runs, page tables scribbled), and - on CPUs
        without EPT-friendly PEBS - the documented limitations of the
        `patch` and `review` designs (unpinned buffer tail, unpinned page
        tables, 17-page cap, dirty logging, a full autoload list). Under
        `fixed` an EPT violation in the assist of a well-formed set-up is a
        violation; `icelake` on an EPT-friendly CPU never crashes from EPT.
        """
        d, host = vm.design, vm.cpu
        reason = vm.crash_reason
        if reason.startswith("guest PMI handler"):
            return True, None, "guest PMI handler fault (self-harm)"
        if reason.startswith("EPT violation outside guest memory"):
            if self.scribbled:
                return True, None, "guest mapped beyond its memory (self-harm)"
            return False, None, "EPT violation outside guest memory without a cause"
        if not reason.startswith("PEBS assist"):
            return False, None, "unexplained crash"
        faults = vm.trace.rows("PEBS_FAULT")
        if not faults:
            return False, None, "PEBS crash without a PEBS_FAULT row"
        row = faults[-1]
        v = vm.vcpus[row["vcpu"]] if 0 <= row["vcpu"] < len(vm.vcpus) else vm.vcpus[0]
        if not pebs_possible(d, host):
            return False, None, "PEBS fault where the design gives the guest no PEBS"
        if "EPT" not in row["info"]:
            host_ds = perf_hw.HOST_DS_AREA
            if host_ds <= row["gva"] < host_ds + PAGE and v.pmu.ds_area != host_ds:
                full = len(vm.trace.of("AUTOLOAD_FULL")) > 0
                if d.autoload_full == "warn" and (full or not v.pmu.ds_area):
                    return True, None, "guest ran with the host's DS_AREA (patch limitation: " \
                                       "full autoload list or DS_AREA never switched)"
                if not v.pmu.ds_area and d.ds_area_clear_on_zero:
                    return False, "ds-area-zero-unswitched", \
                        "guest DS_AREA 0 left the host's DS_AREA loaded in guest mode"
                return False, None, "guest ran with the host's DS_AREA"
            return True, None, "guest page fault in the PEBS assist (self-harm)"
        if host.pebs_ept:
            return False, None, "an EPT violation crashed a CPU with EPT-friendly PEBS"
        if d.pin == "patch":
            return True, None, "unpinned or write-protected PEBS memory (patch limitation)"
        if d.pin != "fixed":
            return False, None, "EPT violation in the assist under a design that does not pin"
        if v.pmu.pebs_enable and not v.pmu.pinned_pages and self.ds_repin_failed.get(v.index):
            return False, "fixed-ds-area-repin-unchecked", "DS_AREA re-pin failed silently"
        why = self._self_harm(vm, v)
        if why:
            return True, None, why
        if self._armed_precise(v) and not v.pmu.pebs_enable:
            return False, "fixed-stale-precise-event", "PEBS still armed after PEBS_ENABLE=0"
        if v.cr3 != self.pin_cr3.get(v.index, v.cr3):
            return False, "fixed-cr3-switch", "context switch after pinning"
        if self._armed_precise(v) and not v.pmu.pinned_pages:
            return False, "fixed-stale-precise-event", "PEBS armed with nothing pinned"
        return False, None, "EPT violation in the assist of a well-formed set-up"

    def _armed_precise(self, v) -> bool:
        return any(ev.hw_idx >= 0 and ev.guest_owned and ev.attr.precise_ip
                   for ev in v.pcpu.perf.events())

    def _self_harm(self, vm, v) -> str | None:
        """Why the PEBS set-up of vCPU ``v`` is the guest's own broken one (or None)."""
        if self.scribbled:
            return "guest wrote into its own page tables"
        ds = v.pmu.ds_area
        if not is_canonical(ds):
            return "non-canonical DS_AREA"
        raw = read_virt(vm, v.cr3, ds, pebs_pin.DS_SIZE_PATCH)
        if raw is None:
            return "DS area unmapped by the guest"
        cur = pebs_pin._unpack_ds(raw)
        base, top = cur["pebs_buffer_base"], cur["pebs_absolute_maximum"]
        seen = v.pmu.pin_view.get("ds") if v.pmu.pin_view else None
        if seen and (seen["pebs_buffer_base"], seen["pebs_absolute_maximum"]) != (base, top):
            return "guest changed the DS buffer pointers while PEBS was enabled"
        if page_count(ds, base, top) > vm.design.pin_limit:
            return "PEBS buffer larger than the design pins"
        pages = pebs_pin.needed_pages(ds, base, top)
        for gva in pages:
            if walk(vm, v.cr3, gva) is None:
                return "PEBS buffer partly unmapped by the guest"
        gpas = [walk(vm, v.cr3, gva) >> 12 for gva in pages]
        if len(set(gpas)) != len(gpas):
            return "PEBS pages aliased by the guest"
        index = cur["pebs_index"]
        if not base <= index <= top:
            return "pebs_index outside the buffer"
        return None

    # =================================================================================
    # the end of a campaign
    # =================================================================================
    def digest(self) -> str:
        """One hash of every VM's trace, in creation order, and every host's frame table."""
        h = hashlib.sha256()
        for vm in self.all_vms:
            h.update(vm.trace.digest().encode())
        for host in self.hosts:
            h.update(host.mm.refcount.tobytes())
            h.update(host.mm.owner.tobytes())
        return h.hexdigest()[:16]

    def finish(self) -> None:
        """Destroy every VM; every host must be back to its frame table at creation."""
        self._action = ("finish", {})
        self.final_digest = self.digest()
        if self.aborted:      # a hung host cannot be torn down meaningfully
            return
        if self.bystander_count is not None and not self.bystander.destroyed:
            self._perf(self.bystander_count.read, "bystander count")
        self.check()
        for vm in self._live_vms():
            self._destroy_checked(vm)
        self._scan_traces()
        state = getattr(MIG, "_STATE", None)
        if state is not None:       # its values keep their VM keys alive (see tests/test_fuzz.py)
            for vm in self.all_vms:
                state.pop(vm, None)
        for host in self.hosts:
            ref0, own0 = self.baselines[id(host)]
            mm = host.mm
            if not np.array_equal(mm.owner, own0) or not np.array_equal(mm.refcount, ref0):
                diff = np.flatnonzero((mm.owner != own0) | (mm.refcount != ref0))
                self._violate("accounting", f"after destroying every VM, host frames "
                                            f"{diff[:8].tolist()} differ from the baseline")
            if mm.swap:
                self._violate("accounting", f"{len(mm.swap)} pages left in the swap store")
            try:
                mm.check_invariants()
            except AssertionError as e:
                self._violate("accounting", f"host.mm.check_invariants after teardown: {e}")

    def replay_digest(self) -> None:
        """Re-run the recorded actions from scratch; the digests must match."""
        self._action = ("replay", {})
        if self.aborted:
            return
        other = Campaign(self.config)
        for name, params in self.log:
            other.step(name, params, check=False)
        self.stats["replays"] += 1
        mine = getattr(self, "final_digest", None) or self.digest()
        if other.digest() != mine:
            self._violate("determinism", f"replaying {len(self.log)} actions gave digest "
                                         f"{other.digest()}, the run gave {mine}")


# =============================================================================
# the command line
# =============================================================================

def draw_config(rng: random.Random, profile: str, design=None, cpu=None) -> CampaignConfig:
    """Pick a campaign's design, CPU and VM shape (PEBS-capable pairs weighted 3:1)."""
    combos = [(d, c, w) for d, c, w in COMBOS
              if (design is None or d == design) and (cpu is None or c == cpu)]
    if not combos:
        raise ValueError(f"no design x cpu pair matches design={design!r} cpu={cpu!r}")
    d, c, _ = rng.choices(combos, weights=[w for *_, w in combos])[0]
    return CampaignConfig(
        design=d, cpu=c, seed=rng.randrange(1 << 16),
        cpuid=rng.choices(("full", "nopebs", "nopmu"), (8, 1, 1))[0],
        vcpus=rng.choices((1, 2), (5, 1))[0],
        extra_autoload=rng.choices((0, 6, 7), (8, 1, 1))[0],
        runs=PROFILES[profile]["runs"])


def run_campaign(seed: int, index: int, profile: str, length: int, *, design=None, cpu=None,
                 tolerate=(), replay: bool | None = None) -> dict:
    """Run campaign ``index`` of a fuzz run; return its stats, violations and timing."""
    rng = random.Random(f"pebslab-fuzz/{seed}/{index}")
    cfg = draw_config(rng, profile, design, cpu)
    t0 = time.perf_counter()
    c = Campaign(cfg, tolerate=tolerate)
    d = RandomDrawer(rng)
    done = 0
    while done < length and not c.aborted:
        name, params = c.random_action(d)
        if c.step(name, params) != "SKIP":
            done += 1
    c.finish()
    if replay is None:
        replay = index % PROFILES[profile]["replay_every"] == 0
    if replay:
        c.replay_digest()
    return {"config": cfg, "index": index, "stats": c.stats, "violations": c.violations,
            "time": time.perf_counter() - t0}


_SUMMARY_COLS = (
    ("campaigns", "camp"), ("actions", "actions"), ("checks", "checks"),
    ("violations", "VIOL"), ("known", "known"), ("GP", "GP"), ("GUEST_CRASH", "CRASH"),
    ("PEBS_WRITE", "PEBS_WR"), ("PEBS_FAULT", "PEBS_FLT"), ("HOST_FAULT", "HOST_FLT"),
    ("SWAPIN", "SWAPIN"), ("reclaimed", "RECLAIM"),
    ("PMI_INJECT", "PMI"), ("PERF_ERR", "PERF_ERR"), ("GUEST_OOPS", "OOPS"),
    ("MIGRATION_REFUSED", "MIG_REF"), ("migrations", "MIG"),
)


def format_summary(results: list[dict], elapsed: float, header: str) -> str:
    """The summary table: one row per design x CPU, then the totals."""
    rows: dict = {}
    total: Counter = Counter()
    for r in results:
        cfg = r["config"]
        st = Counter(r["stats"])
        st["campaigns"] = 1
        st["known"] = sum(1 for v in r["violations"] if v.bug)
        st["violations"] = sum(1 for v in r["violations"] if not v.bug)
        rows.setdefault((cfg.design, cfg.cpu), Counter()).update(st)
        total.update(st)
    names = ["design/cpu"] + [h for _, h in _SUMMARY_COLS]
    table = []
    for (d, c) in sorted(rows, key=lambda k: (DESIGN_NAMES.index(k[0]), CPUS.index(k[1]))):
        table.append([f"{d}/{c}"] + [str(rows[(d, c)][k]) for k, _ in _SUMMARY_COLS])
    table.append(["total"] + [str(total[k]) for k, _ in _SUMMARY_COLS])
    widths = [max(len(names[i]), *(len(row[i]) for row in table)) for i in range(len(names))]

    def line(cells):
        return "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(cells))
    out = [header, line(names), line(["-" * w for w in widths])]
    out += [line(row) for row in table[:-1]]
    out.append(line(["-" * w for w in widths]))
    out.append(line(table[-1]))
    n = max(total["actions"], 1)
    out.append(f"time: {elapsed:.1f} s ({1000 * elapsed / n:.2f} ms per action, "
               f"{total['instructions']} guest instructions, {total['replays']} replays)")
    crashes = Counter({k[len("crash:"):]: v for k, v in total.items() if k.startswith("crash:")})
    if crashes:
        out.append("guest crashes by cause:")
        out += [f"  {n:6d}  {why}" for why, n in crashes.most_common()]
    return "\n".join(out)


def run_fuzz(actions: int, seed: int = 0, profile: str = "long", *, design=None, cpu=None,
             campaign: int | None = None, tolerate=(), jobs: int = 1, out=None) -> int:
    """Run campaigns until ``actions`` actions are done; print the summary; return violations."""
    out = out or sys.stdout
    length = PROFILES[profile]["campaign"]
    if campaign is not None:
        indices = [campaign]
        length = min(length, actions)
    else:
        indices = list(range(max(1, -(-actions // length))))
    t0 = time.perf_counter()
    results = []
    if jobs > 1 and len(indices) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            futs = [ex.submit(run_campaign, seed, i, profile,
                              min(length, actions - i * length), design=design, cpu=cpu,
                              tolerate=tolerate) for i in indices]
            results = [f.result() for f in futs]
    else:
        for i in indices:
            n = length if campaign is not None else min(length, actions - i * length)
            results.append(run_campaign(seed, i, profile, n, design=design, cpu=cpu,
                                        tolerate=tolerate))
    elapsed = time.perf_counter() - t0
    header = (f"pebslab fuzz: {sum(r['stats']['actions'] for r in results)} actions in "
              f"{len(results)} campaigns, seed {seed}, profile {profile}, jobs {jobs}")
    print(format_summary(results, elapsed, header), file=out)
    failing = 0
    shown = 0
    listing = [(r, v) for r in results for v in r["violations"] if not v.bug]
    listing += [(r, v) for r in results for v in r["violations"] if v.bug]
    for r, v in listing:
        if v.bug and v.bug in tolerate:
            continue
        failing += 1
        if shown < 20 and (not v.bug or shown < 10):
            shown += 1
            filt = (f" --design {design}" if design else "") + (f" --cpu {cpu}" if cpu else "")
            print(f"VIOLATION campaign {r['index']} ({r['config'].describe()}): {v}\n"
                  f"  replay: python -m pebslab.fuzz --seed {seed} --profile {profile}"
                  f"{filt} --campaign {r['index']}", file=out)
    if failing > shown:
        print(f"... {failing - shown} more violation(s) not shown", file=out)
    known = Counter(v.bug for r in results for v in r["violations"] if v.bug)
    for bug, n in sorted(known.items()):
        print(f"known bug {bug}: {n} hit(s) - {ALL_REPORTED_BUGS.get(bug, '?')}", file=out)
    if MIG is None or not hasattr(MIG, "restore_state"):
        print("note: pebslab.kvm.migration missing: migration and dirty-logging actions "
              "skipped", file=out)
    print(f"result: {'FAIL' if failing else 'OK'} ({failing} violation(s))", file=out)
    return failing


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pebslab.fuzz", description=(
        "Fuzz pebslab with random guest and host actions across designs x CPU models; "
        "check isolation, accounting, MSR semantics, crash reporting and determinism."))
    p.add_argument("--actions", type=int, default=None,
                   help="total actions (default: 2000 short, 100000 long)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=("short", "long"), default="long")
    p.add_argument("--design", choices=DESIGN_NAMES, default=None)
    p.add_argument("--cpu", choices=CPUS, default=None)
    p.add_argument("--campaign", type=int, default=None, help="run only this campaign index")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--tolerate-known", action="store_true",
                   help="do not fail on violations caused by the bugs in KNOWN_BUGS")
    a = p.parse_args(argv)
    actions = a.actions if a.actions is not None else (2000 if a.profile == "short" else 100000)
    if actions < 1:
        p.error("--actions must be >= 1")
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    failing = run_fuzz(actions, a.seed, a.profile, design=a.design, cpu=a.cpu,
                       campaign=a.campaign, jobs=a.jobs,
                       tolerate=tuple(KNOWN_BUGS) if a.tolerate_known else ())
    return 1 if failing else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
