"""The appendix's tables (pebslab/appendix.py) against the notebooks and the package.

The rules these tests enforce:

* **Mechanism index.** For every row: each pebslab path imports; the
  notebook exists; the section is one of its headings (text without the
  ``#``); the explorer imports and the notebook wires it to widgets
  (``explore(`` or ``interact(`` in the same cell); the exercise is a
  ``pebslab.exercises.check`` checker the notebook calls; and the row has an
  explorer or an exercise. A row marked ``pending=True`` points at a notebook
  or section that exists only on a branch not yet merged (09-12, or a
  rewritten section of 00-06); it is skipped, and the skip names the
  notebook. Every mechanism the patch and the review have (issue 11's list)
  has at least one row in main.
* **Glossary.** "First used in" is the first course notebook (by number)
  whose *markdown* uses the term, matching the row's patterns, with any
  section titled "Glossary" left out (a glossary lists terms; it does not
  use them). It is computed against this checkout's notebooks: for notebooks
  still being rewritten on another branch that means main's current version.
  A row whose notebook is not in this checkout (09-12 before their merge) is
  checked for earlier uses only, then skipped.
* **References.** Every kernel commit FACTS.md names in c.1 (the guest-PEBS
  series) and g.1-g.4 (pins, the 3.15 PMI handler, DS_AREA in the load list)
  is a reference, with what it is for.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from pebslab import appendix as A

ROOT = Path(__file__).resolve().parents[1]
NB99 = ROOT / "notebooks" / "99_appendix.ipynb"


def _id(row) -> str:
    return re.sub(r"\W+", "_", f"{row.notebook[:2]}_{row.mechanism[:40]}").strip("_")


# ----------------------------------------------------------------------------- mechanism index

@pytest.mark.parametrize("row", A.MECHANISMS, ids=[_id(r) for r in A.MECHANISMS])
def test_mechanism_row_points_at_things_that_exist(row):
    problems = A.check_mechanism(row)
    if row.pending:
        state = ("it passes here now: set pending=False" if not problems
                 else "not in this checkout yet")
        pytest.skip(f"pending: {row.notebook} § {row.section!r}: {state}")
    assert problems == []


def test_every_row_has_an_explorer_or_an_exercise():
    missing = [m.mechanism for m in A.MECHANISMS if not (m.explorer or m.exercise)]
    assert missing == []


#: What the index must cover: issue 11's list of the patch's and the review's
#: mechanisms, each as the pebslab path that models it (docs/ARCHITECTURE.md,
#: "The patch, hunk by hunk").
REQUIRED = {
    "kvm_host.h fields": ("pebslab.kvm.pmu.KvmPmu.pebs_enable", "pebslab.kvm.pmu.KvmPmu.ds_area",
                          "pebslab.kvm.pmu.KvmPmu.pinned_pages",
                          "pebslab.kvm.pmu.KvmPmu.num_pinned_pages"),
    "MAX_PINNED_PAGES": ("pebslab.kvm.pebs_pin.MAX_PINNED_PAGES",),
    "PERF_CAP bits": ("pebslab.hw.msr.PERF_CAP_PEBS_TRAP", "pebslab.hw.msr.PERF_CAP_ARCH_REG",
                      "pebslab.hw.msr.PERF_CAP_PEBS_FORMAT"),
    "CPUID bits DS/DTES64/PDCM": ("pebslab.kvm.cpuid.__do_cpuid_ent",),
    "struct debug_store": ("pebslab.hw.pebs.DS_SIZE_PATCH", "pebslab.kvm.pebs_pin._unpack_ds"),
    "host_perf_cap": ("pebslab.kvm.pmu.KvmPmu.host_perf_cap",),
    "bit 62": ("pebslab.kvm.pmu.kvm_perf_overflow",),
    "precise_ip": ("pebslab.kvm.pmu.reprogram_counter",),
    "the guest-owned event": ("pebslab.host.perf.HostPerf.create_kernel_counter",),
    "reprogram_gp_counter": ("pebslab.kvm.pmu.reprogram_gp_counter",),
    "reprogram_fixed_counter": ("pebslab.kvm.pmu.reprogram_fixed_counter",),
    "kvm_pmu_msr": ("pebslab.kvm.pmu.kvm_pmu_msr",),
    "get_msr of the three MSRs": ("pebslab.kvm.pmu.kvm_pmu_get_msr",),
    "set_msr of the three MSRs": ("pebslab.kvm.pmu.kvm_pmu_set_msr", "pebslab.kvm.pmu.ds_area_changed",
                                  "pebslab.kvm.pmu.pebs_enable_changed_patch"),
    "the four pinning functions": ("pebslab.kvm.pebs_pin.kvm_pmu_release_pin",
                                   "pebslab.kvm.pebs_pin.get_guest_page",
                                   "pebslab.kvm.pebs_pin.pin_and_copy",
                                   "pebslab.kvm.pebs_pin.kvm_pmu_pebs_pin"),
    "kvm_pmu_init": ("pebslab.kvm.pmu.kvm_pmu_init",),
    "kvm_pmu_destroy": ("pebslab.kvm.pmu.kvm_pmu_destroy",),
    "the vmx_vcpu_run hunk": ("pebslab.kvm.vmx.vmx_prepare_msrs",),
    "Silvermont-only": ("pebslab.kvm.designs.pebs_virtualization_supported",),
    "pebs_allowed": ("pebslab.kvm.pmu.kvm_pmu_cpuid_update",),
}


@pytest.mark.parametrize("what", sorted(REQUIRED))
def test_the_index_covers_the_mechanism_in_main(what):
    in_main = {p for m in A.MECHANISMS if not m.pending for p in m.pebslab}
    assert [p for p in REQUIRED[what] if p not in in_main] == []


@pytest.mark.parametrize("claim", ["Timing", "Migration"])
def test_the_commit_message_claims_have_rows(claim):
    rows = [m for m in A.MECHANISMS if m.hunk == "commit message" and claim in m.mechanism]
    assert rows, f"no row for the commit message's {claim} claim"


def test_the_checker_finds_every_kind_of_broken_row():
    good = next(m for m in A.MECHANISMS if not m.pending and m.explorer and m.exercise)
    broken = {
        "pebslab": dataclasses.replace(good, pebslab=("pebslab.kvm.pmu.no_such_function",)),
        "explorer": dataclasses.replace(good, explorer="pebslab.viz.pinning.no_such_view"),
        "section": dataclasses.replace(good, section="No such section"),
        "notebook": dataclasses.replace(good, notebook="42_no_such_notebook"),
        "exercise": dataclasses.replace(good, exercise="ex99_no_such_exercise"),
        "neither": dataclasses.replace(good, explorer=None, exercise=None),
    }
    expect = {"pebslab": "no_such_function", "explorer": "no_such_view",
              "section": "No such section", "notebook": "does not exist",
              "exercise": "ex99_no_such_exercise", "neither": "neither explorer nor exercise"}
    for what, row in broken.items():
        problems = A.check_mechanism(row)
        assert any(expect[what] in p for p in problems), (what, problems)


def test_an_explorer_of_another_notebook_does_not_count():
    row = next(m for m in A.MECHANISMS if m.notebook == "06_pinning" and not m.pending)
    other = dataclasses.replace(row, explorer="pebslab.viz.switching.switch_timeline")
    assert any("wires no explorer" in p for p in A.check_mechanism(other))


# ----------------------------------------------------------------------------- glossary

#: The terms issue 11's brief names, each of which must be in the glossary.
BRIEF_TERMS = ("PMU", "PMC", "PEBS", "DS area", "PEBS assist", "PMI", "NMI", "skid", "precise_ip",
               "EventingRIP", "GVA / GPA / HPA", "EPT", "VM exit", "VM entry", "MSR-load list",
               "pinning", "get_page / put_page", "reclaim", "MMU notifier", "EPT-friendly PEBS",
               "adaptive PEBS", "PEBS_DATA_CFG", "cross-mapped counter", "vPMU", "KVM", "QEMU",
               "CPUID leaf 0xA", "PDCM", "DS (CPUID bit)", "DTES64", "PERF_CAPABILITIES",
               "GLOBAL_STATUS bit 62")


def test_glossary_has_every_term_of_the_brief_once():
    terms = [t.term for t in A.GLOSSARY]
    assert len(terms) == len(set(terms))
    assert [t for t in BRIEF_TERMS if t not in terms] == []
    assert all(t.definition.strip() and len(t.definition) < 400 for t in A.GLOSSARY)


@pytest.mark.parametrize("term", A.GLOSSARY, ids=[t.term for t in A.GLOSSARY])
def test_glossary_first_use(term):
    assert A.check_term(term) == []
    if term.first not in A.notebook_stems():
        pytest.skip(f"{term.first} is not in main yet: checked only that no earlier notebook uses "
                    f"{term.term!r}")


def test_check_term_finds_an_earlier_use_and_a_missing_one():
    pebs = next(t for t in A.GLOSSARY if t.term == "PEBS")
    late = dataclasses.replace(pebs, first="05_ds_area_in_guest_memory")
    assert any("00_welcome already uses it" in p for p in A.check_term(late))
    absent = dataclasses.replace(pebs, patterns=(r"no such words anywhere",))
    assert any("does not use it" in p for p in A.check_term(absent))


def test_a_glossary_section_is_not_a_use(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": "# 00\n\nAbout PEBS.\n\n## Glossary\n\n"
                     "**frobnicator**: a word.\n"},
                    {"cell_type": "markdown", "source": "- **widget**: another word\n"},
                    {"cell_type": "markdown", "source": "## Next\n\nThe widget is here."}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "00_x.ipynb").write_text(json.dumps(nb))
    frob = A.Term("frobnicator", "d", "00_x")
    widget = A.Term("widget", "d", "00_x")
    assert A.first_mention(frob, root=tmp_path) is None
    assert A.first_mention(widget, root=tmp_path) == "00_x"


# ----------------------------------------------------------------------------- references

#: Commits FACTS.md names in c.1 (the guest-PEBS series that landed in 6.0) and
#: in g.1-g.4 (reclaim of pinned pages, the PMI handler's PEBS_ENABLE writes,
#: the canonical check on DS_AREA).
FACTS_COMMITS = ("fb358e0b811e", "69e575dd4fba", "39a4d779546a", "bef6ecca46ac", "2c985527dd8d",
                 "0d23dc34a7ce", "c59a1f106f5c", "79f3e3b58386", "6ebe44366bde", "8183a538cd95",
                 "902caeb6841a", "d10551738f6a", "854250329c02", "968635abd5f5", "59cc99f6e971",
                 "cf8e55fe50df", "feb889fb40fa", "6c1c07b33eb0")


def test_references_name_every_commit_of_facts_c1_and_g():
    keys = {r.key for r in A.REFERENCES}
    assert [c for c in FACTS_COMMITS if c not in keys] == []


def test_references_have_the_thread_the_sdm_the_kernel_and_kvm_unit_tests():
    kinds = {r.kind for r in A.REFERENCES}
    assert {"thread", "SDM", "kernel file", "kernel commit", "kvm-unit-tests"} <= kinds
    assert A.REFERENCES[0].key == "seed"
    assert all(r.used_for.strip() and r.where.strip() for r in A.REFERENCES)
    assert len({r.key for r in A.REFERENCES}) == len(A.REFERENCES)


# ----------------------------------------------------------------------------- rendering

def test_hunk_walk_follows_the_patch_order():
    # the diffstat of "kvm: Implement PEBS virtualization", in order
    files = list(dict.fromkeys(f for f, *_ in A.PATCH_HUNKS))
    assert files == ["arch/x86/include/asm/kvm_host.h", "arch/x86/include/uapi/asm/msr-index.h",
                     "arch/x86/kvm/cpuid.c", "arch/x86/kvm/pmu.c", "arch/x86/kvm/vmx.c"]
    pmu = [w for f, w, *_ in A.PATCH_HUNKS if f.endswith("pmu.c")]
    order = ["kvm_perf_overflow", "reprogram_counter", "kvm_pmu_msr", "kvm_pmu_get_msr",
             "kvm_pmu_pebs_pin", "kvm_pmu_set_msr", "kvm_pmu_init", "kvm_pmu_destroy"]
    pos = [next(i for i, w in enumerate(pmu) if name in w) for name in order]
    assert pos == sorted(pos)


def test_tables_render_one_line_per_row():
    for text, rows in ((A.glossary_table(), A.GLOSSARY), (A.references_table(), A.REFERENCES),
                       (A.mechanism_table(), A.MECHANISMS), (A.hunk_walk(), A.PATCH_HUNKS)):
        lines = text.splitlines()
        assert len(lines) == 2 + len(rows)
        assert len({line.count(" | ") for line in lines[2:]}) == 1   # escaped pipes keep the columns
    in_main = A.mechanism_table(pending=False).splitlines()
    assert len(in_main) == 2 + sum(not m.pending for m in A.MECHANISMS)


def test_tables_show_as_html_with_everything_escaped():
    t = A.mechanism_table()
    page = t._repr_html_()
    assert page.count("<tr>") == 1 + len(A.MECHANISMS)
    assert page.count("<th ") == 6
    odd = A.Table(("a", "b"), [("<script>x</script> | `k<v>`", "**bold**<br>next")])
    cell = odd._repr_html_()
    assert "<script>" not in cell and "&lt;script&gt;" in cell
    assert re.search(r"<code[^>]*>k&lt;v&gt;</code>", cell) and "<strong>bold</strong><br>next" in cell
    assert str(odd).splitlines()[2].count(" | ") == 1   # two columns: the pipe in the cell is escaped


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="widths"):
        A.Table(("a", "b"), [], widths=(50, 40))
    with pytest.raises(ValueError, match="dotted"):
        A.resolve("os.path")
    with pytest.raises(ValueError, match="stem"):
        A.notebook_path("pinning")
    with pytest.raises(ValueError, match="kind"):
        A.references_table(kind="blog")
    with pytest.raises(TypeError, match="pending"):
        A.mechanism_table(pending="yes")
    with pytest.raises(TypeError, match="row must be a Mechanism"):
        A.check_mechanism("06_pinning")
    with pytest.raises(TypeError, match="term must be a Term"):
        A.check_term("PEBS")
    with pytest.raises(TypeError, match="term must be a Term"):
        A.first_mention("PEBS")
    with pytest.raises(ImportError, match="no_such"):
        A.resolve("pebslab.kvm.pmu.no_such")


def test_appendix_notebook_renders_the_tables_and_is_in_the_book():
    nb = json.loads(NB99.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    for fn in ("glossary_table", "references_table", "mechanism_table", "hunk_walk"):
        assert f"{fn}(" in code
    toc = (ROOT / "book" / "_toc.yml").read_text(encoding="utf-8")
    assert "- file: notebooks/99_appendix" in toc
    course = [m.start() for m in re.finditer(r"- file: notebooks/\d\d_", toc)]
    assert toc.index("notebooks/99_appendix") == course[-1] + len("- file: ")
    assert "caption: Appendix" in toc
