"""Bugs the fuzz campaigns found: regression tests, and strict xfails for the open ones.

A known bug is a strict xfail test here, declared with :func:`known_bug`,
which also names the fuzz violation signatures it causes: the CI state
machines of tests/test_fuzz.py tolerate exactly those (:data:`TOLERATED`)
until the fix lands, the strict xfail turns into a failure, and the marker
(with its signatures) goes. ``python -m pebslab.fuzz`` tolerates nothing:
it reports them as violations. Expected values come from the patch,
FACTS.md and the SDM, not from what the code printed.
"""

from __future__ import annotations

import contextlib
import signal

import pytest

import pebslab as pl
from pebslab import scenarios as S
from pebslab.fuzz import _targets as T
from pebslab.hw import msr as M

HOT = pl.workloads.hot_loop()

#: fuzz violation signatures of the open bugs (filled by @known_bug)
TOLERATED: set[str] = set()


def known_bug(*signatures: str, reason: str):
    """Mark a test as the strict xfail of an open bug whose fuzz signatures CI tolerates."""
    TOLERATED.update(signatures)
    return pytest.mark.xfail(strict=True, reason=reason)


def make(design="patch", cpu="silvermont", frames=2048, pages=512, cpuid=None):
    host = pl.Host(cpu=cpu, frames=frames, seed=0)
    vm = host.create_vm(design=design, memory_pages=pages, cpuid=cpuid)
    return host, vm, pl.GuestKernel(vm)


def only_modeled_faults(fn):
    """Run a guest instruction; anything but GuestFault('#GP') fails the test."""
    try:
        fn()
    except pl.GuestFault as e:
        assert e.vector == "#GP"
        return "#GP"
    return "ok"


# =============================================================================
# open bugs
# =============================================================================

def test_icelake_fixed_counter_3_is_a_gp_not_an_indexerror():
    """Issue 9 item 1 (found by the MSR sweep): KVM exposes at most the 3 fixed counters it backs."""
    _, vm, _ = make("icelake", cpu="icelake")
    v = vm.vcpus[0]
    # the guest programs fixed counter 3: both writes #GP (bit 15:12 and bit 35 are reserved)
    outcomes = [only_modeled_faults(lambda: v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB000)),
                only_modeled_faults(lambda: v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 35))]
    # what KVM can back: fixed_pmc_events[] has three entries (the patch's pmu.c);
    # upstream caps num_counters_fixed at KVM_PMC_MAX_FIXED (3)
    assert outcomes == ["#GP", "#GP"]
    assert only_modeled_faults(lambda: v.rdmsr(M.MSR_CORE_PERF_FIXED_CTR3)) == "#GP"
    assert vm.cpuid.pmu()["num_counters_fixed"] <= 3


def test_fixed_pebs_enable_refuses_a_load_latency_bit_silvermont_lacks():
    """Found by the MSR sweep: Silvermont has no load-latency facility (FACTS g.3)."""
    _, vm, guest = make("fixed")
    S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)   # pinned: PEBS_ENABLE = 1
    with pytest.raises(pl.GuestFault):
        vm.vcpus[0].wrmsr(M.MSR_IA32_PEBS_ENABLE, 1 | 1 << 32)


def test_icelake_adaptive_bits_need_pebs_baseline():
    """Found by the MSR sweep: intel_pmu_refresh frees the adaptive bits only with BASELINE (FACTS b.5)."""
    nopebs = pl.cpuid.default("icelake").without("DS", "DTES64", "PDCM")
    _, vm, _ = make("icelake", cpu="icelake", cpuid=nopebs)
    v = vm.vcpus[0]
    assert only_modeled_faults(lambda: v.rdmsr(M.MSR_IA32_PERF_CAPABILITIES)) == "#GP"
    with pytest.raises(pl.GuestFault):
        v.wrmsr(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0, adaptive=True))
    with pytest.raises(pl.GuestFault):
        v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB | M.ICL_FIXED_0_ADAPTIVE)


@pytest.mark.skipif(not T.has("start_dirty_logging", "get_dirty_log"),
                    reason="the migration module is not available")
def test_a_page_pinned_during_dirty_logging_is_reported_dirty():
    """Found by `make fuzz` (seed 0, campaign 433): gfn_to_pfn faulting a page in while logging reports it dirty."""
    host, vm, guest = make("review")
    S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)           # unpin
    host.reclaim(1 << 20)                          # the buffer goes to swap
    T.MIG.start_dirty_logging(vm)
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)           # re-pin: gfn_to_pfn faults it back in
    res = vm.run(HOT, 5_000)
    rows = vm.trace.rows("PEBS_WRITE")
    written = {int(vm.host_mm.gfn[r["frame"]]) for r in rows}
    if res.crashed:     # write-protected pinned memory: the patch's limitation, not a loss
        return
    assert written and written <= set(T.MIG.get_dirty_log(vm))


@pytest.mark.parametrize("design,cpu,pebs", [("patch", "silvermont", True),
                                             ("review", "haswell", False)])
def test_misc_enable_read_never_faults_and_bit_12_tells_whether_pebs_exists(design, cpu, pebs):
    """Issue 9: real KVM always emulates MISC_ENABLE; bit 12 PEBS_UNAVAIL (FACTS c.4)."""
    _, vm, _ = make(design, cpu=cpu)
    value = vm.vcpus[0].rdmsr(M.MSR_IA32_MISC_ENABLE)
    assert bool(value & M.MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL) is not pebs


# =============================================================================
# regressions of fixed bugs (and the open ones found before)
# =============================================================================

@contextlib.contextmanager
def deadline(seconds):
    """Turn a hang into a TimeoutError (so a hanging xfail cannot stall the suite)."""
    def fire(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    hung = False
    try:
        yield
    except TimeoutError:
        hung = True         # re-raised below without the interrupted frames (one of
    finally:                # them has no line number, which pytest cannot render)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if hung:
        raise AssertionError(f"still running after {seconds} s: the host hung") from None


def test_fixed_pebs_enable_0_stops_pebs_before_dropping_the_pins():
    host, vm, guest = make("fixed")
    S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)
    vm.run(HOT, 5_000)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)        # the guest turns PEBS off (counter still on)
    assert vm.kvm.pmu.pinned_pages == []
    writes = len(vm.trace.of("PEBS_WRITE"))
    host.reclaim(1 << 20)
    res = vm.run(HOT, 20_000)
    # PEBS_ENABLE = 0 means no more records (SDM); nothing unpinned is written
    assert len(vm.trace.of("PEBS_WRITE")) == writes
    assert not res.crashed


def test_fixed_refuses_a_ds_area_it_cannot_pin_while_pebs_is_enabled():
    host, vm, guest = make("fixed")
    S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)
    ds2, buf2 = guest.mm.alloc(1), guest.mm.alloc(40)       # 41 pages > pin_limit 33
    guest.write(ds2, pl.pebs.DebugStore(
        pebs_buffer_base=buf2, pebs_index=buf2, pebs_absolute_maximum=buf2 + 40 * 4096,
        pebs_interrupt_threshold=buf2 + 192,
        pebs_event_reset=((-97) & ((1 << 48) - 1),) + (0,) * 11).to_bytes())
    # a PEBS_ENABLE write with this DS area is refused (pin_failure="gp"); a DS_AREA
    # write while PEBS runs must be refused too, or leave every touched page pinned
    try:
        vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, ds2)
    except pl.GuestFault:
        pass
    host.reclaim(1 << 20)
    assert not vm.run(HOT, 20_000).crashed


def test_fixed_survives_a_context_switch_then_reclaim():
    """Issue 9 item 10: under `fixed` a CR3 load while PEBS is on exits and KVM re-pins."""
    host, vm, guest = make("fixed")
    S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)
    # a second address space sharing the kernel half (how Linux builds process page
    # tables): a copy of the PML4 in a fresh page
    pml4 = guest.mm.alloc_phys(1)
    vm.phys.write(pml4, vm.phys.read(guest.mm.cr3, 4096))
    vm.vcpus[0].load_cr3(pml4)
    host.reclaim(1 << 20)
    assert not vm.run(HOT, 20_000).crashed


def test_fixed_refuses_a_huge_pebs_buffer_without_hanging():
    host, vm, guest = make("fixed")
    st = S.manual_pebs(guest, buf_pages=2)
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)
    guest.write(st.ds + pl.pebs.DS_OFF_PEBS_ABS_MAX, ((1 << 64) - 1).to_bytes(8, "little"))
    with deadline(3):
        with pytest.raises(pl.GuestFault):     # more than pin_limit pages: refused
            v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)


def test_a_page_fault_in_the_guest_pmi_handler_crashes_the_guest_not_python():
    host, vm, guest = make("patch")
    st = S.manual_pebs(guest, buf_pages=4, threshold_records=30, period=97, event=0x00C0)
    vm.run(HOT, 26 * 97)                 # 26 records: pebs_index is in the second page
    assert st.debug_store().pebs_index - st.buffer > 4096
    guest.mm.unmap(st.buffer)            # the guest unmaps the start of its own buffer
    res = vm.run(HOT, 2_000)             # the PMI handler reads from the buffer base
    assert res.crashed and vm.crashed and "PMI handler" in vm.crash_reason
    assert len(vm.trace.of("GUEST_CRASH")) == 1


def test_icelake_full_width_counter_alias_exists_when_fw_writes_is_advertised():
    _, vm, guest = make("icelake", cpu="icelake")
    v = vm.vcpus[0]
    assert v.rdmsr(M.MSR_IA32_PERF_CAPABILITIES) & M.PERF_CAP_FW_WRITES
    v.wrmsr(M.MSR_IA32_PMC0, 0x800000000001)           # bits 47:0, no sign extension
    assert v.rdmsr(M.MSR_IA32_PMC0) == 0x800000000001
    assert v.rdmsr(M.MSR_IA32_PERFCTR0) == 0x800000000001
    with pytest.raises(pl.GuestFault):                  # beyond the 48-bit width: #GP
        v.wrmsr(M.MSR_IA32_PMC0, 1 << 48)


def test_icelake_fixed_counters_are_written_full_width():
    _, vm, _ = make("icelake", cpu="icelake")
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR0, 0x800000000001)
    assert v.rdmsr(M.MSR_CORE_PERF_FIXED_CTR0) == 0x800000000001


def test_icelake_guest_perf_stat_counts():
    # with FW_WRITES Linux presets counters with (-max_period) & mask through 0x4c1 and
    # the fixed counters (max_period = 2**47 - 1): both must take the full 48 bits
    _, vm, guest = make("icelake", cpu="icelake")
    c = guest.perf.stat(["instructions", "cycles", "branches"])
    vm.run(HOT, 10_000)
    assert c.read()["instructions"] == 10_000


def test_patch_fixed_counter_writes_are_sign_extended_as_in_2014():
    # 2014 pmu.c sign-extended guest writes to GP *and* fixed counters from bit 31
    _, vm, _ = make("patch")
    v = vm.vcpus[0]
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR0, 0x800000000001)
    assert v.rdmsr(M.MSR_CORE_PERF_FIXED_CTR0) == 1
    v.wrmsr(M.MSR_CORE_PERF_FIXED_CTR0, 0xFFFFFFFF)
    assert v.rdmsr(M.MSR_CORE_PERF_FIXED_CTR0) == (1 << 48) - 1


def test_icelake_in_txcp_only_on_counter_2():
    _, vm, _ = make("icelake", cpu="icelake")
    v = vm.vcpus[0]
    sel = M.encode_eventsel(0x3C, 0, in_txcp=True)
    v.wrmsr(M.MSR_P6_EVNTSEL0 + 2, sel)                 # FACTS b.2: counter 2 only
    with pytest.raises(pl.GuestFault):
        v.wrmsr(M.MSR_P6_EVNTSEL0, sel)


def test_a_migrated_guest_keeps_profiling_on_the_destination():
    """Issue 9 item 10: GuestKernel.attach moves the guest kernel to the destination VM."""
    host, vm, guest = make("fixed")
    S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)
    vm.run(HOT, 5_000)
    dest = pl.Host(cpu="silvermont", frames=2048, seed=1)
    new = T.MIG.restore_state(T.MIG.save_state(vm), dest)
    vm.destroy()
    guest.attach(new)
    res = new.run(HOT, 5_000)
    assert res.pmis_injected > 0 and not res.crashed


@pytest.mark.parametrize("design,cpu", [("fixed", "silvermont"), ("icelake", "icelake")])
def test_guest_ds_area_0_is_what_the_pebs_assist_uses(design, cpu):
    # with DS_AREA = 0 the assist reads the DS fields at 0x20.. of the *guest's* address
    # space (a self-inflicted page fault), never at the host's DS_AREA; `fixed` refuses
    # the write outright because it cannot pin a DS area at 0 while PEBS is on
    _, vm, guest = make(design, cpu=cpu)
    S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)
    vm.run(HOT, 500)
    if design == "fixed":
        with pytest.raises(pl.GuestFault):
            vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, 0)
        return
    vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, 0)
    vm.run(HOT, 2_000)
    faults = vm.trace.rows("PEBS_FAULT")
    assert faults and all(f["gva"] < 4096 for f in faults)


def test_a_vm_destroyed_while_dirty_logging_is_freed():
    """The dirty log is an object of the VM (kvm/dirty_log.py), no swapped methods: no leak."""
    import gc
    import weakref
    host = pl.Host(frames=512)
    vm = host.create_vm(design="patch", memory_pages=64)
    T.MIG.start_dirty_logging(vm)
    vm.destroy()
    ref = weakref.ref(vm)
    del vm
    gc.collect()
    assert ref() is None
