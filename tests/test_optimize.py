import random

import pytest

from ipa.errors import ConfigError
from ipa.optimize import POLICIES, Weights, make_problem, solve
from ipa.optimize.solvers import brute_force, combinations, exact
from ipa.spec import StageConfig
from tests.conftest import random_instance


def _random_problems(n, seed=7, max_combos=400_000):
    rng = random.Random(seed)
    made = 0
    while made < n:
        spec, table = random_instance(rng)
        policy = POLICIES[made % len(POLICIES)]
        weights = Weights(delta=rng.uniform(0.01, 0.5)) if policy == "ipa-energy" else Weights()
        problem = make_problem(policy, spec, table, weights, scaling_cap=rng.choice([10, 50, 100]),
                               batching_cap=rng.choice([2, 4, 8, 8]))
        load = rng.uniform(1, 200)
        if combinations(problem, load) > max_combos:
            continue
        made += 1
        yield problem, load


def test_exact_matches_brute_force_on_random_instances():
    seen_feasible = seen_infeasible = 0
    for problem, load in _random_problems(240):
        ex, bf = exact(problem, load), brute_force(problem, load)
        assert (ex is None) == (bf is None)
        if ex is None:
            seen_infeasible += 1
            continue
        seen_feasible += 1
        assert problem.objective(ex) == pytest.approx(problem.objective(bf), abs=1e-9)
        a = problem.assess(ex, load)
        assert a.feasible
        assert a.latency_s <= problem.spec.sla_s + 1e-9
        for o in ex:
            assert o.capacity_rps >= load - 1e-9 and o.replicas <= problem.scaling_cap and o.batch <= problem.batching_cap
    assert seen_feasible > 100 and seen_infeasible > 5  # both branches exercised


def test_exact_matches_brute_force_under_a_core_budget():
    """The cluster's core budget (a 4th constraint): the optimum among configs that fit, or None."""
    import dataclasses

    rng = random.Random(11)
    seen_feasible = seen_binding = 0
    for problem, load in _random_problems(300, seed=3):
        # cores nearly free: the unbudgeted optimum buys accuracy with cores, so a budget binds
        problem = dataclasses.replace(problem, weights=problem.weights.model_copy(update={"beta": 0.01}))
        free = exact(problem, load)
        if free is None:
            continue
        used = sum(o.total_cores for o in free)
        budget = max(1, used - rng.choice([0, 1, 2, 4, 8]))
        capped = dataclasses.replace(problem, max_cores=budget)
        ex, bf = exact(capped, load), brute_force(capped, load)
        assert (ex is None) == (bf is None)
        if ex is None:
            continue
        seen_feasible += 1
        seen_binding += budget < used
        assert capped.objective(ex) == pytest.approx(capped.objective(bf), abs=1e-9)
        assert sum(o.total_cores for o in ex) <= budget and capped.assess(ex, load).feasible
    assert seen_feasible > 30 and seen_binding > 10


def test_over_budget_load_serves_the_most_it_can_within_the_budget(tiny):
    spec, table = tiny
    problem = make_problem("ipa", spec, table, max_cores=3)
    d = solve(problem, 400.0)
    assert not d.feasible and "core budget (3)" in d.reason
    assert d.assessment.cores <= 3
    too_small = solve(make_problem("rim-high", spec, table, max_cores=3), 5.0, policy="rim-high")
    assert "needs 6 cores" in too_small.reason
    q = solve(make_problem("ipa", spec, table, max_cores=2), 40.0, solver="q-learning")
    assert q.assessment.cores <= 2 or not q.feasible


def test_every_accuracy_method_and_policy_is_covered():
    methods, policies = set(), set()
    for problem, _ in _random_problems(60):
        methods.add(problem.spec.accuracy_method)
        policies.add("rim" if problem.frozen_replicas else ("frozen" if problem.frozen_variants else "free"))
    assert methods == {"multiply", "sum", "average"} and policies == {"rim", "frozen", "free"}


def test_fa2_low_freezes_least_accurate_variants(tiny):
    spec, table = tiny
    d = solve(make_problem("fa2-low", spec, table), 30, policy="fa2-low")
    assert {s: c.variant for s, c in d.config.items()} == {"detect": "small", "classify": "r18"}


def test_fa2_high_default_is_most_accurate_within_sla(tiny):
    spec, table = tiny
    problem = make_problem("fa2-high", spec, table)
    assert dict(problem.frozen_variants) == {"detect": "big", "classify": "r50"}
    d = solve(problem, 20, policy="fa2-high")
    assert {s: c.variant for s, c in d.config.items()} == {"detect": "big", "classify": "r50"}


def test_explicit_freeze_overrides_policy(tiny):
    spec, table = tiny
    d = solve(make_problem("ipa", spec, table, freeze={"classify": "r18"}), 5)
    assert d.config["classify"].variant == "r18"


def test_rim_high_keeps_replicas_frozen(tiny):
    spec, table = tiny
    for load in (1, 10, 40):
        d = solve(make_problem("rim-high", spec, table), load, policy="rim-high")
        assert all(c.replicas == 3 for c in d.config.values())


def test_ipa_energy_spends_less_power_than_ipa(tiny):
    spec, table = tiny
    for load in (5, 20, 60):
        ipa = solve(make_problem("ipa", spec, table), load).assessment
        energy = solve(make_problem("ipa-energy", spec, table, Weights(delta=1.0)), load).assessment
        assert energy.power_w <= ipa.power_w + 1e-9


def test_infeasible_load_serves_the_best_config_for_the_most_it_can_hold(tiny):
    spec, table = tiny
    problem = make_problem("ipa", spec, table, scaling_cap=2)
    d = solve(problem, 1000)
    assert not d.feasible
    assert "sustains at most" in d.reason and "the most that can be held" in d.reason
    # the most capacity the caps allow: the slowest stage's fastest option on both its replicas
    most = min(max(o.capacity_rps for o in problem.candidates(s, 1000)) for s in spec.stage_names)
    assert d.assessment.capacity_rps == pytest.approx(most, rel=0.01)
    assert max(c.replicas for c in d.config.values()) == 2


def test_max_load_is_the_edge_of_feasibility():
    from ipa.optimize.solvers import max_load

    import dataclasses

    checked = 0
    for problem, load in _random_problems(60, seed=5):
        free = exact(problem, load)
        if free is None:
            continue
        assert max_load(problem, load) == load
        # a core budget below what the load needs: the most it holds is the edge
        problem = dataclasses.replace(problem, max_cores=max(1, sum(o.total_cores for o in free) // 2))
        if exact(problem, load) is not None:
            continue
        held = max_load(problem, load)
        if held == 0:
            assert exact(problem, 1e-3) is None
            continue
        checked += 1
        assert exact(problem, held) is not None
        assert exact(problem, min(load, held * 1.02)) is None or held * 1.02 >= load
    assert checked > 5


def test_power_counts_what_is_served_not_the_load(tiny):
    """At a load far beyond what the config can serve, dynamic power is that of the served rate."""
    spec, table = tiny
    problem = make_problem("ipa", spec, table, scaling_cap=2)
    huge = solve(problem, 1e6).assessment  # the most ipa plans for, far beyond what 2 replicas hold
    held = solve(problem, huge.capacity_rps * 0.999).assessment
    assert huge.power_w == pytest.approx(problem.assess_config(huge.config, huge.capacity_rps).power_w, rel=1e-6)
    assert huge.power_w < 10 * held.power_w


def test_exact_matches_brute_force_with_serving_cost_and_cpus():
    """Serving's latency comes out of the SLA, its CPU out of the machine's: exact still equals brute force."""
    import dataclasses

    from ipa.profiles.serving import ServingCost

    rng = random.Random(19)
    seen = binding = 0
    for problem, load in _random_problems(240, seed=23):
        serving = ServingCost(latency_s=rng.uniform(0, 0.3) * problem.spec.sla_s,
                              cpu_fixed_cores=rng.uniform(0, 1), cpu_per_request_s=rng.uniform(0, 0.02))
        free = exact(dataclasses.replace(problem, serving=serving), load)
        if free is None:
            continue
        demand = sum(o.cpu_demand for o in free) + serving.cores(load)
        cpus = max(0.5, demand * rng.choice([0.6, 0.8, 0.95, 1.0, 1.5]))
        p = dataclasses.replace(problem, serving=serving, cpus=cpus)
        ex, bf = exact(p, load), brute_force(p, load)
        assert (ex is None) == (bf is None)
        if ex is None:
            continue
        seen += 1
        binding += cpus < demand
        assert p.objective(ex) == pytest.approx(p.objective(bf), abs=1e-9)
        a = p.assess(ex, load)
        assert a.feasible and a.cpu_demand + a.serving_cores <= cpus + 1e-9
        assert sum(o.latency_s for o in ex) <= p.spec.sla_s - serving.latency_s + 1e-9
    assert seen > 60 and binding > 15


def test_serving_latency_and_cpu_shape_the_plan(tiny):
    from ipa.profiles.serving import ServingCost

    spec, table = tiny
    slow_hop = ServingCost(latency_s=0.5)
    d = solve(make_problem("ipa", spec, table, max_cores=4, serving=slow_hop), 20)
    assert d.assessment.latency_s <= spec.sla_s + 1e-9
    planned = d.profiles  # the rows stretched by the contention on 4 CPUs
    assert d.assessment.latency_s - 0.5 == pytest.approx(sum(
        make_problem("ipa", spec, table).option(planned.lookup(s, c.variant, c.batch, c.cores), 20).latency_s
        for s, c in d.config.items()))
    hungry = ServingCost(cpu_fixed_cores=0.5, cpu_per_request_s=0.05)  # 1.5 cores at 20 rps
    tight = solve(make_problem("ipa", spec, table, max_cores=4, serving=hungry), 20)
    assert tight.assessment.cpu_demand + tight.assessment.serving_cores <= 4 + 1e-9
    assert tight.assessment.serving_cores == pytest.approx(1.5)
    alone = make_problem("ipa", spec, table, max_cores=4).with_profiles(tight.profiles)
    assert alone.assess_config(tight.config, 20).capacity_rps >= tight.assessment.capacity_rps


def test_latency_infeasible_picks_fastest(tiny):
    spec, table = tiny
    tight = spec.model_copy(update={"sla_s": 0.01})
    d = solve(make_problem("ipa", tight, table), 10)
    assert not d.feasible and "SLA" in d.reason
    assert d.config["detect"].variant == "small"


def test_zero_load_has_no_batch_fill_and_one_replica(tiny):
    spec, table = tiny
    d = solve(make_problem("ipa", spec, table), 0)
    assert d.feasible and all(c.replicas == 1 for c in d.config.values())


def test_assess_config_matches_solver_assessment(tiny):
    spec, table = tiny
    problem = make_problem("ipa", spec, table)
    d = solve(problem, 25)
    again = problem.assess_config(d.config, 25)
    assert again.objective == pytest.approx(d.assessment.objective)


def test_more_replicas_never_improve_objective(tiny):
    spec, table = tiny
    problem = make_problem("ipa", spec, table)
    d = solve(problem, 25)
    bigger = {s: StageConfig(c.variant, c.batch, c.replicas + 1, c.cores) for s, c in d.config.items()}
    assert problem.assess_config(bigger, 25).objective < d.assessment.objective


def test_bad_inputs_name_what_is_allowed(tiny):
    spec, table = tiny
    with pytest.raises(ConfigError, match="allowed: ipa, ipa-energy"):
        make_problem("fastest", spec, table)
    with pytest.raises(ConfigError, match="allowed: small, big"):
        make_problem("ipa", spec, table, freeze={"detect": "yolo"})
    with pytest.raises(ConfigError, match="ipa-energy"):
        make_problem("ipa", spec, table, Weights(delta=0.5))
    with pytest.raises(ConfigError, match="load"):
        solve(make_problem("ipa", spec, table), -3)


def test_q_learning_returns_feasible_configs_near_the_optimum(tiny):
    spec, table = tiny
    problem = make_problem("ipa", spec, table, scaling_cap=20)
    for load in (2, 15, 40):
        q = solve(problem, load, solver="q-learning")
        best = solve(problem, load).assessment
        assert q.feasible
        assert q.assessment.objective <= best.objective + 1e-9
        assert q.assessment.objective >= best.objective - 1.0  # within one core of the optimum


def test_q_learning_respects_frozen_replicas(tiny):
    spec, table = tiny
    d = solve(make_problem("rim-high", spec, table), 10, solver="q-learning")
    assert all(c.replicas == 3 for c in d.config.values())
