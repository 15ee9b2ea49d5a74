"""Tests for pebslab.host.perf: counter scheduling and sample throttling.

Throttling numbers are worked out by hand from FACTS.md section f
(kernel/events/core.c), in the comments next to each assertion.
"""

import numpy as np
import pytest

from pebslab.host import perf as P
from pebslab.host.perf import (
    HostPerf, PerfEventAttr, ThrottleState, perf_sample_event_took,
    simulate_throttling, update_perf_cpu_limits,
)


def hw(config, precise_ip=0, **kw):
    return PerfEventAttr(type=P.PERF_TYPE_HARDWARE, config=config, precise_ip=precise_ip, **kw)


def raw(config, precise_ip=0, **kw):
    return PerfEventAttr(type=P.PERF_TYPE_RAW, config=config, precise_ip=precise_ip, **kw)


# ----------------------------------------------------------------------
# constants
# ----------------------------------------------------------------------

def test_perf_hw_ids_match_linux_enum():
    assert (P.PERF_COUNT_HW_CPU_CYCLES, P.PERF_COUNT_HW_INSTRUCTIONS,
            P.PERF_COUNT_HW_REF_CPU_CYCLES) == (0, 1, 9)
    assert (P.PERF_TYPE_HARDWARE, P.PERF_TYPE_RAW) == (0, 4)


# ----------------------------------------------------------------------
# scheduling
# ----------------------------------------------------------------------

def test_fixed_counter_events_go_fixed():
    p = HostPerf(n_gp=2, n_fixed=3)
    ins = p.create_kernel_counter(hw(P.PERF_COUNT_HW_INSTRUCTIONS))
    cyc = p.create_kernel_counter(hw(P.PERF_COUNT_HW_CPU_CYCLES))
    ref = p.create_kernel_counter(hw(P.PERF_COUNT_HW_REF_CPU_CYCLES))
    assert (ins.hw_idx, cyc.hw_idx, ref.hw_idx) == (32, 33, 34)
    assert p.by_idx(33) is cyc and p.by_idx(0) is None
    # a second cycles event finds fixed 1 busy and takes a GP counter
    cyc2 = p.create_kernel_counter(hw(P.PERF_COUNT_HW_CPU_CYCLES))
    assert cyc2.hw_idx == 0


def test_precise_events_never_go_fixed():
    p = HostPerf(n_gp=4, n_fixed=3)
    ev = p.create_kernel_counter(hw(P.PERF_COUNT_HW_INSTRUCTIONS, precise_ip=1))
    assert ev.hw_idx == 0


def test_counter_mask_and_unscheduled_when_full():
    p = HostPerf(n_gp=2, n_fixed=3)
    a = p.create_kernel_counter(raw(0x1C4, precise_ip=1), counter_mask=0x1)  # PMC0 only
    assert a.hw_idx == 0 and a.state == "ACTIVE"
    b = p.create_kernel_counter(raw(0x1C4, precise_ip=1), counter_mask=0x1)
    assert b.hw_idx == -1 and b.state == "INACTIVE"  # PMC0 busy: multiplexed out
    c = p.create_kernel_counter(raw(0x2E))
    assert c.hw_idx == 1
    d = p.create_kernel_counter(raw(0x2E))
    assert d.hw_idx == -1
    # releasing PMC0 lets the first waiting event that fits take it
    a.release()
    assert a.state == "DEAD" and b.hw_idx == 0 and d.hw_idx == -1
    assert p.events() == [b, c, d]


def test_nmi_watchdog_blocks_fixed1_for_guest_cycles():
    p = HostPerf(n_gp=2, n_fixed=3)
    wd = p.enable_nmi_watchdog()
    assert wd.owner == "host" and wd.hw_idx == 33 and wd.attr.pinned
    guest = p.create_kernel_counter(hw(P.PERF_COUNT_HW_CPU_CYCLES), guest_owned=True)
    assert guest.guest_owned and guest.hw_idx == 0  # cross-mapped onto a GP counter


def test_pinned_event_without_counter_is_in_error():
    p = HostPerf(n_gp=1, n_fixed=0)
    p.create_kernel_counter(raw(0xC0))
    ev = p.create_kernel_counter(raw(0xC0, pinned=True))
    assert ev.state == "ERROR" and ev.hw_idx == -1


def test_overflow_calls_handler_with_event_and_ip():
    p = HostPerf(n_gp=2, n_fixed=3)
    seen = []
    ctx = object()
    ev = p.create_kernel_counter(raw(0xC0), handler=lambda e, ip: seen.append((e, ip)),
                                 context=ctx, guest_owned=True)
    ev.count = 1234
    assert ev.read() == 1234 and ev.context is ctx
    ev.overflow(0x401008)
    assert seen == [(ev, 0x401008)] and ev.overflows == 1
    ev.release()
    with pytest.raises(ValueError, match="released"):
        ev.overflow(0)
    with pytest.raises(ValueError, match="not a live event"):
        p.release(ev)


def test_attr_is_copied_at_creation():
    p = HostPerf(n_gp=2, n_fixed=0)
    attr = raw(0xC0, sample_period=100)
    ev = p.create_kernel_counter(attr)
    attr.sample_period = 5
    assert ev.attr.sample_period == 100


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(attr=raw(0xC0, precise_ip=4)), ValueError, "attr.precise_ip must be in 0..3; got 4"),
    (dict(attr=raw(0xC0, sample_period=-1)), ValueError, "attr.sample_period must be in 0"),
    (dict(attr=PerfEventAttr(type=2)), ValueError, "attr.type must be PERF_TYPE_HARDWARE"),
    (dict(attr=hw(10)), ValueError, "attr.config must be a perf_hw_id"),
    (dict(attr=raw(0xC0), counter_mask=0x4), ValueError, "counter_mask must be in 1..3; got 4"),
    (dict(attr=raw(0xC0), counter_mask=0), ValueError, "counter_mask must be in 1..3; got 0"),
    (dict(attr=raw(0xC0), owner="guest"), ValueError, "owner must be one of 'kvm', 'host'"),
    (dict(attr=raw(0xC0), owner="host", guest_owned=True), ValueError, "requires owner='kvm'"),
    (dict(attr=raw(0xC0), handler=3), TypeError, "handler must be callable"),
    (dict(attr={"config": 1}), TypeError, "attr must be a PerfEventAttr"),
])
def test_bad_create_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        HostPerf(n_gp=2, n_fixed=3).create_kernel_counter(**kwargs)


def test_by_idx_range():
    p = HostPerf(n_gp=2, n_fixed=3)
    with pytest.raises(ValueError, match="idx must be a GP counter 0..1 or a fixed counter 32..34"):
        p.by_idx(2)


# ----------------------------------------------------------------------
# throttling
# ----------------------------------------------------------------------

def test_default_allowed_ns_is_2500():
    # 1e9 / 100000 = 10000 ns period; 10000 * 25 / 100 = 2500 (FACTS f)
    assert update_perf_cpu_limits(100000, 25) == 2500
    assert update_perf_cpu_limits(100000, 25, era="2014") == 2500
    s = ThrottleState()
    assert (s.allowed_ns, s.sample_rate, s.max_samples_per_tick) == (2500, 100000, 100)
    assert ThrottleState.initial() == s
    assert ThrottleState.initial(hz=250).max_samples_per_tick == 400  # DIV_ROUND_UP(100000, 250)


def test_update_perf_cpu_limits_floor():
    # period 1e9/1e9 = 1 ns; 1 * 25 / 100 = 0 -> today at least 1, 2014 zero
    assert update_perf_cpu_limits(10**9, 25) == 1
    assert update_perf_cpu_limits(10**9, 25, era="2014") == 0


def run(era, lens, state=None):
    s = state or ThrottleState.initial(era=era)
    for x in lens:
        s = perf_sample_event_took(s, x, era=era)
    return s


L = 128 * 3000  # one sample long enough that avg = L/128 = 3000 > 2500 at once


def test_today_lowers_rate_with_headroom():
    s1 = run("today", [L])
    # running 384000, avg 3000 > 2500; avg += 750 -> 3750;
    # max = (TICK_NSEC/100) * 25 = 10000 * 25 = 250000; 250000 // 3750 = 66
    assert (s1.running_len, s1.allowed_ns, s1.max_samples_per_tick, s1.sample_rate) == \
        (384000, 3750, 66, 66000)
    assert s1.warnings == ["perf: interrupt took too long (3000 > 2500), lowering "
                           "kernel.perf_event_max_sample_rate to 66000"]
    s2 = perf_sample_event_took(s1, L)
    # running 384000 - 3000 + 384000 = 765000; avg 5976 > 3750;
    # 5976 + 1494 = 7470; 250000 // 7470 = 33
    assert (s2.running_len, s2.allowed_ns, s2.sample_rate) == (765000, 7470, 33000)
    s3 = perf_sample_event_took(s2, L)
    # running 765000 - 5976 + 384000 = 1143024; avg 8929 > 7470;
    # 8929 + 2232 = 11161; 250000 // 11161 = 22
    assert (s3.running_len, s3.allowed_ns, s3.sample_rate) == (1143024, 11161, 22000)
    assert len(s3.warnings) == 3
    assert s1.warnings == [s3.warnings[0]]  # old states are not mutated


def test_2014_halves_the_rate():
    s1 = run("2014", [L])
    # avg 3000 > 2500; DIV_ROUND_UP(100, 2) = 50 -> rate 50000, period 20000,
    # allowed 20000 * 25 / 100 = 5000; message prints allowed >> 1 = 2500
    assert (s1.allowed_ns, s1.max_samples_per_tick, s1.sample_rate) == (5000, 50, 50000)
    assert s1.warnings == ["perf interrupt took too long (3000 > 2500), lowering "
                           "kernel.perf_event_max_sample_rate to 50000"]
    s2 = perf_sample_event_took(s1, L, era="2014")
    # avg 5976 > 5000 -> 25 per tick, rate 25000, period 40000, allowed 10000
    assert (s2.allowed_ns, s2.sample_rate) == (10000, 25000)
    assert s2.warnings[-1].startswith("perf interrupt took too long (5976 > 5000)")
    s3 = perf_sample_event_took(s2, L, era="2014")
    # avg 8929 <= 10000: no change
    assert (s3.running_len, s3.allowed_ns, s3.sample_rate, len(s3.warnings)) == \
        (1143024, 10000, 25000, 2)


def test_short_samples_change_nothing_but_the_average():
    for era in ("today", "2014"):
        s = run(era, [2000] * 10)
        assert (s.allowed_ns, s.sample_rate, s.warnings) == (2500, 100000, [])
        assert s.running_len > 0


def test_2014_stops_at_one_sample_per_tick():
    # 1 sample/tick: rate 1000, period 1e6, allowed 250000
    s = ThrottleState.initial(sample_rate=1000, era="2014")
    assert (s.max_samples_per_tick, s.allowed_ns) == (1, 250000)
    s2 = perf_sample_event_took(s, 128 * 300000, era="2014")  # avg 300000 > 250000
    assert (s2.allowed_ns, s2.sample_rate, s2.warnings) == (250000, 1000, [])


def test_today_floor_is_one_sample_per_tick():
    s = perf_sample_event_took(ThrottleState(), 128 * 300000)
    # avg 300000 -> 375000 >= max 250000 -> 1 per tick
    assert (s.allowed_ns, s.max_samples_per_tick, s.sample_rate) == (375000, 1, 1000)


def test_zero_percent_disables_both_eras():
    for era in ("today", "2014"):
        s = ThrottleState.initial(cpu_time_max_percent=0, era=era)
        assert s.allowed_ns == 0
        s2 = run(era, [10**7] * 5, s)
        assert s2 == s  # not even the running average moves
    # today 100 % also disables; in 2014 it meant "allowed = the whole period"
    assert ThrottleState.initial(cpu_time_max_percent=100).allowed_ns == 0
    assert ThrottleState.initial(cpu_time_max_percent=100, era="2014").allowed_ns == 10000


def test_simulate_matches_step_function():
    lens = np.array([L, L, L, 100, 100], dtype=np.int64)
    for era in ("today", "2014"):
        out = simulate_throttling(lens, era=era)
        s = ThrottleState.initial(era=era)
        for i, x in enumerate(lens):
            s = perf_sample_event_took(s, int(x), era=era)
            assert out["allowed_ns"][i] == s.allowed_ns
            assert out["sample_rate"][i] == s.sample_rate
            assert out["avg"][i] == s.avg
        assert int(out["warned"].sum()) == len(s.warnings)
    off = simulate_throttling(lens, era="today", cpu_time_max_percent=0)
    assert (off["sample_rate"] == 100000).all() and (off["avg"] == 0).all()


def test_throttling_bad_arguments():
    with pytest.raises(ValueError, match="era must be one of 'today', '2014'; got 'v2'"):
        perf_sample_event_took(ThrottleState(), 1, era="v2")
    with pytest.raises(ValueError, match="cpu_time_max_percent must be in 0..100; got 101"):
        update_perf_cpu_limits(100000, 101)
    with pytest.raises(ValueError, match="sample_len_ns must be in 0"):
        perf_sample_event_took(ThrottleState(), -5)
    with pytest.raises(TypeError, match="state must be a ThrottleState"):
        perf_sample_event_took({}, 5)
    with pytest.raises(ValueError, match="sample_lens_ns must be >= 0"):
        simulate_throttling([1, -1])
    with pytest.raises(TypeError, match="sample_lens_ns must be a 1-D sequence of ints"):
        simulate_throttling([1.5])
