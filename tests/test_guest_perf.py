"""Tests for pebslab.guest.perf (and guest.kernel): the guest's perf driver on bare metal.

Expected IPs come from the workload arrays (which instruction misses the
LLC, which follows it); sizes and offsets from FACTS.md (a.1 DS area, a.2
record sizes, a.4 buffer and threshold rules, a.5 collisions, a.6
precise_ip, a.7 the cycles:p alias, b.1 MSR numbers).
"""

import functools

import numpy as np
import pytest

from pebslab.baremetal import BareMetal
from pebslab.hw.errors import GuestFault
from pebslab.guest import perf as gp
from pebslab.guest.kernel import GuestKernel
from pebslab.hw import core as C
from pebslab.hw import cpuid as CPUID
from pebslab.hw import pebs
from pebslab.hw.models import SKID_MAX, SKID_MIN
from pebslab.workloads import hot_loop, pointer_chase

# FACTS b.1
PERFCTR0, PMC0, EVTSEL0 = 0xC1, 0x4C1, 0x186
GLOBAL_STATUS, GLOBAL_CTRL = 0x38E, 0x38F
PERF_CAPABILITIES, PEBS_ENABLE, PEBS_DATA_CFG, DS_AREA = 0x345, 0x3F1, 0x3F2, 0x600
MASK48 = (1 << 48) - 1
KB64 = 64 * 1024                      # PEBS_BUFFER_SIZE (a.4)
RECORD = {0: 144, 1: 176, 2: 192, 3: 200}   # a.2

W = hot_loop()
HOT = int(np.flatnonzero(W.llc_miss)[0])          # the only LLC-missing load
POS = {int(ip): i for i, ip in enumerate(W.ip)}
LLC_EVENT = {"silvermont": "MEM_UOPS_RETIRED.L2_MISS_LOADS", "haswell": "MEM_LOAD_UOPS_RETIRED.L3_MISS",
             "skylake": "MEM_LOAD_RETIRED.L3_MISS", "icelake": "MEM_LOAD_RETIRED.L3_MISS"}
PASSES = 300
PERIOD = 3                            # one sample every 3 passes of the loop


def boot(cpu="silvermont", **kw):
    m = BareMetal(cpu, **kw)
    return m, GuestKernel(m)


@functools.lru_cache(maxsize=None)
def recorded(cpu, mod, large=False):
    """Record the LLC-miss event with modifier ``mod`` over PASSES loop passes."""
    m, k = boot(cpu)
    rec = k.perf.record(LLC_EVENT[cpu] + mod, period=PERIOD, large_pebs=large)
    res = m.run(W, PASSES * len(W))
    ds_before_stop = k.perf.read_ds() if mod else None
    rec.stop()
    return m, k, rec, res, ds_before_stop


def positions(samples):
    return np.array([POS[int(ip)] for ip in samples["ip"]])


# --------------------------------------------------------------------------
# where samples land: PEBS :pp, :p, and the PMI with skid
# --------------------------------------------------------------------------

@pytest.mark.parametrize("cpu", ["silvermont", "haswell", "skylake", "icelake"])
def test_pp_samples_are_the_eventing_instruction(cpu):
    m, k, rec, res, _ = recorded(cpu, ":pp")
    s = rec.samples()
    assert len(s) == PASSES // PERIOD
    assert (s["ip"] == W.ip[HOT]).all()
    assert (s["precise"] == 1).all() and (s["kind"] == "pebs").all()
    assert (s["sym"] == "hot_loop").all() and (s["cpl"] == 3).all()
    assert (s["counter"] == 0).all()
    # the record carries the load's data address and latency (a.2 dla/lat, a.3 meminfo),
    # except on Silvermont, whose record has them Reserved: zeros (FACTS g.3)
    mem_info = cpu != "silvermont"
    assert (s["addr"] == (W.addr[HOT] if mem_info else 0)).all()
    assert (s["latency"] == (W.latency[HOT] if mem_info else 0)).all()


@pytest.mark.parametrize("cpu", ["silvermont", "haswell", "skylake", "icelake"])
def test_p_samples_are_the_next_instruction(cpu):
    _, _, rec, _, _ = recorded(cpu, ":p")
    s = rec.samples()
    assert len(s) == PASSES // PERIOD
    assert (s["ip"] == W.ip[HOT + 1]).all()
    assert (s["precise"] == 0).all()


@pytest.mark.parametrize("cpu", ["silvermont", "icelake"])
def test_interrupt_samples_skid(cpu):
    m, _, rec, res, _ = recorded(cpu, "")
    s = rec.samples()
    assert len(s) == PASSES // PERIOD == res.pmis
    assert (s["kind"] == "pmi").all() and (s["precise"] == 0).all()
    # the interrupted IP is the instruction after the last one retired; between
    # the overflowing load and it, SKID_MIN..SKID_MAX instructions retired
    skid = positions(s) - HOT - 1
    assert skid.min() >= SKID_MIN and skid.max() <= SKID_MAX
    assert len(set(skid.tolist())) > 1
    assert m.trace.counts().get("PEBS_WRITE", 0) == 0


def test_pointer_chase_latencies_and_addresses():
    # Haswell: Silvermont's records have no data address or latency (FACTS g.3)
    w = pointer_chase()
    m, k = boot("haswell")
    rec = k.perf.record("MEM_UOPS_RETIRED.ALL_LOADS:pp", period=97)
    m.run(w, 20 * len(w))
    s = rec.samples()
    assert len(s) == 20 * int((w.kind == 1).sum()) // 97
    idx = np.array([int(np.flatnonzero(w.ip == ip)[0]) for ip in s["ip"]])
    assert (w.kind[idx] == 1).all()
    assert (s["latency"] == w.latency[idx]).all()
    assert (s["addr"] == w.addr[idx]).all()
    assert len(set(s["latency"].tolist())) > 1


def test_cycles_pp_uses_the_inst_retired_alias_and_finds_the_hot_load():
    m, k = boot("silvermont")
    rec = k.perf.record("cycles:pp", period=1000)
    assert rec.spec.config == 0x108000C0            # a.7
    assert rec.eventsel & 0xFFFFFFFF == 0x108000C0 | 1 << 16 | 1 << 17 | 1 << 22   # no INT
    res = m.run(W, 200 * len(W))
    s = rec.samples()
    # cycles past the overflow inside the overflowing instruction are lost on reload
    assert 0.85 * res.cycles / 1000 <= len(s) <= res.cycles / 1000
    ips, n = np.unique(s["ip"], return_counts=True)
    assert ips[np.argmax(n)] == W.ip[HOT]       # where the cycles go


# --------------------------------------------------------------------------
# the DS area and the buffer
# --------------------------------------------------------------------------

def test_ds_area_after_setup_is_what_the_driver_intended():
    m, k = boot("silvermont")
    period = 12345
    k.perf.record("INST_RETIRED.ANY_P:pp", period=period)
    perf = k.perf
    ds = pebs.DebugStore.from_bytes(k.read(perf.ds_gva, pebs.DS_SIZE))
    base = perf.pebs_buffer_gva
    size = RECORD[2]
    assert ds.bts_buffer_base == ds.bts_index == ds.bts_absolute_maximum == 0
    assert ds.pebs_buffer_base == base
    assert ds.pebs_index == base
    assert ds.pebs_absolute_maximum == base + size * (KB64 // size)
    assert ds.pebs_interrupt_threshold == base + size          # single record
    assert ds.pebs_event_reset[0] == (-period) & MASK48
    assert ds.pebs_event_reset[1:] == (0,) * 11
    # IA32_DS_AREA holds the DS address, PEBS_ENABLE bit 0, PMC0 preset
    core = m.core
    assert core.rdmsr(DS_AREA) == perf.ds_gva
    assert core.rdmsr(PEBS_ENABLE) == 1
    assert core.rdmsr(PERFCTR0) == (-period) & MASK48
    assert core.rdmsr(GLOBAL_CTRL) == 1
    # the DS page and the 16-page buffer are mapped supervisor pages of the guest
    assert k.mm.translate(base + KB64 - 1) is not None


def test_programming_order_follows_linux():
    """disable all, DS_AREA, counter preset, EVTSEL (no INT), PEBS_ENABLE, GLOBAL_CTRL."""
    m, k = boot("silvermont")
    k.perf.probe()
    start = len(m.trace)
    k.perf.record("INST_RETIRED.ANY_P:pp", period=1000)
    writes = [(r["msr"], r["value"]) for r in m.trace.rows()[start:] if r["kind"] == "MSR_WRITE"]
    msrs = [w[0] for w in writes]
    assert msrs == [GLOBAL_CTRL, DS_AREA, PERFCTR0, EVTSEL0, PEBS_ENABLE, GLOBAL_CTRL]
    assert writes[0][1] == 0 and writes[-1][1] == 1
    assert writes[3][1] & (1 << 20) == 0 and writes[3][1] & (1 << 22)


def test_pebs_index_resets_after_each_drain():
    m, k, rec, res, ds = recorded("silvermont", ":pp")
    assert ds.pebs_index == ds.pebs_buffer_base
    assert k.perf.drain_count == res.pmis == len(rec.samples())


def test_samples_match_pebs_writes():
    for cpu in ("silvermont", "icelake"):
        m, k, rec, _, _ = recorded(cpu, ":pp")
        assert len(rec.samples()) == m.trace.counts()["PEBS_WRITE"]


def test_large_pebs_fewer_pmis_same_samples():
    period = 11
    out = {}
    for large in (False, True):
        m, k = boot("silvermont")
        rec = k.perf.record("INST_RETIRED.ANY_P:pp", period=period, large_pebs=large)
        res = m.run(W, 300 * len(W))
        ds = k.perf.read_ds()
        rec.stop()
        out[large] = (res.pmis, len(rec.samples()), m.trace.counts()["PEBS_WRITE"], ds)
    pmis_single, n_single, writes_single, _ = out[False]
    pmis_large, n_large, writes_large, ds_large = out[True]
    assert writes_single == writes_large == n_single == n_large
    assert pmis_single == n_single
    assert pmis_large < pmis_single // 100
    # threshold = absmax - reserved * record size, reserved = 2 GP counters on SLM (a.4)
    assert ds_large.pebs_interrupt_threshold == ds_large.pebs_absolute_maximum - 2 * RECORD[2]
    assert ds_large.pebs_index > ds_large.pebs_buffer_base      # records were waiting for stop()


def test_skylake_records_carry_the_tsc():
    m, k, rec, _, _ = recorded("skylake", ":pp")
    s = rec.samples()
    writes = m.trace.rows("PEBS_WRITE")
    assert [int(t) for t in s["time"]] == [w["time"] for w in writes]
    assert (np.diff(s["time"].astype(np.int64)) > 0).all()


def test_icelake_adaptive_groups():
    m, k, rec, _, _ = recorded("icelake", ":pp")
    assert m.core.rdmsr(PEBS_DATA_CFG) == pebs.PEBS_DATACFG_MEMINFO     # memory event, :pp
    assert k.perf.pebs_record_size == 32 + 32
    _, k1, rec1, _, _ = recorded("icelake", ":p")
    assert k1.perf.active_pebs_data_cfg == pebs.PEBS_DATACFG_MEMINFO | pebs.PEBS_DATACFG_GP
    assert k1.perf.pebs_record_size == 32 + 32 + 144
    assert rec.eventsel >> 34 & 1                                        # adaptive bit


def test_haswell_collisions_are_lost():
    """Two PEBS counters on the same event and period overflow together: every record collides."""
    m, k = boot("haswell")
    r0 = k.perf.record("INST_RETIRED.ANY_P:pp", period=1000)
    r1 = k.perf.record("INST_RETIRED.ANY_P:pp", period=1000)
    assert (r0.counter, r1.counter) == (0, 1)
    n = 20_000
    res = m.run(W, n)
    writes = m.trace.counts()["PEBS_WRITE"]
    assert writes == n // 1000 == res.pmis
    assert len(r0) == len(r1) == 0
    assert r0.lost == r1.lost == writes


def test_skylake_same_setup_has_no_collisions():
    """Format 3's applicable-counters field credits both counters (a.5)."""
    m, k = boot("skylake")
    r0 = k.perf.record("INST_RETIRED.ANY_P:pp", period=1000)
    r1 = k.perf.record("INST_RETIRED.ANY_P:pp", period=1000)
    m.run(W, 20_000)
    assert len(r0) == len(r1) == 20 and r0.lost == r1.lost == 0


def test_stop_disables_and_keeps_ds():
    m, k = boot("silvermont")
    rec = k.perf.record("INST_RETIRED.ANY_P:pp", period=500)
    m.run(W, 5000)
    n = len(rec)
    ds = k.perf.ds_gva
    rec.stop()
    assert not rec.active
    assert m.core.rdmsr(PEBS_ENABLE) == 0
    assert m.core.rdmsr(EVTSEL0) & (1 << 22) == 0
    assert m.core.rdmsr(GLOBAL_CTRL) == 0
    m.run(W, 5000)
    assert len(rec) == n and k.perf.ds_gva == ds
    rec.stop()                                   # idempotent


# --------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------

def test_stat_counts_exactly():
    m, k = boot("silvermont")
    c = k.perf.stat(["instructions", "cycles", "branches", "cache-misses", "ref-cycles"])
    # generic events on fixed counters 0/1/2 (bits 32..34), the rest on GP 0, 1
    assert c.counters == {"instructions": 32, "cycles": 33, "branches": 0,
                          "cache-misses": 1, "ref-cycles": 34}
    n = 10 * len(W) + 17
    res = m.run(W, n)
    idx = np.arange(n) % len(W)
    got = c.read()
    assert got["instructions"] == n == res.instructions
    assert got["cycles"] == int(W.cycles.astype(np.int64)[idx].sum()) == res.cycles
    assert got["ref-cycles"] == got["cycles"]
    assert got["branches"] == int((W.kind[idx] == 3).sum())
    assert got["cache-misses"] == int(W.llc_miss[idx].sum())
    c.stop()
    assert m.core.rdmsr(GLOBAL_CTRL) == 0


def test_stat_takes_no_pmu_slot_twice():
    m, k = boot("silvermont")              # 2 GP counters
    with k.perf.stat(["branches", "cache-misses"]):
        with pytest.raises(gp.PerfOpenError, match="no free counter"):
            k.perf.stat("cache-references")
        with pytest.raises(gp.PerfOpenError, match="no free counter"):
            k.perf.record("INST_RETIRED.ANY_P:pp")     # PMC0 is the only PEBS counter
    rec = k.perf.record("INST_RETIRED.ANY_P:pp")
    assert rec.counter == 0


def test_stat_accepts_and_drops_precise():
    m, k = boot("silvermont")
    c = k.perf.stat("instructions:pp")
    assert c.counters == {"instructions:pp": 32}
    m.run(W, 1000)
    assert c.stop() == {"instructions:pp": 1000}


def test_fixed_counter_sampling():
    m, k = boot("silvermont")
    rec = k.perf.record("instructions", period=1000)
    assert rec.counter == 32
    res = m.run(W, 10_500)               # the 10th PMI arrives after its skid
    s = rec.samples()
    assert len(s) == res.pmis == 10
    assert (s["counter"] == 32).all() and (s["kind"] == "pmi").all()


def test_large_period_needs_full_width_writes():
    m, k = boot("silvermont")                # no FW_WRITES (models.py)
    with pytest.raises(ValueError, match="max_period"):
        k.perf.record("branches", period=1 << 31)
    m, k = boot("haswell")                   # FW_WRITES
    k.perf.record("branches", period=1 << 31)
    writes = [r["msr"] for r in m.trace.rows("MSR_WRITE")]
    assert PMC0 in writes
    assert m.core.rdmsr(PERFCTR0) == (-(1 << 31)) & MASK48


# --------------------------------------------------------------------------
# probing, and a host that lies
# --------------------------------------------------------------------------

def test_probe_silvermont():
    m, k = boot("silvermont")
    info = k.perf.probe()
    assert info.model_name == "silvermont"
    assert (info.version, info.num_counters, info.cntval_bits, info.num_counters_fixed) == (3, 2, 48, 3)
    assert info.has_pebs and info.pebs_format == 2 and info.pebs_record_size == 192
    assert info.pebs_counter_mask == 0x1 and info.max_precise == 2
    assert info.max_period == (1 << 31) - 1
    assert "PEBS fmt2" in info.summary()
    assert k.perf.probe() is info                 # cached


def test_guest_copes_with_fewer_counters_than_the_model():
    m = BareMetal("haswell")
    eax, ebx, ecx, edx = m.cpuid.leaf(0xA)
    m.cpuid = CPUID.Cpuid({**m.cpuid.leaves, 0xA: ((eax & ~0xFF00) | 1 << 8, ebx, ecx, edx)})
    k = GuestKernel(m)
    info = k.perf.probe()
    assert info.num_counters == 1 and info.pebs_counter_mask == 0x1


def test_unknown_signature_uses_0xf_cut_to_the_counters():
    m = BareMetal("silvermont")
    eax1 = m.cpuid.leaf(1)
    m.cpuid = CPUID.Cpuid({**m.cpuid.leaves, 1: (0x000906EA, *eax1[1:])})   # some other CPU
    k = GuestKernel(m)
    info = k.perf.probe()
    assert info.model is None and info.pebs_counter_mask == 0x3
    with pytest.raises(ValueError, match="r<hex>"):
        k.perf.parse_event("MEM_UOPS_RETIRED.ALL_LOADS")


@pytest.mark.parametrize("hide", ["PDCM", "DS", "DTES64"])
def test_no_pebs_without_the_cpuid_bits(hide):
    m = BareMetal("silvermont")
    m.cpuid = m.cpuid.without(hide)
    k = GuestKernel(m)
    info = k.perf.probe()
    assert not info.has_pebs and info.pebs_counter_mask == 0
    with pytest.raises(ValueError, match="needs PEBS"):
        k.perf.record("INST_RETIRED.ANY_P:pp")
    k.perf.record("INST_RETIRED.ANY_P")           # sampling without PEBS still works
    if hide == "PDCM":
        assert not any(r["msr"] == PERF_CAPABILITIES for r in m.trace.rows("MSR_READ"))


def test_perf_capabilities_gp_means_no_pebs():
    m = BareMetal("silvermont")
    v = m.vcpu
    real = v.rdmsr

    def rdmsr(index):
        if index == PERF_CAPABILITIES:
            raise GuestFault("#GP", msr=index, reason="test: not emulated")
        return real(index)

    v.rdmsr = rdmsr
    k = GuestKernel(m)
    info = k.perf.probe()
    assert info.perf_cap_gp and not info.has_pebs
    assert "#GP" in info.pebs_why


def test_no_pmu():
    m = BareMetal("silvermont")
    m.cpuid = m.cpuid.without("PMU")
    k = GuestKernel(m)
    with pytest.raises(gp.PerfOpenError, match="CPUID.0AH version 0"):
        k.perf.stat("instructions")


def test_gp_during_record_is_a_clean_failure():
    """A guest told it is a Haswell (PEBS on PMC0-3) on a Silvermont core (PMC0 only)."""
    m = BareMetal("silvermont")
    hsw = CPUID.default("haswell").leaf(1)[0]
    m.cpuid = CPUID.Cpuid({**m.cpuid.leaves, 1: (hsw, *m.cpuid.leaf(1)[1:])})
    k = GuestKernel(m)
    other = k.perf.record("branches", period=10)             # takes PMC0
    with pytest.raises(gp.PerfOpenError, match="PEBS_ENABLE") as e:
        k.perf.record("INST_RETIRED.ANY_P:pp", period=100)   # PMC1: #GP on PEBS_ENABLE
    assert isinstance(e.value.fault, GuestFault)
    core = m.core
    assert core.rdmsr(EVTSEL0 + 1) == 0
    assert core.rdmsr(PEBS_ENABLE) == 0
    assert core.rdmsr(GLOBAL_CTRL) == 1                      # the other event still runs
    assert k.perf.pebs_enabled == 0 and set(k.perf.events) == {0}
    m.run(W, 100 * len(W))
    assert len(other) > 0


def test_bit62_without_ds_is_ignored():
    m, k = boot("silvermont")
    k.perf.probe()
    m.core.regs[C.R_GLOBAL_STATUS] = np.uint64(1 << 62)
    k.perf.intel_pmu_handle_irq(m.vcpu, int(W.ip[0]), 3)
    assert k.perf.spurious_pebs == 1 and k.perf.drain_count == 1
    assert m.core.rdmsr(GLOBAL_STATUS) == 0           # acked
    assert m.trace.counts()["NOTE"] == 1


def test_unchecked_msr_error_in_the_handler_is_noted():
    m, k = boot("silvermont")
    rec = k.perf.record("branches", period=50)
    m.core.regs[C.R_GLOBAL_STATUS] = np.uint64(1 << 40)     # a bit OVF_CTRL cannot clear
    k.perf.intel_pmu_handle_irq(m.vcpu, int(W.ip[0]), 3)
    assert k.perf.unchecked_msr_errors
    assert "unchecked MSR access error: WRMSR to 0x390" in k.perf.unchecked_msr_errors[0]
    assert k.perf.irq_loop_stuck == 1
    del rec


# --------------------------------------------------------------------------
# event parsing
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def info():
    m, k = boot("silvermont")
    return k.perf.probe()


def test_parse_generic_and_modifiers(info):
    e = gp.parse_event("cycles", info)
    assert (e.config, e.fixed, e.usr, e.os, e.precise_ip) == (0x3C, 1, True, True, 0)
    e = gp.parse_event("instructions:u", info)
    assert (e.config, e.fixed, e.usr, e.os) == (0xC0, 0, True, False)
    e = gp.parse_event("branches:k", info)
    assert (e.config, e.usr, e.os) == (0xC4, False, True)
    e = gp.parse_event("cache-misses:uk", info)
    assert (e.config, e.usr, e.os) == (0x412E, True, True)
    e = gp.parse_event("r412e", info)
    assert e.config == 0x412E
    e = gp.parse_event("mem_uops_retired.all_loads:upp", info)
    assert (e.config, e.precise_ip, e.usr, e.os, e.memory) == (0x4004, 2, True, False, True)
    e = gp.parse_event("cycles:p", info)
    assert e.config == 0x108000C0 and e.fixed is None


def test_cycles_alias_per_model():
    for cpu, alias in (("silvermont", 0x108000C0), ("haswell", 0x108001C2),
                       ("skylake", 0x108000C0), ("icelake", 0x108000C0)):
        m, k = boot(cpu)
        assert k.perf.parse_event("cycles:pp").config == alias


@pytest.mark.parametrize("spec, match", [
    ("cylces", "allowed: cycles, instructions"),
    ("cycles:x", "modifier 'x'"),
    ("cycles:", "empty modifier"),
    ("cycles:u:k", "more than one"),
    ("cycles:pppp", "precise_ip must be 0..3"),
    ("cycles:ppp", "PDIR"),
    ("cache-misses:p", "cannot use PEBS on silvermont"),
    ("r1234567890", "outside event"),
    ("r4004:pp", None),
    ("r0f8000c0:p", "edge, inv and cmask"),
    (":p", "name an event"),
])
def test_bad_events(info, spec, match):
    if match is None:
        gp.parse_event(spec, info)
        return
    with pytest.raises(ValueError, match=match):
        gp.parse_event(spec, info)


def test_bad_record_arguments():
    m, k = boot("silvermont")
    with pytest.raises(TypeError):
        k.perf.record(123)
    with pytest.raises(ValueError, match="period"):
        k.perf.record("cycles", period=0)
    with pytest.raises(TypeError):
        k.perf.record("cycles", period=1.5)
    with pytest.raises(NotImplementedError, match="freq"):
        k.perf.record("cycles", freq=4000)
    with pytest.raises(ValueError, match="large_pebs"):
        k.perf.record("cycles", large_pebs=True)
    assert k.perf.events == {}
