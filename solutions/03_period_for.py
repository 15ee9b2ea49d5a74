# Notebook 03, exercise 3 (investigate): the smallest period that keeps PMI handling under 5%.
# check: ex03_period_for
def period_for(event, recreate):
    """Return the smallest period of the explorer's list with PMI handling < 5% of guest time."""
    from pebslab.exercises.nb03 import PERIODS
    from pebslab.viz.vpmu import pmi_cost_breakdown
    kw = {} if recreate else {"perf_event_create": 0, "perf_event_release": 0}
    for p in PERIODS:
        if pmi_cost_breakdown(period=p, event=event, **kw)["overhead"] < 0.05:
            return p
    return None
