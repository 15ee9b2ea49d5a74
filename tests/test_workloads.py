"""Tests for pebslab.workloads: trace shape, determinism and symbols."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pebslab import workloads as W
from pebslab.workloads import (
    KIND_BRANCH, KIND_LOAD, KIND_STORE, Workload, by_name, hot_loop,
    multi_function, pointer_chase,
)

ALL = [hot_loop, pointer_chase, multi_function]


def straight_line_ok(w):
    """Every non-branch falls through to the next instruction (cyclically)."""
    nxt = np.roll(w.ip, -1)
    fall = w.ip + w.length.astype(np.uint64)
    return bool(((w.kind == KIND_BRANCH) | (nxt == fall)).all())


@pytest.mark.parametrize("gen", ALL)
def test_arrays_dtypes_and_continuity(gen):
    w = gen()
    n = len(w)
    for f, dt in [("ip", np.uint64), ("kind", np.uint8), ("cpl", np.uint8),
                  ("addr", np.uint64), ("latency", np.uint16), ("cycles", np.uint16),
                  ("llc_miss", np.uint8), ("br_misp", np.uint8), ("length", np.uint8)]:
        a = getattr(w, f)
        assert a.dtype == dt and a.shape == (n,)
    assert (w.cycles >= 1).all()
    assert straight_line_ok(w)
    assert w.kind[-1] == KIND_BRANCH  # the wrap-around is a jump
    mem = (w.kind == KIND_LOAD) | (w.kind == KIND_STORE)
    assert (w.addr[mem] != 0).all() and (w.addr[~mem] == 0).all()
    for ip in w.ip:
        assert w.symbol_of(int(ip)) != "[unknown]"


@pytest.mark.parametrize("gen", ALL)
def test_deterministic_per_seed(gen):
    assert gen(seed=3) == gen(seed=3)
    assert gen(seed=3) != gen(seed=4)
    assert gen(seed=3).summary() == gen(seed=3).summary()


def test_hot_loop_shape():
    w = hot_loop()
    assert len(w) == 64
    assert np.flatnonzero(w.llc_miss).tolist() == [37]  # the only LLC miss
    assert w.kind[37] == KIND_LOAD and w.latency[37] == 200 and w.cycles[37] == 200
    others = np.ones(64, bool)
    others[37] = False
    assert (w.cycles[others] == 1).all()
    assert (w.cpl == 3).all()
    assert int(w.ip[0]) == 0x401000
    body = w.length[:-1]
    assert body.min() >= 2 and body.max() <= 7 and len(set(body.tolist())) > 2
    assert w.kind[-1] == KIND_BRANCH and w.ip[-1] > w.ip[0]  # backward jump to the top
    assert w.symbol_of(int(w.ip[37])) == "hot_loop"


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 300), data=st.data(), cyc=st.integers(1, 65535), seed=st.integers(0, 99))
def test_hot_loop_any_parameters(n, data, cyc, seed):
    hot = data.draw(st.integers(0, n - 2))
    w = hot_loop(n=n, hot_index=hot, hot_cycles=cyc, seed=seed)
    assert len(w) == n and np.flatnonzero(w.llc_miss).tolist() == [hot]
    assert w.cycles[hot] == cyc and straight_line_ok(w)


def test_pointer_chase_latencies():
    w = pointer_chase(n=256, seed=0)
    loads = w.kind == KIND_LOAD
    assert loads.sum() == 254
    assert set(w.latency[loads].tolist()) <= {4, 12, 40, 250}
    assert len(set(w.latency[loads].tolist())) == 4
    assert (w.llc_miss[loads] == (w.latency[loads] == 250)).all()
    assert (w.cycles[loads] == w.latency[loads]).all()
    a = w.addr[loads]
    assert (a >= W.HEAP_BASE).all() and (a < W.HEAP_BASE + (64 << 20)).all()
    assert (a % 64 == 0).all()


def test_multi_function_symbols_and_privilege():
    w = multi_function()
    names = [s[2] for s in w.symbols]
    assert set(names) == {"main", "parse", "hash_update", "memcpy_small",
                          "sys_read", "copy_user_generic"}
    kernel = w.cpl == 0
    assert kernel.any() and (~kernel).any()
    assert (w.ip[kernel] >= np.uint64(0xFFFFFFFF81000000)).all()
    for ip, cpl in zip(w.ip, w.cpl):
        name = w.symbol_of(int(ip))
        assert (name in ("sys_read", "copy_user_generic")) == (cpl == 0)
    assert w.br_misp.sum() >= 1 and (w.kind == W.KIND_DIV).any()
    assert int(w.ip[0]) == 0x401000 and w.symbol_of(int(w.ip[0])) == "main"


def test_symbol_of_edges():
    w = hot_loop()
    start, end, name = w.symbols[0]
    assert w.symbol_of(start) == name and w.symbol_of(end - 1) == name
    assert w.symbol_of(end) == "[unknown]" and w.symbol_of(start - 1) == "[unknown]"
    assert w.symbol_of(0) == "[unknown]"
    with pytest.raises(TypeError, match="ip must be an int"):
        w.symbol_of(1.5)


def test_summary_is_short_text():
    s = multi_function().summary()
    assert s.startswith("multi_function: ") and "copy_user_generic" in s
    assert len(s.splitlines()) < 15


def test_by_name():
    assert by_name("hot_loop", n=16, hot_index=3) == hot_loop(n=16, hot_index=3)
    assert set(W.WORKLOADS) == {"hot_loop", "pointer_chase", "multi_function"}
    with pytest.raises(ValueError, match="name must be one of 'hot_loop'.*got 'spin'"):
        by_name("spin")


def test_arrays_are_read_only():
    w = hot_loop()
    with pytest.raises(ValueError):
        w.cycles[0] = 5


def _arrays(n=3):
    ip = np.array([0x1000, 0x1002, 0x1004], np.uint64)[:n]
    return dict(ip=ip, kind=np.array([0, 0, 3], np.uint8)[:n], cpl=np.full(n, 3, np.uint8),
                addr=np.zeros(n, np.uint64), latency=np.zeros(n, np.uint16),
                cycles=np.ones(n, np.uint16), llc_miss=np.zeros(n, np.uint8),
                br_misp=np.zeros(n, np.uint8), length=np.full(n, 2, np.uint8))


def test_workload_validation():
    Workload(**_arrays(), symbols=[(0x1000, 0x1006, "f")], name="t")
    bad = _arrays()
    bad["cycles"] = np.ones(3, np.int64)
    with pytest.raises(TypeError, match="cycles must be a 1-D uint16 array; got int64"):
        Workload(**bad)
    bad = _arrays()
    bad["length"] = np.full(2, 2, np.uint8)
    with pytest.raises(ValueError, match="length has 2 entries; ip has 3"):
        Workload(**bad)
    bad = _arrays()
    bad["cycles"] = np.array([1, 0, 1], np.uint16)
    with pytest.raises(ValueError, match="instruction 1 .*cycles must be >= 1"):
        Workload(**bad)
    bad = _arrays()
    bad["ip"] = np.array([0x1000, 0x1003, 0x1004], np.uint64)
    with pytest.raises(ValueError, match="instruction 0 .*fall through"):
        Workload(**bad)
    bad = _arrays()
    bad["llc_miss"] = np.array([1, 0, 0], np.uint8)
    with pytest.raises(ValueError, match="llc_miss set on a non-load"):
        Workload(**bad)
    with pytest.raises(ValueError, match="must be sorted, not overlapping"):
        Workload(**_arrays(), symbols=[(0x1000, 0x1006, "f"), (0x1004, 0x1008, "g")])
    with pytest.raises(ValueError, match="at least 1 instruction"):
        Workload(**{k: v[:0] for k, v in _arrays().items()})


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: hot_loop(n=1), ValueError, "n must be in 2..4096; got 1"),
    (lambda: hot_loop(n=8, hot_index=7), ValueError, "hot_index must be in 0..6; got 7"),
    (lambda: hot_loop(hot_cycles=0), ValueError, "hot_cycles must be in 1..65535; got 0"),
    (lambda: hot_loop(n=8.0), TypeError, "n must be an int"),
    (lambda: pointer_chase(n=2), ValueError, "n must be in 3..65536; got 2"),
    (lambda: multi_function(seed=-1), ValueError, "seed must be >= 0; got -1"),
    (lambda: multi_function(seed="a"), TypeError, "seed must be an int"),
])
def test_generator_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()
