"""Decision latency of the exact solver (and brute force where it is tractable).

    python bench/optimizer.py            # full sweep, prints a markdown table
    python bench/optimizer.py --quick    # smaller sweep

Median and p99 over 100 loads drawn uniformly in 1..200 rps, scaling cap 100, batching cap 8.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import numpy as np

from ipa.optimize import make_problem
from ipa.optimize.solvers import brute_force, combinations, exact, q_learning
from ipa.profiles.synthetic import synthetic_pipeline


def time_solver(solver, problem, loads) -> tuple[float, float]:
    times = []
    for load in loads:
        t0 = time.perf_counter()
        solver(problem, load)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), float(np.percentile(times, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--loads", type=int, default=100)
    args = ap.parse_args()
    sizes = [(2, 5, 4, 3), (3, 5, 4, 3), (3, 10, 4, 3), (5, 10, 4, 3), (10, 10, 4, 3)]
    if args.quick:
        sizes = sizes[:3]
    rng = random.Random(0)
    loads = [rng.uniform(1, 200) for _ in range(args.loads)]
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| stages x variants x batches x cores | options/stage | exact median ms | exact p99 ms | brute-force median ms |")
    print("|---|---|---|---|---|")
    gaps: list[str] = []
    for n_stages, n_var, n_b, n_c in sizes:
        spec, table = synthetic_pipeline(random.Random(n_stages * 100 + n_var), n_stages, n_var,
                                         batches=[1, 2, 4, 8][:n_b], cores=[1, 2, 4][:n_c], sla_s=0.6 * n_stages)
        problem = make_problem("ipa", spec, table, scaling_cap=100, batching_cap=8)
        med, p99 = time_solver(exact, problem, loads)
        combos = max(combinations(problem, load) for load in loads)
        bf = "-"
        if combos <= 2_000_000:
            bf_med, _ = time_solver(brute_force, problem, loads[:20])
            bf = f"{bf_med:.2f}"
        print(f"| {n_stages} x {n_var} x {n_b} x {n_c} | {n_var * n_b * n_c} | {med:.2f} | {p99:.2f} | {bf} |")
        if n_stages <= 3:
            gaps.append(q_gap(problem, loads[:10], n_stages, n_var))
    print()
    print("Q-learning (200 episodes x 40 steps) against the exact optimum, 10 loads each:")
    print("| pipeline | q-learning median ms | found feasible | mean objective gap | gap in cores (beta=1) |")
    print("|---|---|---|---|---|")
    for row in gaps:
        print(row)


def q_gap(problem, loads, n_stages, n_var) -> str:
    times, gaps, found = [], [], 0
    for load in loads:
        best = exact(problem, load)
        t0 = time.perf_counter()
        q = q_learning(problem, load)
        times.append((time.perf_counter() - t0) * 1000)
        if q is not None and best is not None:
            found += 1
            gaps.append(problem.objective(best) - problem.objective(q))
    gap = statistics.mean(gaps) if gaps else float("nan")
    return f"| {n_stages} x {n_var} | {statistics.median(times):.0f} | {found}/{len(loads)} | {gap:.3f} | {gap:.1f} |"


if __name__ == "__main__":
    main()
