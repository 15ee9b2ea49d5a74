"""Tests for pebslab.vmm.migrate (save/restore of the vPMU + PEBS state) and pebslab.kvm.dirty_log.

The guest programs PEBS by hand through vcpu.wrmsr (as a profiler would):
DS area in one page, a 64 KiB buffer, PEBS on PMC0 for the hot loop's
LLC-missing load, a PMI after every record. Expected values come from the
patch and FACTS.md: PEBS records of format 2 are 192 bytes, Silvermont has
PEBS only on PMC0 and cannot take a fault in a PEBS assist, Ice Lake server
has EPT-friendly PEBS (FACTS a.7, c.2); the patch pins at most 17 pages.
"""

from dataclasses import replace

import numpy as np
import pytest

import pebslab as pl
from pebslab.guest.mm import GuestMM
from pebslab.host.mm import EPT_R, EPT_W
from pebslab.hw import core as C
from pebslab.hw import msr as M
from pebslab.hw.models import get_model
from pebslab.kvm import dirty_log as DL
from pebslab.vmm import migrate as MG

PERIOD = 50                 # one LLC-missing load per 64-instruction loop: a record every ~3200
RUN = 20_000                # instructions per run: ~6 records
PAGES = 256
WORKLOAD = pl.workloads.hot_loop()
HOT_IP = int(WORKLOAD.ip[37])

# PEBS memory events: Silvermont MEM_UOPS_RETIRED.L2_MISS_LOADS, Skylake-family
# MEM_LOAD_RETIRED.L3_MISS (the Ice Lake model uses the Skylake table)
EVENT = {"silvermont": (0x04, 0x04), "icelake": (0xD1, 0x20)}


class Guest:
    """Guest software that programs PEBS through WRMSR and drains records in its PMI handler."""

    def __init__(self, vm, period=PERIOD):
        self.vm = vm
        self.fmt = vm.cpu.pebs_format
        self.rsize = vm.cpu.pebs_record_size
        self.period = period
        self.mm = GuestMM(vm.phys)
        self.samples = []
        v = vm.vcpus[0]
        v.load_cr3(self.mm.cr3)
        self.ds, self.buf = self.new_buffer()
        v.set_pmi_handler(self.handler)
        v.wrmsr(M.MSR_IA32_DS_AREA, self.ds)
        v.wrmsr(M.MSR_IA32_PERFCTR0, (-period) & 0xFFFFFFFF)
        v.wrmsr(M.MSR_P6_EVNTSEL0, pl.msr.encode_eventsel(*EVENT[vm.cpu.name]))
        v.wrmsr(M.MSR_IA32_PEBS_ENABLE, 1)
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)

    def new_buffer(self):
        ds, buf = self.mm.alloc(1), self.mm.alloc(16)
        n = 65536 // self.rsize
        self.mm.write(ds, pl.pebs.DebugStore(
            pebs_buffer_base=buf, pebs_index=buf, pebs_absolute_maximum=buf + n * self.rsize,
            pebs_interrupt_threshold=buf + self.rsize,
            pebs_event_reset=((-self.period) & (2**48 - 1),) + (0,) * 11).to_bytes())
        return ds, buf

    def handler(self, vcpu, ip, cpl):
        status = vcpu.rdmsr(M.MSR_CORE_PERF_GLOBAL_STATUS)
        d = pl.pebs.DebugStore.from_bytes(self.mm.read(self.ds, 160))
        raw = self.mm.read(self.buf, d.pebs_index - d.pebs_buffer_base)
        recs = pl.pebs.decode(raw, self.fmt)
        if self.fmt >= 4:
            recs = recs["basic"]            # basic group: its ip is the eventing IP
        self.samples.extend(recs["real_ip" if self.fmt in (2, 3) else "ip"].tolist())
        self.mm.write(self.ds + 0x28, self.buf.to_bytes(8, "little"))
        vcpu.wrmsr(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, status)

    def moved_to(self, vm):
        """The guest kernel now runs on ``vm`` (its memory came along)."""
        self.vm = vm
        self.mm.phys = vm.phys

    def run(self, n=RUN):
        before = len(self.samples)
        res = self.vm.run(WORKLOAD, n)
        return res, self.samples[before:]


def make(cpu="silvermont", design="patch", frames=1024):
    host = pl.Host(cpu=cpu, frames=frames)
    base = host.mm.refcount.copy()
    vm = host.create_vm(design=design, memory_pages=PAGES)
    g = Guest(vm)
    res, samples = g.run()
    assert not res.crashed and samples and set(samples) == {HOT_IP}
    return host, base, vm, g


def back_to_baseline(host, base):
    host.mm.check_invariants()
    return bool((host.mm.refcount == base).all())


def pinned_gfns(vm):
    return sorted(int(vm.host_mm.gfn[h]) for h in vm.vcpus[0].pmu.pinned_pages)


# ----------------------------------------------------------------------------
# save_state
# ----------------------------------------------------------------------------

def test_save_state_has_every_pmu_msr_the_guest_sees_and_the_source_facts():
    host, _, vm, g = make()
    v = vm.vcpus[0]
    st = MG.save_state(vm)
    assert st.vcpus[0].tsc == v.core.tsc
    msrs = st.vcpus[0].msrs
    # Silvermont: 2 GP, 3 fixed (KVM caps leaf 0xA at version 2); the patch adds 3 MSRs
    assert list(msrs) == [0xC1, 0xC2, 0x186, 0x187, 0x309, 0x30A, 0x30B, 0x345,
                          0x38D, 0x38E, 0x38F, 0x390, 0x3F1, 0x600]
    assert M.MSR_PEBS_DATA_CFG not in msrs          # only designs that emulate it
    assert msrs[M.MSR_IA32_DS_AREA] == g.ds
    assert msrs[M.MSR_IA32_PEBS_ENABLE] == 1
    assert msrs[M.MSR_CORE_PERF_GLOBAL_CTRL] == 1
    assert msrs[M.MSR_P6_EVNTSEL0] == pl.msr.encode_eventsel(0x04, 0x04)
    # counters are the guest's view (what RDMSR returns), not the host register
    assert msrs[M.MSR_IA32_PERFCTR0] == v.rdmsr(M.MSR_IA32_PERFCTR0)
    assert msrs[M.MSR_IA32_PERF_CAPABILITIES] >> 8 & 0xF == 2
    assert st.cpu.pebs_format == 2 and st.cpu.n_gp == 2 and st.cpu.n_fixed == 3
    assert st.cpu.width == 48
    assert st.cpu.perf_cap_pebs == get_model("silvermont").perf_capabilities & MG.PERF_CAP_PEBS_BITS
    assert st.design == "patch" and st.memory_pages == PAGES
    assert st.vcpus[0].cr3 == g.mm.cr3 and st.vcpus[0].rip == v.core.rip
    assert st.memory == vm.phys.read(0, PAGES * 4096)
    assert sorted(st.vcpus[0].pinned_gfns) == pinned_gfns(vm)
    assert vm.trace.of("MIGRATE").size == 1


def test_save_state_includes_pebs_data_cfg_where_the_design_emulates_it():
    host = pl.Host(cpu="icelake", frames=1024)
    vm = host.create_vm(design="icelake", memory_pages=PAGES)
    Guest(vm)
    assert M.MSR_PEBS_DATA_CFG in MG.save_state(vm, include_memory=False).vcpus[0].msrs


# ----------------------------------------------------------------------------
# restore: round trip and the MSR order problem
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("design,order", [("patch", "userspace"), ("patch", "ds_first"),
                                          ("patch", "pebs_first"), ("fixed", "userspace"),
                                          ("fixed", "ds_first")])
def test_round_trip_preserves_every_msr_the_guest_sees_and_memory(design, order):
    host, base, vm, g = make(design=design)
    dest = pl.Host(frames=1024)
    dbase = dest.mm.refcount.copy()
    st = MG.save_state(vm)
    new = MG.restore_state(st, dest, msr_order=order)
    st2 = MG.save_state(new)
    # KVM_GET_MSRS cannot tell the orders apart: every value comes back
    assert st2.vcpus[0].msrs == st.vcpus[0].msrs
    assert st2.memory == st.memory
    assert (st2.vcpus[0].rip, st2.vcpus[0].cr3, st2.vcpus[0].tsc) == \
        (st.vcpus[0].rip, st.vcpus[0].cr3, st.vcpus[0].tsc)
    assert new.workload is WORKLOAD and new.design.name == design
    kinds = [r["msr"] for r in new.trace.rows("MIGRATE") if r["msr"]]
    assert kinds.index(M.MSR_IA32_DS_AREA) < kinds.index(M.MSR_IA32_PEBS_ENABLE) \
        if order != "userspace" else kinds.index(M.MSR_IA32_PEBS_ENABLE) < kinds.index(
            M.MSR_IA32_DS_AREA)
    assert new.destroy() == [] and vm.destroy() == []
    assert back_to_baseline(host, base) and back_to_baseline(dest, dbase)


@pytest.mark.parametrize("design,order,fix", [("fixed", "userspace", None),
                                              ("fixed", "ds_first", None),
                                              ("patch", "pebs_first", None),
                                              ("patch", "userspace", True)])
def test_pebs_keeps_working_on_the_destination(design, order, fix):
    host, base, vm, g = make(design=design)
    dest = pl.Host(frames=1024)
    new = MG.restore_state(MG.save_state(vm), dest, msr_order=order, fix_order=fix)
    cov = new.restore_report["vcpus"][0]["final"]
    assert len(cov["needed"]) == 17 and cov["missing"] == []   # DS page + 16 buffer pages
    assert new.restore_report["vcpus"][0]["armed"] == {0: True}
    vm.destroy()
    g.moved_to(new)
    res, samples = g.run()
    assert not res.crashed
    assert len(samples) >= 5 and set(samples) == {HOT_IP}


def test_sorted_msr_list_under_patch_pins_nothing_and_loses_pebs():
    """PEBS_ENABLE (0x3F1) is restored before DS_AREA (0x600) and after GLOBAL_CTRL (0x38F)."""
    host, base, vm, g = make(design="patch")
    dest = pl.Host(frames=1024)
    new = MG.restore_state(MG.save_state(vm), dest, msr_order="userspace")
    rep = new.restore_report["vcpus"][0]
    # kvm_pmu_pebs_pin ran while ds_area was still 0: nothing could be pinned ...
    assert rep["at_pebs_enable"] == {"ds_area": 0, "pinned": []}
    assert any("Cannot pin ds area 0x0" in s for s in new.trace.info_of("NOTE"))
    # ... and the later DS_AREA write does not re-pin (the patch re-pins on PEBS_ENABLE only)
    assert rep["final"]["pinned"] == [] and len(rep["final"]["missing"]) == 17
    # GLOBAL_CTRL created the host event while pebs_enable was 0: no precise_ip
    assert rep["armed"] == {0: False}
    g.moved_to(new)
    res, samples = g.run()
    assert not res.crashed and samples == [] and res.pmis_injected == 0
    assert new.vcpus[0].rdmsr(M.MSR_IA32_PEBS_ENABLE) == 1      # the guest still believes


def test_ds_first_fixes_the_pin_but_not_the_counter_under_patch():
    host, base, vm, g = make(design="patch")
    dest = pl.Host(frames=1024)
    new = MG.restore_state(MG.save_state(vm), dest, msr_order="ds_first")
    rep = new.restore_report["vcpus"][0]
    assert rep["final"]["missing"] == [] and len(rep["final"]["pinned"]) == 17
    assert rep["armed"] == {0: False}
    g.moved_to(new)
    res, samples = g.run()
    assert samples == []


def test_unpinned_buffer_after_a_sorted_restore_crashes_the_guest_later():
    """The guest re-arms its counter (as perf does); the buffer was never pinned."""
    host, base, vm, g = make(design="patch")
    dest = pl.Host(frames=1024)
    new = MG.restore_state(MG.save_state(vm), dest, msr_order="userspace")
    g.moved_to(new)
    v = new.vcpus[0]
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 0)
    v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)            # now a precise event: PEBS is live
    assert MG.pebs_armed(v) == {0: True} and v.pmu.pinned_pages == []
    dest.reclaim(PAGES)                                  # memory pressure takes the buffer
    res, _ = g.run()
    assert res.crashed and "PEBS assist" in new.crash_reason
    assert new.destroy() == []


# ----------------------------------------------------------------------------
# compatibility
# ----------------------------------------------------------------------------

def test_same_model_is_compatible():
    host, base, vm, g = make()
    assert MG.check_compatible(MG.save_state(vm, include_memory=False), pl.Host()) == []


def test_skylake_destination_refused_for_a_different_pebs_format():
    host, base, vm, g = make()
    st = MG.save_state(vm)
    dest = pl.Host(cpu="skylake", frames=1024)
    free = dest.mm.free_count()
    reasons = MG.check_compatible(st, dest)
    fmt = [r for r in reasons if "PEBS format" in r]
    assert len(fmt) == 1 and "format 2" in fmt[0] and "format 3" in fmt[0]
    assert "192-byte" in fmt[0] and "200-byte" in fmt[0]      # FACTS a.2
    with pytest.raises(MG.MigrationError) as e:
        MG.restore_state(st, dest)
    assert e.value.reasons == reasons
    assert dest.vms == [] and dest.mm.free_count() == free   # nothing was created


def test_haswell_destination_cannot_virtualize_pebs_under_patch():
    host, base, vm, g = make()
    st = MG.save_state(vm)
    reasons = MG.check_compatible(st, pl.Host(cpu="haswell", frames=1024))
    assert any("PEBS_ENABLE=0x1 is active" in r and "haswell" in r and "'patch'" in r
               for r in reasons)
    assert any("DS, DTES64, PDCM" in r for r in reasons)            # CPUID would change
    assert any("0x0404" in r and "not a PEBS event on haswell" in r for r in reasons)
    assert not any("PEBS format" in r for r in reasons)             # both are format 2


def test_fewer_and_narrower_counters_refused():
    host, base, vm, g = make()
    st = MG.save_state(vm, include_memory=False)
    small = replace(get_model("silvermont"), n_gp=1, n_fixed=2, width=40)
    reasons = MG.check_compatible(st, pl.Host(cpu=small, frames=1024))
    assert any("fewer GP counters" in r and "uses 2" in r for r in reasons)
    assert any("fewer fixed counters" in r for r in reasons)
    assert any("narrower counters" in r and "48 bits" in r for r in reasons)


def test_guest_without_pebs_migrates_to_a_host_without_pebs_virtualization():
    host = pl.Host(frames=1024)
    cpuid = pl.cpuid.default(host.cpu).without("PDCM", "DS", "DTES64")
    vm = host.create_vm(design="review", memory_pages=PAGES, cpuid=cpuid)
    st = MG.save_state(vm)
    assert M.MSR_IA32_PEBS_ENABLE not in st.vcpus[0].msrs
    dest = pl.Host(cpu="haswell", frames=1024)
    assert MG.check_compatible(st, dest) == []
    new = MG.restore_state(st, dest)
    assert MG.save_state(new).vcpus[0].msrs == st.vcpus[0].msrs


def test_bad_arguments_name_themselves():
    host, base, vm, g = make()
    st = MG.save_state(vm)
    with pytest.raises(ValueError, match="msr_order must be one of"):
        MG.restore_state(st, pl.Host(), msr_order="random")
    with pytest.raises(ValueError, match="design must be one of"):
        MG.restore_state(st, pl.Host(), design="v2")
    with pytest.raises(TypeError, match="state must be a VmState"):
        MG.restore_state({}, pl.Host())
    with pytest.raises(ValueError, match="dirty logging is not enabled"):
        DL.get_dirty_log(vm)


# ----------------------------------------------------------------------------
# dirty logging
# ----------------------------------------------------------------------------

def test_dirty_logging_crashes_a_pebs_guest_under_patch():
    host, base, vm, g = make(design="patch")
    pinned = pinned_gfns(vm)
    DL.start_dirty_logging(vm)
    assert all(not int(vm.ept[gfn]) & EPT_W for gfn in pinned)   # pinned, yet write-protected
    res, samples = g.run()
    assert res.crashed and samples == []
    assert "EPT violation" in vm.crash_reason and "cannot deliver faults" in vm.crash_reason
    fault = vm.trace.of("PEBS_FAULT")[-1]
    assert int(fault["gpa"]) >> 12 in pinned                       # the fault hit a pinned page
    DL.stop_dirty_logging(vm)
    assert vm.destroy() == [] and back_to_baseline(host, base)


def test_dirty_logging_under_fixed_skips_pinned_pages_and_reports_them_dirty():
    host, base, vm, g = make(design="fixed")
    pinned = pinned_gfns(vm)
    st = DL.start_dirty_logging(vm)
    ept = vm.ept
    present = [gfn for gfn in range(PAGES) if int(ept[gfn]) & EPT_R]
    assert all(int(ept[gfn]) & EPT_W for gfn in pinned)
    assert all(not int(ept[gfn]) & EPT_W for gfn in present if gfn not in pinned)
    for _ in range(2):
        res, samples = g.run()
        assert not res.crashed and samples and set(samples) == {HOT_IP}
        assert set(pinned) <= set(DL.get_dirty_log(vm))         # in every log
    assert st.faults == 0                                      # the CPU never hit a protection
    DL.stop_dirty_logging(vm)
    assert all(int(ept[gfn]) & EPT_W for gfn in present)
    assert "write" not in vm.phys.__dict__ and "handle_ept_violation" not in vm.__dict__
    assert "wrmsr" not in vm.vcpus[0].__dict__
    assert vm.destroy() == [] and back_to_baseline(host, base)


def test_a_pin_taken_while_logging_is_made_writable_under_fixed():
    host, base, vm, g = make(design="fixed")
    DL.start_dirty_logging(vm)
    g.ds, g.buf = g.new_buffer()                      # fresh pages: write-protected now
    vm.vcpus[0].wrmsr(M.MSR_IA32_DS_AREA, g.ds)       # `fixed` re-pins on a new DS_AREA
    new_pins = pinned_gfns(vm)
    assert all(int(vm.ept[gfn]) & EPT_W for gfn in new_pins)
    res, samples = g.run()
    assert not res.crashed and set(samples) == {HOT_IP}
    assert set(new_pins) <= set(DL.get_dirty_log(vm))


def test_guest_software_write_to_a_protected_page_takes_one_fault():
    host = pl.Host(frames=512)
    vm = host.create_vm(memory_pages=64)
    DL.start_dirty_logging(vm)
    exits = vm.exit_counts.get("EPT_VIOLATION", 0)
    vm.phys.write(0x5000 + 8, b"\x01\x02")
    vm.phys.write(0x5000 + 16, b"\x03")                # already writable: no second fault
    assert vm.exit_counts["EPT_VIOLATION"] == exits + 1
    assert vm.phys.read(0x5008, 2) == b"\x01\x02"
    assert any("gfn 0x5 dirty" in s for s in vm.trace.info_of("DIRTY_LOG"))
    assert DL.get_dirty_log(vm, clear=False) == [5]
    assert DL.get_dirty_log(vm) == [5]                 # clearing re-protects ...
    assert DL.get_dirty_log(vm) == []
    vm.phys.write(0x5FFF, b"\xaa\xbb")                 # ... and a write across two pages
    assert vm.exit_counts["EPT_VIOLATION"] == exits + 3
    assert DL.get_dirty_log(vm) == [5, 6]
    DL.stop_dirty_logging(vm)
    vm.phys.write(0x5000, b"\x00")
    assert vm.exit_counts["EPT_VIOLATION"] == exits + 3


def test_icelake_pebs_writes_dirty_pages_through_ept_exits_without_losing_records():
    host, base, vm, g = make(cpu="icelake", design="icelake")
    DL.start_dirty_logging(vm)
    exits = vm.exit_counts.get("EPT_VIOLATION", 0)
    ovf = vm.trace.of("OVERFLOW").size
    writes = vm.trace.of("PEBS_WRITE").size
    res, samples = g.run()
    assert not res.crashed and len(samples) >= 5 and set(samples) == {HOT_IP}
    assert vm.exit_counts["EPT_VIOLATION"] > exits
    # every overflow produced a record: the assist waited for the exit, nothing lost
    assert vm.trace.of("OVERFLOW").size - ovf == vm.trace.of("PEBS_WRITE").size - writes
    assert vm.trace.of("PEBS_DROP").size == 0
    ds_gfn = vm.vcpus[0].gva_to_gpa(g.ds) >> 12
    buf_gfn = vm.vcpus[0].gva_to_gpa(g.buf) >> 12
    dirty = DL.get_dirty_log(vm)
    assert ds_gfn in dirty and buf_gfn in dirty
    faults = [int(r["gpa"]) >> 12 for r in vm.trace.rows("VMEXIT") if r["info"] == "EPT_VIOLATION"]
    assert buf_gfn in faults                          # the PEBS assist itself exited
    DL.stop_dirty_logging(vm)
    assert vm.destroy() == [] and back_to_baseline(host, base)


# ----------------------------------------------------------------------------
# live migration
# ----------------------------------------------------------------------------

def test_live_migration_under_fixed_sends_pinned_pages_every_round():
    host, base, vm, g = make(design="fixed")
    dest = pl.Host(frames=1024)
    dbase = dest.mm.refcount.copy()
    pinned = pinned_gfns(vm)
    new, rep = MG.live_migrate(vm, dest, WORKLOAD, rounds=2, instructions_per_round=RUN)
    assert new is not None and not rep["crashed"] and rep["reasons"] == []
    assert rep["pages_sent"][0] == PAGES and len(rep["pages_sent"]) == 4
    assert all(set(pinned) <= set(d) for d in rep["dirty"])
    assert rep["memory_consistent"] and rep["stale_pages"] == []
    assert rep["source_destroyed"] and vm.destroyed
    g.moved_to(new)
    res, samples = g.run()
    assert not res.crashed and set(samples) == {HOT_IP}
    assert new.trace.of("MIGRATE").size > 0 and vm.trace.of("MIGRATE").size > 0
    assert new.destroy() == []
    assert back_to_baseline(host, base) and back_to_baseline(dest, dbase)


def test_live_migration_under_patch_crashes_the_source_guest():
    host, base, vm, g = make(design="patch")
    dest = pl.Host(frames=1024)
    new, rep = MG.live_migrate(vm, dest, WORKLOAD, rounds=2, instructions_per_round=RUN)
    assert new is None and rep["crashed"] and "PEBS assist" in rep["crash_reason"]
    assert rep["pages_sent"] == [PAGES]               # died in the first pre-copy round
    assert not vm.dirty_logging and dest.vms == []
    assert vm.destroy() == [] and back_to_baseline(host, base)


def test_live_migration_on_icelake_uses_ept_exits():
    host, base, vm, g = make(cpu="icelake", design="icelake")
    dest = pl.Host(cpu="icelake", frames=1024)
    new, rep = MG.live_migrate(vm, dest, WORKLOAD, rounds=2, instructions_per_round=RUN)
    assert new is not None and rep["always_dirty"] == [] and rep["dirty_faults"] > 0
    assert rep["memory_consistent"]
    assert all(len(d) >= 2 for d in rep["dirty"][:-1])   # DS page and buffer page, each round
    g.moved_to(new)
    res, samples = g.run()
    assert set(samples) == {HOT_IP}


def test_live_migration_refused_before_anything_is_sent():
    host, base, vm, g = make()
    new, rep = MG.live_migrate(vm, pl.Host(cpu="haswell"), WORKLOAD)
    assert new is None and rep["reasons"] and rep["pages_sent"] == []
    assert not vm.dirty_logging and not vm.destroyed
    res, samples = g.run()                            # the source keeps running
    assert set(samples) == {HOT_IP}


def test_restored_core_resumes_where_it_stopped():
    host, base, vm, g = make(design="fixed")
    rip = vm.vcpus[0].core.rip
    new = MG.restore_state(MG.save_state(vm), pl.Host(frames=1024))
    assert int(new.vcpus[0].core.regs[C.R_RIP]) == rip
    new.run(WORKLOAD, 1)                              # same workload object: not restarted
    assert int(new.vcpus[0].core.regs[C.R_RIP]) == (rip + 1) % len(WORKLOAD)
    assert np.uint64(new.vcpus[0].cr3) == new.vcpus[0].core.regs[C.R_CR3]


# --------------------------------------------------------------------------- the guest follows its VM

def test_an_attached_guest_keeps_profiling_on_the_destination():
    # issue 9 item 10: after restore_state the guest's memory, CR3 and PMI handler are in the
    # destination VM; GuestKernel.attach moves the kernel object there too
    from pebslab import scenarios as S
    host = pl.Host(frames=2048)
    vm = host.create_vm(design="fixed", memory_pages=512)
    guest = pl.GuestKernel(vm)
    st = S.manual_pebs(guest, buf_pages=4, period=97, event=0x00C0)
    vm.run(WORKLOAD, 5_000)
    before = len(st.samples)
    dest = pl.Host(cpu="silvermont", frames=2048, seed=1)
    new = MG.restore_state(MG.save_state(vm), dest)
    vm.destroy()
    guest.attach(new)
    assert guest.machine is new and guest.mm.phys is new.phys and guest.perf.vcpu is new.vcpus[0]
    res = new.run(WORKLOAD, 5_000)
    assert res.pmis_injected > 0 and not res.crashed
    assert len(st.samples) > before


def test_attach_refuses_a_machine_of_another_size():
    host = pl.Host(frames=2048)
    guest = pl.GuestKernel(host.create_vm(memory_pages=512))
    with pytest.raises(ValueError, match="machine must have the 512 pages"):
        guest.attach(host.create_vm(memory_pages=256))
    with pytest.raises(TypeError, match="machine must provide vcpus"):
        guest.attach(object())
