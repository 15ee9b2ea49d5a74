"""Tests for the figures of notebook 03: pebslab.viz.vpmu.

Expected values come from the patch (seed document): reprogram_counter()
takes sample_period = (-counter) & pmc_bitmask(pmc) and a new perf event is
created each time a counter is reprogrammed (global_ctrl_changed ->
reprogram_idx -> stop_counter + reprogram_counter), and from the cycle
figures of pebslab.kvm.vm.Costs, which are documented ASSUMPTIONS that the
breakdown must reproduce exactly.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pebslab.kvm.vm import Costs  # noqa: E402
from pebslab.viz import vpmu as V  # noqa: E402

C = Costs()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_session_backs_the_guest_counter_with_one_host_event():
    vm, rec, res, start = V.guest_session(instructions=5_000)
    evs = vm.vcpus[0].pcpu.perf.events()
    assert len(evs) == 1
    a = evs[0].attr
    assert rec.counter == 32                  # instructions -> fixed counter 0
    assert a.precise_ip == 0 and a.exclude_host and not a.exclude_user
    assert a.sample_period > 0 and res.instructions == 5_000


def test_breakdown_matches_the_assumed_costs():
    d = V.pmi_cost_breakdown()
    per = d["per_pmi"]
    assert d["pmis"] == 200_000 // 10007
    assert per["nmi_exit"] == C.vmexit
    assert per["inject"] == C.pmi_inject
    assert per["msr_exits"] == (d["reads"] + d["writes"]) * (C.vmexit + C.msr_emulation)
    # the guest handler's GLOBAL_CTRL 0 -> on toggle releases and re-creates the event
    assert per["perf_events"] == C.perf_event_release + C.perf_event_create
    assert d["perf_events_created"] == d["pmis"] + 1
    assert d["overhead_cycles"] == d["pmis"] * d["per_pmi_total"]
    assert 0 < d["overhead"] < 1


def test_breakdown_follows_the_cost_knobs():
    d = V.pmi_cost_breakdown(vmexit=500, msr_emulation=0, perf_event_create=0,
                             perf_event_release=0)
    assert d["per_pmi"]["perf_events"] == 0
    assert d["per_pmi"]["nmi_exit"] == 500
    assert d["per_pmi"]["msr_exits"] == 500 * (d["reads"] + d["writes"])


def test_overhead_falls_with_a_longer_period():
    short = V.pmi_cost_breakdown(period=2003, instructions=50_000)
    long_ = V.pmi_cost_breakdown(period=20011, instructions=50_000)
    assert short["overhead"] > long_["overhead"]
    assert short["per_pmi"] == long_["per_pmi"]


@pytest.mark.parametrize("event, counter", [("instructions", 32), ("cycles", 33),
                                            ("MEM_UOPS_RETIRED.ALL_LOADS", 0)])
def test_every_offered_event_and_design(event, counter):
    for design in ("patch", "review", "fixed", "icelake"):
        d = V.pmi_cost_breakdown(event=event, design=design, instructions=60_000)
        assert d["counter"] == counter
        if d["pmis"]:
            assert d["per_pmi"]["perf_events"] == C.perf_event_release + C.perf_event_create


def test_pmi_costs_defaults_and_extremes():
    assert isinstance(V.pmi_costs(), Figure)
    assert isinstance(V.pmi_costs(period=10_000_000), Figure)      # no PMI at all
    assert isinstance(V.pmi_costs(period=1_000, vmexit=0, msr_emulation=0,
                                  perf_event_create=0, perf_event_release=0), Figure)
    assert isinstance(V.pmi_costs(vmexit=100_000, perf_event_create=100_000), Figure)


def test_exit_timeline_defaults_and_zoom_out_of_range():
    fig = V.exit_timeline()
    assert isinstance(fig, Figure)
    assert "19 PMIs" in fig.axes[0].get_title()
    fig = V.exit_timeline(pmi=1000, instructions=20_000)
    assert any("no PMI number 1000" in t.get_text() for ax in fig.axes for t in ax.texts)


def test_handler_windows_hold_one_pmi_each():
    vm, rec, res, start = V.guest_session(instructions=60_000)
    wins = V.handler_windows(vm, start)
    assert len(wins) == res.pmis_injected
    for w in wins:
        kinds = [r["kind"] for r in w["rows"]]
        assert kinds[0] == "PMI" and kinds.count("PMI_INJECT") == 1
        assert w["rows"][1]["info"] == "EXTERNAL_NMI"


@pytest.mark.slow
def test_exit_timeline_largest_run():
    assert isinstance(V.exit_timeline(period=1_000, instructions=1_000_000, pmi=999), Figure)


@pytest.mark.parametrize("kw, exc, word", [({"period": 999}, ValueError, "period"),
                                           ({"design": "v2"}, ValueError, "design"),
                                           ({"event": "cycles:pp"}, ValueError, "event"),
                                           ({"event": 7}, TypeError, "event"),
                                           ({"instructions": 10**7}, ValueError, "instructions"),
                                           ({"vmexit": -1}, ValueError, "vmexit")])
def test_session_rejects_bad_arguments(kw, exc, word):
    with pytest.raises(exc, match=word):
        V.guest_session(**kw)


def test_explorers_run_at_their_defaults():
    assert set(V.EXPLORERS) == {"pmi_costs", "exit_timeline"}
    for name, (fn, kwargs) in V.EXPLORERS.items():
        assert isinstance(fn(**kwargs), Figure), name
        plt.close("all")
