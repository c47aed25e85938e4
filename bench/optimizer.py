"""Solvers side by side: decision time, and whether each reaches the exact optimum, on the same instances.

    python bench/optimizer.py            # everything (a few minutes)
    python bench/optimizer.py --quick    # fewer sizes and loads

1. Random instances (`ipa.profiles.synthetic`, policy ipa, 4 batches x 3 core counts, scaling cap 100,
   batching cap 8): for each size, 3 pipelines x `--loads` loads uniform in 1..200 rps. Every solver on the
   same (pipeline, load): exact, brute force (up to 2 million combinations), milp (HiGHS), gurobi (IPA's
   formulation; the pip package's licence refuses models over 2000 variables or constraints), q-learning
   (one decision, nothing learned before). Median and p99 ms, the ratio of each median to exact's, and the
   share of decisions whose objective equals exact's.
2. The shipped pipelines and profiles, same solvers.
3. Q-learning as the adaptation loop runs it (one learner per pipeline, the load moving ~10% per decision),
   against the optimum at each decision: the issue's targets on 3 x 10 instances.
4. Scale: exact on 20 stages x 10 variants under a core budget that binds.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import random
import time
from pathlib import Path

import numpy as np

from ipa.optimize import Weights, make_problem
from ipa.optimize.milp import SolverUnavailable
from ipa.optimize.qlearning import QLearning
from ipa.optimize.solvers import SOLVERS, combinations, exact
from ipa.profiles import load_profiles
from ipa.profiles.synthetic import synthetic_pipeline
from ipa.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[1]
SOLVER_ORDER = ["exact", "brute-force", "milp", "gurobi", "q-learning"]


def run(solver: str, problem, load):
    """(ms, objective or None for infeasible, or 'refused')."""
    t0 = time.perf_counter()
    try:
        chosen = SOLVERS[solver](problem, load)
    except SolverUnavailable:
        return None, "refused"
    ms = (time.perf_counter() - t0) * 1000
    if chosen is not None and not problem.assess(chosen, load).feasible:
        chosen = None
    return ms, (problem.objective(chosen) if chosen is not None else None)


def compare(cases, solvers) -> dict[str, dict]:
    """cases: [(problem, load)]; per solver: times, decisions at exact's optimum, refusals."""
    out = {s: {"ms": [], "optimal": 0, "decided": 0, "refused": 0} for s in solvers}
    for problem, load in cases:
        _, best = run("exact", problem, load)
        for s in solvers:
            if s == "brute-force" and combinations(problem, load) > 2_000_000:
                continue
            ms, obj = run(s, problem, load)
            r = out[s]
            if obj == "refused":
                r["refused"] += 1
                continue
            r["ms"].append(ms)
            r["decided"] += 1
            r["optimal"] += (obj is None and best is None) or (obj is not None and best is not None
                                                                and abs(obj - best) <= 1e-6 * max(1, abs(best)))
    return out


def table(rows: list[tuple[str, dict]], solvers) -> None:
    print("| instance | " + " | ".join(f"{s} median / p99 ms" for s in solvers) + " | "
          + " | ".join(f"{s} / exact" for s in solvers[1:]) + " | at the optimum |")
    print("|---|" + "---|" * (2 * len(solvers)))
    for name, res in rows:
        med = {s: float(np.median(r["ms"])) if r["ms"] else float("nan") for s, r in res.items()}
        cells = []
        for s in solvers:
            r = res[s]
            if not r["ms"]:
                cells.append("refused" if r["refused"] else "-")
            else:
                cells.append(f"{med[s]:.2f} / {np.percentile(r['ms'], 99):.2f}"
                             + (f" ({r['refused']} refused)" if r["refused"] else ""))
        ratios = [f"{med[s] / med['exact']:.1f}x" if res[s]["ms"] else "-" for s in solvers[1:]]
        optimal = ", ".join(f"{s} {res[s]['optimal']}/{res[s]['decided']}" for s in solvers[1:] if res[s]["decided"])
        print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + f" | {optimal} |")


def random_cases(n_stages, n_var, loads, seeds=3):
    cases = []
    for seed in range(seeds):
        spec, table_ = synthetic_pipeline(random.Random(1000 * n_stages + 10 * n_var + seed), n_stages, n_var,
                                          batches=[1, 2, 4, 8], cores=[1, 2, 4], sla_s=0.6 * n_stages)
        problem = make_problem("ipa", spec, table_, scaling_cap=100, batching_cap=8)
        cases += [(problem, load) for load in loads]
    return cases


def shipped_cases(loads):
    out = []
    for pipeline, profiles, scale in [("video", "video-cpu-2core", 1.0), ("video", "video-h100-gpu", 10.0),
                                      ("segment", "segment-cpu-2core", 0.02)]:
        spec = load_pipeline(ROOT / f"configs/pipelines/{pipeline}.yaml")
        problem = make_problem("ipa", spec, load_profiles(ROOT / f"profiles/{profiles}.csv", spec))
        out.append((f"{profiles}", [(problem, load * scale) for load in loads]))
    return out


def q_sequences(n_stages, n_var, pipelines, decisions, hard: bool):
    """Q-learning as the loop runs it; `hard`: tighter SLAs, cheap cores, binding budgets, every method."""
    rng = random.Random(11 + hard)
    gaps, times, infeasible, n = [], [], 0, 0
    for _ in range(pipelines):
        method = rng.choice(["multiply", "sum", "average"]) if hard else "multiply"
        spec, table_ = synthetic_pipeline(rng, n_stages, n_var, batches=[1, 2, 4, 8], cores=[1, 2, 4],
                                          accuracy_method=method)
        if hard:
            spec = spec.model_copy(update={"sla_s": spec.sla_s * rng.choice([0.5, 1.0])})
        problem = make_problem("ipa", spec, table_, Weights(beta=rng.choice([0.01, 0.1, 1]) if hard else 1.0))
        load = rng.uniform(5, 150)
        if hard:
            free = exact(problem, load)
            if free is not None:
                used = sum(o.total_cores for o in free)
                problem = dataclasses.replace(problem, max_cores=max(n_stages, int(used * rng.uniform(0.6, 0.95))))
        learner = QLearning()
        for _ in range(decisions):
            load = max(1.0, load * (1 + rng.gauss(0, 0.1)))
            best = exact(problem, load)
            t0 = time.perf_counter()
            got = learner(problem, load)
            times.append((time.perf_counter() - t0) * 1000)
            if best is None:
                continue
            n += 1
            if got is None or not problem.assess(got, load).feasible:
                infeasible += 1
                continue
            opt = problem.objective(best)
            gaps.append((opt - problem.objective(got)) / abs(opt) * 100)
    g = np.array(gaps) if gaps else np.array([np.nan])
    return (f"| {n_stages} x {n_var}{', hard' if hard else ''} | {n} | {infeasible} | {g.mean():.3f}% | "
            f"{g.max():.2f}% | {np.mean(g <= 1e-6) * 100:.0f}% | {np.median(times):.1f} | {np.percentile(times, 99):.1f} |")


def scale(n_stages, n_var, loads):
    spec, table_ = synthetic_pipeline(random.Random(7), n_stages, n_var, batches=[1, 2, 4, 8], cores=[1, 2, 4],
                                      sla_s=0.6 * n_stages)
    problem = make_problem("ipa", spec, table_, Weights(beta=0.01))
    times, rows = [], []
    for load in loads:
        free = exact(problem, load)
        used = sum(o.total_cores for o in free)
        for frac in (1.0, 0.9, 0.8):
            p = dataclasses.replace(problem, max_cores=int(used * frac))
            t0 = time.perf_counter()
            chosen = exact(p, load)
            times.append((time.perf_counter() - t0) * 1000)
            rows.append(chosen is not None)
    return times, sum(rows), len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--loads", type=int, default=10)
    args = ap.parse_args()
    rng = random.Random(0)
    loads = [rng.uniform(1, 200) for _ in range(args.loads if not args.quick else 5)]
    sizes = [(2, 3), (2, 5), (3, 5), (3, 10), (5, 10), (10, 10)]
    if args.quick:
        sizes = sizes[:4]
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("\nrandom instances (policy ipa), 3 pipelines per size x the loads:")
    table([(f"{s} x {v}", compare(random_cases(s, v, loads), SOLVER_ORDER)) for s, v in sizes], SOLVER_ORDER)
    print("\nshipped pipelines and profiles (policy ipa):")
    table([(name, compare(cases, SOLVER_ORDER)) for name, cases in shipped_cases(loads)], SOLVER_ORDER)
    print("\nQ-learning as the adaptation loop runs it (one learner per pipeline, 20 decisions, load +-10% each):")
    print("| pipelines | decisions | none found (optimum exists) | mean objective gap | max gap | at the optimum | "
          "median ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    pipelines = 3 if args.quick else 10
    for hard in (False, True):
        print(q_sequences(3, 10, pipelines, 20, hard))
        if not args.quick:
            print(q_sequences(5, 10, pipelines, 20, hard))
    if not args.quick:
        times, feasible, n = scale(20, 10, [5, 20, 60, 120])
        print(f"\nscale: exact on 20 stages x 10 variants (x 4 batches x 3 cores), beta 0.01, core budget at 100/90/80% "
              f"of what the unbudgeted optimum uses: median {np.median(times):.0f} ms, max {max(times):.0f} ms "
              f"({feasible}/{n} feasible)")


if __name__ == "__main__":
    main()
