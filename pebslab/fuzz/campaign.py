"""A campaign: one host, a VM under test and a bystander VM, driven by actions, checked after each.

pebslab only. The 2014 patch argues that a guest that breaks its
assumptions "could only crash itself". A :class:`Campaign` puts that claim
(and the model's own contracts) under random load: it runs the actions of
:mod:`.actions` one :meth:`~Campaign.step` at a time, checks the
invariants of :mod:`.invariants` after each, sweeps every PMU MSR index of
the host's ranges before it ends (:meth:`~Campaign.cover_rest`), tears
everything down and checks the hosts are back to their frame tables at
creation (:meth:`~Campaign.finish`), and can replay its recorded actions
from scratch to check determinism (:meth:`~Campaign.replay_digest`).
"""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..guest.kernel import GuestKernel
from ..guest.perf import PerfOpenError
from ..hw import cpuid as CPUID
from ..hw.mmu import PAGE_SIZE as PAGE
from ..hw.models import MODELS
from ..kvm.designs import DESIGN_NAMES
from ..system import Host
from . import _targets as T
from . import invariants as I
from .actions import ACTIONS, host_call, perf_call
from .oracle import MsrOracle, cpuid_problems, pebs_possible, pmu_msr_indices

CPUS = tuple(MODELS)

#: Profiles: campaign length, run lengths, replay every n-th campaign.
PROFILES = {
    "short": {"campaign": 40, "runs": (1, 40, 400, 2000, 4000), "replay_every": 1},
    "long": {"campaign": 200, "runs": (1, 100, 1000, 4000, 12000), "replay_every": 4},
    "ci": {"campaign": 30, "runs": (1, 50, 500, 2000), "replay_every": 1},
}

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
# configuration and results
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
    """One broken invariant; ``signature`` (invariant/rule) names its cause."""

    invariant: str
    rule: str
    message: str
    step: int
    action: str
    params: dict

    @property
    def signature(self) -> str:
        return f"{self.invariant}/{self.rule}"

    def __str__(self) -> str:
        return (f"step {self.step} {self.action}({fmt_params(self.params)}): "
                f"[{self.signature}] {self.message}")


def fmt_params(p: dict) -> str:
    return ", ".join(f"{k}={v:#x}" if isinstance(v, int) and not isinstance(v, bool) and v > 9
                     else f"{k}={v!r}" for k, v in p.items())


class CampaignError(AssertionError):
    """Raised by :meth:`Campaign.step` (strict mode) when an invariant breaks."""


#: per-MSR coverage record of one campaign (summed over a run by the command line)
COVER_KEYS = ("wr", "rd", "gp", "values", "enabled", "sweeps")


class Campaign:
    """One host, a VM under test and a bystander VM, driven step by step.

    pebslab only. ``step(name, params)`` runs one action (``draw(name,
    drawer)`` makes its parameters), then checks every invariant; broken
    ones are appended to ``violations`` (and raised as
    :class:`CampaignError` in strict mode unless their signature is in
    ``tolerate``). ``cover_rest(drawer)`` sweeps every PMU MSR index not yet
    swept; ``finish()`` fails the campaign for an index left untouched,
    destroys everything and checks the hosts are back to their initial
    frame tables; ``replay_digest()`` re-runs the recorded actions from
    scratch and compares trace digests.
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
        self.action = ("setup", {})
        self.hosts: list = []
        self.active_hosts: list = []     # hosts checked after every step
        self.baselines: dict = {}
        self.all_vms: list = []
        self.scanned: dict = {}
        self.crash_seen: set = set()
        #: msr -> Counter of COVER_KEYS plus "bits_def" / "bits_rsv" masks of single bits
        self.coverage: dict[int, Counter] = {}
        self.swept: set[int] = set()
        self.host = self.new_host(config.cpu, config.seed)
        self.bystander = self.host.create_vm(design=config.design, memory_pages=48)
        self.all_vms.append(self.bystander)
        self.bguest = GuestKernel(self.bystander)
        try:    # the bystander counts instructions (no PEBS, no memory writes)
            self.bystander_count = self.bguest.perf.stat(["instructions"])
        except PerfOpenError:
            self.bystander_count = None
        self.bystander_digest = self.vm_digest(self.bystander)
        self.new_subject()
        self.check()

    # ---- set-up ----------------------------------------------------------------------
    def new_host(self, cpu: str, seed: int) -> Host:
        frames = 16 + 2 * self.config.memory_pages + 48 + 64
        host = Host(cpu=cpu, frames=frames, seed=seed)
        self.hosts.append(host)
        self.active_hosts.append(host)
        self.baselines[id(host)] = (host.mm.refcount.copy(), host.mm.owner.copy())
        return host

    def requested_cpuid(self, cpu):
        base = CPUID.default(cpu)
        if self.config.cpuid == "nopebs":
            return base.without("DS", "DTES64", "PDCM")
        if self.config.cpuid == "nopmu":
            return base.without("PMU")
        return base

    def new_subject(self, host=None) -> None:
        cfg = self.config
        host = host or self.host
        cp = self.requested_cpuid(host.cpu)
        self.vm = host.create_vm(design=cfg.design, memory_pages=cfg.memory_pages, cpuid=cp,
                                 vcpus=cfg.vcpus, extra_autoload=cfg.extra_autoload)
        self.all_vms.append(self.vm)
        self.guest = GuestKernel(self.vm)
        self.adopt_vm(self.vm, cp)

    def adopt_vm(self, vm, requested_cpuid) -> None:
        """Build the oracle and reset the per-VM bookkeeping for a new subject VM."""
        self.oracle = MsrOracle(vm.design.name, vm.cpu.name, vm.cpuid)
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
        for rule, message in cpuid_problems(vm.design.name, vm.cpu.name, requested_cpuid,
                                            vm.cpuid):
            self.violate("cpuid", rule, message)

    # ---- bookkeeping --------------------------------------------------------------------
    def violate(self, invariant: str, rule: str, message: str) -> None:
        """Record a broken invariant (strict mode: raise unless its signature is tolerated)."""
        name, params = self.action
        v = Violation(invariant, rule, message, self.step_no, name, dict(params))
        self.violations.append(v)
        self.stats["violations"] += 1
        if self.strict and v.signature not in self.tolerate:
            raise CampaignError(f"{self.config.describe()}: {v}")

    def cover(self, msr: int, what: str, outcome: str, value: int = 0) -> None:
        """Count one access to ``msr`` for the coverage table."""
        cov = self.coverage.setdefault(msr, Counter())
        if what == "bit":
            cov["bits_def" if outcome == "defined" else "bits_rsv"] |= value
        elif what == "value":
            cov["values"] += 1
        elif what == "enabled":
            cov["enabled"] += outcome == "ok"
        else:
            cov[what] += 1
            cov["gp"] += outcome == "GP"

    def vm_digest(self, vm) -> str:
        return hashlib.sha256(I.peek(vm, 0, vm.memory_pages * PAGE)).hexdigest()[:16]

    def vcpu(self, idx: int):
        return self.vm.vcpus[idx % len(self.vm.vcpus)]

    def known_pages(self) -> list[int]:
        out = []
        for gva, pages, _ in self.regions:
            out.extend(gva + i * PAGE for i in range(pages))
        return out

    def add_region(self, gva, pages, label):
        if gva is not None and (gva, pages, label) not in self.regions:
            self.regions.append((gva, pages, label))
            del self.regions[:-16]      # the most recent regions are the interesting ones

    def live_vms(self):
        return [vm for vm in self.all_vms if not vm.destroyed]

    # ---- drawing and stepping -------------------------------------------------------------
    def draw(self, name: str, d: Drawer) -> dict | None:
        """Parameters for action ``name`` (None: not applicable now)."""
        return ACTIONS[name].draw(self, d)

    def random_action(self, d: RandomDrawer) -> tuple[str, dict | None]:
        names = list(ACTIONS)
        pebs = self.oracle.pebs_msrs
        weights = [a.weight * (a.pebs_bias if pebs else 1) for a in ACTIONS.values()]
        if self.vm.crashed:      # a crashed guest is mostly interesting to tear down
            weights[names.index("destroy")] *= 12
        name = d.choice(names, weights)
        return name, self.draw(name, d)

    def step(self, name: str, params: dict | None, *, check: bool = True) -> str:
        """Run one action, then (by default) every invariant check. Returns the outcome."""
        if params is None:
            self.stats["skipped"] += 1
            return "SKIP"
        if self.aborted:
            return "SKIP"
        self.step_no += 1
        self.action = (name, params)
        self.log.append((name, dict(params)))
        self.stats["actions"] += 1
        self.stats[f"action:{name}"] += 1
        try:
            with _Watchdog(self.watchdog):
                outcome = ACTIONS[name].run(self, **params)
        except ActionTimeout as e:
            # the simulated host hung: the state is half-updated, stop this campaign
            self.aborted = True
            frames = [f for f in traceback.extract_tb(e.__traceback__) if f.name != "_fire"]
            where = " <- ".join(f.name for f in frames[-4:])
            self.stats["HANG"] += 1
            self.violate("liveness", f"hang in {frames[-1].name if frames else '?'}",
                         f"{e} (in {where}); campaign aborted")
            return "HANG"
        self.stats[f"outcome:{outcome}"] += 1
        if check:
            self.check()
        return outcome

    def check(self) -> None:
        """Check every invariant now (see invariants.py)."""
        I.check(self)

    def scan_traces(self) -> None:
        I.scan_traces(self)

    # ---- teardown -------------------------------------------------------------------------
    def destroy_checked(self, vm) -> None:
        """Destroy ``vm``; nothing of it may be left on its host."""
        leaked, out = host_call(self, vm.destroy, "vm.destroy")
        if out != "ok":
            return
        if leaked:
            self.violate("accounting", "destroy-leak", f"destroy leaked frames {leaked}")
        mm = vm.host_mm
        left = np.flatnonzero(mm.owner == vm.id)
        if left.size:
            self.violate("accounting", "destroy-leak", f"destroyed VM {vm.id} still owns "
                                                       f"frames {left[:8].tolist()}")
        if any(k[0] == vm.id for k in mm.swap):
            self.violate("accounting", "destroy-leak", f"destroyed VM {vm.id} still has "
                                                       f"swapped pages")
        host = vm.host
        if host in self.active_hosts and host is not self.host and \
                not any(o.host is host for o in self.live_vms()):
            self.active_hosts.remove(host)      # empty: finish() checks it against its baseline

    def cover_rest(self, d: Drawer) -> None:
        """Sweep every PMU MSR index not swept yet (a crashed guest is replaced first)."""
        todo = [m for m in pmu_msr_indices(self.config.cpu) if m not in self.swept]
        for _ in range(2 * len(todo) + 2):
            todo = [m for m in todo if m not in self.swept]
            if not todo or self.aborted:
                return
            if self.vm.crashed:
                self.step("destroy", {})
            params = self.draw("msr_sweep", d)
            params["msr"] = todo[0]
            self.step("msr_sweep", params)

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
        """Fail an untouched MSR index; destroy every VM; hosts back to their frame tables."""
        self.action = ("finish", {})
        self.final_digest = self.digest()
        if self.aborted:      # a hung host cannot be torn down meaningfully
            return
        for msr in pmu_msr_indices(self.config.cpu):
            if msr not in self.swept:
                self.violate("coverage", "untouched-msr", f"the campaign never swept MSR "
                                                          f"{msr:#x}")
        if self.bystander_count is not None and not self.bystander.destroyed:
            perf_call(self, self.bystander_count.read, "bystander count")
        self.check()
        for vm in self.live_vms():
            self.destroy_checked(vm)
        self.scan_traces()
        for host in self.hosts:
            ref0, own0 = self.baselines[id(host)]
            mm = host.mm
            if not np.array_equal(mm.owner, own0) or not np.array_equal(mm.refcount, ref0):
                diff = np.flatnonzero((mm.owner != own0) | (mm.refcount != ref0))
                self.violate("accounting", "teardown", f"after destroying every VM, host "
                                                       f"frames {diff[:8].tolist()} differ from "
                                                       f"the baseline")
            if mm.swap:
                self.violate("accounting", "teardown", f"{len(mm.swap)} pages left in the "
                                                       f"swap store")
            try:
                mm.check_invariants()
            except AssertionError as e:
                self.violate("accounting", "teardown", f"host.mm.check_invariants after "
                                                       f"teardown: {e}")

    def replay_digest(self) -> None:
        """Re-run the recorded actions from scratch; the digests must match."""
        self.action = ("replay", {})
        if self.aborted:
            return
        other = Campaign(self.config)
        for name, params in self.log:
            other.step(name, params, check=False)
        self.stats["replays"] += 1
        mine = getattr(self, "final_digest", None) or self.digest()
        if other.digest() != mine:
            self.violate("determinism", "replay", f"replaying {len(self.log)} actions gave "
                                                  f"digest {other.digest()}, the run gave {mine}")


# =============================================================================
# one campaign of a fuzz run
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


def warm_up() -> None:
    """Compile (or load from the numba cache) the core before any watchdog runs.

    pebslab only. A first ``vm.run`` compiles the run loop, which on a
    loaded machine can take longer than the watchdog allows an action; a
    short PEBS run on each design's favourite host does it outside any
    campaign (worker processes forked afterwards inherit the compiled code).
    """
    from ..scenarios import manual_pebs
    from .actions import WORKLOADS
    for design, cpu in (("patch", "silvermont"), ("icelake", "icelake")):
        host = Host(cpu=cpu, frames=512, seed=0)
        vm = host.create_vm(design=design, memory_pages=96)
        manual_pebs(GuestKernel(vm), buf_pages=2, period=97, event=0x00C0)
        for w in WORKLOADS:
            vm.run(w, 2000)
        vm.destroy()


def run_campaign(seed: int, index: int, profile: str, length: int, *, design=None, cpu=None,
                 replay: bool | None = None) -> dict:
    """Run campaign ``index`` of a fuzz run; return its stats, violations, coverage, timing."""
    rng = random.Random(f"pebslab-fuzz/{seed}/{index}")
    cfg = draw_config(rng, profile, design, cpu)
    t0 = time.perf_counter()
    c = Campaign(cfg)
    d = RandomDrawer(rng)
    done = 0
    while done < length and not c.aborted:
        name, params = c.random_action(d)
        if c.step(name, params) != "SKIP":
            done += 1
    c.cover_rest(d)
    c.finish()
    if replay is None:
        replay = index % PROFILES[profile]["replay_every"] == 0
    if replay:
        c.replay_digest()
    return {"config": cfg, "index": index, "stats": c.stats, "violations": c.violations,
            "coverage": c.coverage, "time": time.perf_counter() - t0}
