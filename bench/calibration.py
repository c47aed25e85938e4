"""Calibration: plans made with profiles twice too fast, on a simulated machine that is really that slow.

    python bench/calibration.py [--slower 2] [--load 20] [--seconds 120] [--policy ipa] [--seed 0]

The video pipeline's shipped profiles plan; the simulator runs every batch `--slower` times as long.
Per 10 s adaptation interval: SLA violations (late or shed requests over arrivals), the capacity the
plan expected and the calibration ratio learned, with calibration and without.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ipa.adapt import LoopSettings, adapt
from ipa.optimize import make_problem
from ipa.predict import make_predictor
from ipa.profiles import load_profiles
from ipa.profiles.calibration import CalibrationSettings, Calibrator
from ipa.profiles.serving import from_meta
from ipa.runtime.sim import SimSettings, Simulator
from ipa.spec import load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def run(args, calibrate: bool):
    spec = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    table = load_profiles(ROOT / "profiles/video-cpu-2core.csv", spec)
    serving = from_meta(table.meta)
    problem = make_problem(args.policy, spec, table, serving=serving)
    rps = np.full(args.seconds, args.load)
    sim = Simulator(spec, table, problem.idle_power_w_per_core, rps,
                    SimSettings(true_scale=args.slower, serving_latency_s=serving.latency_s if serving else 0.0),
                    seed=args.seed)
    calibrator = Calibrator(table, CalibrationSettings(enabled=calibrate))
    records = adapt(sim, problem, make_predictor("max"), args.seconds, LoopSettings(interval_s=10), args.policy,
                    initial_rate=args.load, calibrator=calibrator)
    s = sim.result().series
    per = s["violations"].reshape(-1, 10).sum(1) / np.maximum(s["arrivals"].reshape(-1, 10).sum(1), 1) * 100
    return per, records


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slower", type=float, default=2.0, help="the machine is this many times slower than profiled")
    ap.add_argument("--load", type=float, default=20.0)
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--policy", default="ipa")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with_cal, records = run(args, True)
    without, stale = run(args, False)
    print(f"video pipeline, {args.policy}, {args.load:g} rps, machine {args.slower:g}x slower than its profiles")
    print(f"{'interval':>8} | {'violations %':>12} {'plans for':>10} {'ratio learned':>15} | {'no calibration %':>16} "
          f"{'plans for':>10}")
    for i, (a, b) in enumerate(zip(with_cal, without)):
        r, q = records[i], stale[i]
        ratio = max(r.get("calibration", {}).values(), default=1.0)
        print(f"{i * 10:>6} s | {a:12.2f} {r['capacity_rps']:9.1f}/s {ratio:15.2f} | {b:16.2f} {q['capacity_rps']:9.1f}/s")
    first = next((i for i in range(len(with_cal)) if np.all(with_cal[i:] <= 5)), None)
    print(f"with calibration: at most 5% violations from interval {first} on"
          if first is not None else "with calibration: never settles under 5%")
    print(f"without: {np.mean(without[3:]):.1f}% violations on average after the third interval")


if __name__ == "__main__":
    main()
