"""pebslab.viz.msrs: the PERF_CAPABILITIES table and the WRMSR explorer of notebook 04.

Expected values come from the patch text (the seed) and FACTS b.5-b.7: the
patch reports host PERF_CAPABILITIES & (PEBS_TRAP | ARCH_REG | PEBS_FORMAT),
accepts PEBS_ENABLE bits 0xf0000000f, and (review) #GPs the PEBS MSRs for a
guest whose CPUID lacks DS/DTES64/PDCM.
"""

from __future__ import annotations

import pytest

import pebslab as pl
from pebslab.hw import msr as M
from pebslab.viz import msrs


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt
    plt.close("all")


def test_explorers_run_at_their_defaults():
    for name, (fn, kw) in msrs.EXPLORERS.items():
        out = fn(**kw)
        assert isinstance(out, str) and out, name
        assert repr(out) == str(out)      # Jupyter shows the text, not a quoted repr


def test_perf_cap_patch_passes_only_trap_arch_reg_format():
    d = msrs.perf_cap_rows("silvermont", "patch")
    host = pl.get_model("silvermont").perf_capabilities
    assert d["host"] == host
    assert d["guest"] == host & (M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG
                                 | M.PERF_CAP_PEBS_FORMAT)
    rows = {r["field"]: r for r in d["rows"]}
    assert rows["pebs_format"]["guest"] == rows["pebs_format"]["host"]
    assert [r["field"] for r in d["rows"]] == [f[0] for f in M.PERF_CAP_FIELDS]
    assert rows["pebs_format"]["bits"] == "11:8"


def test_perf_cap_hidden_fields_and_gp():
    d = msrs.perf_cap_rows("icelake", "icelake")
    rows = {r["field"]: r for r in d["rows"]}
    # freeze_while_smm and perf_metrics exist on the host and are not passed
    assert rows["perf_metrics"]["host"] == 1 and rows["perf_metrics"]["guest"] == 0
    assert "hidden" in msrs.perf_cap_table("icelake", "icelake")
    # a host without PEBS virtualization: the guest RDMSR #GPs
    d = msrs.perf_cap_rows("haswell", "patch")
    assert d["guest"] is None and d["fault"].startswith("#GP")
    assert "#GP" in msrs.perf_cap_table("haswell", "patch")
    # review + a PMU-without-PEBS CPUID: #GP too
    assert msrs.perf_cap_rows("silvermont", "review", True)["guest"] is None


@pytest.mark.parametrize("cpu", sorted(pl.MODELS))
@pytest.mark.parametrize("design", pl.DESIGN_NAMES)
def test_perf_cap_table_every_setting(cpu, design):
    for hide in (False, True):
        text = msrs.perf_cap_table(cpu, design, hide)
        assert "pebs_format" in text


def test_northup_point_patch_accepts_review_refuses():
    p = msrs.msr_write("PEBS_ENABLE", 0x1, "patch", "silvermont", hide_pebs_cpuid=True)
    r = msrs.msr_write("PEBS_ENABLE", 0x1, "review", "silvermont", hide_pebs_cpuid=True)
    assert p["accepted"] and p["readback"] == 1
    assert not r["accepted"] and r["fault"].startswith("#GP")
    assert "pebs_allowed" in " ".join(r["why"])
    assert p["cpuid"] == r["cpuid"] == "DS=0 DTES64=0 PDCM=0"


def test_pebs_enable_write_pins_ds_and_buffer():
    r = msrs.msr_write("PEBS_ENABLE", 0x1)
    assert r["accepted"]
    # the DS page and the 16 buffer pages: 17 = the patch's MAX_PINNED_PAGES
    assert any("pinned host frames: 0 -> 17" in line for line in r["did"])


@pytest.mark.parametrize("value, ok", [(0x1, True), (0xF, True), (0xF0000000F, True),
                                       (0x10, False), (1 << 63, False), (1 << 36, False)])
def test_pebs_enable_mask_of_the_patch(value, ok):
    assert msrs.msr_write("PEBS_ENABLE", value)["accepted"] is ok


def test_other_msrs():
    assert not msrs.msr_write("PERF_CAPABILITIES", 0)["accepted"]      # read-only
    assert not msrs.msr_write("EVENTSEL2", 0x1)["accepted"]            # SLM: 2 GP counters
    assert not msrs.msr_write("PEBS_LD_LAT_THRESHOLD", 3)["accepted"]  # not implemented
    g = msrs.msr_write("GLOBAL_CTRL", 1)
    assert g["accepted"] and any("precise_ip=0" in line for line in g["did"])
    assert not msrs.msr_write("DS_AREA", 1 << 60, "fixed")["accepted"]  # non-canonical
    assert msrs.msr_write("DS_AREA", 1 << 60, "patch")["accepted"]
    assert not msrs.msr_write("PEBS_ENABLE", 1, "patch", "haswell")["accepted"]


def test_value_strings_and_numbers():
    a = msrs.msr_write_outcome("PEBS_ENABLE", "0x1")
    b = msrs.msr_write_outcome(M.MSR_IA32_PEBS_ENABLE, 1)
    assert a == b and "ACCEPTED" in a
    assert msrs.msr_write_outcome("pebs_enable", (1 << 64) - 1).count("#GP") >= 1


@pytest.mark.parametrize("kw, word", [
    ({"msr": "NOPE"}, "msr"), ({"value": -1}, "value"), ({"value": 1 << 64}, "value"),
    ({"value": "zz"}, "value"), ({"design": "v2"}, "design"), ({"cpu": "k6"}, "cpu")])
def test_bad_arguments_name_the_argument(kw, word):
    with pytest.raises(ValueError, match=word):
        msrs.msr_write_outcome(**kw)


def test_deterministic():
    assert msrs.msr_write_outcome() == msrs.msr_write_outcome()
    assert msrs.perf_cap_table() == msrs.perf_cap_table()


# ----------------------------------------------------------------------------- register_bits

def test_register_bits_rows_follow_the_patch_and_the_sdm():
    d = msrs.register_bits_data(cpu="silvermont", design="patch")
    # the patch: guest reads host PERF_CAPABILITIES & (PEBS_TRAP | ARCH_REG | PEBS_FORMAT)
    assert d["guest_cap"] == d["host_cap"] & (M.PERF_CAP_PEBS_TRAP | M.PERF_CAP_ARCH_REG
                                              | M.PERF_CAP_PEBS_FORMAT)
    kvm = {r["bit"] for r in d["pebs_enable"] if r["guest"]}
    cpu = {r["bit"] for r in d["pebs_enable"] if r["host"]}
    assert kvm == {0, 1, 2, 3, 32, 33, 34, 35}        # the patch's mask 0xf0000000f
    assert cpu == {0}                                 # SDM 18.6.1.1 / FACTS g.3: PMC0, no LL


def test_register_bits_without_pebs_virtualization_shows_a_fault():
    d = msrs.register_bits_data(cpu="haswell", design="patch")
    assert d["guest_cap"] is None                     # not a PMU MSR for this guest
    assert all(r["guest"] is None for r in d["perf_cap"])
    assert not any(r["guest"] for r in d["pebs_enable"])


def test_register_bits_draws_and_rejects_bad_input():
    import matplotlib.figure
    for cpu, design in (("silvermont", "patch"), ("icelake", "icelake"), ("haswell", "patch")):
        assert isinstance(msrs.register_bits(cpu=cpu, design=design), matplotlib.figure.Figure)
    with pytest.raises(ValueError, match="cpu"):
        msrs.register_bits(cpu="pentium")
    with pytest.raises(ValueError, match="design"):
        msrs.register_bits(design="v2")
