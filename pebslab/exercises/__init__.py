"""Checkers for the notebooks' exercises.

pebslab only. Each notebook NN has a module ``pebslab.exercises.nbNN`` with
functions named ``exNN_<name>(candidate)``; :mod:`pebslab.exercises.check`
gathers them all, so a notebook says ``from pebslab.exercises import check``
and ``check.ex06_pin_range(my_function)``. A checker runs the learner's
function on cases whose right answers come from the real model, prints what
is right, what is wrong and a hint, and returns a :class:`Result`.
"""

from ._base import CheckFailed, Result, run_cases

__all__ = ["CheckFailed", "Result", "run_cases"]
