"""Fuzzing campaigns (pebslab.fuzz) as hypothesis state machines, and the harness itself.

The actions, invariants and oracle live in pebslab/fuzz/; here a
RuleBasedStateMachine per design x CPU model draws each action's parameters
through hypothesis (one rule per declared action) and runs a short,
derandomized, database-less campaign that ends with the MSR coverage sweep,
so CI is reproducible (`make fuzz` runs the long profile from the command
line). The open bugs are strict xfail tests in tests/test_fuzz_bugs.py; the
campaigns here tolerate exactly their signatures.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

import pebslab as pl
from pebslab import fuzz as F
from pebslab.hw import msr as M
from test_fuzz_bugs import TOLERATED


# =============================================================================
# the state machines
# =============================================================================

class DataDrawer(F.Drawer):
    """A pebslab.fuzz Drawer whose choices come from hypothesis (so they shrink)."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    def choice(self, seq, weights=None):
        return self.data.draw(st.sampled_from(list(seq)))

    def boolean(self, p=0.5):
        return self.data.draw(st.booleans())


#: every action but the slow ones (the half-million-instruction pressure run)
CI_ACTIONS = tuple(name for name, a in F.ACTIONS.items() if a.ci)


def machine_for(design: str, cpu: str):
    """A RuleBasedStateMachine over one design and host CPU model, one rule per action."""

    class Machine(RuleBasedStateMachine):
        campaign = None

        @initialize(seed=st.integers(0, (1 << 16) - 1),
                    cpuid=st.sampled_from(("full", "nopebs", "nopmu")),
                    vcpus=st.sampled_from((1, 2)),
                    extra_autoload=st.sampled_from((0, 6, 7)))
        def setup(self, seed, cpuid, vcpus, extra_autoload):
            cfg = F.CampaignConfig(design=design, cpu=cpu, seed=seed, cpuid=cpuid, vcpus=vcpus,
                                   extra_autoload=extra_autoload, runs=F.PROFILES["ci"]["runs"])
            self.campaign = F.Campaign(cfg, strict=True, tolerate=TOLERATED, watchdog=10)

        def teardown(self):
            c = self.campaign
            if c is not None and not c.aborted:
                c.cover_rest(F.RandomDrawer(random.Random(c.config.seed)))
                c.finish()
                c.replay_digest()

    def make_rule(name):
        def act(self, data):
            c = self.campaign
            c.step(name, c.draw(name, DataDrawer(data)))
        act.__name__ = name
        return rule(data=st.data())(act)

    for name in CI_ACTIONS:
        setattr(Machine, name, make_rule(name))
    Machine.__name__ = Machine.__qualname__ = f"Fuzz_{design}_{cpu}"
    return Machine


CI_SETTINGS = settings(max_examples=8, stateful_step_count=30, deadline=None,
                       derandomize=True, database=None, print_blob=False,
                       suppress_health_check=list(HealthCheck))

COMBOS = [(d, c) for d in pl.DESIGN_NAMES for c in pl.MODELS]
_COMBO_PARAMS = [pytest.param(d, c, id=f"{d}-{c}") for d, c in COMBOS]


@pytest.mark.slow
@pytest.mark.parametrize("design,cpu", _COMBO_PARAMS)
def test_campaign(design, cpu):
    run_state_machine_as_test(machine_for(design, cpu), settings=CI_SETTINGS)


# =============================================================================
# actions are declared once, with their weights
# =============================================================================

def test_every_action_is_declared_once_with_a_weight_draw_and_run():
    assert len(F.ACTIONS) == len(set(F.ACTIONS)) >= 20
    for name, a in F.ACTIONS.items():
        assert a.name == name and a.weight > 0 and a.pebs_bias > 0 and a.doc
        assert callable(a.draw) and callable(a.run)
    assert {"wrmsr", "rdmsr", "msr_sweep", "run", "reclaim", "migrate", "destroy"} <= set(F.ACTIONS)
    assert "pressure_run" not in CI_ACTIONS


def test_the_action_decorator_registers_a_class():
    try:
        @F.action(0.5, pebs_bias=2.0, ci=False)
        class probe:
            """A probe."""

            def draw(c, d):
                return {}

            def run(c):
                return "ok"
        a = F.ACTIONS["probe"]
        assert (a.weight, a.pebs_bias, a.ci, a.doc) == (0.5, 2.0, False, "A probe.")
        assert a.run(None) == "ok"
    finally:
        F.ACTIONS.pop("probe", None)


# =============================================================================
# the harness itself
# =============================================================================

def _campaign(design="patch", cpu="silvermont", **kw):
    return F.Campaign(F.CampaignConfig(design=design, cpu=cpu, seed=1,
                                       runs=F.PROFILES["ci"]["runs"]), **kw)


def test_a_short_campaign_is_clean_and_deterministic():
    a = F.run_campaign(7, 0, "short", 25, design="patch", cpu="silvermont", replay=True)
    b = F.run_campaign(7, 0, "short", 25, design="patch", cpu="silvermont", replay=False)
    assert [v for v in a["violations"] if v.signature not in TOLERATED] == []
    assert a["stats"]["replays"] == 1
    assert a["stats"]["actions"] == b["stats"]["actions"]
    assert a["coverage"] == b["coverage"]


def test_a_campaign_sweeps_every_msr_index_of_its_host():
    c = _campaign("review", "haswell")
    c.cover_rest(F.RandomDrawer(random.Random(0)))
    c.finish()
    assert set(F.pmu_msr_indices("haswell")) <= c.swept
    for msr in F.pmu_msr_indices("haswell"):
        cov = c.coverage[msr]
        assert cov["bits_def"] | cov["bits_rsv"] == (1 << 64) - 1, hex(msr)
        assert cov["enabled"] >= 1 and cov["wr"] >= 64
    # review on haswell: no PEBS MSRs, so every bit of PEBS_ENABLE is reserved (#GP)
    assert c.coverage[M.MSR_IA32_PEBS_ENABLE]["bits_def"] == 0
    assert c.coverage[M.MSR_IA32_PEBS_ENABLE]["gp"] >= 64
    assert [v.signature for v in c.violations] == []


def test_a_campaign_that_leaves_an_msr_untouched_fails():
    c = _campaign()
    c.finish()
    untouched = [v for v in c.violations if v.signature == "coverage/untouched-msr"]
    assert len(untouched) == len(F.pmu_msr_indices("silvermont"))


def test_the_sweep_reports_what_a_direct_reproduction_of_fixed_counter_3_shows():
    # the fuzzer's verdict on the issue 9 bug matches what the guest instructions do
    host = pl.Host(cpu="icelake", frames=1024)
    v = host.create_vm(design="icelake", memory_pages=64).vcpus[0]
    raised = None
    try:
        v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB000)
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 35)
    except pl.GuestFault:
        pass
    except Exception as e:  # noqa: BLE001 - what the bug does today
        raised = e
    c = _campaign("icelake", "icelake")
    c.step("msr_sweep", {"vcpu": 0, "msr": M.MSR_CORE_PERF_FIXED_CTR3,
                         "randoms": [0, 0], "n": 50})
    sigs = {x.signature for x in c.violations}
    assert ("exceptions/IndexError in reprogram_fixed_counter" in sigs) == \
        isinstance(raised, IndexError)
    assert M.MSR_CORE_PERF_FIXED_CTR3 in c.swept


def test_the_debugger_view_walks_like_the_guest_and_changes_nothing():
    from pebslab.fuzz.invariants import walk, read_virt
    host = pl.Host(frames=1024)
    vm = host.create_vm(design="patch", memory_pages=128)
    g = pl.GuestKernel(vm)
    gva = g.mm.alloc(3)
    g.write(gva + 4096 + 8, b"pebslab!")
    g.mm.unmap(gva + 2 * 4096)
    rows = len(vm.trace.array)
    assert walk(vm, g.mm.cr3, gva + 4096 + 8) == g.mm.translate(gva + 4096 + 8)
    assert read_virt(vm, g.mm.cr3, gva + 4096 + 8, 8) == b"pebslab!"
    assert walk(vm, g.mm.cr3, gva + 2 * 4096) is None
    assert walk(vm, g.mm.cr3, 1 << 47) is None                # non-canonical
    assert len(vm.trace.array) == rows                        # no exits, no faults


def test_invariant_checks_catch_a_planted_refcount_leak():
    c = _campaign()
    assert c.violations == []
    frame = int(np.flatnonzero(c.host.mm.owner == c.vm.id)[0])
    c.host.mm.refcount[frame] += 1          # a get_page nobody accounts for
    c.check()
    assert any(v.signature == "accounting/refcount" and f"frame {frame}" in v.message
               for v in c.violations)


def test_invariant_checks_catch_a_pebs_write_into_a_foreign_frame():
    c = _campaign()
    foreign = int(np.flatnonzero(c.host.mm.owner == c.bystander.id)[0])
    c.vm.trace.add("PEBS_WRITE", 0, vcpu=0, hpa=foreign << 12, frame=foreign)
    c.check()
    assert any(v.signature == "isolation/pebs-write-foreign-frame" for v in c.violations)


def test_an_exception_escaping_a_guest_action_is_a_violation_named_by_its_origin(monkeypatch):
    c = _campaign()

    def boom(index):
        raise KeyError(index)
    monkeypatch.setattr(c.vm.vcpus[0], "rdmsr", boom)
    assert c.step("rdmsr", {"vcpu": 0, "msr": M.MSR_CORE_PERF_GLOBAL_CTRL}) == "ESCAPED"
    assert [v.signature for v in c.violations] == ["exceptions/KeyError in boom"]


def test_the_oracle_catches_a_planted_msr_mistake(monkeypatch):
    # KVM accepting ANY (bit 21) in an event select: 2014 pmu.c reserves it (FACTS b.2)
    from pebslab.kvm import pmu as kpmu
    original = kpmu.kvm_pmu_set_msr

    def kvm_pmu_set_msr(vcpu, index, data, *a, **k):
        if index == M.MSR_P6_EVNTSEL0 and data == 1 << 21:
            return None                     # the planted mistake: no #GP
        return original(vcpu, index, data, *a, **k)
    monkeypatch.setattr(kpmu, "kvm_pmu_set_msr", kvm_pmu_set_msr)
    c = _campaign()
    c.step("wrmsr", {"vcpu": 0, "msr": M.MSR_P6_EVNTSEL0, "value": 1 << 21})
    c.step("wrmsr", {"vcpu": 0, "msr": M.MSR_P6_EVNTSEL0, "value": 1 << 22})
    assert [v.signature for v in c.violations] == ["msr/reserved-bits:evtsel/accepted"]


def test_strict_campaign_raises_on_a_violation_it_does_not_tolerate():
    c = _campaign(strict=True)
    c.bystander.trace.add("HOST_FAULT", 0, info="planted")
    with pytest.raises(F.CampaignError, match="HOST_FAULT"):
        c.check()
    c = _campaign(strict=True, tolerate={"isolation/host-fault"})
    c.bystander.trace.add("HOST_FAULT", 0, info="planted")
    c.check()
    assert [v.signature for v in c.violations] == ["isolation/host-fault"]


def test_patch_crash_from_reclaim_is_classified_as_a_patch_limitation():
    # FACTS e / the patch: an unaligned buffer's last page is not pinned
    c = _campaign()
    c.step("manual_pebs", {"vcpu": 0, "ds_offset": 0, "buf_offset": 2048, "buf_pages": 16,
                           "period": 97, "event": 0x00C0, "counter": 0,
                           "threshold_records": 1 << 16})
    c.step("reclaim", {"n": 1 << 20})
    c.step("run", {"n": 40_000, "workload": 0, "vcpu": 0})
    assert c.vm.crashed
    assert c.violations == []
    assert c.stats["crash:unpinned or write-protected PEBS memory (patch limitation)"] == 1


# =============================================================================
# the command line
# =============================================================================

def test_cli_prints_the_summary_and_coverage_tables_and_exit_status(capsys):
    assert F.main(["--actions", "30", "--profile", "short", "--design", "review",
                   "--cpu", "haswell"]) == 0
    out = capsys.readouterr().out
    for col in ("design/cpu", "actions", "checks", "VIOL", "GP", "CRASH", "PEBS_FLT",
                "HOST_FLT", "review/haswell", "time:", "MSR coverage", "sweeps",
                "MSR_IA32_MISC_ENABLE", "MSR_IA32_DEBUGCTLMSR", "MSR_IA32_PERFCTR4", "result: OK"):
        assert col in out
    row = next(line for line in out.splitlines() if "MSR_CORE_PERF_FIXED_CTR_CTRL" in line)
    assert row.split()[2] == "1/1"


def test_cli_reports_an_escaping_exception_as_a_violation_and_fails(capsys, monkeypatch):
    from pebslab.kvm import pmu as kpmu

    original = kpmu.reprogram_fixed_counter

    def reprogram_fixed_counter(vcpu, pmc, en_pmi, idx, *args, **kwargs):
        if idx == 2:            # a planted bug in the third fixed counter only
            raise IndexError("planted")
        return original(vcpu, pmc, en_pmi, idx, *args, **kwargs)
    monkeypatch.setattr(kpmu, "reprogram_fixed_counter", reprogram_fixed_counter)
    assert F.main(["--actions", "10", "--profile", "short", "--design", "patch",
                   "--cpu", "haswell"]) == 1
    out = capsys.readouterr().out
    assert "exceptions/IndexError in reprogram_fixed_counter" in out
    assert "replay: python -m pebslab.fuzz" in out and "result: FAIL" in out
    assert F.main(["--actions", "10", "--profile", "short", "--design", "patch",
                   "--cpu", "haswell", "--allow",
                   "exceptions/IndexError in reprogram_fixed_counter"]) == 0
    assert "(allowed)" in capsys.readouterr().out


def test_cli_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        F.main(["--actions", "0"])
    with pytest.raises(SystemExit):
        F.main(["--profile", "medium"])
    with pytest.raises(SystemExit):
        F.main(["--jobs", "0"])
