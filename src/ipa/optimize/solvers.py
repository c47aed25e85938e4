"""Solvers: (problem, load) -> chosen options. Pure functions; `solve` adds timing and the fallback."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ipa.errors import ConfigError
from ipa.optimize.pareto import pareto_filter
from ipa.optimize.problem import EPS, Assessment, Decision, Option, Problem
from ipa.workload.patterns import MAX_RATE as MAX_LOAD  # the same bound as workloads'

Chosen = list[Option]
Solver = Callable[[Problem, float], Chosen | None]


def exact(problem: Problem, load: float) -> Chosen | None:
    """The true optimum, or None if nothing is feasible.

    Multiple-choice selection under one latency budget, solved by dynamic programming over
    stages on Pareto sets of partial choices (latency, accuracy, penalty), pruned by the
    latency still needed downstream and by an upper bound against a feasible incumbent.
    Exact because the objective is monotone in every stage's accuracy and penalty. Under a core
    budget the Pareto sets are kept per number of cores used, so a cheaper-in-cores partial
    choice is never pruned by one that could not fit; when the CPU the replicas burn could exceed
    what the machine has left beside serving, that demand is a fourth Pareto dimension.
    """
    budget = problem.max_cores
    cap = budget + EPS if budget is not None else math.inf
    cpu = problem.cpu_budget(load) + EPS
    per_stage, use_cpu = _fronts(problem, load)
    if any(not opts for opts in per_stage):
        return None
    state_key = (lambda s: (s[0], s[1], s[2], s[4])) if use_cpu else (lambda s: (s[0], s[1], s[2]))
    front = _pareto_per_cores if budget is not None else pareto_filter
    method = problem.spec.accuracy_method
    k = len(per_stage)
    sla = problem.latency_budget_s + EPS
    alpha = problem.weights.alpha
    multiply = method == "multiply"
    combine = (lambda a, b: a * b) if multiply else (lambda a, b: a + b)
    finish = (lambda a: a / k) if method == "average" else (lambda a: a)

    # Suffix bounds: least latency, penalty, cores and CPU, and most accuracy the remaining stages can add.
    min_lat = [0.0] * (k + 1)
    min_pen = [0.0] * (k + 1)
    min_cores = [0] * (k + 1)
    min_cpu = [0.0] * (k + 1)
    max_acc = [1.0 if multiply else 0.0] * (k + 1)
    for i in range(k - 1, -1, -1):
        min_lat[i] = min_lat[i + 1] + min(o.latency_s for o in per_stage[i])
        min_pen[i] = min_pen[i + 1] + min(o.penalty for o in per_stage[i])
        min_cores[i] = min_cores[i + 1] + min(o.total_cores for o in per_stage[i])
        min_cpu[i] = min_cpu[i + 1] + min(o.cpu_demand for o in per_stage[i])
        max_acc[i] = combine(max_acc[i + 1], max(o.accuracy for o in per_stage[i]))
    if min_lat[0] > sla or not problem.within_budget(min_cores[0]) or min_cpu[0] > cpu:
        return None

    incumbent = _incumbent(problem, load, per_stage)
    best = problem.objective(incumbent) if incumbent else -math.inf

    # state: (latency, accuracy so far, penalty so far, cores so far, CPU so far, chosen options)
    states: list[tuple[float, float, float, int, float, tuple[Option, ...]]] = [
        (0.0, 1.0 if multiply else 0.0, 0.0, 0, 0.0, ())]
    for i, opts in enumerate(per_stage):
        grown = []
        for lat, acc, pen, cores, used, picked in states:
            for o in opts:
                nlat = lat + o.latency_s
                if nlat + min_lat[i + 1] > sla:
                    continue
                ncores = cores + o.total_cores
                if ncores + min_cores[i + 1] > cap:
                    continue
                nused = used + o.cpu_demand
                if nused + min_cpu[i + 1] > cpu:
                    continue
                nacc = combine(acc, o.accuracy)
                npen = pen + o.penalty
                if alpha * finish(combine(nacc, max_acc[i + 1])) - npen - min_pen[i + 1] < best - EPS:
                    continue
                grown.append((nlat, nacc, npen, ncores, nused, picked + (o,)))
        states = front(grown, state_key)
    if not states:
        return incumbent
    top = max(states, key=lambda s: alpha * finish(s[1]) - s[2])
    return list(top[5]) if alpha * finish(top[1]) - top[2] >= best - EPS else incumbent


def stage_fronts(problem: Problem, load: float) -> list[list[Option]]:
    """Per stage, the options that can be part of an optimum: those sustaining the load within every cap and
    budget that no other option beats on latency, accuracy and penalty (and cores and CPU where they bind)."""
    return _fronts(problem, load)[0]


def _fronts(problem: Problem, load: float) -> tuple[list[list[Option]], bool]:
    options = problem.options(load)
    use_cpu = any(opts for opts in options) and sum(
        max((o.cpu_demand for o in opts), default=0.0) for opts in options) > problem.cpu_budget(load) + EPS
    key = _opt_key_cpu if use_cpu else _opt_key
    front = _pareto_per_cores if problem.max_cores is not None else pareto_filter
    return [front(opts, key) for opts in options], use_cpu


def _pareto_per_cores(items, key):
    """Pareto sets within each number of cores used (the extra dimension of a core budget)."""
    groups: dict[int, list] = {}
    for it in items:
        groups.setdefault(_cores_of(it), []).append(it)
    return [x for g in groups.values() for x in pareto_filter(g, key)]


def _cores_of(item) -> int:
    return item.total_cores if isinstance(item, Option) else item[3]


def _opt_key(o: Option) -> tuple[float, float, float]:
    return (o.latency_s, o.accuracy, o.penalty)


def _opt_key_cpu(o: Option) -> tuple[float, float, float, float]:
    return (o.latency_s, o.accuracy, o.penalty, o.cpu_demand)


def _incumbent(problem: Problem, load: float, per_stage: list[list[Option]]) -> Chosen | None:
    """A good feasible config to prune against: the local search of `ipa.optimize.search` (one stage, then two
    stages re-picked at a time) from the fastest option per stage. The closer it is to the optimum, the more
    partial choices the bound discards; the result stays exact whatever it returns."""
    from ipa.optimize.search import Neighbourhood

    fronts = [sorted(opts, key=lambda o: (o.latency_s, o.penalty, -o.accuracy)) for opts in per_stage]
    space = Neighbourhood(problem, load, fronts)
    state = space.repair(tuple(0 for _ in fronts))
    return space.options(space.greedy(state)) if space.feasible(state) else None


def brute_force(problem: Problem, load: float) -> Chosen | None:
    """Reference: score every combination of every stage's options (vectorised, no pruning)."""
    per_stage = problem.options(load)
    if any(not opts for opts in per_stage):
        return None
    method = problem.spec.accuracy_method
    lat = np.zeros(1)
    pen = np.zeros(1)
    cores = np.zeros(1)
    cpu = np.zeros(1)
    acc = np.ones(1) if method == "multiply" else np.zeros(1)
    for opts in per_stage:
        cpu = np.add.outer(cpu, [o.cpu_demand for o in opts]).ravel()
        lat = np.add.outer(lat, [o.latency_s for o in opts]).ravel()
        pen = np.add.outer(pen, [o.penalty for o in opts]).ravel()
        cores = np.add.outer(cores, [o.total_cores for o in opts]).ravel()
        a = [o.accuracy for o in opts]
        acc = (np.multiply.outer(acc, a) if method == "multiply" else np.add.outer(acc, a)).ravel()
    if method == "average":
        acc = acc / len(per_stage)
    obj = problem.weights.alpha * acc - pen
    obj[lat > problem.latency_budget_s + EPS] = -np.inf
    if problem.max_cores is not None:
        obj[cores > problem.max_cores + EPS] = -np.inf
    obj[cpu > problem.cpu_budget(load) + EPS] = -np.inf
    best = int(np.argmax(obj))
    if not np.isfinite(obj[best]):
        return None
    idx = np.unravel_index(best, [len(o) for o in per_stage])
    return [opts[int(i)] for opts, i in zip(per_stage, idx)]


def best_effort(problem: Problem, load: float) -> tuple[Chosen, str, float]:
    """What to serve when nothing meets the constraints at `load`, why, and the load it holds within them.

    The optimum for the largest load that can be held (found by bisection with the exact solver):
    the plan then says what the machine holds, and admission sheds the rest. When not even a
    trickle can be held (an SLA no configuration meets, a core budget below the smallest config),
    the config with the most capacity and least latency, why, and 0.
    """
    why = _shortfall(problem, load)
    held = max_load(problem, load)
    if held > 0:
        chosen = exact(problem, held)
        assert chosen is not None
        cap = min(problem.capacity(chosen), load)
        return chosen, f"{why}; serving the best configuration for {cap:.2f} rps, the most that can be held", cap
    return *_closest(problem, load, why), 0.0


def max_load(problem: Problem, load: float, tolerance: float = 0.005) -> float:
    """The largest load up to `load` some configuration holds within every constraint (0 if none)."""
    ceiling = min((max((o.capacity_rps for o in problem.candidates(s, load)), default=0.0)
                   for s in problem.spec.stage_names), default=0.0)
    lo, hi = 0.0, min(load, ceiling)
    if hi <= 0:
        return 0.0
    if exact(problem, hi) is not None:
        return hi
    floor = max(1e-3, hi * 1e-3)
    if exact(problem, floor) is None:
        return 0.0
    lo = floor
    while hi - lo > max(tolerance * hi, 1e-3):
        mid = (lo + hi) / 2
        if exact(problem, mid) is not None:
            lo = mid
        else:
            hi = mid
    return lo


def _shortfall(problem: Problem, load: float) -> str:
    """Which constraint the load breaks, in words."""
    reasons = []
    for stage in problem.spec.stage_names:
        cands = problem.candidates(stage, load)
        if not cands:
            raise ConfigError(f"stage '{stage}' has no profiled option within batching cap {problem.batching_cap}")
        top = max(cands, key=lambda o: o.capacity_rps)
        if top.capacity_rps < load - EPS:
            reasons.append(f"stage '{stage}' sustains at most {top.capacity_rps:.1f} rps with {top.replicas} "
                           f"replica(s) (load {load:.1f} rps)")
    per_stage = [problem.candidates(s, load) for s in problem.spec.stage_names]
    fastest = sum(min(o.latency_s for o in opts) for opts in per_stage)
    if fastest > problem.latency_budget_s + EPS:
        serving = f" after serving's {problem.serving.latency_s:.3f} s" if problem.serving else ""
        reasons.append(f"the fastest configuration takes {fastest:.3f} s > the {problem.latency_budget_s:.3f} s "
                       f"the SLA ({problem.spec.sla_s} s) leaves{serving}")
    if not reasons and problem.max_cores is not None:
        reasons.append(f"the core budget ({problem.max_cores}) cannot hold {load:.1f} rps")
    if not reasons and problem.cpus is not None:
        reasons.append(f"{problem.cpus:g} CPUs, {problem.serving_cores(load):.2f} of them taken by serving, "
                       f"cannot hold {load:.1f} rps")
    return "; ".join(reasons) or f"no configuration meets every constraint at {load:.1f} rps"


def _closest(problem: Problem, load: float, why: str) -> tuple[Chosen, str]:
    """Most capacity within the caps and the core budget, then least latency: when nothing at all is feasible."""
    per_stage = [problem.fewer_replicas(s, load) for s in problem.spec.stage_names]
    targets = sorted({min(o.capacity_rps, load) for opts in per_stage for o in opts}, reverse=True)
    for target in targets:
        chosen = [min((o for o in opts if o.capacity_rps >= target - EPS),
                      key=lambda o: (o.latency_s, o.total_cores, o.penalty), default=None) for opts in per_stage]
        if None not in chosen and problem.within_budget(sum(o.total_cores for o in chosen)):
            return chosen, f"{why}; serving the closest configuration ({target:.1f} rps)"
    chosen = [min(opts, key=lambda o: (o.total_cores, o.latency_s)) for opts in per_stage]
    need = sum(o.total_cores for o in chosen)
    return chosen, f"{why}; even the smallest configuration needs {need} cores (core budget {problem.max_cores})"


def q_learning(problem: Problem, load: float) -> Chosen | None:
    """One decision, nothing learned before (the adaptation loop keeps a `QLearning` that learns across them)."""
    from ipa.optimize.qlearning import q_learning as learn

    return learn(problem, load)


def milp(problem: Problem, load: float) -> Chosen | None:
    from ipa.optimize.milp import milp as solve_milp

    return solve_milp(problem, load)


def gurobi(problem: Problem, load: float) -> Chosen | None:
    from ipa.optimize.milp import gurobi as solve_gurobi

    return solve_gurobi(problem, load)


SOLVERS: dict[str, Solver] = {"exact": exact, "brute-force": brute_force, "q-learning": q_learning, "milp": milp,
                              "gurobi": gurobi}
EXACT = ("exact", "brute-force", "milp", "gurobi")  # solvers that return the optimum
CONTENTION_ROUNDS = 4  # solves on a known machine's contention before settling on the best choice seen




def register(name: str, solver: Solver) -> None:
    SOLVERS[name] = solver


def solve(problem: Problem, load: float, solver: str | Solver = "exact", policy: str = "ipa") -> Decision:
    """Run a solver (a name, or a solver object such as a `QLearning` that learns across decisions), time it,
    and fall back to the best-effort config when nothing is feasible."""
    if isinstance(solver, str) and solver not in SOLVERS:
        raise ConfigError(f"unknown solver '{solver}' (allowed: {', '.join(SOLVERS)})")
    if not math.isfinite(load) or load < 0:
        raise ConfigError(f"load must be a finite number >= 0 rps, got {load:g}")
    if load > MAX_LOAD:
        raise ConfigError(f"load {load:g} rps is above the {MAX_LOAD:g} rps ipa plans for (a million requests a "
                          "second; is it a typo?)")
    name = solver if isinstance(solver, str) else getattr(solver, "name", type(solver).__name__)
    run = SOLVERS[solver] if isinstance(solver, str) else solver
    t0 = time.perf_counter()
    planned, chosen, reason, holds = problem, *_choose(problem, load, run, name)
    if problem.cpus is not None:
        planned, chosen, reason, holds = _on_the_machine(problem, load, run, name, (chosen, reason, holds))
    ms = (time.perf_counter() - t0) * 1000
    return Decision(policy, name, load, planned.assess(chosen, load), ms, reason, holds, planned.profiles)


def _choose(problem: Problem, load: float, run: Solver, name: str) -> tuple[Chosen, str, float]:
    """The solver's choice, or the best-effort one (why, and the load it holds) when nothing is feasible."""
    chosen = run(problem, load)
    if chosen is not None and name != "exact" and not problem.assess(chosen, load).feasible:
        chosen = None  # a heuristic solver must not return what breaks a constraint
    if chosen is None:
        chosen, why, holds = best_effort(problem, load)
        return chosen, f"no configuration meets the constraints at {load:.1f} rps: {why}", holds
    return chosen, "", load


class Tried(NamedTuple):
    """A choice planned on the contention of the one before it, judged on its own."""

    planned: Problem
    chosen: Chosen
    reason: str
    holds: float
    assessment: Assessment


def _on_the_machine(problem: Problem, load: float, run: Solver, name: str, first: tuple[Chosen, str, float]
                    ) -> tuple[Problem, Chosen, str, float]:
    """Plan for the contention a config makes on the machine's CPUs (`Problem.contended`): solve again on the rows
    the last choice stretches, until a choice is the choice on its own contention. A choice that flips between
    two (each one's contention favours the other) ends at the best of them judged on its own."""
    tried: list[Tried] = []
    chosen, reason, holds = first
    for _ in range(CONTENTION_ROUNDS):
        planned = problem.contended(chosen, load)
        own = planned.chosen({o.stage: o.config for o in chosen}, load)
        again, why, held = _choose(planned, load, run, name)
        if [o.config for o in again] == [o.config for o in own]:
            return planned, again, why, held
        tried.append(Tried(planned, own, reason, holds, planned.assess(own, load)))
        chosen, reason, holds = again, why, held
    planned, chosen, reason, holds, a = max(tried, key=lambda t: (t.assessment.feasible, t.holds, t.assessment.objective))
    if not reason and not a.feasible:
        reason = (f"at {load:.1f} rps each choice's contention on {problem.cpus:g} CPUs favours another; "
                  "serving the best of them, which does not meet every constraint on its own")
    return planned, chosen, reason, holds


def combinations(problem: Problem, load: float) -> int:
    """How many combinations brute force would score (for choosing test sizes)."""
    return math.prod(len(o) for o in problem.options(load))


__all__ = ["EXACT", "SOLVERS", "best_effort", "brute_force", "combinations", "exact", "max_load", "solve",
           "register", "stage_fronts"]
