"""The guest kernel's era (issue 9 item 7): a Linux 3.15 perf driver beside today's.

Expected behaviour from the sources (FACTS g.2 and the 3.x perf driver):

* v3.15 arch/x86/kernel/cpu/perf_event_intel.c intel_pmu_handle_irq():
  intel_pmu_disable_all() -> intel_pmu_pebs_disable_all() writes
  PEBS_ENABLE = 0 when a PEBS event is on; intel_pmu_enable_all(0) ->
  intel_pmu_pebs_enable_all() writes the value back at the end.
  6c1c07b33eb0 (v5.7) stopped both writes in the PMI path.
* v3.15 perf_event_intel_ds.c: PEBS_BUFFER_SIZE = PAGE_SIZE;
  alloc_pebs_buffer() sets thresh = 1 (one record); no reset value, so
  __intel_pmu_pebs_event() re-arms the counter (intel_pmu_save_and_restart);
  intel_ds_init() knows PEBS formats 0, 1 and 2 only.
* The 2014 patch (kvm_pmu_set_msr, PEBS_ENABLE): a new value releases every
  pin (kvm_pmu_release_pin) and, if non-zero, pins again (kvm_pmu_pebs_pin).
"""

from __future__ import annotations

import numpy as np
import pytest

import pebslab as pl
from pebslab.baremetal import BareMetal
from pebslab.guest import perf as gp
from pebslab.guest.kernel import GuestKernel
from pebslab.hw import msr as M
from pebslab.hw import pebs as P
from pebslab.trace import KIND_ID

W = pl.workloads.hot_loop()
HOT_IP = int(W.ip[int(np.flatnonzero(W.llc_miss)[0])])
EVENT = "MEM_UOPS_RETIRED.L2_MISS_LOADS:pp"        # Silvermont, PMC0
PERIOD = 3
PASSES = 120


def kvm_guest(linux, design="patch"):
    host = pl.Host(cpu="silvermont", frames=2048, seed=0)
    vm = host.create_vm(design=design, memory_pages=512)
    guest = GuestKernel(vm, linux=linux)
    rec = guest.perf.record(EVENT, period=PERIOD)
    return host, vm, guest, rec


def _per_pmi(trace):
    """Split the trace into one slice per injected PMI (from one PMI_INJECT to the next)."""
    a = trace.array
    starts = np.flatnonzero(a["kind"] == KIND_ID["PMI_INJECT"])
    ends = list(starts[1:]) + [len(a)]
    return [a[s:e] for s, e in zip(starts, ends)]


def _pebs_enable_writes(rows):
    return rows[(rows["kind"] == KIND_ID["MSR_WRITE"]) & (rows["msr"] == M.MSR_IA32_PEBS_ENABLE)]


# --------------------------------------------------------------------------- the PMI handler

def test_3_15_pmi_writes_pebs_enable_twice_and_repins_the_same_pages_under_patch():
    host, vm, guest, rec = kvm_guest("3.15")
    pins = list(vm.kvm.pmu.pinned_pages)
    assert len(pins) == 2                       # the DS page and the one buffer page
    res = vm.run(W, PASSES * len(W))
    assert not res.crashed and res.pmis_injected == PASSES // PERIOD
    slices = _per_pmi(vm.trace)
    assert len(slices) == res.pmis_injected
    for rows in slices:
        writes = _pebs_enable_writes(rows)
        assert [int(v) for v in writes["value"]] == [0, 1]     # off on entry, back at the end
        exits = rows[(rows["kind"] == KIND_ID["VMEXIT"]) & (rows["msr"] == M.MSR_IA32_PEBS_ENABLE)]
        assert len(exits) == 2
        unpin = rows[rows["kind"] == KIND_ID["UNPIN"]]
        pin = rows[rows["kind"] == KIND_ID["PIN"]]
        assert sorted(unpin["frame"].tolist()) == sorted(pins)      # every pin released once
        assert pin["frame"].tolist() == pins                         # the same pages, again
        first, second = np.flatnonzero(
            (rows["kind"] == KIND_ID["MSR_WRITE"]) & (rows["msr"] == M.MSR_IA32_PEBS_ENABLE))
        unpin_at = np.flatnonzero(rows["kind"] == KIND_ID["UNPIN"])
        pin_at = np.flatnonzero(rows["kind"] == KIND_ID["PIN"])
        assert unpin_at.max() < first < pin_at.min() and pin_at.max() < second
    assert vm.kvm.pmu.pinned_pages == pins
    assert all(host.mm.ref(f) == 2 for f in pins)          # the mapping + one pin, balanced
    samples = rec.samples()
    assert len(samples) == res.pmis_injected and set(samples["ip"].tolist()) == {HOT_IP}


def test_current_guest_pmi_leaves_pebs_enable_and_pins_alone():
    host, vm, guest, rec = kvm_guest("current")
    pins = list(vm.kvm.pmu.pinned_pages)
    n_pin, n_unpin = len(vm.trace.of("PIN")), len(vm.trace.of("UNPIN"))
    res = vm.run(W, PASSES * len(W))
    assert res.pmis_injected > 0
    for rows in _per_pmi(vm.trace):
        assert len(_pebs_enable_writes(rows)) == 0
    assert len(vm.trace.of("PIN")) == n_pin and len(vm.trace.of("UNPIN")) == n_unpin
    assert vm.kvm.pmu.pinned_pages == pins


def test_per_pmi_cost_difference_is_the_exits_plus_the_repinning():
    """Guest cycles per PMI: 3.15 minus current = its extra MSR exits + unpin + re-pin."""
    out = {}
    for linux in ("current", "3.15"):
        host, vm, guest, rec = kvm_guest(linux)
        res = vm.run(W, PASSES * len(W))
        out[linux] = (res, len(vm.kvm.pmu.pinned_pages), vm)
    (cur, _, vm_c), (old, npins, vm_o) = out["current"], out["3.15"]
    assert cur.pmis_injected == old.pmis_injected
    n = old.pmis_injected
    costs, pc = vm_o.costs, vm_o.pin_costs
    msr_exits = lambda r: r.exits.get("MSR_READ", 0) + r.exits.get("MSR_WRITE", 0)   # noqa: E731
    extra_exits = msr_exits(old) - msr_exits(cur)
    # two PEBS_ENABLE writes, plus intel_pmu_save_and_restart (counter read + write) per PMI
    assert extra_exits == 4 * n
    repin = npins * (pc.put_page + pc.guest_walk + pc.gfn_to_pfn + pc.get_page)
    expected = extra_exits * (costs.vmexit + costs.msr_emulation) + n * repin
    assert old.guest_cycles - cur.guest_cycles == expected
    pin_rows = vm_o.trace.of("PIN")
    assert set(pin_rows["cost"].tolist()) == {pc.guest_walk + pc.gfn_to_pfn + pc.get_page}
    assert set(vm_o.trace.of("UNPIN")["cost"].tolist()) == {pc.put_page}


def test_3_15_guest_on_fixed_also_repins_per_pmi_and_survives():
    host, vm, guest, rec = kvm_guest("3.15", design="fixed")
    res = vm.run(W, PASSES * len(W))
    assert not res.crashed and res.pmis_injected == PASSES // PERIOD
    for rows in _per_pmi(vm.trace):
        assert len(_pebs_enable_writes(rows)) == 2


# --------------------------------------------------------------------------- buffer and threshold

def test_3_15_buffer_is_one_page_with_a_one_record_threshold():
    size = P.record_size(2)                      # Silvermont: format 2, 192 bytes (FACTS g.3)
    for linux, pages in (("3.15", 1), ("current", gp.PEBS_BUFFER_PAGES)):
        m = BareMetal("silvermont")
        k = GuestKernel(m, linux=linux)
        k.perf.record(EVENT, period=PERIOD)
        ds = k.perf.read_ds()
        base = ds.pebs_buffer_base
        assert k.perf.pebs_buffer_size == pages * 4096
        assert ds.pebs_absolute_maximum == base + size * (pages * 4096 // size)
        assert ds.pebs_interrupt_threshold == base + size
    assert gp.PEBS_BUFFER_SIZE_3_15 == 4096


def test_3_15_has_no_auto_reload_and_rearms_the_counter_in_the_drain():
    m = BareMetal("silvermont")
    k = GuestKernel(m, linux="3.15")
    rec = k.perf.record(EVENT, period=PERIOD)
    ds = k.perf.read_ds()
    assert ds.pebs_event_reset[0] == 0                 # no reset value
    res = m.run(W, PASSES * len(W))
    samples = rec.samples()
    assert len(samples) == PASSES // PERIOD == k.perf.pmi_count
    assert set(samples["ip"].tolist()) == {HOT_IP}
    # one counter write per PMI (intel_pmu_save_and_restart), beyond the one at record()
    writes = m.trace.of("MSR_WRITE")
    assert int(np.count_nonzero(writes["msr"] == M.MSR_IA32_PERFCTR0)) == 1 + k.perf.pmi_count


@pytest.mark.parametrize("cpu,fmt", [("skylake", 3), ("icelake", 4)])
def test_3_15_knows_pebs_formats_0_to_2_only(cpu, fmt):
    old = GuestKernel(BareMetal(cpu), linux="3.15").perf.probe()
    new = GuestKernel(BareMetal(cpu)).perf.probe()
    assert old.pebs_format == new.pebs_format == fmt
    assert new.has_pebs and not old.has_pebs
    assert not old.pebs_baseline
    assert f"PEBS format {fmt} unknown" in old.pebs_why


def test_3_15_refuses_large_pebs():
    k = GuestKernel(BareMetal("silvermont"), linux="3.15")
    with pytest.raises(ValueError, match="large_pebs must be False on the 3.15 guest"):
        k.perf.record(EVENT, period=PERIOD, large_pebs=True)


# --------------------------------------------------------------------------- the argument

def test_default_era_is_current():
    k = GuestKernel(BareMetal("silvermont"))
    assert k.linux == "current" and k.perf.linux == "current"
    assert "linux='current'" in repr(k)


@pytest.mark.parametrize("bad,exc,msg", [
    (3.15, TypeError, "linux must be a str, one of 'current', '3.15'; got float 3.15"),
    ("5.7", ValueError, "linux must be one of 'current', '3.15'; got '5.7'"),
])
def test_bad_linux_argument(bad, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(".", r"\.")):
        GuestKernel(BareMetal("silvermont"), linux=bad)
