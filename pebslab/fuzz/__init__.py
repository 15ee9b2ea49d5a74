"""Fuzzing campaigns: random guest and host actions, every invariant checked after each step.

pebslab only. The package, in reading order:

``oracle.py``
    what each PMU MSR must do for a guest, per design and CPU model, written
    from FACTS.md, the SDM and the patch (not from pebslab.kvm);
``actions.py``, ``guest_actions.py``, ``host_actions.py``
    every action, declared once with its weight (``@action``): the
    registry and the guest's MSR instructions and sweep; the guest's memory,
    PEBS, perf and run actions; the host's and userspace's actions;
``invariants.py``
    isolation, accounting and crash checks after every step;
``campaign.py``
    one campaign (a host, a VM under test, a bystander), its MSR coverage
    sweep, teardown and determinism replay;
``cli.py``
    ``python -m pebslab.fuzz``: campaigns over designs x CPU models, the
    summary and coverage tables, violations by signature.

``_targets.py``
    the one import of the migration / dirty-logging code the fuzzer drives.

Known bugs are not listed here: each is a strict xfail test in
tests/test_fuzz_bugs.py, which also names the violation signatures the CI
campaigns tolerate until it is fixed.
"""

from .actions import ACTIONS, Action, action
from .campaign import (COMBOS, PROFILES, Campaign, CampaignConfig, CampaignError, Drawer,
                       RandomDrawer, Violation, draw_config, run_campaign)
from .cli import main, run_fuzz
from .oracle import MsrOracle, Verdict, cpuid_problems, pebs_possible, pmu_msr_indices

__all__ = ["ACTIONS", "Action", "action", "COMBOS", "PROFILES", "Campaign", "CampaignConfig",
           "CampaignError", "Drawer", "RandomDrawer", "Violation", "draw_config",
           "run_campaign", "main", "run_fuzz", "MsrOracle", "Verdict", "cpuid_problems",
           "pebs_possible", "pmu_msr_indices"]
