"""The integer-program anchors (HiGHS, Gurobi) and Q-learning against brute force on small random instances."""

from __future__ import annotations

import dataclasses
import random

import pytest

from ipa.optimize import POLICIES, Weights, make_problem, solve
from ipa.optimize.milp import SolverUnavailable
from ipa.optimize.qlearning import QLearning
from ipa.optimize.solvers import brute_force, combinations
from ipa.profiles.serving import ServingCost
from ipa.profiles.synthetic import synthetic_pipeline
from tests.conftest import random_instance


def small_problems(n, seed, constrained: bool):
    """Random problems brute force can enumerate; `constrained`: a binding core budget or serving CPU."""
    rng = random.Random(seed)
    made = 0
    while made < n:
        spec, table = random_instance(rng, max_stages=3, max_variants=4)
        policy = POLICIES[made % len(POLICIES)]
        weights = Weights(delta=rng.uniform(0.01, 0.5)) if policy == "ipa-energy" else Weights(beta=rng.choice([0.05, 1]))
        problem = make_problem(policy, spec, table, weights, scaling_cap=rng.choice([10, 50]),
                               batching_cap=rng.choice([2, 8]))
        load = rng.uniform(1, 120)
        if combinations(problem, load) > 50_000:
            continue
        if constrained:
            free = brute_force(problem, load)
            if free is None:
                continue
            used = sum(o.total_cores for o in free)
            serving = ServingCost(latency_s=0.1 * spec.sla_s, cpu_fixed_cores=0.3, cpu_per_request_s=0.005)
            problem = dataclasses.replace(problem, max_cores=max(1, used - rng.choice([0, 1, 3])), serving=serving,
                                          cpus=float(used) * rng.choice([0.7, 1.0, 1.5]))
        made += 1
        yield problem, load


def check_matches_brute_force(solver, seed, constrained):
    feasible = 0
    for problem, load in small_problems(40, seed, constrained):
        bf = brute_force(problem, load)
        try:
            got = solver(problem, load)
        except SolverUnavailable as e:
            pytest.skip(str(e))
        assert (bf is None) == (got is None), (problem.spec.accuracy_method, load)
        if bf is None:
            continue
        feasible += 1
        assert problem.assess(got, load).feasible
        assert problem.objective(got) == pytest.approx(problem.objective(bf), abs=1e-6)
    assert feasible >= 10


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "budget+serving"])
def test_milp_on_highs_matches_brute_force(constrained):
    pytest.importorskip("highspy", reason="the MILP solver needs highspy (pip install highspy)")
    from ipa.optimize.milp import milp

    check_matches_brute_force(milp, 31, constrained)


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "budget+serving"])
def test_ipas_gurobi_formulation_matches_brute_force(constrained):
    pytest.importorskip("gurobipy", reason="IPA's formulation needs gurobipy (pip install gurobipy)")
    from ipa.optimize.milp import gurobi

    check_matches_brute_force(gurobi, 37, constrained)


def test_gurobi_says_when_its_licence_refuses_an_instance():
    pytest.importorskip("gurobipy", reason="IPA's formulation needs gurobipy")
    spec, table = synthetic_pipeline(random.Random(2), 10, 10, batches=[1, 2, 4, 8], cores=[1, 2, 4])
    problem = make_problem("ipa", spec, table)
    with pytest.raises(SolverUnavailable, match="gurobi refused the instance .* variables"):
        solve(problem, 50.0, solver="gurobi")


@pytest.mark.parametrize("constrained", [False, True], ids=["free", "budget+serving"])
def test_q_learning_is_feasible_whenever_brute_force_is(constrained):
    gaps = []
    for problem, load in small_problems(40, 41, constrained):
        bf = brute_force(problem, load)
        got = QLearning()(problem, load)
        assert (bf is None) == (got is None)
        if bf is not None:
            assert problem.assess(got, load).feasible
            gaps.append(problem.objective(bf) - problem.objective(got))
    assert max(gaps) < 0.5 and sum(gaps) / len(gaps) < 0.05


def test_q_learning_keeps_what_it_learned_across_a_changing_load():
    rng = random.Random(5)
    spec, table = synthetic_pipeline(rng, 3, 10, batches=[1, 2, 4, 8], cores=[1, 2, 4])
    problem = make_problem("ipa", spec, table)
    q = QLearning()
    load, at_optimum = 40.0, 0
    for _ in range(15):
        load *= 1 + rng.gauss(0, 0.1)
        best = solve(problem, load).assessment.objective
        got = solve(problem, load, solver=q).assessment
        assert got.feasible
        at_optimum += got.objective >= best - 1e-9
    assert q.q and q.last is not None  # the Q-table and the last decision outlive each call
    assert at_optimum >= 13
