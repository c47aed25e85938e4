"""Choosing a pipeline config: the problem, the policies that freeze knobs, and the solvers."""

from ipa.optimize.policies import DEFAULT_ENERGY_DELTA, POLICIES, make_problem
from ipa.optimize.problem import Assessment, Decision, Option, Problem, Weights
from ipa.optimize.solvers import SOLVERS, solve

__all__ = [
    "DEFAULT_ENERGY_DELTA", "POLICIES", "SOLVERS", "Assessment", "Decision", "Option", "Problem", "Weights",
    "make_problem", "solve",
]
