"""Tests for pebslab.viz.timing (notebook 09's figures).

Expected values come from the sources: the current guest's PMI handler is
intel_pmu_handle_irq() (GLOBAL_CTRL = 0, read GLOBAL_STATUS, ack it through
GLOBAL_OVF_CTRL, read it again, GLOBAL_CTRL back); perf's limits are those
of FACTS f (allowed 2500 ns at the defaults; today 0 and 100 disable
throttling, 2014 only 0; today's reaction keeps a 25% headroom, 2014's
halves max_samples_per_tick); each cost is a pebslab.kvm.vm.Costs field.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pebslab.host import perf as HP  # noqa: E402
from pebslab.hw import msr as M  # noqa: E402
from pebslab.kvm.vm import Costs  # noqa: E402
from pebslab.viz import timing as T  # noqa: E402

C = Costs()


@pytest.fixture(scope="module")
def summary():
    return T.pmi_summary(linux="current")


@pytest.fixture(scope="module")
def summary_315():
    return T.pmi_summary(linux="3.15")


def test_current_guest_handler_exits_are_those_of_intel_pmu_handle_irq(summary):
    ops = [(op, msr) for op, msr, _ in summary["exits"]]
    assert ops == [("wr", M.MSR_CORE_PERF_GLOBAL_CTRL), ("rd", M.MSR_CORE_PERF_GLOBAL_STATUS),
                   ("wr", M.MSR_CORE_PERF_GLOBAL_OVF_CTRL), ("rd", M.MSR_CORE_PERF_GLOBAL_STATUS),
                   ("wr", M.MSR_CORE_PERF_GLOBAL_CTRL)]
    assert summary["exits"][2][2] >> 62 & 1                  # the ack carries bit 62


def test_window_costs_add_up_from_costs(summary):
    assert summary["nmi_exit"] == C.vmexit and summary["inject"] == C.pmi_inject
    assert summary["msr_exits"] == 5 * (C.vmexit + C.msr_emulation)
    # GLOBAL_CTRL = 0 releases the host event, GLOBAL_CTRL back creates it again
    assert summary["kvm_work"] == C.perf_event_release + C.perf_event_create
    assert summary["handler_cycles"] == summary["msr_exits"] + summary["kvm_work"]
    assert summary["total_cycles"] == summary["handler_cycles"] + C.vmexit + C.pmi_inject
    assert summary["handler_ns"] == int(summary["handler_cycles"] / T.GHZ)
    assert summary["pins"] == summary["unpins"] == 0         # today's guest leaves PEBS_ENABLE
    assert summary["records"] >= summary["pmis"] - 1 > 0


def test_handler_grows_by_five_cycles_per_cycle_of_exit_cost():
    a = T.pmi_summary(vmexit=0, linux="current")["handler_cycles"]
    b = T.pmi_summary(vmexit=1000, linux="current")["handler_cycles"]
    assert b - a == 5 * 1000


def test_sample_rate_follows_the_period():
    fast = T.pmi_summary(period=97, linux="current")["samples_per_s"]
    slow = T.pmi_summary(period=970, linux="current")["samples_per_s"]
    assert 5 < fast / slow < 10.5            # 10x the period, the PMI cost is amortised


@pytest.mark.parametrize("era,pct,quiet", [("today", 25, False), ("today", 0, True),
                                           ("today", 100, True), ("2014", 25, False),
                                           ("2014", 0, True), ("2014", 100, True)])
def test_throttle_run_quiet_or_not(summary, era, pct, quiet):
    r = T.throttle_run(summary["handler_ns"], summary["samples_per_s"], era, pct)
    assert (r["first_warning"] is None) == quiet
    if quiet:
        assert r["final_rate"] == HP.DEFAULT_MAX_SAMPLE_RATE and r["messages"] == []


def test_throttle_messages_match_the_model_step_by_step(summary):
    ns = summary["handler_ns"]
    for era in HP.ERAS:
        r = T.throttle_run(ns, summary["samples_per_s"], era, samples=400)
        st = HP.ThrottleState.initial(era=era)
        for _ in range(400):
            st = HP.perf_sample_event_took(st, ns, era)
        assert r["messages"] == st.warnings and r["final_rate"] == st.sample_rate


def test_today_keeps_headroom_and_2014_halves(summary):
    today = T.throttle_run(summary["handler_ns"], summary["samples_per_s"], "today")
    old = T.throttle_run(summary["handler_ns"], summary["samples_per_s"], "2014")
    last = max(i for i, w in enumerate(today["warned"]) if w)
    assert today["allowed_ns"][last] == today["avg"][last] + today["avg"][last] // 4
    assert today["allowed_ns"][-1] >= summary["handler_ns"]     # then it stops warning
    assert old["final_rate"] in (100_000 // 2 ** k for k in range(1, 8))
    assert all(m.startswith("perf: interrupt took too long") for m in today["messages"])
    assert all(m.startswith("perf interrupt took too long") for m in old["messages"])
    assert today["kept_per_s"] == min(summary["samples_per_s"], today["final_rate"])


def test_a_short_handler_never_warns():
    r = T.throttle_run(2500, 1000.0)
    assert r["first_warning"] is None                  # avg must *exceed* 2500 ns
    assert T.throttle_run(2501, 1000.0)["first_warning"] is not None


def test_3_15_guest_toggles_pebs_enable_and_repins_every_pmi(summary_315):
    """FACTS g.2: PEBS_ENABLE = 0 on entry, the value back on exit; a one-page buffer."""
    from pebslab.kvm.pebs_pin import PinCosts

    ops = [(op, msr, val) for op, msr, val in summary_315["exits"]]
    pe = [(i, v) for i, (op, m, v) in enumerate(ops) if m == M.MSR_IA32_PEBS_ENABLE]
    assert [v for _, v in pe] == [0, 1]
    assert ops[0][:2] == ("wr", M.MSR_CORE_PERF_GLOBAL_CTRL) and pe[0][0] == 1
    assert ops[-1][:2] == ("wr", M.MSR_CORE_PERF_GLOBAL_CTRL) and pe[1][0] == len(ops) - 2
    # DS page + the one buffer page: released and pinned again, each PMI
    assert summary_315["pins"] == summary_315["unpins"] == 2
    pc = PinCosts()
    assert summary_315["pin_cycles"] == 2 * (pc.guest_walk + pc.gfn_to_pfn + pc.get_page) + \
        2 * pc.put_page
    assert summary_315["handler_cycles"] == summary_315["msr_exits"] + \
        summary_315["pin_cycles"] + summary_315["kvm_work"]


def test_the_3_15_handler_is_longer_than_todays(summary, summary_315):
    assert summary_315["handler_cycles"] > summary["handler_cycles"]
    assert len(summary_315["exits"]) > len(summary["exits"])


def test_windows_cover_every_injected_pmi():
    vm, rec, res, start = T.pmi_session(linux="current")
    wins = T.pmi_windows(vm, start)
    assert len(wins) == res.pmis_injected
    assert all(w.handler_start - w.start == C.vmexit + C.pmi_inject for w in wins)


@pytest.mark.parametrize("kw", [{}, {"vmexit": 0}, {"vmexit": 20_000}, {"period": 10},
                                {"period": T.MAX_EXPLORER_PERIOD}, {"era": "2014"},
                                {"cpu_time_max_percent": 0}, {"cpu_time_max_percent": 100}])
def test_explorer_draws_at_the_ends_of_its_sliders(kw):
    fig = T.throttle_explorer(**kw)
    assert len(fig.axes) == 2
    plt.close(fig)


def test_anatomy_draws_one_bar_per_era():
    eras = T.linux_eras()
    fig = T.pmi_anatomy(eras)
    assert len(fig.axes[0].get_yticklabels()) == len(eras)
    plt.close(fig)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="linux must be one of"):
        T.pmi_session(linux="2.6")
    with pytest.raises(ValueError, match="era must be one of"):
        T.throttle_run(1000, 1000.0, era="1999")
    with pytest.raises(ValueError, match="samples_per_s must be"):
        T.throttle_run(1000, 0)
    with pytest.raises(ValueError, match="period must be"):
        T.throttle_explorer(period=T.MAX_EXPLORER_PERIOD + 1)
    with pytest.raises(ValueError, match="vmexit must be"):
        T.pmi_session(vmexit=-1)
    assert np.isclose(T.cycles_to_ns(2000), 1000)
