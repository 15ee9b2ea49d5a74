"""Tests for pebslab.hw.models and pebslab.hw.cpuid: the simulated CPU models.

Expected values are written out from FACTS.md (a.2/a.3 record sizes, a.7
format per generation and Silvermont's PMC0-only PEBS, b.6 PERF_CAPABILITIES,
b.7 CPUID, c.2 EPT-friendly PEBS on Ice Lake server), and the architectural
event encodings from kvm-unit-tests (x86/pmu.c gp_events), a FACTS source.
"""

import dataclasses

import pytest

from pebslab.hw import cpuid as CPUID
from pebslab.hw import models as MD
from pebslab.hw import pebs

NAMES = ("silvermont", "haswell", "skylake", "icelake")
FORMAT = {"silvermont": 2, "haswell": 2, "skylake": 3, "icelake": 4}   # a.7 (SLM: ASSUMPTION)
RECORD = {0: 144, 1: 176, 2: 192, 3: 200, 4: 32}                      # a.2, a.3 (basic)


def test_the_four_models():
    assert tuple(MD.MODELS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_format_and_record_size(name):
    m = MD.get_model(name)
    assert m.pebs_format == FORMAT[name]
    assert m.pebs_record_size == RECORD[FORMAT[name]] == pebs.record_size(m.pebs_format)
    # b.6: PERF_CAPABILITIES bits 11:8 report the same format
    assert (m.perf_capabilities >> 8) & 0xF == m.pebs_format
    assert m.adaptive == (m.pebs_format >= 4)


@pytest.mark.parametrize("fmt", [0, 1, 2, 3, 4])
def test_record_size_for_every_format(fmt):
    m = dataclasses.replace(MD.MODELS["haswell"], pebs_format=fmt,
                            perf_capabilities=fmt << 8)
    assert m.pebs_record_size == RECORD[fmt]


@pytest.mark.parametrize("name", NAMES)
def test_common_invariants(name):
    m = MD.get_model(name)
    assert m.width == 48                                # b.8 typical width, ASSUMPTION for all
    assert m.family == 6
    assert 1 <= m.n_gp <= 8 and 0 <= m.n_fixed <= 4
    assert m.counter_mask == ((1 << m.n_gp) - 1) | ((1 << m.n_fixed) - 1) << 32
    assert m.pebs_counter_mask & ~((1 << m.n_gp) - 1) == 0
    assert m.skid_min <= m.skid_max
    # the trap-like bit (6) is set on all four (FACTS a.6: the fix-up is needed)
    assert m.perf_capabilities & 1 << 6


def test_silvermont_pebs_only_on_pmc0():
    m = MD.get_model("silvermont")
    assert m.pebs_counter_mask == 0x1                  # SDM 18.6.1.1; Linux SLM constraints
    assert m.pebs_fixed_mask == 0
    assert m.n_gp == 2
    assert not m.pebs_ept
    assert not m.perf_capabilities & 1 << 13           # no full-width writes (ASSUMPTION)


def test_big_cores_pebs_on_pmc0_to_3():
    for name in ("haswell", "skylake"):
        m = MD.get_model(name)
        assert m.pebs_counter_mask == 0xF              # "No PEBS on PMC4-PMC7"
        assert m.pebs_fixed_mask == 0 and not m.pebs_ept


def test_icelake_is_ept_friendly_with_extended_pebs():
    m = MD.get_model("icelake")
    assert m.pebs_ept                                  # ICX, fb358e0b811e (FACTS c.2)
    assert m.pebs_format == 4 and m.adaptive
    assert m.perf_capabilities & 1 << 14               # PEBS baseline
    assert m.pebs_fixed_mask == 0xF and m.n_fixed == 4
    assert m.pebs_counter_mask == 0xFF and m.n_gp == 8
    assert [n for n in NAMES if MD.get_model(n).pebs_ept] == ["icelake"]


def test_tsx_models():
    assert [n for n in NAMES if MD.get_model(n).has_tsx] == ["haswell", "skylake", "icelake"]


# architectural events as kvm-unit-tests x86/pmu.c encodes them (umask << 8 | event)
ARCH_EVENTS = {0x003C: 1, 0x00C0: 2, 0x013C: 3, 0x4F2E: 8, 0x412E: 9, 0x00C4: 6, 0x00C5: 7}


@pytest.mark.parametrize("name", NAMES)
def test_architectural_events(name):
    m = MD.get_model(name)
    for code, kind in ARCH_EVENTS.items():
        ev = m.event_by_code(code | 0x530000)          # flag bits above 15 are ignored
        assert ev is not None and ev.kind == kind
    assert m.event_by_code(0x77AA) is None
    assert m.event("inst_retired.any_p").event == 0xC0  # case-insensitive lookup
    assert m.event("INST_RETIRED.ANY_P").pebs
    assert not m.event("CPU_CLK_UNHALTED.CORE_P").pebs


def test_event_lookup_errors():
    m = MD.get_model("skylake")
    with pytest.raises(ValueError, match="event must be one of .* on skylake; got 'nope'"):
        m.event("nope")
    with pytest.raises(TypeError, match="name"):
        m.event(0xC0)


def test_get_model():
    m = MD.get_model("SkyLake")
    assert m is MD.MODELS["skylake"]
    assert MD.get_model(m) is m
    with pytest.raises(ValueError, match="cpu must be one of 'silvermont'"):
        MD.get_model("pentium4")
    with pytest.raises(TypeError, match="cpu"):
        MD.get_model(6)


def test_models_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MD.MODELS["skylake"].n_gp = 8


@pytest.mark.parametrize("kw,exc,name", [
    (dict(n_gp=9), ValueError, "n_gp"),
    (dict(n_gp=0), ValueError, "n_gp"),
    (dict(n_fixed=5), ValueError, "n_fixed"),
    (dict(width=64), ValueError, "width"),
    (dict(width=32), ValueError, "width"),
    (dict(pebs_format=5, perf_capabilities=5 << 8), ValueError, "pebs_format"),
    (dict(pebs_counter_mask=0x10), ValueError, "pebs_counter_mask"),
    (dict(pebs_fixed_mask=1), ValueError, "pebs_fixed_mask"),
    (dict(perf_capabilities=3 << 8), ValueError, "perf_capabilities"),
    (dict(skid_min=5, skid_max=2), ValueError, "skid_max"),
    (dict(pebs_ept=1), TypeError, "pebs_ept"),
    (dict(n_gp="4"), TypeError, "n_gp"),
    (dict(events=[]), TypeError, "events"),
])
def test_bad_models_name_the_field(kw, exc, name):
    with pytest.raises(exc, match=name):
        dataclasses.replace(MD.MODELS["haswell"], **kw)


def test_bad_event_desc():
    with pytest.raises(ValueError, match="event"):
        MD.EventDesc("X", 0x100, 0, MD.EV_INST, True)
    with pytest.raises(ValueError, match="kind"):
        MD.EventDesc("X", 0xC0, 0, MD.N_EVENTS, True)
    ev = MD.EventDesc("X", 0xC0, 0x01, MD.EV_INST, True, cmask=2, inv=True)
    assert ev.code == 0xC0 | 1 << 8 | 1 << 23 | 2 << 24


# =============================================================================
# CPUID (FACTS b.7)
# =============================================================================

@pytest.mark.parametrize("name", NAMES)
def test_cpuid_leaf1_pebs_bits(name):
    c = CPUID.default(name)
    eax, ebx, ecx, edx = c.leaf(1)
    assert edx >> 21 & 1                 # DS
    assert ecx >> 2 & 1                  # DTES64
    assert ecx >> 15 & 1                 # PDCM
    assert c.has("DS") and c.has("DTES64") and c.has("PDCM")
    m = MD.get_model(name)
    assert (eax >> 8) & 0xF == m.family
    assert ((eax >> 16) & 0xF) << 4 | (eax >> 4) & 0xF == m.model


def test_feature_bit_positions():
    assert CPUID.FEATURES["DS"] == (1, CPUID.EDX, 21)
    assert CPUID.FEATURES["DTES64"] == (1, CPUID.ECX, 2)
    assert CPUID.FEATURES["PDCM"] == (1, CPUID.ECX, 15)
    assert (CPUID.EAX, CPUID.EBX, CPUID.ECX, CPUID.EDX) == (0, 1, 2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_cpuid_leaf_0xa(name):
    m = MD.get_model(name)
    c = CPUID.default(name)
    eax, ebx, ecx, edx = c.leaf(0xA)
    assert eax & 0xFF == m.pmu_version
    assert eax >> 8 & 0xFF == m.n_gp
    assert eax >> 16 & 0xFF == 48
    assert eax >> 24 & 0xFF == 7                       # EBX vector length: 7 arch events
    assert ebx == 0                                    # set bit = event NOT available
    assert edx & 0x1F == m.n_fixed
    assert edx >> 5 & 0xFF == 48
    # v5: ECX is the fixed-counter bitmask
    assert ecx == ((1 << m.n_fixed) - 1 if m.pmu_version >= 5 else 0)
    assert c.pmu() == {"version": m.pmu_version, "num_counters": m.n_gp, "bit_width": 48,
                       "mask_length": 7, "events_unavailable": 0,
                       "num_counters_fixed": m.n_fixed, "bit_width_fixed": 48,
                       "fixed_counter_mask": ecx}


def test_pmu_versions():
    assert {n: MD.get_model(n).pmu_version for n in NAMES} == \
        {"silvermont": 3, "haswell": 3, "skylake": 4, "icelake": 5}


def test_without_and_with():
    c = CPUID.default("silvermont")
    d = c.without("DS")
    assert not d.has("DS") and d.has("DTES64") and d.has("PDCM")
    assert c.has("DS")                                  # the original is unchanged
    assert d.leaf(1)[CPUID.EDX] == c.leaf(1)[CPUID.EDX] & ~(1 << 21)
    assert d.leaf(1)[CPUID.ECX] == c.leaf(1)[CPUID.ECX]
    e = c.without("DS", "DTES64", "PDCM")
    assert not any(e.has(f) for f in ("DS", "DTES64", "PDCM"))
    assert e.with_("pdcm").has("PDCM")
    p = c.without("PMU")
    assert p.leaf(0xA) == (0, 0, 0, 0) and p.pmu()["version"] == 0
    assert p.has("DS")                                  # PMU only clears leaf 0xA
    assert c.pmu()["version"] == 3
    q = c.without("PMU", "PDCM")
    assert q.leaf(0xA) == (0, 0, 0, 0) and not q.has("PDCM")
    assert c.without() == c


def test_cpuid_bad_inputs():
    c = CPUID.default("haswell")
    with pytest.raises(ValueError, match="feature must be one of"):
        c.has("PEBS")
    with pytest.raises(TypeError, match="feature"):
        c.without(21)
    with pytest.raises(ValueError, match="function"):
        c.leaf(-1)
    with pytest.raises(TypeError, match="function"):
        c.leaf("1")
    assert c.leaf(0x8000_0001) == (0, 0, 0, 0)        # unknown leaves read as zeros
    with pytest.raises(ValueError, match=r"leaves\[0x1\]"):
        CPUID.Cpuid({1: (1, 2, 3)})
    with pytest.raises(ValueError, match="leaves"):
        CPUID.Cpuid({1: (1, 2, 3, 1 << 32)})
    with pytest.raises(TypeError, match="leaves"):
        CPUID.Cpuid([(1, 2, 3, 4)])
    with pytest.raises(ValueError, match="cpu must be one of"):
        CPUID.default("k6")


def test_cpuid_keeps_a_private_copy():
    leaves = {1: (0, 0, 0, 1 << 21)}
    c = CPUID.Cpuid(leaves)
    leaves[1] = (0, 0, 0, 0)
    assert c.has("DS")


def test_cpuid_table_text():
    t = CPUID.default("icelake").table()
    assert "CPUID.0x01" in t and "CPUID.0x0a" in t
    assert "DS=1, DTES64=1, PDCM=1" in t
    assert "DS=0" in CPUID.default("icelake").without("DS").table()
