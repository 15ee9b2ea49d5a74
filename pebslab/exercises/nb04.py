"""Checkers for notebook 04 (CPUID, PERF_CAPABILITIES and MSR interception).

pebslab only. Exercise 1: every case value is written to IA32_PEBS_ENABLE
by a guest WRMSR on a fresh Silvermont `patch` VM, and "accepted" versus
``GuestFault`` (#GP) is what the learner's function must predict.
Exercise 2: the same values written by the host kernel to a Silvermont
core (``Core.wrmsr_fault``: PEBS on PMC0 only, no load-latency bits; SDM
18.6.1.1, FACTS g.3). Exercise 3: what a Linux perf driver concludes from a
PERF_CAPABILITIES value (FACTS a.6, a.7, b.6).
"""

from __future__ import annotations

import numpy as np

from ._base import run_cases

__all__ = ["ex04_valid_pebs_enable", "ex04_slm_pebs_enable", "ex04_driver_view"]


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


def _core_verdicts(cpu: str = "silvermont") -> dict[int, bool]:
    """For each value: would a WRMSR of it to PEBS_ENABLE at CPL 0 succeed on ``cpu``?"""
    from pebslab.hw.core import Core
    from pebslab.hw import msr as M
    core = Core(cpu)
    return {v: core.wrmsr_fault(M.MSR_IA32_PEBS_ENABLE, v) is None for v in _values()}


def ex04_slm_pebs_enable(candidate, *, quiet=False, strict=False):
    """Check ``is_valid_slm(value) -> bool``: the PEBS_ENABLE check Silvermont needs.

    Expected answers: what a Silvermont core itself accepts in PEBS_ENABLE
    (``Core.wrmsr_fault``): PEBS on PMC0 (bit 0) only. Silvermont has no
    load-latency facility, so bit 32 is reserved too (SDM 18.6.1.1, FACTS g.3).
    """
    verdicts = _core_verdicts()
    cases = [(f"value={v:#x}", (v,), ok) for v, ok in verdicts.items()]
    res = run_cases("ex04_slm_pebs_enable", candidate, cases, compare=_is_bool_answer,
                    hint="", quiet=True)
    hint = ("Silvermont has PEBS on PMC0 only (pl.get_model('silvermont').pebs_counter_mask); "
            "every other bit is reserved.")
    for desc, expected, got in res.failed:
        v = int(desc.split("=")[1], 16)
        if v >> 32 & 1 and not expected:
            hint = ("you accept bit 32 (load latency on PMC0): Silvermont has no load-latency "
                    "facility (no LL_EN bits, no MSR_PEBS_LD_LAT_THRESHOLD; FACTS g.3), so the "
                    "CPU refuses it. " + hint)
            break
        if v & 0xE and not expected:
            hint = ("you accept a PEBS bit of PMC1-3: on Silvermont only PMC0 can do PEBS. "
                    + hint)
            break
    res.hint = hint
    if not quiet:
        print(res)
    if strict and not res.ok:
        from ._base import CheckFailed
        raise CheckFailed(str(res))
    return res


# ----------------------------------------------------------------------------- exercise 3

_FORMAT_RECORD = {0: 144, 1: 176, 2: 192, 3: 200, 4: 32}    # FACTS a.2, a.3, a.7


def driver_view_expected(cap: int, width: int = 48) -> dict:
    """What a Linux perf driver does with PERF_CAPABILITIES ``cap`` (CPUID has DS, DTES64, PDCM).

    pebslab only; the rules of intel_ds_init() and setup_pebs_*_sample_data()
    in arch/x86/events/intel/ds.c and of intel_pmu_init() in core.c, as
    FACTS a.6, a.7 and b.6 give them: the format in bits 11:8 picks the
    record (0..4 known; anything else is "no PEBS"); ``:pp`` takes the
    eventing IP from format 2 on, else the LBR fix-up if PEBS is trap-like
    (bit 6), else the recorded IP as is; FW_WRITES (bit 13) moves the
    counters to the 0x4C1 aliases and the longest period to
    2**(width-1) - 1, else 2**31 - 1 through the 0xC1 MSRs.
    """
    fmt = cap >> 8 & 0xF
    pebs = fmt in _FORMAT_RECORD
    if not pebs:
        pp = None
    elif fmt >= 2:
        pp = "eventing_ip"
    elif cap >> 6 & 1:
        pp = "lbr_fixup"
    else:
        pp = "as_recorded"
    fw = bool(cap >> 13 & 1)
    return {"pebs": pebs, "record_size": _FORMAT_RECORD.get(fmt, 0), "pp_ip": pp,
            "counter_msr": 0x4C1 if fw else 0xC1,
            "max_period": (1 << (width - 1)) - 1 if fw else (1 << 31) - 1}


def _driver_cases():
    import pebslab as pl
    from pebslab.hw import msr as M
    from pebslab.viz.msrs import perf_cap_rows
    values = []
    for cpu in pl.MODELS:
        values.append((f"the {cpu} host's value", pl.get_model(cpu).perf_capabilities))
    for cpu, design in (("silvermont", "patch"), ("icelake", "icelake"),
                        ("silvermont", "fixed")):
        g = perf_cap_rows(cpu=cpu, design=design)["guest"]
        if g is not None:
            values.append((f"what a {design} guest on {cpu} reads", g))
    values += [("format 0, fault-like", 0x0), ("format 0, trap-like", 0x40),
               ("format 1, trap-like, arch regs", 0x1C0), ("format 1, fault-like", 0x100),
               ("format 0 with full-width writes", 0x2000), ("format 7", 0x7C0),
               ("format 4 with baseline and FW_WRITES", 0x64C0)]
    seen, cases = set(), []
    for desc, v in values:
        if v in seen:
            continue
        seen.add(v)
        cases.append((f"{desc} ({v:#x})", (v,), driver_view_expected(v)))
    return cases


_KEYS = ("pebs", "record_size", "pp_ip", "counter_msr", "max_period")

_WHY = {
    "pebs": "PEBS is usable only for a record format the driver knows (bits 11:8: 0 to 4 here)",
    "record_size": "the format picks the record: 0 core 144 B, 1 nhm 176 B, 2 hsw 192 B, "
                   "3 skl 200 B, 4 basic 32 B; no PEBS, no record (0)",
    "pp_ip": "from format 2 the record has the eventing IP; before that a trap-like assist "
             "(bit 6) needs the LBR fix-up, a fault-like one records the right IP already",
    "counter_msr": "FW_WRITES (bit 13) is what makes the driver use the 0x4C1 aliases",
    "max_period": "through the legacy 0xC1 MSRs only 31 bits can be preset (2**31 - 1); "
                  "with FW_WRITES the counter width minus one",
}


def ex04_driver_view(candidate, *, quiet=False, strict=False):
    """Check ``driver_view(perf_cap) -> dict`` (keys pebs, record_size, pp_ip, counter_msr, max_period).

    pebslab only. Expected values: :func:`driver_view_expected`, for the
    host values of every CPU model, the values guests really read (a guest
    RDMSR under `patch`, `fixed` and `icelake`) and hand-made corner cases.
    The hint names the first wrong key and the rule behind it.
    """
    def compare(got, exp):
        return isinstance(got, dict) and all(got.get(k) == exp[k] for k in _KEYS)

    res = run_cases("ex04_driver_view", candidate, _driver_cases(), compare=compare,
                    quiet=True)
    if res.failed and not res.error:
        desc, exp, got = res.failed[0]
        if not isinstance(got, dict):
            res.hint = f"return a dict with the keys {', '.join(_KEYS)}; you returned {got!r}"
        else:
            k = next(k for k in _KEYS if got.get(k) != exp[k])
            res.hint = (f"for {desc}, {k} should be {exp[k]!r}, you said {got.get(k)!r}: "
                        f"{_WHY[k]}")
    if not quiet:
        print(res)
    if strict and not res.ok:
        from ._base import CheckFailed
        raise CheckFailed(str(res))
    return res
