"""Checker for notebook 03 (the virtual PMU): the sample_period KVM gives a host perf event.

pebslab only. Every case builds a VM under the ``patch`` design, whose
guest CPUID leaf 0xA reports a counter width of 48, 40 or 32 bits, lets the
guest program IA32_PMC0 by WRMSR (the 32-bit legacy alias, sign-extended)
and enable it, and takes the right answer from the host perf event that
pebslab.kvm.pmu.reprogram_counter() created: its ``attr.sample_period``.
The candidate gets what the guest would read back from the counter (RDMSR
just before the event was created) and the width.
"""

from __future__ import annotations

import functools

from ..hw import msr as M
from ._base import run_cases

__all__ = ["ex03_period"]

# (counter width, value the guest writes to IA32_PMC0 through the 0xC1 alias,
#  instructions the counter counts before KVM re-creates its event)
_SCENARIOS = (
    (48, 0xFFFFD8E9, 0),            # -10007: perf's usual preset
    (48, 0xFFFFFFFF, 0),            # -1: overflow after one event
    (48, 0x00000000, 0),            # zero
    (48, 0x7FFFFFFF, 0),            # positive: sign extension leaves it as is
    (48, 0x80000000, 0),            # bit 31 set: sign-extended to 48 bits
    (48, 0xFFFE7960, 30_000),       # -100000, then 30000 instructions counted
    (40, 0xFFFFD8E9, 0),            # a guest told its counters are 40 bits wide
    (40, 0x00000001, 0),
    (32, 0xFFFFD8E9, 0),
    (32, 0x00000001, 0),
)


def _one(width: int, written: int, run: int) -> tuple[int, int]:
    """Return (counter as the guest reads it, sample_period of the created perf event)."""
    from ..system import Host
    from ..hw import cpuid as CPUID
    from ..workloads import hot_loop

    host = Host(cpu="silvermont", frames=128, seed=0)
    cpuid = CPUID.default(host.cpu)
    eax, ebx, ecx, edx = cpuid.leaf(0xA)
    leaves = dict(cpuid.leaves)
    leaves[0xA] = ((eax & ~(0xFF << 16)) | width << 16, ebx, ecx, edx)
    vm = host.create_vm(design="patch", memory_pages=32, cpuid=CPUID.Cpuid(leaves))
    v = vm.vcpus[0]
    sel = M.encode_eventsel(0xC0, 0x00, int=True)        # INST_RETIRED.ANY_P, USR|OS|INT|EN
    v.wrmsr(M.MSR_IA32_PERFCTR0, written)
    if run:
        v.wrmsr(M.MSR_P6_EVNTSEL0, sel)
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
        vm.run(hot_loop(), run)
        counter = v.rdmsr(M.MSR_IA32_PERFCTR0)
        v.wrmsr(M.MSR_P6_EVNTSEL0, sel & ~M.ARCH_PERFMON_EVENTSEL_OS)   # re-creates the event
    else:
        counter = v.rdmsr(M.MSR_IA32_PERFCTR0)
        v.wrmsr(M.MSR_P6_EVNTSEL0, sel)
        v.wrmsr(M.MSR_CORE_PERF_GLOBAL_CTRL, 1)
    events = [ev for ev in v.pcpu.perf.events() if ev.owner == "kvm"]
    if len(events) != 1:        # pragma: no cover - the model broke its own contract
        raise AssertionError(f"expected one KVM perf event, found {len(events)}")
    period = int(events[0].attr.sample_period)
    vm.destroy()
    return counter, period


@functools.lru_cache(maxsize=1)
def _cases() -> tuple:
    cases = []
    for width, written, run in _SCENARIOS:
        counter, period = _one(width, written, run)
        how = f"guest wrote {written:#010x}" + (f", then counted {run} instructions" if run else "")
        cases.append((f"width {width}, counter {counter:#x} ({how})", (counter, width), period))
    return tuple(cases)


def ex03_period(candidate, *, quiet: bool = False, strict: bool = False):
    """Check ``candidate(counter, width) -> int``: the sample_period KVM programs.

    pebslab only. Expected answers are the ``attr.sample_period`` of host
    perf events created by the real reprogram_counter() of the patched KVM
    (pebslab.kvm.pmu) in VMs with 48-, 40- and 32-bit guest counters.
    """
    return run_cases(
        "ex03_period", candidate, _cases(),
        hint=("the counter raises its overflow when it wraps past 2**width - 1: how many "
              "events are left until then? Keep the answer inside the counter's width (mask "
              "with (1 << width) - 1), and check the counter-0 case and the widths other "
              "than 48."),
        strict=strict, quiet=quiet)
