"""CPUID leaves 0x1 and 0xA: the feature bits and PMU description a guest sees.

pebslab only. Bit positions as in arch/x86/include/asm/cpufeatures.h and
the SDM (FACTS b.7): CPUID.1:EDX.DS[21], CPUID.1:ECX.DTES64[2],
CPUID.1:ECX.PDCM[15]; leaf 0xA as decoded by Linux's union cpuid10_eax/edx.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .models import CpuModel, get_model

EAX, EBX, ECX, EDX = range(4)
REG_NAMES = ("eax", "ebx", "ecx", "edx")

#: name -> (leaf, register, bit)
FEATURES: dict[str, tuple[int, int, int]] = {
    # CPUID.1:EDX
    "FPU": (1, EDX, 0), "TSC": (1, EDX, 4), "MSR": (1, EDX, 5), "APIC": (1, EDX, 9),
    "MTRR": (1, EDX, 12), "CMOV": (1, EDX, 15), "CLFLUSH": (1, EDX, 19),
    "DS": (1, EDX, 21), "ACPI": (1, EDX, 22), "MMX": (1, EDX, 23), "FXSR": (1, EDX, 24),
    "XMM": (1, EDX, 25), "XMM2": (1, EDX, 26),
    # CPUID.1:ECX
    "XMM3": (1, ECX, 0), "PCLMULQDQ": (1, ECX, 1), "DTES64": (1, ECX, 2),
    "MONITOR": (1, ECX, 3), "VMX": (1, ECX, 5), "SSSE3": (1, ECX, 9), "FMA": (1, ECX, 12),
    "CX16": (1, ECX, 13), "PDCM": (1, ECX, 15), "PCID": (1, ECX, 17), "XMM4_1": (1, ECX, 19),
    "XMM4_2": (1, ECX, 20), "X2APIC": (1, ECX, 21), "MOVBE": (1, ECX, 22),
    "POPCNT": (1, ECX, 23), "AES": (1, ECX, 25), "XSAVE": (1, ECX, 26), "AVX": (1, ECX, 28),
    "HYPERVISOR": (1, ECX, 31),
}

# What each model advertises in leaf 1 besides the PMU bits (a plausible set).
_BASE_EDX = ("FPU", "TSC", "MSR", "APIC", "MTRR", "CMOV", "CLFLUSH", "MMX", "FXSR", "XMM", "XMM2")
_BASE_ECX = ("XMM3", "PCLMULQDQ", "MONITOR", "SSSE3", "CX16", "XMM4_1", "XMM4_2", "X2APIC",
             "MOVBE", "POPCNT", "AES")
_PMU_FEATURES = ("DS", "DTES64", "PDCM")


@dataclass(frozen=True)
class Cpuid:
    """A set of CPUID leaves (only 0x1 and 0xA are modeled), immutable.

    pebslab only; the guest-visible table that userspace hands KVM with
    KVM_SET_CPUID2 and that kvm_pmu_cpuid_update() reads.
    """

    leaves: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.leaves, dict):
            raise TypeError(f"leaves must be a dict {{function: (eax, ebx, ecx, edx)}}; "
                            f"got {type(self.leaves).__name__}")
        clean = {}
        for fn, regs in self.leaves.items():
            if not isinstance(fn, int) or isinstance(fn, bool) or not 0 <= fn < 1 << 32:
                raise ValueError(f"leaves keys must be CPUID functions 0..0xffffffff; got {fn!r}")
            regs = tuple(regs) if isinstance(regs, (tuple, list)) else regs
            if (not isinstance(regs, tuple) or len(regs) != 4
                    or not all(isinstance(r, int) and not isinstance(r, bool)
                               and 0 <= r < 1 << 32 for r in regs)):
                raise ValueError(f"leaves[{fn:#x}] must be 4 register values (eax, ebx, ecx, "
                                 f"edx), each 0..0xffffffff; got {regs!r}")
            clean[fn] = regs
        object.__setattr__(self, "leaves", clean)   # a private copy: Cpuid is immutable

    def leaf(self, function: int) -> tuple[int, int, int, int]:
        """Return (eax, ebx, ecx, edx) of a leaf; unknown leaves read as zeros."""
        if not isinstance(function, int) or isinstance(function, bool):
            raise TypeError(f"function must be an int; got {type(function).__name__}")
        if not 0 <= function < 1 << 32:
            raise ValueError(f"function must be in 0..0xffffffff; got {function}")
        return tuple(self.leaves.get(function, (0, 0, 0, 0)))

    def has(self, feature: str) -> bool:
        """True if the named feature bit is set."""
        leaf, reg, bit = _feature(feature)
        return bool(self.leaf(leaf)[reg] >> bit & 1)

    def _set(self, features, value: bool) -> "Cpuid":
        leaves = {k: list(v) for k, v in self.leaves.items()}
        for name in features:
            leaf, reg, bit = _feature(name)
            regs = leaves.setdefault(leaf, [0, 0, 0, 0])
            regs[reg] = regs[reg] | (1 << bit) if value else regs[reg] & ~(1 << bit)
        return replace(self, leaves={k: tuple(v) for k, v in leaves.items()})

    def without(self, *features: str) -> "Cpuid":
        """Return a copy with these feature bits cleared ("PMU" clears leaf 0xA)."""
        out = self
        if "PMU" in features:
            leaves = dict(out.leaves)
            leaves[0xA] = (0, 0, 0, 0)
            out = replace(out, leaves=leaves)
            features = tuple(f for f in features if f != "PMU")
        return out._set(features, False)

    def with_(self, *features: str) -> "Cpuid":
        """Return a copy with these feature bits set."""
        return self._set(features, True)

    def pmu(self) -> dict[str, int]:
        """Decode leaf 0xA: version, counters, widths, unavailable events, fixed mask (v5)."""
        eax, ebx, _ecx, edx = self.leaf(0xA)
        return {
            "version": eax & 0xFF,
            "num_counters": eax >> 8 & 0xFF,
            "bit_width": eax >> 16 & 0xFF,
            "mask_length": eax >> 24 & 0xFF,
            "events_unavailable": ebx,
            "num_counters_fixed": edx & 0x1F,
            "bit_width_fixed": edx >> 5 & 0xFF,
            "fixed_counter_mask": _ecx,
        }

    def table(self) -> str:
        """A short text table of the two leaves (for notebooks)."""
        lines = []
        for fn in (0x1, 0xA):
            regs = self.leaf(fn)
            lines.append(f"CPUID.{fn:#04x}: " + "  ".join(
                f"{n}={v:#010x}" for n, v in zip(REG_NAMES, regs)))
        pmu_bits = ", ".join(f"{f}={int(self.has(f))}" for f in _PMU_FEATURES)
        lines.append(f"PEBS-related bits: {pmu_bits}")
        return "\n".join(lines)


def _feature(name: str) -> tuple[int, int, int]:
    if not isinstance(name, str):
        raise TypeError(f"feature must be a str; got {type(name).__name__}")
    try:
        return FEATURES[name.upper()]
    except KeyError:
        raise ValueError(f"feature must be one of {', '.join(FEATURES)}; got {name!r}") from None


def default(cpu) -> Cpuid:
    """The CPUID a host of this model reports (and KVM passes to a guest by default).

    Models what the host CPU reports; KVM's filtering of it lives in
    pebslab.kvm (kvm_set_cpu_caps / __do_cpuid_ent in arch/x86/kvm/cpuid.c).
    """
    model: CpuModel = get_model(cpu)
    signature = (model.family << 8) | ((model.model & 0xF) << 4) | ((model.model >> 4) << 16)
    out = Cpuid({0x1: (signature, 0, 0, 0)})
    out = out.with_(*_BASE_EDX, *_BASE_ECX, *_PMU_FEATURES)
    eax = (model.pmu_version | model.n_gp << 8 | model.width << 16 | 7 << 24)
    edx = model.n_fixed | model.width << 5
    # FACTS b.7: from version 5, ECX is the bitmask of the fixed counters
    ecx = (1 << model.n_fixed) - 1 if model.pmu_version >= 5 else 0
    leaves = dict(out.leaves)
    leaves[0xA] = (eax, 0, ecx, edx)
    return Cpuid(leaves)
