"""Solvers: (problem, load) -> chosen options. Pure functions; `solve` adds timing and the fallback."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np

from ipa.errors import ConfigError
from ipa.optimize.pareto import pareto_filter
from ipa.optimize.problem import EPS, Decision, Option, Problem

Chosen = list[Option]
Solver = Callable[[Problem, float], Chosen | None]


def exact(problem: Problem, load: float) -> Chosen | None:
    """The true optimum, or None if nothing is feasible.

    Multiple-choice selection under one latency budget, solved by dynamic programming over
    stages on Pareto sets of partial choices (latency, accuracy, penalty), pruned by the
    latency still needed downstream and by an upper bound against a feasible incumbent.
    Exact because the objective is monotone in every stage's accuracy and penalty. Under a core
    budget the Pareto sets are kept per number of cores used, so a cheaper-in-cores partial
    choice is never pruned by one that could not fit.
    """
    budget = problem.max_cores
    cap = budget + EPS if budget is not None else math.inf
    front = _pareto_per_cores if budget is not None else pareto_filter
    per_stage = [front(opts, _opt_key) for opts in problem.options(load)]
    if any(not opts for opts in per_stage):
        return None
    method = problem.spec.accuracy_method
    k = len(per_stage)
    sla = problem.spec.sla_s + EPS
    alpha = problem.weights.alpha
    multiply = method == "multiply"
    combine = (lambda a, b: a * b) if multiply else (lambda a, b: a + b)
    finish = (lambda a: a / k) if method == "average" else (lambda a: a)

    # Suffix bounds: least latency, penalty and cores, and most accuracy the remaining stages can add.
    min_lat = [0.0] * (k + 1)
    min_pen = [0.0] * (k + 1)
    min_cores = [0] * (k + 1)
    max_acc = [1.0 if multiply else 0.0] * (k + 1)
    for i in range(k - 1, -1, -1):
        min_lat[i] = min_lat[i + 1] + min(o.latency_s for o in per_stage[i])
        min_pen[i] = min_pen[i + 1] + min(o.penalty for o in per_stage[i])
        min_cores[i] = min_cores[i + 1] + min(o.total_cores for o in per_stage[i])
        max_acc[i] = combine(max_acc[i + 1], max(o.accuracy for o in per_stage[i]))
    if min_lat[0] > sla or not problem.within_budget(min_cores[0]):
        return None

    incumbent: Chosen | None = _fastest(problem, per_stage)
    if not problem.within_budget(sum(o.total_cores for o in incumbent)):
        incumbent = None
    best = problem.objective(incumbent) if incumbent else -math.inf

    # state: (latency, accuracy so far, penalty so far, cores so far, chosen options)
    states: list[tuple[float, float, float, int, tuple[Option, ...]]] = [(0.0, 1.0 if multiply else 0.0, 0.0, 0, ())]
    for i, opts in enumerate(per_stage):
        grown = []
        for lat, acc, pen, cores, picked in states:
            for o in opts:
                nlat = lat + o.latency_s
                if nlat + min_lat[i + 1] > sla:
                    continue
                ncores = cores + o.total_cores
                if ncores + min_cores[i + 1] > cap:
                    continue
                nacc = combine(acc, o.accuracy)
                npen = pen + o.penalty
                if alpha * finish(combine(nacc, max_acc[i + 1])) - npen - min_pen[i + 1] < best - EPS:
                    continue
                grown.append((nlat, nacc, npen, ncores, picked + (o,)))
        states = front(grown, lambda s: (s[0], s[1], s[2]))
    if not states:
        return incumbent
    top = max(states, key=lambda s: alpha * finish(s[1]) - s[2])
    return list(top[4]) if alpha * finish(top[1]) - top[2] >= best - EPS else incumbent


def _pareto_per_cores(items, key):
    """Pareto sets within each number of cores used (the 4th dimension of a core budget)."""
    groups: dict[int, list] = {}
    for it in items:
        groups.setdefault(_cores_of(it), []).append(it)
    return [x for g in groups.values() for x in pareto_filter(g, key)]


def _cores_of(item) -> int:
    return item.total_cores if isinstance(item, Option) else item[3]


def _opt_key(o: Option) -> tuple[float, float, float]:
    return (o.latency_s, o.accuracy, o.penalty)


def _fastest(problem: Problem, per_stage: Sequence[Sequence[Option]]) -> Chosen:
    """Lowest-latency option per stage (ties: best objective share): feasible if anything is."""
    return [min(opts, key=lambda o: (o.latency_s, o.penalty, -o.accuracy)) for opts in per_stage]


def brute_force(problem: Problem, load: float) -> Chosen | None:
    """Reference: score every combination of every stage's options (vectorised, no pruning)."""
    per_stage = problem.options(load)
    if any(not opts for opts in per_stage):
        return None
    method = problem.spec.accuracy_method
    lat = np.zeros(1)
    pen = np.zeros(1)
    cores = np.zeros(1)
    acc = np.ones(1) if method == "multiply" else np.zeros(1)
    for opts in per_stage:
        lat = np.add.outer(lat, [o.latency_s for o in opts]).ravel()
        pen = np.add.outer(pen, [o.penalty for o in opts]).ravel()
        cores = np.add.outer(cores, [o.total_cores for o in opts]).ravel()
        a = [o.accuracy for o in opts]
        acc = (np.multiply.outer(acc, a) if method == "multiply" else np.add.outer(acc, a)).ravel()
    if method == "average":
        acc = acc / len(per_stage)
    obj = problem.weights.alpha * acc - pen
    obj[lat > problem.spec.sla_s + EPS] = -np.inf
    if problem.max_cores is not None:
        obj[cores > problem.max_cores + EPS] = -np.inf
    best = int(np.argmax(obj))
    if not np.isfinite(obj[best]):
        return None
    idx = np.unravel_index(best, [len(o) for o in per_stage])
    return [opts[int(i)] for opts, i in zip(per_stage, idx)]


def best_effort(problem: Problem, load: float) -> tuple[Chosen, str]:
    """The closest config when none is feasible: most capacity within the caps, then least latency."""
    chosen: Chosen = []
    reasons = []
    for stage in problem.spec.stage_names:
        cands = problem.candidates(stage, load)
        if not cands:
            raise ConfigError(f"stage '{stage}' has no profiled option within batching cap {problem.batching_cap}")
        top = max(cands, key=lambda o: (min(o.capacity_rps, load), -o.latency_s, -o.penalty))
        if top.capacity_rps < load - EPS:
            reasons.append(
                f"stage '{stage}' sustains at most {top.capacity_rps:.1f} rps with {top.replicas} replica(s) "
                f"(load {load:.1f} rps)"
            )
        chosen.append(top)
    cores = sum(o.total_cores for o in chosen)
    if not problem.within_budget(cores):
        chosen, reason = _most_capacity_within_budget(problem, load)
        return chosen, f"{'; '.join(reasons) + '; ' if reasons else ''}{reason}"
    if not reasons:
        latency = sum(o.latency_s for o in chosen)
        reasons.append(f"the fastest configuration that sustains the load takes {latency:.3f} s > SLA {problem.spec.sla_s} s")
    return chosen, "; ".join(reasons)


def _most_capacity_within_budget(problem: Problem, load: float) -> tuple[Chosen, str]:
    """The highest throughput the core budget can hold: for each target, the fewest cores per stage that reach it."""
    per_stage = [problem.fewer_replicas(s, load) for s in problem.spec.stage_names]
    targets = sorted({min(o.capacity_rps, load) for opts in per_stage for o in opts}, reverse=True)
    for target in targets:
        chosen = [min((o for o in opts if o.capacity_rps >= target - EPS),
                      key=lambda o: (o.total_cores, o.latency_s, o.penalty), default=None) for opts in per_stage]
        if None not in chosen and problem.within_budget(sum(o.total_cores for o in chosen)):
            return chosen, (f"the core budget ({problem.max_cores}) holds at most {target:.1f} rps "
                            f"(load {load:.1f} rps)")
    chosen = [min(opts, key=lambda o: (o.total_cores, o.latency_s)) for opts in per_stage]
    need = sum(o.total_cores for o in chosen)
    return chosen, f"even the smallest configuration needs {need} cores; the core budget is {problem.max_cores}"


def q_learning(problem: Problem, load: float) -> Chosen | None:
    from ipa.optimize.qlearning import q_learning as learn

    return learn(problem, load)


SOLVERS: dict[str, Solver] = {"exact": exact, "brute-force": brute_force, "q-learning": q_learning}


def register(name: str, solver: Solver) -> None:
    SOLVERS[name] = solver


def solve(problem: Problem, load: float, solver: str = "exact", policy: str = "ipa") -> Decision:
    """Run a solver, time it, and fall back to the best-effort config when nothing is feasible."""
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver '{solver}' (allowed: {', '.join(SOLVERS)})")
    if not math.isfinite(load) or load < 0:
        raise ConfigError(f"load must be a finite number >= 0 rps, got {load}")
    t0 = time.perf_counter()
    chosen = SOLVERS[solver](problem, load)
    if chosen is not None and not problem.within_budget(sum(o.total_cores for o in chosen)):
        chosen = None  # a heuristic solver (q-learning) does not know the budget
    reason = ""
    if chosen is None:
        chosen, reason = best_effort(problem, load)
        reason = f"no configuration meets the constraints at {load:.1f} rps: {reason}; serving the closest one"
    ms = (time.perf_counter() - t0) * 1000
    return Decision(policy, solver, load, problem.assess(chosen, load), ms, reason)


def combinations(problem: Problem, load: float) -> int:
    """How many combinations brute force would score (for choosing test sizes)."""
    return math.prod(len(o) for o in problem.options(load))


__all__ = ["SOLVERS", "best_effort", "brute_force", "combinations", "exact", "solve", "register"]
