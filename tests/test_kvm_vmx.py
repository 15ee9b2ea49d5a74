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


# --------------------------------------------------------------------------- the lists

from pebslab.host import perf_hw  # noqa: E402
from pebslab.kvm import vmx  # noqa: E402


def test_autoload_lists_hold_eight_entries_then_refuse():
    # 2014 vmx.c: NR_AUTOLOAD_MSRS 8; add_atomic_switch_msr prints and gives up when full
    _, vm, _ = make("patch")
    v = vm.vcpus[0]
    assert vmx.NR_AUTOLOAD_MSRS == 8
    for i in range(8):
        assert vmx.add_atomic_switch_msr(v, 0x1000 + i, i, 100 + i)
    assert not vmx.add_atomic_switch_msr(v, 0x2000, 1, 2)
    assert v.autoload.nr == 8 and len(vm.trace.of("AUTOLOAD_FULL")) == 1
    # an MSR already on the list is updated in place, even when full
    assert vmx.add_atomic_switch_msr(v, 0x1003, 33, 44)
    assert v.autoload.guest[3] == [0x1003, 33] and v.autoload.host[3] == [0x1003, 44]
    vmx.clear_atomic_switch_msr(v, 0x1003)
    assert v.autoload.nr == 7 and all(g[0] != 0x1003 for g in v.autoload.guest)


def test_patch_ds_area_hunk_switches_guest_and_host_values():
    # the patch: if (pmu.ds_area) add_atomic_switch_msr(DS_AREA, ds_area, perf_get_ds_area())
    _, vm, _ = make("patch")
    v = vm.vcpus[0]
    vmx.vmx_prepare_msrs(v)
    assert all(g[0] != M.MSR_IA32_DS_AREA for g in v.autoload.guest)
    v.wrmsr(M.MSR_IA32_DS_AREA, 0xFFFF_8880_0001_0000)
    vmx.vmx_prepare_msrs(v)
    table = {n: (g, h) for n, g, h in v.autoload.table()}
    assert table["MSR_IA32_DS_AREA"] == (0xFFFF_8880_0001_0000, perf_hw.HOST_DS_AREA)
    # DS_AREA = 0 leaves the stale entry under the patch (nothing clears it); `fixed` clears it
    v.wrmsr(M.MSR_IA32_DS_AREA, 0)
    vmx.vmx_prepare_msrs(v)
    assert {n for n, _, _ in v.autoload.table()} >= {"MSR_IA32_DS_AREA"}
    _, vm_f, _ = make("fixed")
    vf = vm_f.vcpus[0]
    vf.wrmsr(M.MSR_IA32_DS_AREA, 0xFFFF_8880_0001_0000)
    vmx.vmx_prepare_msrs(vf)
    vf.wrmsr(M.MSR_IA32_DS_AREA, 0)
    vmx.vmx_prepare_msrs(vf)
    assert all(g[0] != M.MSR_IA32_DS_AREA for g in vf.autoload.guest)


def test_entry_and_exit_load_the_lists_into_the_core():
    _, vm, _ = make("patch")
    v = vm.vcpus[0]
    vmx.add_atomic_switch_msr(v, M.MSR_IA32_DS_AREA, 0xFFFF_8880_0001_0000, perf_hw.HOST_DS_AREA)
    vmx.vm_entry(v)
    assert v.core.rdmsr(M.MSR_IA32_DS_AREA) == 0xFFFF_8880_0001_0000
    vmx.vm_exit(v)
    assert v.core.rdmsr(M.MSR_IA32_DS_AREA) == perf_hw.HOST_DS_AREA


def test_atomic_switch_perf_msrs_drops_entries_whose_values_agree():
    # vmx.c atomic_switch_perf_msrs: host == guest -> clear_atomic_switch_msr, else add
    _, vm, _ = make("patch")
    v = vm.vcpus[0]
    msrs = vmx.atomic_switch_perf_msrs(v)
    assert {m.msr for m in msrs} == {M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_IA32_PEBS_ENABLE}
    assert all(m.host == m.guest == 0 for m in msrs)    # no perf events yet
    assert v.autoload.nr == 0


# --------------------------------------------------------------------------- a failed VM entry

NONCANONICAL = 0x0000_8000_0000_0000


def test_noncanonical_ds_area_under_patch_fails_the_vm_entry_and_stops_the_vm():
    # FACTS g.4: the patch stores DS_AREA unchecked and adds it to the MSR-load list; SDM 26.4:
    # the load fails as a WRMSR would (#GP); 26.7: exit reason 0x80000022, qualification =
    # the entry number from 1; KVM_EXIT_FAIL_ENTRY, QEMU stops the VM; the host survives
    host, vm, _ = make("patch")
    other = host.create_vm(design="patch", memory_pages=64)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_DS_AREA, NONCANONICAL)            # accepted
    assert v.rdmsr(M.MSR_IA32_DS_AREA) == NONCANONICAL
    res = vm.run(HOT, 10_000)
    assert res.crashed and res.instructions == 0
    assert vm.entry_failure["reason"] == 0x80000022
    names = [g[0] for g in v.autoload.guest]
    assert vm.entry_failure["qualification"] == names.index(M.MSR_IA32_DS_AREA) + 1
    assert "0x80000022" in vm.crash_reason
    assert v.core.rdmsr(M.MSR_IA32_DS_AREA) == perf_hw.HOST_DS_AREA    # host state back
    assert vm.host_faults == []
    assert other.run(HOT, 1_000).instructions == 1_000                  # the host goes on


def test_noncanonical_ds_area_survives_a_guest_reset_under_patch():
    # kvm_pmu_reset does not clear ds_area (the patch): a reset guest fails the same way
    _, vm, _ = make("patch")
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_DS_AREA, NONCANONICAL)
    v.reset()
    assert v.pmu.ds_area == NONCANONICAL
    assert vm.run(HOT, 1_000).crashed and vm.entry_failure["reason"] == 0x80000022


@pytest.mark.parametrize("design,cpu", [("fixed", "silvermont"), ("icelake", "icelake")])
def test_noncanonical_ds_area_is_gp_under_fixed_and_icelake(design, cpu):
    # upstream intel_pmu_set_msr: #GP if is_noncanonical_msr_address (8183a538cd95, FACTS c.4)
    _, vm, _ = make(design, cpu=cpu)
    v = vm.vcpus[0]
    with pytest.raises(pl.GuestFault) as e:
        v.wrmsr(M.MSR_IA32_DS_AREA, NONCANONICAL)
    assert e.value.vector == "#GP"
    assert not vm.run(HOT, 1_000).crashed and vm.entry_failure is None
