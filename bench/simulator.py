"""Simulator speed: simulated seconds per wall second on a 20-minute pattern, and how it scales with load.

    python bench/simulator.py

Fixed config (no adaptation loop) so the figure is the simulator's own; the video pipeline on the
shipped 2-core profiles, replicas sized for each load.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np

from ipa.optimize import make_problem, solve
from ipa.profiles import load_profiles
from ipa.runtime.sim import Simulator
from ipa.spec import load_pipeline
from ipa.workload import load_workload

ROOT = Path(__file__).resolve().parents[1]


def simulate(spec, table, idle_w, rps: np.ndarray) -> tuple[float, int]:
    problem = make_problem("ipa", spec, table)
    config = solve(problem, float(rps.max())).config
    sim = Simulator(spec, table, idle_w, rps, seed=0)
    sim.start(config)
    t0 = time.perf_counter()
    sim.run_until(len(rps))
    wall = time.perf_counter() - t0
    return wall, sim.result().arrivals


def main() -> None:
    spec = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    table = load_profiles(ROOT / "profiles/video-cpu-2core.csv", spec)
    idle = table.idle_power_w_per_core or 0.0
    print(f"machine: {platform.machine()} {platform.processor()}, python {platform.python_version()}")
    print("| workload | seconds | requests | wall s | simulated s / wall s | requests / wall s |")
    print("|---|---|---|---|---|---|")
    names = ["bursty", "fluctuating"]
    try:
        workloads = [load_workload(n) for n in names]
    except Exception as e:  # no trace: synthetic stand-ins of the same length
        print(f"(trace not found: {e.__class__.__name__}; using synthetic patterns)")
        workloads = [load_workload("sine:12:10:300:1200"), load_workload("sine:16:15:200:1200")]
    workloads += [load_workload(f"static:{r}:1200") for r in (10, 50, 100, 200, 400)]
    for w in workloads:
        wall, n = simulate(spec, table, idle, w.rps)
        print(f"| {w.name} | {w.seconds} | {n} | {wall:.3f} | {w.seconds / wall:,.0f}x | {n / wall:,.0f} |")


if __name__ == "__main__":
    main()
