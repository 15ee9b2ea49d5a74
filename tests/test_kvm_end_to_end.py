"""`perf record` in a KVM guest, end to end, through the patch.

The guest's own perf driver (pebslab.guest.perf) programs the vPMU through
intercepted MSRs; KVM backs the counter with a host perf event, pins the DS
area and buffer, switches DS_AREA / PEBS_ENABLE / GLOBAL_CTRL at entry and
exit; the CPU writes records into guest memory; the host's PMI handler turns
bit 62 into an injected PMI; the guest drains. Expected IPs come from the
workload arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab.hw.models import SKID_MAX, SKID_MIN

W = pl.workloads.hot_loop()
HOT = int(np.flatnonzero(W.llc_miss)[0])
POS = {int(ip): i for i, ip in enumerate(W.ip)}
EVENT = "MEM_UOPS_RETIRED.L2_MISS_LOADS"   # only the hot load produces it (Silvermont)
PASSES = 600
PERIOD = 5


def record_in_guest(modifier, design="patch", seed=0):
    host = pl.Host(frames=4096, seed=seed)
    vm = host.create_vm(design=design, memory_pages=512)
    guest = pl.GuestKernel(vm)
    rec = guest.perf.record(EVENT + modifier, period=PERIOD)
    res = vm.run(W, PASSES * len(W))
    return host, vm, rec, res


def offsets(samples):
    return np.array([(POS[int(ip)] - HOT) % len(W) for ip in samples["ip"]])


@pytest.mark.parametrize("design", ["patch", "review", "fixed"])
def test_pp_is_exact_p_is_one_later_and_plain_sampling_skids(design):
    _, vm_pp, rec_pp, res_pp = record_in_guest(":pp", design)
    _, vm_p, rec_p, _ = record_in_guest(":p", design)
    _, vm_n, rec_n, _ = record_in_guest("", design)
    s_pp, s_p, s_n = rec_pp.samples(), rec_p.samples(), rec_n.samples()
    n = PASSES // PERIOD
    assert len(s_pp) == n and len(s_p) == n
    assert (offsets(s_pp) == 0).all()                     # the eventing instruction
    assert (offsets(s_p) == 1).all()                      # trap-like: the next one
    off = offsets(s_n)
    assert len(s_n) >= n - 1
    assert off.min() >= 1 + SKID_MIN and off.max() <= 1 + SKID_MAX
    assert len(set(off.tolist())) > 1                     # spread by skid
    assert not res_pp.crashed
    # PEBS ran through the real path: pins, autoload switching, injected PMIs
    assert vm_pp.kvm.pmu.num_pinned_pages > 0
    assert vm_pp.trace.of("PEBS_WRITE").size == n
    assert res_pp.pmis_injected == n                      # one record per PMI (threshold)
    assert vm_n.trace.of("PEBS_WRITE").size == 0


def test_exits_cost_guest_time():
    _, vm, rec, res = record_in_guest(":pp")
    assert res.exits["MSR_READ"] > 0 and res.exits["MSR_WRITE"] > 0
    total = int(W.cycles.sum()) * PASSES              # the workload's own cycles
    overhead = res.guest_cycles - total
    # every injected PMI costs at least an injection plus the handler's MSR exits
    per_pmi = vm.costs.pmi_inject + 2 * (vm.costs.vmexit + vm.costs.msr_emulation)
    assert overhead >= res.pmis_injected * per_pmi


def test_review_guest_without_pebs_cpuid_records_without_pebs():
    cpuid = pl.cpuid.default("silvermont").without("PDCM", "DS", "DTES64")
    host = pl.Host(frames=2048)
    vm = host.create_vm(design="review", memory_pages=256, cpuid=cpuid)
    guest = pl.GuestKernel(vm)
    with pytest.raises(ValueError):
        guest.perf.record(EVENT + ":pp", period=PERIOD)
    rec = guest.perf.record(EVENT, period=PERIOD)
    vm.run(W, 200 * len(W))
    assert len(rec.samples()) >= 200 // PERIOD - 1
    assert vm.kvm.pmu.num_pinned_pages == 0


def test_destroy_after_recording_returns_all_frames():
    host = pl.Host(frames=4096)
    ref0 = host.mm.refcount.copy()
    vm = host.create_vm(design="patch", memory_pages=512)
    guest = pl.GuestKernel(vm)
    guest.perf.record(EVENT + ":pp", period=PERIOD)
    vm.run(W, 100 * len(W))
    assert vm.destroy() == []
    assert np.array_equal(host.mm.refcount, ref0)
    host.mm.check_invariants()


def test_deterministic_samples_and_trace():
    a = record_in_guest("", seed=3)
    b = record_in_guest("", seed=3)
    c = record_in_guest("", seed=4)
    assert a[1].trace.digest() == b[1].trace.digest()
    assert np.array_equal(a[2].samples(), b[2].samples())
    assert not np.array_equal(a[2].samples()["ip"], c[2].samples()["ip"])
