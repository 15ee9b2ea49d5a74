"""Checkers for notebook 04 (CPUID, PERF_CAPABILITIES and MSR interception).

pebslab only. The right answers come from the real KVM model: every case
value is written to IA32_PEBS_ENABLE by a guest WRMSR on a fresh Silvermont
VM, and "accepted" versus ``GuestFault`` (#GP) is what the learner's
function must predict.
"""

from __future__ import annotations

import numpy as np

from ._base import run_cases

__all__ = ["ex04_valid_pebs_enable", "ex04_slm_pebs_enable"]


def _values() -> list[int]:
    """The PEBS_ENABLE values every checker tries: edges, single bits, mixtures."""
    vals = [0x0, 0x1, 0x2, 0x3, 0xF, 0x10, 0x1F, 0xF0, 0x100000000, 0x100000001,
            0x300000003, 0xF0000000F, 0x1F0000000F, 0xF8000000F, 1 << 63, (1 << 63) | 1,
            (1 << 64) - 1, 0xFFFFFFFF, 0x80000000, 0x8000000000, 0x700000000, 0x4]
    vals += [1 << b for b in range(64)]
    rng = np.random.default_rng(4)
    for _ in range(24):
        bits = rng.choice(64, size=int(rng.integers(1, 4)), replace=False)
        vals.append(sum(1 << int(b) for b in bits))
    out, seen = [], set()
    for v in vals:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _kvm_verdicts(**knobs) -> dict[int, bool]:
    """For each value: does a guest WRMSR to PEBS_ENABLE succeed (True) or #GP (False)?"""
    import pebslab as pl
    from pebslab.hw import msr as M
    host = pl.Host(cpu="silvermont", frames=128, seed=0)
    vm = host.create_vm(design="patch", memory_pages=32, **knobs)
    vcpu = vm.vcpus[0]
    out = {}
    for v in _values():
        try:
            vcpu.wrmsr(M.MSR_IA32_PEBS_ENABLE, v)
            out[v] = True
            vcpu.wrmsr(M.MSR_IA32_PEBS_ENABLE, 0)
        except pl.GuestFault:
            out[v] = False
    return out


def _is_bool_answer(got, expected) -> bool:
    if isinstance(got, (bool, np.bool_)) or (isinstance(got, (int, np.integer))
                                             and int(got) in (0, 1)):
        return bool(got) == expected
    return False


def ex04_valid_pebs_enable(candidate, *, quiet=False, strict=False):
    """Check ``is_valid(value) -> bool``: does the patch accept this PEBS_ENABLE value?

    Expected answers: a guest WRMSR on a `patch` VM (kvm_pmu_set_msr's
    MSR_IA32_PEBS_ENABLE case), for edge values, every single bit and
    seeded random mixtures.
    """
    verdicts = _kvm_verdicts()
    cases = [(f"value={v:#x}", (v,), ok) for v, ok in verdicts.items()]
    return run_cases(
        "ex04_valid_pebs_enable", candidate, cases, compare=_is_bool_answer,
        hint=("the patch's PEBS_ENABLE case is a single mask test (find the constant in "
              "the seed's kvm_pmu_set_msr hunk, or pl.msr.PATCH_PEBS_ENABLE_VALID): a value "
              "is refused as soon as it sets one bit outside the mask. Bits 0-3 are PEBS on "
              "PMC0-3, bits 32-35 their load-latency twins. Return a bool."),
        strict=strict, quiet=quiet)


def ex04_slm_pebs_enable(candidate, *, quiet=False, strict=False):
    """Check ``is_valid_slm(value) -> bool``: the PEBS_ENABLE check Silvermont needs.

    Expected answers: a guest WRMSR on a Silvermont VM whose design uses the
    CPU's own PEBS counters (design knob ``pebs_enable_mask='model'``, the
    correction the `fixed` design makes): PEBS on PMC0 (bit 0) and PMC0's
    load-latency bit (32).
    """
    verdicts = _kvm_verdicts(pebs_enable_mask="model")
    cases = [(f"value={v:#x}", (v,), ok) for v, ok in verdicts.items()]
    return run_cases(
        "ex04_slm_pebs_enable", candidate, cases, compare=_is_bool_answer,
        hint=("Silvermont has PEBS on PMC0 only (pl.get_model('silvermont')."
              "pebs_counter_mask). Keep that counter's PEBS bit and its load-latency twin "
              "32 bits higher; everything else is reserved."),
        strict=strict, quiet=quiet)
