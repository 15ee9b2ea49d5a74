"""The exported files in the real ``perf`` (Debian package linux-perf; .ci/run installs it).

Every test runs the unchanged perf binary on files pebslab wrote and checks
what it prints against the simulated samples. perf runs with HOME and its
build-id cache in a temporary folder, so it reads and writes nothing of the
user's. Skipped only where no perf binary is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import pebslab as pl
from pebslab import export
from pebslab.guest.perf import SAMPLE_DTYPE
from pebslab.workloads import LAT_DRAM, LAT_L1, LAT_L2, LAT_LLC, hot_loop, multi_function, \
    pointer_chase

PERF = shutil.which("perf")
pytestmark = pytest.mark.skipif(
    PERF is None, reason="perf is not installed (Debian: apt-get install linux-perf)")


def run_perf(home, *args, stdin=None, check=True):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "PERF_BUILDID_DIR": str(home / ".debug"), "PAGER": "cat", "LC_ALL": "C"}
    r = subprocess.run([PERF, *map(str, args)], env=env, input=stdin, capture_output=True,
                       timeout=120, cwd=str(home))
    if check:
        assert r.returncode == 0, (args, r.stderr.decode(errors="replace"))
    return r


@pytest.fixture(scope="module")
def guest_profile(tmp_path_factory):
    """multi_function in a Silvermont guest (design patch), INST_RETIRED.ANY_P:pp."""
    d = tmp_path_factory.mktemp("perf")
    (d / "home").mkdir()
    w = multi_function()
    host = pl.Host(cpu="silvermont", frames=2048, seed=0)
    vm = host.create_vm(design="patch", memory_pages=256)
    guest = pl.GuestKernel(vm)
    rec = guest.perf.record("INST_RETIRED.ANY_P:pp", period=1009)
    vm.run(w, instructions=600_000)
    s = rec.samples()
    files = export.perf_data(s, d / "guest.data", workload=w, event=rec, cpu="silvermont")
    return d / "home", w, s, files


def expected_percent(s):
    sym, n = np.unique(s["sym"], return_counts=True)
    return {k: f"{100.0 * v / s.size:.2f}%" for k, v in zip(sym.tolist(), n.tolist())}


def report_percent(out: str) -> dict:
    got = {}
    for ln in out.splitlines():
        m = re.match(r"\s+(\d+\.\d\d%)\s+\[[k.]\]\s+(\S+)\s*$", ln)
        if m:
            got[m.group(2)] = m.group(1)
    return got


def test_perf_report_shows_the_simulated_percentages(guest_profile):
    home, w, s, files = guest_profile
    r = run_perf(home, "report", "--stdio", "--no-children", "-g", "none", "--sort", "sym",
                 *files.perf_args())
    out = r.stdout.decode()
    assert f"Samples: " in out and "of event 'INST_RETIRED.ANY_P:pp'" in out
    assert report_percent(out) == expected_percent(s)
    assert len(expected_percent(s)) == 6                  # every function got samples


def test_perf_report_dso_and_mode(guest_profile):
    home, w, s, files = guest_profile
    out = run_perf(home, "report", "--stdio", "--no-children", "-g", "none", "--sort", "dso,sym",
                   *files.perf_args()).stdout.decode()
    for start, _, name in w.symbols:
        if start >= 1 << 63:
            assert re.search(rf"\[kernel\.kallsyms\]\s+\[k\] {name}\b", out), name
        else:
            assert re.search(rf"multi_function\s+\[\.\] {name}\b", out), name


def test_perf_script_shows_the_same_ips_and_symbols(guest_profile):
    home, w, s, files = guest_profile
    out = run_perf(home, "script", "-G", "-F", "ip,sym", *files.perf_args()).stdout.decode()
    got = [(int(a, 16), b) for a, b in (ln.split() for ln in out.splitlines() if ln.strip())]
    order = np.argsort(s["time"], kind="stable")          # perf delivers in time order
    want = [(int(s["ip"][i]), str(s["sym"][i])) for i in order]
    assert got == want


def test_perf_data_convert_to_json_with_callchains(guest_profile):
    home, w, s, files = guest_profile
    out = home / "guest.json"
    run_perf(home, "data", "convert", "--force", "--to-json", out, "-i", files.data)
    doc = json.loads(out.read_text())
    assert doc["headers"]["arch"] == "x86_64"
    assert doc["headers"]["cmdline"][:4] == ["perf", "record", "-e", "INST_RETIRED.ANY_P:pp"]
    order = np.argsort(s["time"], kind="stable")
    stacks = export.sample_stacks(s, w)
    assert len(doc["samples"]) == s.size
    for js, i in zip(doc["samples"], order):
        chain = js["callchain"]
        assert int(chain[0]["ip"], 16) == int(s["ip"][i])
        user = [c.get("symbol") for c in chain if int(c["ip"], 16) < 1 << 63]
        # json conversion has no --kallsyms: user frames resolve through the ELF
        assert user == [f for f in reversed(stacks[i]) if f in
                        {n for a, _, n in w.symbols if a < 1 << 63}]


def test_perf_annotate_places_samples_on_the_simulated_ips(guest_profile):
    home, w, s, files = guest_profile
    out = run_perf(home, "annotate", "--stdio", "-i", files.data, "-s", "hash_update"
                   ).stdout.decode()
    rows = {}
    for ln in out.splitlines():
        m = re.match(r"\s*(\d+\.\d+)\s*:\s+([0-9a-f]+):", ln)
        if m:
            rows[int(m.group(2), 16)] = float(m.group(1))
    start, end, _ = next(sym for sym in w.symbols if sym[2] == "hash_update")
    ips = sorted({int(ip) for ip in w.ip if start <= ip < end})
    assert sorted(rows) == ips                            # one line per simulated instruction
    sel = s[s["sym"] == "hash_update"]
    for ip, pct in rows.items():
        assert pct == pytest.approx(100.0 * (sel["ip"] == ip).sum() / sel.size, abs=0.006)


def test_build_id_protects_against_a_different_elf(guest_profile, tmp_path):
    home, w, s, files = guest_profile
    d = tmp_path / "moved"
    d.mkdir()
    data = d / "guest.data"
    shutil.copy(files.data, data)
    shutil.copy(files.elf, files.elf.with_suffix(".orig"))
    try:
        other = export.build_elf(hot_loop())              # same path, other build-id
        files.elf.write_bytes(other.data)
        out = run_perf(home, "report", "--stdio", "--no-children", "-g", "none", "--sort", "sym",
                       "-i", data).stdout.decode()
        rows = [ln for ln in out.splitlines() if "%" in ln and not ln.startswith("#")]
        assert rows and not any("hash_update" in r or "hot_loop" in r for r in rows)
    finally:
        shutil.copy(files.elf.with_suffix(".orig"), files.elf)


def test_kernel_samples_never_take_host_symbols(guest_profile):
    home, w, s, files = guest_profile
    out = run_perf(home, "report", "--stdio", "--no-children", "-g", "none", "--sort", "sym",
                   "-i", files.data).stdout.decode()     # no --kallsyms
    assert "copy_user_generic" not in out
    assert re.search(r"\[k\] 0xffffffff815c4", out)      # left unresolved, as an address


def test_pipe_mode_reads_the_same(guest_profile, tmp_path):
    import io
    home, w, s, files = guest_profile
    buf = io.BytesIO()
    pf = export.perf_data(s, buf, workload=w, event=export.event_info(
        export.EventInfo("INST_RETIRED.ANY_P:pp", 0xC0, 2, True, True, 1009)),
        symbols_dir=tmp_path)
    r = run_perf(home, "report", "--stdio", "--no-children", "-g", "none", "--sort", "sym",
                 *pf.perf_args(), stdin=buf.getvalue())
    assert report_percent(r.stdout.decode()) == expected_percent(s)


LEVELS = {LAT_L1: "L1", LAT_L2: "L2", LAT_LLC: "L3", LAT_DRAM: "RAM"}


def test_perf_mem_report_on_a_load_latency_profile(tmp_path):
    """Load samples with data address, latency and data source, in perf mem report.

    No (model, design) pair of the public API gives load-latency samples
    to rely on: the patch's guests are Silvermont, whose record has no data
    address or latency (FACTS g.3); the icelake design's guest records
    come without the MEMINFO group; the guest driver models no
    load-latency event. So the samples are built here from pointer_chase's
    own loads: what a Haswell MEM_UOPS_RETIRED.ALL_LOADS:pp record with
    address, latency and data source would carry.
    """
    home = tmp_path / "home"
    home.mkdir()
    w = pointer_chase()
    loads = np.flatnonzero(w.kind == pl.workloads.KIND_LOAD)
    pos = np.random.default_rng(0).choice(loads, size=400)
    s = np.zeros(pos.size, dtype=SAMPLE_DTYPE.descr + [("data_src", np.uint64)])
    s["ip"], s["cpl"], s["addr"], s["latency"] = w.ip[pos], w.cpl[pos], w.addr[pos], w.latency[pos]
    s["time"] = np.arange(1, pos.size + 1) * 100
    s["precise"] = 1
    s["sym"] = "chase"
    s["data_src"] = [export.data_src("load", LEVELS[int(lat)]) for lat in s["latency"]]
    ev = export.EventInfo(name="MEM_UOPS_RETIRED.ALL_LOADS:pp", precise_ip=2, usr=True, os=True,
                          config=pl.MODELS["haswell"].event("MEM_UOPS_RETIRED.ALL_LOADS").code,
                          period=1, memory=True)
    files = export.perf_data(s, tmp_path / "mem.data", workload=w, event=ev, cpu="haswell")
    out = run_perf(home, "mem", "report", "--stdio", "--sort=mem", *files.perf_args()
                   ).stdout.decode()
    assert f"Total weight : {int(s['latency'].sum())}" in out
    counts = {}
    for ln in out.splitlines():
        m = re.match(r"\s+\d+\.\d\d%\s+(\d+)\s+(.+?)\s*$", ln)
        if m:
            counts[m.group(2)] = int(m.group(1))
    want = {}
    names = {"L1": "L1 hit", "L2": "L2 hit", "L3": "L3 hit", "RAM": "Local RAM hit"}
    for lat in s["latency"].tolist():
        k = names[LEVELS[lat]]
        want[k] = want.get(k, 0) + 1
    assert counts == want


def test_perf_report_helper_matches_overhead_table(guest_profile):
    home, w, s, files = guest_profile
    rows = export.perf_report(files, sort="sym").splitlines()
    assert rows[0].startswith("# Samples: ")
    assert sorted(rows[1:]) == sorted(export.overhead_table(s).splitlines())


@pytest.mark.parametrize("make", [multi_function, hot_loop])
def test_perf_reads_without_warnings(make, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    w = make()
    pos = np.arange(len(w))
    s = np.zeros(pos.size, dtype=SAMPLE_DTYPE)
    s["ip"], s["cpl"], s["time"] = w.ip[pos], w.cpl[pos], np.arange(1, pos.size + 1)
    ev = export.EventInfo("INST_RETIRED.ANY_P:pp", 0xC0, 2, True, True, 1009)
    files = export.perf_data(s, tmp_path / "g.data", workload=w, event=ev)
    r = run_perf(home, "report", "--stdio", *files.perf_args())
    assert r.stderr.decode().strip() == ""
    for _, _, name in w.symbols:
        assert name in r.stdout.decode()
