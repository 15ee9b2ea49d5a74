"""The checkers of notebooks 07 and 08 name what is wrong in a typical wrong answer."""

import importlib.util
from pathlib import Path

import pytest

from pebslab.exercises import check, nb07

SOL = Path(__file__).resolve().parent.parent / "solutions"


def _load(name, fn):
    spec = importlib.util.spec_from_file_location(name, SOL / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, fn)


# ----------------------------------------------------------------------------- 07

def test_cpu_values_that_forget_the_carry_over_are_told_so():
    def no_carry(autoload, before):
        zero = {k: 0 for k in before}
        right = _load("07_cpu_values", "cpu_values")(autoload, zero)
        return right
    res = check.ex07_cpu_values(no_carry, quiet=True)
    assert not res.ok and "keeps the value" in res.hint


def test_predict_list_without_the_8_entry_limit_is_told_so():
    def unlimited(extra, ds_area_set, precise_running):
        return (["GLOBAL_CTRL", "PEBS_ENABLE"] if precise_running else []) + \
            (["DS_AREA"] if ds_area_set else [])
    res = check.ex07_predict_list(unlimited, quiet=True)
    assert not res.ok and "NR_AUTOLOAD_MSRS" in res.hint
    # wrong exactly where the wish list exceeds the 8 - extra free slots:
    # 3 wanted while profiling (extra 6, 7, 8), 1 wanted for a bare DS_AREA (extra 8)
    assert len(res.failed) == 4


def test_predict_list_that_ignores_equal_values_is_told_so():
    def always_perf(extra, ds_area_set, precise_running):
        return ["GLOBAL_CTRL", "PEBS_ENABLE"][:max(0, 8 - extra)]
    res = check.ex07_predict_list(always_perf, quiet=True)
    assert not res.ok and "atomic_switch_perf_msrs" in res.hint


def test_diagnose_that_never_suspects_a_full_list_is_told_so():
    def naive(evidence):
        for short in ("GLOBAL_CTRL", "PEBS_ENABLE", "DS_AREA"):
            long = {"GLOBAL_CTRL": "MSR_CORE_PERF_GLOBAL_CTRL",
                    "PEBS_ENABLE": "MSR_IA32_PEBS_ENABLE", "DS_AREA": "MSR_IA32_DS_AREA"}[short]
            if evidence["guest_wrote"][short] and long not in evidence["on_list"]:
                return "switch_" + short.lower()
        return "none"
    res = check.ex07_diagnose(naive, quiet=True)
    assert not res.ok and "warnings" in res.hint


def test_mystery_evidence_is_checked():
    assert set(nb07.mystery_evidence(1)) >= {"on_list", "guest_wrote", "list_full_warnings"}
    with pytest.raises(ValueError, match="k must be"):
        nb07.mystery_evidence(0)


# ----------------------------------------------------------------------------- 08

def test_shares_that_drop_functions_without_samples_are_told_so():
    def sparse(samples, workload):
        out = {}
        for s in samples["sym"]:
            out[str(s)] = out.get(str(s), 0) + 1 / len(samples)
        return out
    res = check.ex08_shares(sparse, quiet=True)
    assert not res.ok and "missing" in res.hint


def test_ground_truth_over_all_instructions_is_told_so():
    right = _load("08_ground_truth", "true_shares")

    def wrong(workload, kind):
        return right(workload, "loads" if kind == "instructions" else kind)
    res = check.ex08_ground_truth(wrong, quiet=True)
    assert not res.ok and "every instruction" in res.hint


def test_profile_error_as_l1_distance_is_told_to_halve_it():
    right = _load("08_profile_error", "profile_error")
    res = check.ex08_profile_error(lambda m, n: 2 * right(m, n), quiet=True)
    assert not res.ok and "half" in res.hint


def test_checkers_raise_in_strict_mode():
    with pytest.raises(AssertionError):
        check.ex08_profile_error(lambda m, n: 0.5, quiet=True, strict=True)


def test_a_non_function_is_refused():
    with pytest.raises(TypeError, match="candidate"):
        check.ex07_predict_list(3, quiet=True)
