"""MSR numbers and bit fields of the Intel PMU, named as Linux names them.

Models the constants of arch/x86/include/asm/msr-index.h and
arch/x86/include/asm/perf_event.h (values checked against the sources cited
in the project's FACTS notes, sections b.1-b.6). Everything here is a plain
integer so numba code can use it as a compile-time constant.
"""

from __future__ import annotations

import builtins

# --- b.1 MSR numbers -------------------------------------------------------
MSR_IA32_PERFCTR0 = 0x0C1          # legacy alias: 32-bit writes, sign-extended
MSR_IA32_PMC0 = 0x4C1              # full-width alias (PERF_CAPABILITIES.FW_WRITES)
MSR_P6_EVNTSEL0 = 0x186            # IA32_PERFEVTSEL0 (Linux: MSR_P6_EVNTSEL0)
MSR_ARCH_PERFMON_EVENTSEL0 = MSR_P6_EVNTSEL0
MSR_CORE_PERF_FIXED_CTR0 = 0x309   # INST_RETIRED.ANY
MSR_CORE_PERF_FIXED_CTR1 = 0x30A   # CPU_CLK_UNHALTED.CORE
MSR_CORE_PERF_FIXED_CTR2 = 0x30B   # CPU_CLK_UNHALTED.REF
MSR_CORE_PERF_FIXED_CTR3 = 0x30C   # TOPDOWN.SLOTS (Ice Lake)
MSR_CORE_PERF_FIXED_CTR_CTRL = 0x38D
MSR_CORE_PERF_GLOBAL_STATUS = 0x38E
MSR_CORE_PERF_GLOBAL_CTRL = 0x38F
MSR_CORE_PERF_GLOBAL_OVF_CTRL = 0x390
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_DEBUGCTLMSR = 0x1D9       # IA32_DEBUGCTL (SDM Vol. 3B, 17.4.1)
MSR_IA32_PERF_CAPABILITIES = 0x345
MSR_IA32_PEBS_ENABLE = 0x3F1
MSR_PEBS_DATA_CFG = 0x3F2
MSR_PEBS_LD_LAT_THRESHOLD = 0x3F6
MSR_IA32_DS_AREA = 0x600

INTEL_PMC_MAX_GENERIC = 8
INTEL_PMC_MAX_FIXED = 4
INTEL_PMC_IDX_FIXED = 32           # fixed counter i is bit 32+i in GLOBAL_*

# --- b.2 IA32_PERFEVTSELx ---------------------------------------------------
ARCH_PERFMON_EVENTSEL_EVENT = 0x000000FF
ARCH_PERFMON_EVENTSEL_UMASK = 0x0000FF00
ARCH_PERFMON_EVENTSEL_USR = 1 << 16
ARCH_PERFMON_EVENTSEL_OS = 1 << 17
ARCH_PERFMON_EVENTSEL_EDGE = 1 << 18
ARCH_PERFMON_EVENTSEL_PIN_CONTROL = 1 << 19
ARCH_PERFMON_EVENTSEL_INT = 1 << 20
ARCH_PERFMON_EVENTSEL_ANY = 1 << 21
ARCH_PERFMON_EVENTSEL_ENABLE = 1 << 22
ARCH_PERFMON_EVENTSEL_INV = 1 << 23
ARCH_PERFMON_EVENTSEL_CMASK = 0xFF000000
ARCH_PERFMON_EVENTSEL_CMASK_SHIFT = 24
HSW_IN_TX = 1 << 32
HSW_IN_TX_CHECKPOINTED = 1 << 33
ICL_EVENTSEL_ADAPTIVE = 1 << 34

EVENTSEL_FIELDS = (
    # (name, low bit, width) -- the layout table notebook 01 prints
    ("event_select", 0, 8),
    ("umask", 8, 8),
    ("usr", 16, 1),
    ("os", 17, 1),
    ("edge", 18, 1),
    ("pc", 19, 1),
    ("int", 20, 1),
    ("any", 21, 1),
    ("en", 22, 1),
    ("inv", 23, 1),
    ("cmask", 24, 8),
    ("in_tx", 32, 1),
    ("in_txcp", 33, 1),
    ("adaptive", 34, 1),
)

# --- b.3 IA32_FIXED_CTR_CTRL: 4 bits per counter ----------------------------
INTEL_FIXED_BITS_STRIDE = 4
INTEL_FIXED_0_KERNEL = 1 << 0
INTEL_FIXED_0_USER = 1 << 1
INTEL_FIXED_0_ANYTHREAD = 1 << 2
INTEL_FIXED_0_ENABLE_PMI = 1 << 3
ICL_FIXED_0_ADAPTIVE = 1 << 32

# --- b.4 GLOBAL_STATUS bits --------------------------------------------------
GLOBAL_STATUS_COND_CHG_BIT = 63
GLOBAL_STATUS_BUFFER_OVF_BIT = 62
GLOBAL_STATUS_UNC_OVF_BIT = 61
GLOBAL_STATUS_TRACE_TOPAPMI_BIT = 55
GLOBAL_STATUS_COND_CHG = 1 << 63
GLOBAL_STATUS_BUFFER_OVF = 1 << 62

# --- b.5 IA32_PEBS_ENABLE (pre-Ice Lake layout) -----------------------------
PEBS_EN_PMC_MASK = 0xF             # bits 0-3: PEBS on PMC0..3
PEBS_LL_EN_SHIFT = 32              # bits 32-35: load latency on PMC0..3
PEBS_PS_ENABLE = 1 << 63           # precise store (SNB: PMC3 only)
PATCH_PEBS_ENABLE_VALID = 0xF0000000F  # the 2014 patch accepts exactly these bits

# --- b.6 IA32_PERF_CAPABILITIES ---------------------------------------------
PERF_CAP_LBR_FMT = 0x3F
PERF_CAP_PEBS_TRAP = 1 << 6
PERF_CAP_ARCH_REG = 1 << 7
PERF_CAP_PEBS_FORMAT = 0xF << 8
PERF_CAP_PEBS_FORMAT_SHIFT = 8
PERF_CAP_FREEZE_WHILE_SMM = 1 << 12
PERF_CAP_FW_WRITES = 1 << 13
PERF_CAP_PEBS_BASELINE = 1 << 14
PERF_CAP_PERF_METRICS = 1 << 15
PERF_CAP_PT_IDX = 1 << 16
PERF_CAP_PEBS_TIMING_INFO = 1 << 17

PERF_CAP_FIELDS = (
    ("lbr_fmt", 0, 6),
    ("pebs_trap", 6, 1),
    ("pebs_arch_reg", 7, 1),
    ("pebs_format", 8, 4),
    ("freeze_while_smm", 12, 1),
    ("fw_writes", 13, 1),
    ("pebs_baseline", 14, 1),
    ("perf_metrics", 15, 1),
    ("pebs_output_pt", 16, 1),
    ("pebs_timing_info", 17, 1),
)

# --- IA32_DEBUGCTL (SDM Vol. 3B, 17.4.1, Figure 17-3; Linux msr-index.h) ------
DEBUGCTLMSR_LBR = 1 << 0           # record a running trace of branches in the LBR stack
DEBUGCTLMSR_BTF = 1 << 1           # single-step on branches
DEBUGCTLMSR_TR = 1 << 6            # send branch trace messages
DEBUGCTLMSR_BTS = 1 << 7           # store branch trace in the BTS buffer
DEBUGCTLMSR_BTINT = 1 << 8         # interrupt when the BTS buffer is full
DEBUGCTLMSR_BTS_OFF_OS = 1 << 9
DEBUGCTLMSR_BTS_OFF_USR = 1 << 10
DEBUGCTLMSR_FREEZE_LBRS_ON_PMI = 1 << 11
DEBUGCTLMSR_FREEZE_PERFMON_ON_PMI = 1 << 12
DEBUGCTLMSR_FREEZE_IN_SMM = 1 << 14   # needs PERF_CAPABILITIES.FREEZE_WHILE_SMM
DEBUGCTLMSR_RTM_DEBUG = 1 << 15    # advanced debugging of RTM regions (TSX parts)

# --- IA32_MISC_ENABLE ---------------------------------------------------------
MSR_IA32_MISC_ENABLE_EMON = 1 << 7
MSR_IA32_MISC_ENABLE_BTS_UNAVAIL = 1 << 11
MSR_IA32_MISC_ENABLE_PEBS_UNAVAIL = 1 << 12

# --- MSR_PEBS_DATA_CFG (b / a.3) ---------------------------------------------
PEBS_DATACFG_MEMINFO = 1 << 0
PEBS_DATACFG_GP = 1 << 1
PEBS_DATACFG_XMMS = 1 << 2
PEBS_DATACFG_LBRS = 1 << 3
PEBS_DATACFG_LBR_SHIFT = 24
KVM_PEBS_DATA_CFG_VALID = 0xFF00000F  # upstream KVM: only bits 3:0 and 31:24

MSR_NAMES: dict[int, str] = {}


def _register_names() -> None:
    for name, value in list(globals().items()):
        if name.startswith("MSR_") and isinstance(value, int) and name != "MSR_NAMES":
            if name in ("MSR_ARCH_PERFMON_EVENTSEL0",):
                continue
            if not name.startswith("MSR_IA32_MISC_ENABLE_"):
                MSR_NAMES.setdefault(value, name)
    for i in range(INTEL_PMC_MAX_GENERIC):
        MSR_NAMES[MSR_IA32_PERFCTR0 + i] = f"MSR_IA32_PERFCTR{i}"
        MSR_NAMES[MSR_IA32_PMC0 + i] = f"MSR_IA32_PMC{i}"
        MSR_NAMES[MSR_P6_EVNTSEL0 + i] = f"MSR_P6_EVNTSEL{i}"
    for i in range(INTEL_PMC_MAX_FIXED):
        MSR_NAMES[MSR_CORE_PERF_FIXED_CTR0 + i] = f"MSR_CORE_PERF_FIXED_CTR{i}"


_register_names()


def msr_name(index: int) -> str:
    """Return the Linux name of an MSR number, or its hex value if unknown.

    pebslab only (the names follow arch/x86/include/asm/msr-index.h).
    """
    if not isinstance(index, int) or isinstance(index, bool):
        raise TypeError(f"index must be an int MSR number; got {type(index).__name__}")
    return MSR_NAMES.get(index, f"MSR 0x{index:x}")


def _fields(value: int, fields) -> dict[str, int]:
    return {name: (value >> lo) & ((1 << width) - 1) for name, lo, width in fields}


def _check_u64(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if not 0 <= value < 1 << 64:
        raise ValueError(f"{name} must be in 0..2**64-1; got {value:#x}" if value >= 0
                         else f"{name} must be in 0..2**64-1; got {value}")
    return value


def decode_eventsel(value: int) -> dict[str, int]:
    """Split an IA32_PERFEVTSELx value into its named bit fields.

    pebslab only; the layout is the SDM's (Vol. 3B, "IA32_PERFEVTSELx MSRs").
    """
    return _fields(_check_u64("value", value), EVENTSEL_FIELDS)


def encode_eventsel(event_select: int = 0, umask: int = 0, *, usr: bool = True,
                    os: bool = True, edge: bool = False, pc: bool = False,
                    int: bool = False, any: bool = False, en: bool = True,
                    inv: bool = False, cmask: int = 0, in_tx: bool = False,
                    in_txcp: bool = False, adaptive: bool = False) -> int:
    """Compose an IA32_PERFEVTSELx value from named fields.

    pebslab only; the inverse of :func:`decode_eventsel`.
    """
    for name, v, hi in (("event_select", event_select, 0xFF), ("umask", umask, 0xFF),
                        ("cmask", cmask, 0xFF)):
        if not isinstance(v, builtins.int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int; got {type(v).__name__}")
        if not 0 <= v <= hi:
            raise ValueError(f"{name} must be in 0..{hi:#x}; got {v:#x}" if v >= 0
                             else f"{name} must be in 0..{hi:#x}; got {v}")
    flags = dict(usr=usr, os=os, edge=edge, pc=pc, int=int, any=any, en=en, inv=inv,
                 in_tx=in_tx, in_txcp=in_txcp, adaptive=adaptive)
    for name, v in flags.items():
        if not isinstance(v, builtins.int) or v not in (0, 1):
            raise TypeError(f"{name} must be True or False; got {v!r}")
    value = event_select | umask << 8 | cmask << 24
    for name, lo, width in EVENTSEL_FIELDS:
        if width == 1 and flags[name]:
            value |= 1 << lo
    return value


def decode_perf_capabilities(value: int) -> dict[str, int]:
    """Split an IA32_PERF_CAPABILITIES value into its named fields.

    pebslab only; bit positions as in msr-index.h (PERF_CAP_*).
    """
    return _fields(_check_u64("value", value), PERF_CAP_FIELDS)


def fixed_ctrl_bits(ctrl: int, idx: int) -> int:
    """Return the 4 control bits of fixed counter ``idx`` in IA32_FIXED_CTR_CTRL.

    Models fixed_ctrl_field() in arch/x86/kvm/pmu.h.
    """
    _check_u64("ctrl", ctrl)
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < INTEL_PMC_MAX_FIXED:
        raise ValueError(f"idx must be in 0..{INTEL_PMC_MAX_FIXED - 1}; got {idx!r}")
    return (ctrl >> (idx * INTEL_FIXED_BITS_STRIDE)) & 0xF
