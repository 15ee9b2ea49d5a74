"""Tests for pebslab.baremetal: one core, identity EPT, the vCPU protocol without exits.

Expected values come from the architecture contract (docs/ARCHITECTURE.md)
and FACTS.md section b (MSR numbers and semantics), not from the code.
"""

import numpy as np
import pytest

from pebslab.baremetal import BareMetal, RunResult, identity_ept
from pebslab.hw.errors import GuestCrash, GuestFault
from pebslab.guest.kernel import GuestKernel
from pebslab.hw import core as C
from pebslab.hw import cpuid
from pebslab.hw.models import SKID_MAX, SKID_MIN
from pebslab.workloads import hot_loop

# FACTS b.1
PERFCTR0, PMC0, EVTSEL0 = 0xC1, 0x4C1, 0x186
GLOBAL_STATUS, GLOBAL_CTRL, OVF_CTRL = 0x38E, 0x38F, 0x390
MASK48 = (1 << 48) - 1
# FACTS b.2: USR | OS | INT | EN, event 0xC0 (INST_RETIRED.ANY_P)
INST_INT = 0xC0 | 1 << 16 | 1 << 17 | 1 << 20 | 1 << 22

W = hot_loop()


def test_identity_ept_entries():
    e = identity_ept(8)
    assert e.dtype == np.uint64
    assert [int(x) for x in e] == [(g << 12) | 7 for g in range(8)]


def test_machine_parts():
    m = BareMetal("haswell", frames=64, seed=3)
    assert m.cpu.name == "haswell"
    assert m.mem.shape == (64 * 4096,) and m.mem.dtype == np.uint8
    assert len(m.ept) == 64
    assert len(m.vcpus) == 1 and m.vcpu is m.vcpus[0]
    assert m.phys.pages == 64
    assert m.workload is None


@pytest.mark.parametrize("kw, exc", [({"cpu": "pentium"}, ValueError),
                                     ({"frames": 4}, ValueError),
                                     ({"frames": 1.5}, TypeError),
                                     ({"seed": -1}, ValueError)])
def test_bad_arguments(kw, exc):
    with pytest.raises(exc):
        BareMetal(**kw)


def test_phys_roundtrip_and_bounds():
    m = BareMetal(frames=16)
    m.phys.write(0x1FF8, b"\x01\x02\x03\x04\x05\x06\x07\x08\x09")   # crosses a page
    assert m.phys.read(0x1FF8, 9) == bytes(range(1, 10))
    assert m.mem[0x2000] == 9
    with pytest.raises(ValueError, match="physical memory"):
        m.phys.read(16 * 4096 - 4, 8)
    with pytest.raises(TypeError):
        m.phys.write(0, "text")


def test_rdmsr_wrmsr_hardware_semantics_and_trace():
    m = BareMetal("silvermont")
    v = m.vcpu
    v.wrmsr(PERFCTR0, 0x80000000)            # legacy alias: sign-extended to 48 bits
    assert v.rdmsr(PERFCTR0) == 0xFFFF80000000
    with pytest.raises(GuestFault):
        v.wrmsr(PMC0, 5)                      # no FW_WRITES on silvermont -> no such MSR
    with pytest.raises(GuestFault):
        v.rdmsr(0x1234)
    with pytest.raises(GuestFault):
        v.wrmsr(EVTSEL0, 1 << 40)             # reserved bits
    kinds = [r["kind"] for r in m.trace.rows()]
    assert kinds == ["MSR_WRITE", "MSR_READ", "GP", "GP", "GP"]
    w, r = m.trace.rows("MSR_WRITE", "MSR_READ")
    assert (w["msr"], w["value"]) == (PERFCTR0, 0x80000000)
    assert (r["msr"], r["value"]) == (PERFCTR0, 0xFFFF80000000)
    assert w["vcpu"] == 0 and w["cost"] > 0


def test_cpuid_is_the_models():
    m = BareMetal("skylake")
    assert m.vcpu.cpuid(0xA) == cpuid.default("skylake").leaf(0xA)
    eax, _, ecx, edx = m.vcpu.cpuid(1)
    assert edx >> 21 & 1 and ecx >> 2 & 1 and ecx >> 15 & 1      # DS, DTES64, PDCM (b.7)
    assert m.trace.counts() == {"CPUID": 2}


def test_load_cr3_and_guest_time():
    m = BareMetal()
    m.vcpu.load_cr3(0x5000)
    assert int(m.core.regs[C.R_CR3]) == 0x5000
    assert m.vcpu.guest_time() == 0
    m.run(W, 10)
    assert m.vcpu.guest_time() == int(W.cycles[:10].sum())
    with pytest.raises(ValueError):
        m.vcpu.load_cr3(1 << 40)


def test_run_budget_is_exact_without_pmis():
    m = BareMetal()
    n = 3 * len(W) + 5
    res = m.run(W, n)
    assert isinstance(res, RunResult)
    assert res.instructions == n
    assert res.cycles == int(W.cycles.astype(np.int64)[np.arange(n) % len(W)].sum())
    assert res.pmis == 0 and res.exits == {"BUDGET": 1}
    assert res.guest_cycles == res.cycles and res.pmis_injected == 0 and not res.crashed
    assert m.run(W, 0).instructions == 0
    assert m.workload is W


def test_pmi_handler_sees_skidded_ip_and_budget_stays_exact():
    """Program PMC0 by hand (INST_RETIRED, INT) and re-arm it in the handler."""
    m = BareMetal("silvermont", seed=1)
    v = m.vcpu
    period = 50
    calls = []

    def handler(vcpu, ip, cpl):
        calls.append((ip, cpl))
        status = vcpu.rdmsr(GLOBAL_STATUS)
        vcpu.wrmsr(OVF_CTRL, status)
        vcpu.wrmsr(PERFCTR0, (-period) & MASK48)

    v.set_pmi_handler(handler)
    v.wrmsr(PERFCTR0, (-period) & MASK48)
    v.wrmsr(EVTSEL0, INST_INT)
    v.wrmsr(GLOBAL_CTRL, 1)
    n = 20 * len(W) + 7
    res = m.run(W, n)
    assert res.instructions == n
    assert res.pmis == len(calls) == res.exits["PMI"]
    assert len(calls) >= n // (period + SKID_MAX + 1)
    ips = set(int(x) for x in W.ip)
    assert all(ip in ips and cpl == 3 for ip, cpl in calls)
    # trace rows from the core's log: one OVERFLOW and one PMI per interrupt
    assert m.trace.counts()["PMI"] == len(calls)
    pmi_rows = m.trace.rows("PMI")
    assert [r["gva"] for r in pmi_rows] == [ip for ip, _ in calls]
    # the PMI came 1 + skid instructions after the overflowing one
    ovf = m.trace.rows("OVERFLOW")
    pos = {int(x): i for i, x in enumerate(W.ip)}
    for o, (ip, _) in zip(ovf, calls):
        d = (pos[ip] - pos[o["gva"]]) % len(W)
        assert SKID_MIN + 1 <= d <= SKID_MAX + 1


def test_pmi_without_handler_is_counted():
    m = BareMetal()
    v = m.vcpu
    v.wrmsr(PERFCTR0, (-10) & MASK48)
    v.wrmsr(EVTSEL0, INST_INT)
    v.wrmsr(GLOBAL_CTRL, 1)
    res = m.run(W, 100)
    assert res.pmis == 1 and m.unhandled_pmis == 1 and res.instructions == 100


def test_log_full_with_many_rows():
    """PEBS every 2 instructions, threshold out of reach: drops fill the log, no PMI.

    LOG_FULL returns are invisible to the caller: the budget stays exact
    and no hardware event row is lost.
    """
    m = BareMetal("silvermont")
    k = GuestKernel(m)
    rec = k.perf.record("INST_RETIRED.ANY_P:pp", period=2)
    # the guest's own choice: an interrupt threshold it will never reach
    k.write(k.perf.ds_gva + 0x38, b"\xff" * 8)
    n = 4 * C.LOG_CAPACITY
    res = m.run(W, n)
    assert res.instructions == n
    assert res.pmis == 0
    assert res.exits.get("LOG_FULL", 0) >= 1
    counts = m.trace.counts()
    assert counts["OVERFLOW"] == n // 2
    assert counts["PEBS_WRITE"] + counts["PEBS_DROP"] == n // 2
    assert counts["PEBS_WRITE"] == 65536 // 192          # a full 64 KiB buffer (FACTS a.4)
    del rec


def test_pebs_fault_is_recorded_and_the_run_goes_on():
    """The guest unmaps its own PEBS buffer: the assist page-faults, the record is lost."""
    m = BareMetal("silvermont")
    k = GuestKernel(m)
    rec = k.perf.record("MEM_UOPS_RETIRED.L2_MISS_LOADS:pp", period=1)
    k.mm.unmap(k.perf.pebs_buffer_gva)
    res = m.run(W, 5 * len(W))
    assert res.instructions == 5 * len(W)
    faults = m.trace.rows("PEBS_FAULT")
    assert res.exits["PEBS_FAULT"] == len(faults) >= 1
    assert all(f["gva"] == k.perf.pebs_buffer_gva for f in faults)
    assert len(rec) == 0 and res.pmis == 0


def test_a_different_workload_starts_at_its_beginning():
    m = BareMetal()
    m.run(W, 10)
    assert m.core.rip == 10
    m.run(W, 5)
    assert m.core.rip == 15
    other = hot_loop(n=32, hot_index=3, seed=1)
    m.run(other, 4)
    assert m.core.rip == 4 and m.workload is other


def test_ept_violation_on_bare_metal_is_a_crash():
    """An EPT-friendly PEBS (icelake) write to a GPA beyond memory cannot be retried."""
    m = BareMetal("icelake", frames=64)
    k = GuestKernel(m)
    rec = k.perf.record("INST_RETIRED.ANY_P:pp", period=5)
    # point the PEBS buffer's first page at a GPA past the end of memory
    entry_gpa, entry = k.mm._leaf(k.perf.pebs_buffer_gva, "test")
    m.phys.write(entry_gpa, ((entry & ~0x000FFFFFFFFFF000) | (64 << 12)).to_bytes(8, "little"))
    m.phys.flush_tlb()
    with pytest.raises(GuestCrash, match="beyond"):
        m.run(W, 100)
    del rec


# --------------------------------------------------------------------------- the event log

def test_eventlog_decode_names_the_columns_and_makes_them_unsigned():
    from pebslab.hw import core as HC
    from pebslab.hw import eventlog
    rows = np.array([[HC.LOG_PEBS_WRITE, 10, -0x778000000000, 0x5000, 192, 1],
                     [HC.LOG_OVERFLOW, 11, 32, 7, 0x401000, 0],
                     [99, 12, 0, 0, 0, 0]], dtype=np.int64)
    evs = eventlog.decode(rows)
    assert [e.kind for e in evs] == ["PEBS_WRITE", "OVERFLOW"]     # unknown kinds skipped
    w = evs[0]
    assert w["gva"] == (1 << 64) - 0x778000000000 == 0xFFFF888000000000
    assert (w["hpa"], w["size"], w["counters"]) == (0x5000, 192, 1)
    assert (evs[1]["counter"], evs[1]["instr"], evs[1]["ip"]) == (32, 7, 0x401000)
