"""Tests for pebslab.hw.msr: MSR numbers and bit fields of the Intel PMU.

Every expected number is written out from FACTS.md section b (b.1-b.6),
with the source FACTS cites, not read back from the module.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pebslab.hw import msr as M

# --- b.1 MSR numbers [KUT lib/x86/msr.h; linux perf_event.h] -------------------
MSR_NUMBERS = {
    "MSR_IA32_PERFCTR0": 0xC1,
    "MSR_IA32_PMC0": 0x4C1,
    "MSR_P6_EVNTSEL0": 0x186,
    "MSR_CORE_PERF_FIXED_CTR0": 0x309,
    "MSR_CORE_PERF_FIXED_CTR1": 0x30A,
    "MSR_CORE_PERF_FIXED_CTR2": 0x30B,
    "MSR_CORE_PERF_FIXED_CTR3": 0x30C,
    "MSR_CORE_PERF_FIXED_CTR_CTRL": 0x38D,
    "MSR_CORE_PERF_GLOBAL_STATUS": 0x38E,
    "MSR_CORE_PERF_GLOBAL_CTRL": 0x38F,
    "MSR_CORE_PERF_GLOBAL_OVF_CTRL": 0x390,
    "MSR_IA32_MISC_ENABLE": 0x1A0,
    "MSR_IA32_PERF_CAPABILITIES": 0x345,
    "MSR_IA32_PEBS_ENABLE": 0x3F1,
    "MSR_PEBS_DATA_CFG": 0x3F2,
    "MSR_PEBS_LD_LAT_THRESHOLD": 0x3F6,
    "MSR_IA32_DS_AREA": 0x600,
}


@pytest.mark.parametrize("name,number", sorted(MSR_NUMBERS.items()))
def test_msr_numbers(name, number):
    assert getattr(M, name) == number


def test_msr_names_follow_linux():
    assert M.msr_name(0x3F1) == "MSR_IA32_PEBS_ENABLE"
    assert M.msr_name(0x600) == "MSR_IA32_DS_AREA"
    assert M.msr_name(0xC1 + 3) == "MSR_IA32_PERFCTR3"
    assert M.msr_name(0x4C1 + 1) == "MSR_IA32_PMC1"
    assert M.msr_name(0x186 + 7) == "MSR_P6_EVNTSEL7"
    assert M.msr_name(0x30A) == "MSR_CORE_PERF_FIXED_CTR1"
    assert M.msr_name(0x38F) == "MSR_CORE_PERF_GLOBAL_CTRL"
    assert M.msr_name(0x1234) == "MSR 0x1234"
    with pytest.raises(TypeError, match="index"):
        M.msr_name(True)
    with pytest.raises(TypeError, match="index"):
        M.msr_name("0x600")


def test_counter_index_layout():
    # b.4: GP counter i -> GLOBAL bit i, fixed counter i -> bit 32 + i
    assert M.INTEL_PMC_IDX_FIXED == 32
    assert M.INTEL_PMC_MAX_GENERIC == 8
    assert M.INTEL_PMC_MAX_FIXED == 4


# --- b.2 IA32_PERFEVTSELx ---------------------------------------------------------
EVTSEL_BITS = {"usr": 16, "os": 17, "edge": 18, "pc": 19, "int": 20, "any": 21, "en": 22,
               "inv": 23, "in_tx": 32, "in_txcp": 33, "adaptive": 34}


def test_eventsel_bits():
    assert M.ARCH_PERFMON_EVENTSEL_EVENT == 0xFF
    assert M.ARCH_PERFMON_EVENTSEL_UMASK == 0xFF00
    assert M.ARCH_PERFMON_EVENTSEL_USR == 1 << 16
    assert M.ARCH_PERFMON_EVENTSEL_OS == 1 << 17
    assert M.ARCH_PERFMON_EVENTSEL_EDGE == 1 << 18
    assert M.ARCH_PERFMON_EVENTSEL_PIN_CONTROL == 1 << 19
    assert M.ARCH_PERFMON_EVENTSEL_INT == 1 << 20
    assert M.ARCH_PERFMON_EVENTSEL_ANY == 1 << 21
    assert M.ARCH_PERFMON_EVENTSEL_ENABLE == 1 << 22
    assert M.ARCH_PERFMON_EVENTSEL_INV == 1 << 23
    assert M.ARCH_PERFMON_EVENTSEL_CMASK == 0xFF000000
    assert M.ARCH_PERFMON_EVENTSEL_CMASK_SHIFT == 24
    assert M.HSW_IN_TX == 1 << 32
    assert M.HSW_IN_TX_CHECKPOINTED == 1 << 33
    assert M.ICL_EVENTSEL_ADAPTIVE == 1 << 34


def test_eventsel_field_table():
    fields = {name: (lo, width) for name, lo, width in M.EVENTSEL_FIELDS}
    assert fields["event_select"] == (0, 8)
    assert fields["umask"] == (8, 8)
    assert fields["cmask"] == (24, 8)
    for name, bit in EVTSEL_BITS.items():
        assert fields[name] == (bit, 1), name
    assert len(fields) == 3 + len(EVTSEL_BITS)


def test_decode_kut_tsx_eventsel():
    # KUT check_tsx_cycles: 0x30000003c on GP counter 2 = cycles + IN_TX + IN_TXCP
    d = M.decode_eventsel(0x30000003C)
    assert d["event_select"] == 0x3C and d["umask"] == 0
    assert d["in_tx"] == 1 and d["in_txcp"] == 1 and d["en"] == 0


def test_encode_known_values():
    # INST_RETIRED (0xc0) in user and kernel mode, enabled: 0x4300c0
    assert M.encode_eventsel(0xC0) == 0xC0 | 1 << 16 | 1 << 17 | 1 << 22 == 0x4300C0
    assert M.encode_eventsel(0xC0, usr=False, os=False, en=False) == 0xC0
    assert M.encode_eventsel(0x3C, 1, int=True, cmask=2, inv=True, edge=True) == \
        0x3C | 1 << 8 | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 20 | 1 << 22 | 1 << 23 | 2 << 24
    assert M.encode_eventsel(0xC0, adaptive=True) >> 34 & 1


_flags = {name: st.booleans() for name in EVTSEL_BITS}


@settings(max_examples=200, deadline=None)
@given(event_select=st.integers(0, 255), umask=st.integers(0, 255), cmask=st.integers(0, 255),
       **_flags)
def test_encode_decode_round_trip(event_select, umask, cmask, **flags):
    v = M.encode_eventsel(event_select, umask, cmask=cmask, **flags)
    d = M.decode_eventsel(v)
    assert d["event_select"] == event_select and d["umask"] == umask and d["cmask"] == cmask
    for name, bit in EVTSEL_BITS.items():
        assert d[name] == int(flags[name])
        assert (v >> bit) & 1 == int(flags[name])
    assert M.encode_eventsel(**d) == v


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (1 << 35) - 1))
def test_decode_encode_round_trip_on_defined_bits(value):
    # bits 0-34 are all defined fields (FACTS b.2); decode then encode gives them back
    assert M.encode_eventsel(**M.decode_eventsel(value)) == value


@pytest.mark.parametrize("kw,exc,name", [
    (dict(event_select=256), ValueError, "event_select"),
    (dict(event_select=-1), ValueError, "event_select"),
    (dict(umask=0x100), ValueError, "umask"),
    (dict(cmask=300), ValueError, "cmask"),
    (dict(cmask="1"), TypeError, "cmask"),
    (dict(event_select=1.0), TypeError, "event_select"),
    (dict(usr=2), TypeError, "usr"),
    (dict(int="yes"), TypeError, "int"),
])
def test_encode_rejects_bad_fields(kw, exc, name):
    with pytest.raises(exc, match=name):
        M.encode_eventsel(**kw)


@pytest.mark.parametrize("fn", [M.decode_eventsel, M.decode_perf_capabilities])
def test_decoders_reject_bad_values(fn):
    with pytest.raises(ValueError, match="value"):
        fn(-1)
    with pytest.raises(ValueError, match="value"):
        fn(1 << 64)
    with pytest.raises(TypeError, match="value"):
        fn(1.0)
    with pytest.raises(TypeError, match="value"):
        fn(True)


# --- b.3 IA32_FIXED_CTR_CTRL --------------------------------------------------------

def test_fixed_ctr_ctrl_bits():
    assert M.INTEL_FIXED_BITS_STRIDE == 4
    assert M.INTEL_FIXED_0_KERNEL == 1          # OS (ring 0)
    assert M.INTEL_FIXED_0_USER == 2
    assert M.INTEL_FIXED_0_ANYTHREAD == 4
    assert M.INTEL_FIXED_0_ENABLE_PMI == 8
    assert M.ICL_FIXED_0_ADAPTIVE == 1 << 32


def test_fixed_ctrl_bits():
    ctrl = 0xB | 0x3 << 4 | 0x8 << 8 | 0xA << 12      # KUT programs 0xB per counter
    assert [M.fixed_ctrl_bits(ctrl, i) for i in range(4)] == [0xB, 0x3, 0x8, 0xA]
    assert M.fixed_ctrl_bits(0x1111 << 32 | 0xF0, 1) == 0xF      # adaptive bits ignored
    for bad in (4, -1, True, "1"):
        with pytest.raises(ValueError, match="idx"):
            M.fixed_ctrl_bits(0, bad)
    with pytest.raises(ValueError, match="ctrl"):
        M.fixed_ctrl_bits(1 << 64, 0)


# --- b.4 GLOBAL_STATUS ---------------------------------------------------------------

def test_global_status_bits():
    assert M.GLOBAL_STATUS_COND_CHG_BIT == 63
    assert M.GLOBAL_STATUS_BUFFER_OVF_BIT == 62
    assert M.GLOBAL_STATUS_UNC_OVF_BIT == 61
    assert M.GLOBAL_STATUS_TRACE_TOPAPMI_BIT == 55
    assert M.GLOBAL_STATUS_COND_CHG == 1 << 63
    assert M.GLOBAL_STATUS_BUFFER_OVF == 1 << 62


# --- b.5 IA32_PEBS_ENABLE ------------------------------------------------------------

def test_pebs_enable_bits():
    assert M.PEBS_EN_PMC_MASK == 0xF             # PEBS_EN_PMC0..3
    assert M.PEBS_LL_EN_SHIFT == 32              # LL_EN_PMC0..3 at 32..35
    assert M.PEBS_PS_ENABLE == 1 << 63
    assert M.PATCH_PEBS_ENABLE_VALID == 0xF | 0xF << 32


# --- b.6 IA32_PERF_CAPABILITIES ------------------------------------------------------

PERF_CAP_FIELDS = {"lbr_fmt": (0, 6), "pebs_trap": (6, 1), "pebs_arch_reg": (7, 1),
                   "pebs_format": (8, 4), "freeze_while_smm": (12, 1), "fw_writes": (13, 1),
                   "pebs_baseline": (14, 1), "perf_metrics": (15, 1),
                   "pebs_output_pt": (16, 1), "pebs_timing_info": (17, 1)}


def test_perf_capabilities_bits():
    assert M.PERF_CAP_LBR_FMT == 0x3F
    assert M.PERF_CAP_PEBS_TRAP == 1 << 6
    assert M.PERF_CAP_ARCH_REG == 1 << 7
    assert M.PERF_CAP_PEBS_FORMAT == 0xF00
    assert M.PERF_CAP_PEBS_FORMAT_SHIFT == 8
    assert M.PERF_CAP_FREEZE_WHILE_SMM == 1 << 12
    assert M.PERF_CAP_FW_WRITES == 1 << 13
    assert M.PERF_CAP_PEBS_BASELINE == 1 << 14
    assert M.PERF_CAP_PERF_METRICS == 1 << 15
    assert M.PERF_CAP_PT_IDX == 1 << 16
    assert M.PERF_CAP_PEBS_TIMING_INFO == 1 << 17
    assert {n: (lo, w) for n, lo, w in M.PERF_CAP_FIELDS} == PERF_CAP_FIELDS


def test_decode_perf_capabilities():
    v = 0x5 | 1 << 6 | 1 << 7 | 4 << 8 | 1 << 13 | 1 << 14
    d = M.decode_perf_capabilities(v)
    assert d == {"lbr_fmt": 5, "pebs_trap": 1, "pebs_arch_reg": 1, "pebs_format": 4,
                 "freeze_while_smm": 0, "fw_writes": 1, "pebs_baseline": 1,
                 "perf_metrics": 0, "pebs_output_pt": 0, "pebs_timing_info": 0}
    assert M.decode_perf_capabilities(1 << 17)["pebs_timing_info"] == 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_decode_perf_capabilities_fields_are_the_bits(v):
    d = M.decode_perf_capabilities(v)
    for name, (lo, width) in PERF_CAP_FIELDS.items():
        assert d[name] == (v >> lo) & ((1 << width) - 1)


# --- IA32_MISC_ENABLE and PEBS_DATA_CFG -----------------------------------------------

def test_misc_enable_bits():
    assert M.MSR_IA32_MISC_ENABLE_EMON == 1 << 7
    assert M.MSR_IA32_MISC_ENABLE_BTS_UNAVAIL == 1 << 11
    assert M.MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL == 1 << 12


def test_pebs_data_cfg_bits():
    # FACTS a.3: 0 MEMINFO, 1 GP, 2 XMMS, 3 LBRS, LBR count at 31:24; KVM mask ~0xff00000f
    assert (M.PEBS_DATACFG_MEMINFO, M.PEBS_DATACFG_GP, M.PEBS_DATACFG_XMMS,
            M.PEBS_DATACFG_LBRS) == (1, 2, 4, 8)
    assert M.PEBS_DATACFG_LBR_SHIFT == 24
    assert M.KVM_PEBS_DATA_CFG_VALID == 0xFF00000F
