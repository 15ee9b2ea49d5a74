"""Notebook 08: a guest's perf record end to end, and its profile against the ground truth."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest

import pebslab as pl
from pebslab.viz import profile as P

W = pl.workloads.multi_function()


def test_ground_truth_of_loads_follows_the_workload_source():
    # workloads.multi_function: parse loops 12x over 2 loads, copy_user_generic 32x over 1,
    # memcpy_small 6x over 1, main and sys_read one load each, hash_update none: 64 loads
    t = P.ground_truth(W, "loads")
    assert t == pytest.approx({"main": 1 / 64, "parse": 24 / 64, "hash_update": 0.0,
                               "memcpy_small": 6 / 64, "sys_read": 1 / 64,
                               "copy_user_generic": 32 / 64})
    assert sum(P.ground_truth(W, "instructions").values()) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def runs():
    return {m: P.profile_run(m) for m in P.MODIFIERS}


def test_pp_samples_the_eventing_ip_of_every_load(runs):
    # Silvermont: format-2 record with EventingRIP; precise_ip >= 2 takes it (FACTS a.6, g.3)
    r = runs[":pp"]
    assert len(r.samples) > 50 and P.exact_fraction(r.samples) == 1.0
    assert P.profile_error(P.shares(r.samples), P.ground_truth()) < 0.05


def test_p_samples_the_instruction_after_the_load(runs):
    # trap-like PEBS (PERF_CAPABILITIES bit 6 on Silvermont, FACTS g.3) and no fix-up at
    # precise_ip == 1 (FACTS a.6); in multi_function no load is followed by a load
    r = runs[":p"]
    assert P.exact_fraction(r.samples) == 0.0
    loads = set(W.ip[W.kind == pl.workloads.KIND_LOAD].tolist())
    nxt = {int(W.ip[i]) + int(W.length[i]) for i in range(len(W)) if int(W.ip[i]) in loads}
    assert set(r.samples["ip"].tolist()) <= nxt


def test_without_pebs_skid_blames_a_function_with_no_load(runs):
    r = runs[""]
    sh = P.shares(r.samples)
    assert sh["hash_update"] > 0.1 and P.ground_truth()["hash_update"] == 0.0
    assert P.profile_error(sh, P.ground_truth()) > 0.1


def test_precise_events_reach_the_guest_as_bit_62(runs):
    # the patch's kvm_perf_overflow sets bit 62 for an event with precise_ip (seed)
    assert runs[":pp"].bit62_reads == runs[":pp"].pmis > 0
    assert runs[""].bit62_reads == 0 and runs[""].pmis > 0
    assert runs[":pp"].records == len(runs[":pp"].samples)


def test_chain_is_in_causal_order_and_complete():
    steps = P.chain_steps()
    kinds = [s.kind for s in steps]
    assert kinds == ["MSR_WRITE", "MSR_WRITE", "MSR_WRITE", "AUTOLOAD", "OVERFLOW",
                     "PEBS_WRITE", "PMI", "PMI", "PMI_INJECT", "MSR_READ", "DRAIN"]
    assert [s.time for s in steps] == sorted(s.time for s in steps)
    assert "17 pages" in steps[1].label          # MAX_PINNED_PAGES: 64 KiB + DS
    assert steps[-2].label.endswith(f"{1 << 62:#x}")


def test_chain_figure_has_a_lane_per_actor_and_an_arrow_per_step():
    from pebslab.viz import story
    fig = P.chain_figure()
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert set(story.LANES) <= set(texts)
    assert sum(t.startswith(f"{k}. ") for t in texts for k in range(1, 12)) == \
        len(P.chain_steps())
    plt.close(fig)


def test_every_design_on_two_cpus():
    rows = {(r["cpu"], r["design"]): r for r in P.design_matrix(instructions=300_000)}
    for d in ("patch", "review", "fixed"):
        assert not rows[("silvermont", d)]["refused"] and rows[("silvermont", d)]["exact"] == 1.0
        # the patch is Silvermont only (perf_pebs_virtualization, an assumption; FACTS e)
        assert "needs PEBS" in rows[("icelake", d)]["refused"]
    # icelake requires EPT-friendly PEBS (FACTS c.2): none on Silvermont, exact on Ice Lake
    assert rows[("silvermont", "icelake")]["refused"]
    assert rows[("icelake", "icelake")]["exact"] == 1.0
    assert rows[("silvermont", "icelake")]["fallback_samples"] > 0


def test_same_seed_same_profile():
    a, b = P.profile_run(seed=4), P.profile_run(seed=4)
    assert a.samples.tobytes() == b.samples.tobytes()


@pytest.mark.parametrize("kw", [{}, {"modifier": ""}, {"cpu": "haswell"},
                                {"design": "icelake", "cpu": "icelake"},
                                {"event": "instructions", "period": 10007},
                                {"period": 503}])
def test_explorer_draws_at_the_widget_ends(kw):
    fig = P.profile_explorer(**kw)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [s[2] for s in W.symbols]
    plt.close(fig)


def test_static_figure_marks_the_skid_victim():
    fig = P.profile_figure(instructions=300_000)
    assert any("no counted instruction here" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


@pytest.mark.parametrize("kw, exc", [({"modifier": ":ppp"}, ValueError),
                                     ({"design": "v2"}, ValueError),
                                     ({"cpu": "p4"}, ValueError),
                                     ({"event": "cycles"}, ValueError),
                                     ({"period": 0}, ValueError),
                                     ({"period": 1.5}, TypeError)])
def test_bad_arguments_are_named(kw, exc):
    with pytest.raises(exc, match=next(iter(kw))):
        P.profile_run(**kw)


def test_ground_truth_rejects_a_non_workload():
    with pytest.raises(TypeError, match="workload"):
        P.ground_truth("multi_function")
