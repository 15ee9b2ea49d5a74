"""pebslab/host/perf_hw.py: the hardware side of host perf, and its PMI handler.

Expected behaviour from intel_pmu_handle_irq() in arch/x86/events/intel/core.c
(each overflowed counter: update, re-arm with its period, call the overflow
handler; bit 62 is the PEBS buffer threshold) and x86_perf_event_set_period()
(the counter is preset to -period modulo its width).
"""

from __future__ import annotations

import numpy as np

from pebslab.host import perf as P
from pebslab.host import perf_hw
from pebslab.hw import core as C
from pebslab.hw import msr as M


def setup(precise=0, guest_owned=True):
    core = C.Core("silvermont", seed=0)
    perf = P.HostPerf(2, 3)
    seen = []
    attr = P.PerfEventAttr(type=P.PERF_TYPE_RAW, config=0xC0, sample_period=1000,
                           precise_ip=precise, exclude_host=guest_owned)
    ev = perf.create_kernel_counter(attr, handler=lambda e, ip: seen.append(ip),
                                    guest_owned=guest_owned,
                                    owner="kvm" if guest_owned else "host", counter_mask=1)
    perf_hw.program_event(core, ev)
    return core, perf, ev, seen


def test_program_event_presets_minus_period_and_sets_en_int():
    core, _, ev, _ = setup()
    assert core.counter(0) == (-1000) & core.width_mask
    sel = int(core.regs[C.R_EVTSEL0])
    assert sel & M.ARCH_PERFMON_EVENTSEL_ENABLE and sel & M.ARCH_PERFMON_EVENTSEL_INT


def test_pmi_handler_updates_rearms_and_calls_the_overflowed_event():
    core, perf, ev, seen = setup()
    core.regs[C.R_PMC0] = np.uint64(5)                       # wrapped past 0 by 5 events
    core.regs[C.R_GLOBAL_STATUS] = np.uint64(1)
    handled = perf_hw.intel_pmu_handle_irq(core, perf, ip=0x401000)
    assert handled == 1 and int(core.regs[C.R_GLOBAL_STATUS]) == 0
    assert seen == [0x401000]
    assert ev.count == 1005                                   # from -1000 to +5
    assert core.counter(0) == (-1000) & core.width_mask       # re-armed


def test_pmi_handler_leaves_pebs_counters_to_bit_62_and_calls_one_guest_event():
    core, perf, ev, seen = setup(precise=1)
    core.regs[C.R_PEBS_ENABLE] = np.uint64(1)
    core.regs[C.R_GLOBAL_STATUS] = np.uint64(1)
    assert perf_hw.intel_pmu_handle_irq(core, perf, ip=7) == 1
    assert seen == []                                        # the counter bit alone: nothing
    core.regs[C.R_GLOBAL_STATUS] = np.uint64(M.GLOBAL_STATUS_BUFFER_OVF)
    assert perf_hw.intel_pmu_handle_irq(core, perf, ip=8) == M.GLOBAL_STATUS_BUFFER_OVF
    assert seen == [8]


def test_host_pebs_threshold_is_noted_not_delivered():
    core, perf, ev, seen = setup(precise=1, guest_owned=False)
    notes = []
    core.regs[C.R_GLOBAL_STATUS] = np.uint64(M.GLOBAL_STATUS_BUFFER_OVF)
    perf_hw.intel_pmu_handle_irq(core, perf, ip=9, trace=lambda kind, **kw: notes.append(kw))
    assert seen == [] and len(notes) == 1 and "host drain" in notes[0]["info"]
