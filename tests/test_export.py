"""pebslab.export without perf: bad input, call stacks, folded stacks, flame graph, speedscope."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import pebslab as pl
from pebslab import export
from pebslab.guest.perf import SAMPLE_DTYPE
from pebslab.workloads import KIND_BRANCH, hot_loop, multi_function

W = multi_function()
EVENT = export.EventInfo(name="INST_RETIRED.ANY_P:pp", config=0xC0, precise_ip=2, usr=True,
                         os=True, period=1009)


def samples_at(w, positions):
    s = np.zeros(len(positions), dtype=SAMPLE_DTYPE)
    s["ip"] = w.ip[positions]
    s["cpl"] = w.cpl[positions]
    s["time"] = np.arange(1, len(positions) + 1) * 10
    s["sym"] = [w.symbol_of(int(ip)) for ip in s["ip"]]
    s["precise"] = 1
    return s


ALL = samples_at(W, np.arange(len(W)))          # one sample on every instruction of one pass


# --- bad input: clear errors, nothing written -----------------------------------------------

def listing(d):
    return sorted(os.listdir(d))


def test_empty_samples_rejected_and_nothing_written(tmp_path):
    with pytest.raises(ValueError, match="samples is empty"):
        export.perf_data(ALL[:0], tmp_path / "g.data", workload=W, event=EVENT)
    with pytest.raises(ValueError, match="samples is empty"):
        export.speedscope(ALL[:0], tmp_path / "s.json", W)
    with pytest.raises(ValueError, match="samples is empty"):
        export.collapsed(ALL[:0], W)
    assert listing(tmp_path) == []


def test_ip_outside_every_symbol_rejected(tmp_path):
    bad = ALL[:5].copy()
    bad["ip"][2] = 0x400000                 # below main
    with pytest.raises(ValueError, match=r"1 sample\(s\) have IPs outside every function.*0x400000"):
        export.perf_data(bad, tmp_path / "g.data", workload=W, event=EVENT)
    with pytest.raises(ValueError, match="outside every function"):
        export.collapsed(bad, W)
    assert listing(tmp_path) == []


def test_cpl_must_match_the_address_half(tmp_path):
    bad = ALL[:5].copy()
    bad["cpl"][0] = 0                       # a user IP marked kernel
    with pytest.raises(ValueError, match=r"samples\[0\].*user address but cpl is 0"):
        export.perf_data(bad, tmp_path / "g.data", workload=W, event=EVENT)
    assert listing(tmp_path) == []


def test_unwritable_paths_rejected(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        export.perf_data(ALL, tmp_path / "no" / "g.data", workload=W, event=EVENT)
    with pytest.raises(ValueError, match="it is a folder"):
        export.perf_data(ALL, tmp_path, workload=W, event=EVENT)
    with pytest.raises(ValueError, match="the name the symbol file gets"):
        export.perf_data(ALL, tmp_path / "multi_function", workload=W, event=EVENT)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        export.speedscope(ALL, 42, W)
    assert listing(tmp_path) == []


def test_failure_while_writing_leaves_no_file(tmp_path, monkeypatch):
    calls = []
    real = os.replace

    def failing_replace(src, dst):
        calls.append(dst)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        export.perf_data(ALL, tmp_path / "g.data", workload=W, event=EVENT)
    monkeypatch.setattr(os, "replace", real)
    assert calls and listing(tmp_path) == []          # temporaries removed too


def test_type_errors_name_the_argument(tmp_path):
    with pytest.raises(TypeError, match="samples must be a numpy structured array"):
        export.perf_data([1, 2], tmp_path / "g.data", workload=W, event=EVENT)
    with pytest.raises(TypeError, match="workload must be a pebslab.workloads.Workload"):
        export.perf_data(ALL, tmp_path / "g.data", workload="multi_function", event=EVENT)
    with pytest.raises(TypeError, match="event must be a Recording"):
        export.perf_data(ALL, tmp_path / "g.data", workload=W, event="cycles:pp")
    with pytest.raises(ValueError, match="period must be in 1"):
        export.perf_data(ALL, tmp_path / "g.data", workload=W, event=EVENT, period=0)
    with pytest.raises(ValueError, match="symbols_dir is required"):
        import io
        export.perf_data(ALL, io.BytesIO(), workload=W, event=EVENT)
    with pytest.raises(ValueError, match="width must be"):
        export.flamegraph(ALL, W, width=5)
    assert listing(tmp_path) == []


# --- call stacks --------------------------------------------------------------------

def test_call_stacks_follow_the_documented_call_graph():
    table, ambiguous = export.call_stacks(W)
    assert ambiguous == set()
    names = {W.symbol_of(ip): tuple(W.symbol_of(r) for r in st) for ip, st in table.items()}
    # multi_function's docstring: main calls parse, parse calls hash_update; main enters the
    # kernel (sys_read calls copy_user_generic); main calls memcpy_small.
    assert names == {"main": (), "parse": ("main",), "hash_update": ("main", "parse"),
                     "sys_read": ("main",), "copy_user_generic": ("main", "sys_read"),
                     "memcpy_small": ("main",)}
    for st in table.values():
        for r in st:            # a return address follows a branch (call/syscall) of the caller
            i = np.flatnonzero(W.ip + W.length.astype(np.uint64) == np.uint64(r))
            assert i.size and (W.kind[i] == KIND_BRANCH).all()


def test_single_function_workload_has_flat_stacks():
    table, ambiguous = export.call_stacks(hot_loop())
    assert ambiguous == set() and set(table.values()) == {()}


# --- folded stacks, flame graph, speedscope ----------------------------------------------

def test_collapsed_counts_and_leaves():
    s = samples_at(W, np.arange(len(W)))
    text = export.collapsed(s, W)
    lines = text.splitlines()
    assert text.endswith("\n") and lines == sorted(lines)
    total = 0
    per_leaf = {}
    for ln in lines:
        stack, n = ln.rsplit(" ", 1)
        total += int(n)
        per_leaf[stack.split(";")[-1]] = per_leaf.get(stack.split(";")[-1], 0) + int(n)
    assert total == len(s)
    sym, cnt = np.unique(s["sym"], return_counts=True)     # the guest-side symbol field
    assert per_leaf == dict(zip(sym.tolist(), cnt.tolist()))
    assert "main;parse;hash_update " in text and "main;sys_read;copy_user_generic " in text
    # without a workload: the sym field only
    flat = export.collapsed(s)
    assert {ln.rsplit(" ", 1)[0] for ln in flat.splitlines()} == set(sym.tolist())


def test_flamegraph_is_deterministic_valid_svg_with_proportional_widths():
    s = samples_at(W, np.arange(len(W)))
    a = export.flamegraph(s, W, title="t", width=1000)
    b = export.flamegraph(s, W, title="t", width=1000)
    assert a.svg == b.svg and a._repr_svg_()[0] == a.svg and a._repr_svg_()[1]["alt"] and a.total == len(s)
    root = ET.fromstring(a.svg)
    ns = "{http://www.w3.org/2000/svg}"
    widths = {}
    for g in root.iter(ns + "g"):
        title = g.find(ns + "title").text
        rect = g.find(ns + "rect")
        widths.setdefault(title.split(" (")[0], []).append(float(rect.get("width")))
    inner = 1000 - 20
    assert widths["all"] == [pytest.approx(inner)]
    n_hash = int((s["sym"] == "hash_update").sum())
    assert widths["hash_update"] == [pytest.approx(inner * n_hash / len(s), abs=0.01)]


def test_flamegraph_save(tmp_path):
    fg = export.flamegraph(ALL, W)
    p = fg.save(tmp_path / "f.svg")
    assert p.read_text() == fg.svg


def test_speedscope_document(tmp_path):
    s = samples_at(W, np.arange(len(W)))
    p = export.speedscope(s, tmp_path / "p.speedscope.json", W)
    doc = json.loads(p.read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    prof = doc["profiles"][0]
    frames = [f["name"] for f in doc["shared"]["frames"]]
    assert prof["type"] == "sampled" and len(prof["samples"]) == len(s) == len(prof["weights"])
    assert prof["endValue"] == sum(prof["weights"])
    stacks = export.sample_stacks(s, W)
    assert [tuple(frames[i] for i in st) for st in prof["samples"]] == stacks   # root first
    assert all(st[0] == "main" for st in stacks)
    assert listing(tmp_path) == ["p.speedscope.json"]


def test_recording_samples_export(tmp_path):
    """The real path: a guest recording, its Recording as the event."""
    host = pl.Host(cpu="silvermont", frames=2048, seed=1)
    vm = host.create_vm(design="patch", memory_pages=256)
    guest = pl.GuestKernel(vm)
    rec = guest.perf.record("INST_RETIRED.ANY_P:pp", period=2003)
    vm.run(W, instructions=200_000)
    s = rec.samples()
    assert s.size > 50
    files = export.perf_data(s, tmp_path / "g.data", workload=W, event=rec, cpu="silvermont")
    assert files.samples == s.size and files.data.stat().st_size == files.size
    info = export.event_info(rec)
    assert (info.name, info.config, info.precise_ip, info.period) == \
        ("INST_RETIRED.ANY_P:pp", 0xC0, 2, 2003)


def test_overhead_table_rows():
    s = samples_at(W, np.arange(len(W)))
    rows = export.overhead_table(s).splitlines()
    sym, cnt = np.unique(s["sym"], return_counts=True)
    assert len(rows) == len(sym)
    parsed = {r.split()[-1]: (float(r.split()[0].rstrip("%")), r.split()[1]) for r in rows}
    for name, n in zip(sym.tolist(), cnt.tolist()):
        pct, mode = parsed[name]
        assert pct == pytest.approx(100 * n / s.size, abs=0.005)
        kernel = any(a >= 1 << 63 for a, _, nm in W.symbols if nm == name)
        assert mode == ("[k]" if kernel else "[.]")
    assert [float(r.split()[0].rstrip("%")) for r in rows] == \
        sorted((float(r.split()[0].rstrip("%")) for r in rows), reverse=True)


def test_run_perf_without_perf_says_how_to_install(tmp_path, monkeypatch):
    files = export.perf_data(ALL, tmp_path / "g.data", workload=W, event=EVENT)
    monkeypatch.setattr(export.tool.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install linux-perf"):
        export.perf_report(files)


def test_event_info_of_a_load_event_marks_loads(tmp_path):
    host = pl.Host(cpu="silvermont", frames=2048, seed=0)
    vm = host.create_vm(design="patch", memory_pages=256)
    rec = pl.GuestKernel(vm).perf.record("MEM_UOPS_RETIRED.ALL_LOADS:pp", period=101)
    info = export.event_info(rec)
    assert info.memory and info.mem_op == "load"
    assert info.config == pl.MODELS["silvermont"].event("MEM_UOPS_RETIRED.ALL_LOADS").code
    plain = export.event_info(pl.GuestKernel(pl.Host(cpu="silvermont", frames=2048).create_vm(
        memory_pages=256)).perf.record("cycles", period=1000))
    assert not plain.memory and plain.mem_op == "na" and plain.precise_ip == 0
    with pytest.raises(ValueError, match="mem_op must be one of"):
        export.EventInfo("x", 1, 0, True, True, 1, mem_op="fetch")
