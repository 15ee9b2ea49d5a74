"""``python -m pebslab record``: help, errors (exit 2, one line), files, progress bar."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys

import pytest

import pebslab as pl
from pebslab import export
from pebslab.__main__ import main
from pebslab.guest.perf import GENERIC_EVENTS

ARGS = ["record", "--workload", "multi_function", "--event", "INST_RETIRED.ANY_P:pp",
        "--design", "patch", "-n", "200000", "-c", "2003", "--no-progress"]


def run(argv, capsys, cwd):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        rc = main(argv)
    finally:
        os.chdir(old)
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_workloads_events_per_model_and_designs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["record", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())       # undo the wrapping
    for w in pl.workloads.WORKLOADS:
        assert w in out
    for d in pl.DESIGN_NAMES:
        assert d in out
    for m in pl.MODELS.values():
        assert f" {m.name} " in out
        for ev in m.events:
            assert ev.name + ("*" if ev.pebs else "") in out
    for g in GENERIC_EVENTS:
        assert g in out
    # which CPU/design pairs give the guest PEBS (the patch: Silvermont only)
    assert "silvermont --design patch, --design review, --design fixed" in out
    assert "icelake --design icelake" in out


@pytest.mark.parametrize("argv, msg", [
    (["record", "--workload", "nope"], "invalid choice: 'nope'"),
    (["record", "--event", "FOO:pp"], "--event 'FOO:pp' on silvermont/patch"),
    (["record", "--cpu", "haswell", "--event", "cycles:pp"], "needs PEBS"),
    (["record", "--cpu", "pentium"], "invalid choice: 'pentium'"),
    (["record", "--design", "v3"], "invalid choice: 'v3'"),
    (["record", "--period", "0"], "--period must be >= 1; got 0"),
    (["record", "--instructions", "x"], "invalid int value: 'x'"),
    (["record", "-o", "no/such/folder/g.data"], "folder 'no/such/folder' does not exist"),
    (["record", "--flamegraph", "no/x.svg"], "--flamegraph 'no/x.svg' cannot be written"),
    (["record", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "a command is required"),
])
def test_bad_arguments_exit_2_with_one_line(argv, msg, capsys, tmp_path):
    rc, out, err = run(argv + ["--no-progress"] if argv else argv, capsys, tmp_path)
    assert rc == 2
    assert err.count("\n") == 1 and msg in err and out == ""
    assert os.listdir(tmp_path) == []


def test_no_samples_exits_1_and_writes_nothing(capsys, tmp_path):
    argv = ["record", "--event", "INST_RETIRED.ANY_P:pp", "-n", "100", "--no-progress"]
    rc, out, err = run(argv, capsys, tmp_path)
    assert rc == 1 and "no samples recorded" in err
    assert os.listdir(tmp_path) == []


def test_record_writes_the_files_and_matches_the_api(capsys, tmp_path):
    cli, api = tmp_path / "cli", tmp_path / "api"     # same path length: same record sizes
    cli.mkdir()
    api.mkdir()
    rc, out, err = run(ARGS + ["--folded", "f.txt", "--flamegraph", "f.svg",
                               "--speedscope", "s.json"], capsys, cli)
    assert rc == 0, err
    assert sorted(os.listdir(cli)) == ["f.svg", "f.txt", "guest.data", "guest.data.kallsyms",
                                       "multi_function", "s.json"]
    assert "perf report --stdio -i guest.data --kallsyms guest.data.kallsyms" in out
    # the same scenario through the public API gives the same perf.data bytes
    host = pl.Host(cpu="silvermont", seed=0)
    vm = host.create_vm(design="patch")
    guest = pl.GuestKernel(vm)
    rec = guest.perf.record("INST_RETIRED.ANY_P:pp", period=2003)
    w = pl.workloads.multi_function(seed=0)
    vm.run(w, instructions=200_000)
    files = export.perf_data(rec.samples(), api / "guest.data", workload=w, event=rec,
                             cpu="silvermont")
    a = (cli / "guest.data").read_bytes()
    assert a != files.data.read_bytes()                  # the ELF path differs ...
    assert a.replace(str(cli).encode(), b"D") == files.data.read_bytes().replace(
        str(api).encode(), b"D")                          # ... and nothing else
    assert (cli / "f.txt").read_text() == export.collapsed(rec.samples(), w)


def test_progress_bar_on_a_terminal(capsys, tmp_path, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        rc = main(ARGS[:-1])                     # without --no-progress
    finally:
        os.chdir(old)
    assert rc == 0
    bar = tty.getvalue()
    assert "multi_function in guest" in bar and "100%" in bar and "instr" in bar


def test_module_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pebslab", "record", "--event", "nope"],
                       capture_output=True, cwd=tmp_path, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(
                           os.path.abspath(pl.__file__)))})
    assert r.returncode == 2 and r.stderr.decode().count("\n") == 1


@pytest.mark.skipif(shutil.which("perf") is None,
                    reason="perf is not installed (Debian: apt-get install linux-perf)")
def test_cli_output_opens_in_perf(capsys, tmp_path):
    rc, out, err = run(ARGS, capsys, tmp_path)
    assert rc == 0
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PAGER": "cat",
           "PERF_BUILDID_DIR": str(tmp_path / ".debug")}
    r = subprocess.run(["perf", "report", "--stdio", "--no-children", "-g", "none", "-i",
                        "guest.data", "--kallsyms", "guest.data.kallsyms"], cwd=tmp_path,
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == 0
    text = r.stdout.decode()
    for name in ("copy_user_generic", "hash_update", "parse"):
        assert name in text
