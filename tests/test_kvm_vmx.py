"""kvm/vmx.py: the MSR autoload lists (NR_AUTOLOAD_MSRS = 8) and the patch's DS_AREA hunk.

Expected values from the patch text (add_atomic_switch_msr of DS_AREA with
perf_get_ds_area() as the host value) and FACTS c.3 / c.5.
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.hw import msr as M
from pebslab.kvm import pebs_pin
from kvm_support import HOT, HOT_IP, NEXT_IP, baseline, make  # noqa: F401  (tests/ is on sys.path)


# --------------------------------------------------------------------------- VMX switching

def test_entry_switches_global_ctrl_pebs_enable_and_ds_area():
    _, vm, guest = make("patch")
    st = S.manual_pebs(guest)
    vm.run(HOT, 1000)
    names = [n for n, _, _ in vm.kvm.autoload.table()]
    assert {"MSR_CORE_PERF_GLOBAL_CTRL", "MSR_IA32_PEBS_ENABLE", "MSR_IA32_DS_AREA"} <= set(names)
    table = {n: (g, h) for n, g, h in vm.kvm.autoload.table()}
    assert table["MSR_IA32_DS_AREA"][0] == st.ds
    assert table["MSR_IA32_PEBS_ENABLE"] == (1, 0)


def test_full_autoload_list_patch_runs_guest_with_host_ds_area():
    _, vm, guest = make("patch", extra_autoload=6)
    S.manual_pebs(guest)
    res = vm.run(HOT, 2_000_000)
    assert vm.trace.of("AUTOLOAD_FULL").size > 0
    # the guest's records are aimed at the host's DS address, unmapped in the guest
    assert res.crashed and "guest page fault" in vm.crash_reason
    _, vm_f, guest_f = make("fixed", extra_autoload=6)
    st = S.manual_pebs(guest_f)
    res = vm_f.run(HOT, 2_000_000)
    assert not res.crashed and not st.samples      # PEBS kept off, nothing lost


def test_unswitched_pebs_enable_is_flagged_as_a_host_hazard():
    _, vm, guest = make("patch", switch_pebs_enable=False)
    st = S.manual_pebs(guest)
    vm.run(HOT, 500_000)
    assert not st.samples          # hardware PEBS_ENABLE stayed at the host's 0
