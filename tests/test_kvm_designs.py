"""KVM with the PEBS patch: each design's behaviour on the same scenarios.

Expected behaviour comes from the patch text (shared seed) and FACTS b/c/e.
The MSR rules are in test_kvm_pmu.py, pinning in test_kvm_pebs_pin.py, the
VMX MSR switching in test_kvm_vmx.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.hw import msr as M
from pebslab.kvm import pebs_pin
from kvm_support import HOT, HOT_IP, NEXT_IP, baseline, make  # noqa: F401  (tests/ is on sys.path)


# --------------------------------------------------------------------------- icelake

def test_icelake_design_pins_nothing_and_survives_reclaim_on_icelake_host():
    host, vm, guest = make("icelake", cpu="icelake", frames=4096)
    st = S.manual_pebs(guest, event=0x20D1)      # MEM_LOAD_RETIRED.L3_MISS
    assert vm.kvm.pmu.pinned_pages == []
    host.reclaim(10_000)
    res = vm.run(HOT, 5_000_000)
    assert not res.crashed
    assert res.exits.get("EPT_VIOLATION", 0) > 0
    assert st.samples and set(st.sample_ips()) == {HOT_IP}


def test_icelake_design_on_silvermont_exposes_no_pebs():
    _, vm, _ = make("icelake", cpu="silvermont")
    with pytest.raises(pl.GuestFault):
        vm.vcpus[0].rdmsr(M.MSR_IA32_PEBS_ENABLE)


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_trace_different_seed_differs_only_in_skid():
    def run(seed):
        _, vm, guest = make("patch", seed=seed)
        v = vm.vcpus[0]
        hits = []
        v.set_pmi_handler(lambda vc, ip, cpl: (hits.append(ip),
                                               vc.wrmsr(M.MSR_IA32_PERFCTR0, (-5003) & 0xFFFFFFFF),
                                               vc.wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 1)))
        v.wrmsr(M.MSR_IA32_PERFCTR0, (-5003) & 0xFFFFFFFF)
        v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0, int=True))
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
        vm.run(HOT, 300_000)
        return vm.trace.digest(), hits
    a, ha = run(1)
    b, hb = run(1)
    c, hc = run(2)
    assert a == b and ha == hb
    assert ha != hc and len(set(ha)) > 1
