"""The fuzzer's MSR oracle (pebslab/fuzz/oracle.py) states the rules of the sources.

Every expected value here comes from the patch (the seed document), the
2014 pmu.c, or FACTS.md (section named per test), not from pebslab.kvm.
"""

from __future__ import annotations

import pytest

import pebslab as pl
from pebslab.fuzz import oracle as O
from pebslab.hw import msr as M

U64 = (1 << 64) - 1


def oracle(design="patch", cpu="silvermont", cpuid=None):
    return O.MsrOracle(design, cpu, cpuid if cpuid is not None else pl.cpuid.default(cpu))


def cpuid_v2(cpu):
    """The host's CPUID with leaf 0xA's version capped at 2, as 2014 KVM exposes it."""
    cp = pl.cpuid.default(cpu)
    eax, ebx, ecx, edx = cp.leaf(0xA)
    leaves = dict(cp.leaves)
    leaves[0xA] = ((eax & ~0xFF) | 2, ebx, ecx, edx)
    return pl.cpuid.Cpuid(leaves)


def test_the_patch_on_silvermont():
    o = oracle("patch", "silvermont", cpuid_v2("silvermont"))
    # the patch's PEBS_ENABLE hunk: "if (data & ~0xf0000000fULL) break;"
    assert o.pebs_enable_valid == 0xF_0000_000F
    assert o.write(M.MSR_IA32_PEBS_ENABLE, 0x8_0000_0002).accept
    assert not o.write(M.MSR_IA32_PEBS_ENABLE, 0x10).accept
    # "Report host PEBS format to guest": PEBS_TRAP | ARCH_REG | PEBS_FORMAT; read-only
    host = pl.get_model("silvermont").perf_capabilities
    assert o.perf_cap == host & (1 << 6 | 1 << 7 | 0xF << 8)
    assert not o.write(M.MSR_IA32_PERF_CAPABILITIES, 0).accept
    # the patch stores any DS_AREA ("pmu->ds_area = data; return 0;")
    assert o.write(M.MSR_IA32_DS_AREA, 1 << 63) == O.Verdict(True, 1 << 63, "ds-area")
    # FACTS b.8: the legacy alias sign-extends bit 31 of a guest write (48-bit counters)
    assert o.write(M.MSR_IA32_PERFCTR0, 0x8000_0000).readback == (1 << 48) - (1 << 31)
    assert o.write(M.MSR_IA32_PERFCTR0, 0x1_0000_0005).readback == 5
    # 2014 pmu.c sign-extends fixed counter writes too
    assert o.write(M.MSR_CORE_PERF_FIXED_CTR0, 0x8000_0000_0001).readback == 1
    # no full-width alias in 2014 (FACTS b.8: the 0x4C1 interface needs FW_WRITES)
    assert o.kind(M.MSR_IA32_PMC0) is None
    # GLOBAL_STATUS is read-only for the guest; OVF_CTRL may clear 62 and 63 (FACTS b.4)
    assert not o.write(M.MSR_CORE_PERF_GLOBAL_STATUS, 0).accept
    assert o.write(M.MSR_CORE_PERF_GLOBAL_OVF_CTRL, 3 << 62 | 1).accept
    # 2014 reserved EVENTSEL bits: ANY (21) and 63:32; Silvermont has no TSX
    assert not o.write(M.MSR_P6_EVNTSEL0, 1 << 21).accept
    assert not o.write(M.MSR_P6_EVNTSEL0, M.HSW_IN_TX).accept
    assert o.write(M.MSR_P6_EVNTSEL0, M.encode_eventsel(0xC0, 0, int=True)).accept
    # 2014 FIXED_CTR_CTRL: bits 11:0 except AnyThread (2, 6, 10)
    assert o.valid_bits(M.MSR_CORE_PERF_FIXED_CTR_CTRL) == 0xBBB
    assert not o.write(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0x4).accept
    # Silvermont: 2 GP counters (its CPUID), 3 fixed
    assert o.kind(M.MSR_IA32_PERFCTR0 + 1) == ("pmc", 1)
    assert o.write(M.MSR_IA32_PERFCTR0 + 2, 0).rule == "absent-gp-counter"
    assert o.kind(M.MSR_CORE_PERF_FIXED_CTR0 + 2) == ("fixed", 2)


def test_review_and_fixed_gate_the_pebs_msrs_on_the_guest_cpuid():
    nopebs = cpuid_v2("silvermont").without("DS", "DTES64", "PDCM")
    assert oracle("patch", "silvermont", nopebs).pebs_msrs          # host gate only
    for design in ("review", "fixed"):                               # Northup's review
        o = oracle(design, "silvermont", nopebs)
        assert not o.pebs_msrs
        assert o.write(M.MSR_IA32_DS_AREA, 0).accept is False
    # no PEBS MSRs at all where the design gives no PEBS (FACTS e: Silvermont only)
    assert oracle("patch", "haswell", cpuid_v2("haswell")).kind(M.MSR_IA32_PEBS_ENABLE) is None


def test_fixed_on_silvermont_accepts_only_what_silvermont_has():
    o = oracle("fixed", "silvermont", cpuid_v2("silvermont"))
    # FACTS a.7 / g.3: PEBS on PMC0 only, no load-latency facility
    assert o.pebs_enable_valid == 0x1
    assert o.write(M.MSR_IA32_PEBS_ENABLE, 1 << 32).rule == "no-load-latency"
    # FACTS c.4 (the correction upstream made): non-canonical DS_AREA is #GP
    assert o.write(M.MSR_IA32_DS_AREA, 1 << 47).accept is False
    assert o.write(M.MSR_IA32_DS_AREA, 0xFFFF_8000_0000_0000).accept


def test_icelake_design_follows_upstream_pmu_intel():
    o = oracle("icelake", "icelake")
    host = pl.get_model("icelake")
    assert (o.nr_gp, o.nr_fixed) == (8, 3)      # KVM backs three fixed counters
    assert o.perf_cap & M.PERF_CAP_FW_WRITES and o.baseline and o.data_cfg
    # FACTS b.8: 0x4C1 is written full width; bits above the width #GP
    assert o.write(M.MSR_IA32_PMC0, 0x8000_0000_0001) == O.Verdict(True, 0x8000_0000_0001,
                                                                   "counter-write")
    assert not o.write(M.MSR_IA32_PMC0, 1 << 48).accept
    # FACTS b.2: IN_TXCP on counter 2 only; ADAPTIVE (bit 34) with baseline
    txcp = M.encode_eventsel(0x3C, 0, in_txcp=True)
    assert o.write(M.MSR_P6_EVNTSEL0 + 2, txcp).accept
    assert not o.write(M.MSR_P6_EVNTSEL0, txcp).accept
    assert o.write(M.MSR_P6_EVNTSEL0, M.ICL_EVENTSEL_ADAPTIVE).accept
    # FACTS b.3: OS|USR|PMI per fixed counter plus Adaptive_Record at 32+4i
    assert o.valid_bits(M.MSR_CORE_PERF_FIXED_CTR_CTRL) == 0xBBB | 0x111 << 32
    # FACTS b.5: with baseline PEBS_ENABLE takes exactly the GLOBAL_CTRL counter bits
    assert o.pebs_enable_valid == o.counters == 0xFF | 0x7 << 32
    # FACTS a.3 / c.4: DATA_CFG bits 3:0 and 31:24
    assert o.write(M.MSR_PEBS_DATA_CFG, 0xFF00_000F).accept
    assert not o.write(M.MSR_PEBS_DATA_CFG, 1 << 4).accept
    assert o.perf_cap == host.perf_capabilities & O.PERF_CAP_UPSTREAM


def test_icelake_fixed_counter_3_is_not_the_guests():
    # issue 9 item 1: KVM exposes at most the three fixed counters it can back
    o = oracle("icelake", "icelake")
    assert o.kind(M.MSR_CORE_PERF_FIXED_CTR3) is None
    assert o.write(M.MSR_CORE_PERF_FIXED_CTR3, 0).rule == "absent-fixed-counter"
    assert o.write(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 0xB000).rule == "absent-fixed-counter"
    assert o.write(M.MSR_CORE_PERF_GLOBAL_CTRL, 1 << 35).rule == "absent-fixed-counter"
    assert o.write(M.MSR_IA32_PEBS_ENABLE, 1 << 35).rule == "absent-fixed-counter"
    problems = O.cpuid_problems("icelake", "icelake", pl.cpuid.default("icelake"),
                                pl.cpuid.default("icelake"))
    assert [r for r, _ in problems] == ["absent-fixed-counter"]


def test_icelake_adaptive_bits_need_baseline_in_the_guests_perf_capabilities():
    # FACTS b.6: PERF_CAPABILITIES reads 0 without PDCM, so no BASELINE, no bit 34
    o = oracle("icelake", "icelake", pl.cpuid.default("icelake").without("DS", "DTES64", "PDCM"))
    assert not o.baseline and not o.pebs_msrs
    assert o.write(M.MSR_P6_EVNTSEL0, M.ICL_EVENTSEL_ADAPTIVE).rule == \
        "adaptive-without-baseline"
    assert o.write(M.MSR_CORE_PERF_FIXED_CTR_CTRL, 1 << 32).rule == "adaptive-without-baseline"
    assert o.kind(M.MSR_IA32_PMC0) is None          # no FW_WRITES either


def test_a_guest_without_a_pmu_has_no_pmu_msrs():
    o = oracle("review", "haswell", pl.cpuid.default("haswell").without("PMU"))
    for msr in O.pmu_msr_indices("haswell"):
        assert o.kind(msr) in (None, ("unmodeled", 0)), hex(msr)


def test_unmodeled_msrs_get_no_verdict():
    o = oracle()
    assert o.write(M.MSR_IA32_MISC_ENABLE, 0).accept is None
    assert o.read_problem(M.MSR_IA32_MISC_ENABLE, U64) is None


@pytest.mark.parametrize("cpu", list(pl.MODELS))
def test_coverage_list_reaches_one_past_the_last_counter(cpu):
    m = pl.get_model(cpu)
    idx = O.pmu_msr_indices(cpu)
    assert len(set(idx)) == len(idx)
    for base in (M.MSR_IA32_PERFCTR0, M.MSR_IA32_PMC0, M.MSR_P6_EVNTSEL0):
        assert base + m.n_gp in idx and base + m.n_gp + 1 not in idx
    assert M.MSR_CORE_PERF_FIXED_CTR0 + max(m.n_fixed, 3) in idx
    for msr in (M.MSR_CORE_PERF_FIXED_CTR_CTRL, M.MSR_CORE_PERF_GLOBAL_STATUS,
                M.MSR_CORE_PERF_GLOBAL_CTRL, M.MSR_CORE_PERF_GLOBAL_OVF_CTRL,
                M.MSR_IA32_PEBS_ENABLE, M.MSR_IA32_DS_AREA, M.MSR_PEBS_DATA_CFG,
                M.MSR_IA32_PERF_CAPABILITIES, M.MSR_IA32_MISC_ENABLE, 0x1D9):
        assert msr in idx


def test_cpuid_problems_name_what_kvm_must_hide():
    d = pl.cpuid.default("haswell")
    # the patch's cpuid hunk: DS/DTES64/PDCM only where PEBS can be virtualized
    rules = [r for r, _ in O.cpuid_problems("patch", "haswell", d, d)]
    assert {"cpuid-DS", "cpuid-DTES64", "cpuid-PDCM", "cpuid-pmu-version"} <= set(rules)
    assert O.cpuid_problems("patch", "haswell", d, cpuid_v2("haswell").without(
        "DS", "DTES64", "PDCM")) == []


def test_sext32():
    assert O.sext32(0xFFFF_FFFF) == -1 and O.sext32(0x7FFF_FFFF) == 0x7FFF_FFFF


def test_the_oracle_is_independent_of_the_kvm_model():
    # a rule copied from pebslab/kvm would pass both copies: the oracle imports none of it
    import ast
    import pathlib
    src = pathlib.Path(O.__file__).read_text()
    mods = [n.module or "" for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom)]
    mods += [a.name for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import)
             for a in n.names]
    assert mods and not [m for m in mods if "kvm" in m or "host" in m]
