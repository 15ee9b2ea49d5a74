# Notebook 08, exercise 3 (investigate): how far a guest's profile is from the truth.
# check: ex08_profile_error
from pebslab.viz import profile


def profile_error(modifier, instructions):
    """Total variation distance between a recording's function shares and the ground truth."""
    run = profile.profile_run(modifier, instructions=instructions)
    truth = profile.ground_truth(event="loads")
    got = profile.shares(run.samples)
    names = set(truth) | set(got)
    return 0.5 * sum(abs(got.get(n, 0.0) - truth.get(n, 0.0)) for n in names)
