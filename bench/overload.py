"""Overload on the real runtime: what a config really holds, and what happens at three times that.

    python bench/overload.py [--policy ipa] [--load 1] [--high 3] [--low 0.5] [--seconds 30,60,40]
                             [--no-step] [--no-serving]

1. Warm-up on a local Ray cluster, 20 s at `--load` rps: calibration learns this machine's batch times.
2. The config `--policy` plans for `--load` rps with what it learned; 20 s more at 80% of the capacity the
   plan predicts for it, so calibration also sees the batch times under that load (on a small machine
   they grow with it), and the capacity the plan predicts then.
3. Capacity measured: 20 s of open-loop load at each of 0.8, 1.0, 1.2 and 1.5 x the prediction; capacity =
   the most goodput (answers within the SLA per second, the first 5 s of each step left out). Offering far
   more measures less: every refused request still costs the proxy and the ingress some CPU.
4. The step, same config, no adaptation: `--low` x capacity for 30 s, `--high` x capacity for 60 s, then
   `--low` again for 40 s. Per 10 s window: goodput, answered, shed and late; then one single request.

Checks printed at the end: capacity predicted within 15%; goodput >= 80% of capacity in every window of
the overload; no violation from 20 s after it ends; the single request answered within the SLA.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import time
from pathlib import Path

import numpy as np
import requests

from ipa.models.samples import photo_jpegs
from ipa.optimize import make_problem, solve
from ipa.profiles import load_profiles
from ipa.profiles.calibration import Calibrator
from ipa.profiles.serving import from_meta
from ipa.runtime.admission import stage_estimates
from ipa.runtime.loadgen import LoadGenerator, arrival_times
from ipa.runtime.ray.cluster import RaySettings, connect, shutdown
from ipa.runtime.ray.runtime import RayRuntime
from ipa.spec import config_as_dict, load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def replay(rt: RayRuntime, rps: np.ndarray, seed: int) -> tuple[list, float]:
    gen = LoadGenerator(rt.url, arrival_times(rps, np.random.default_rng(seed)), photo_jpegs(), rt.drop_limit_s + 5)
    t0 = time.monotonic()
    gen.start(t0)
    gen.join(len(rps) + rt.drop_limit_s + 30)
    return gen.records, t0


def windows(records, seconds: int, sla: float, width: int = 10) -> list[dict]:
    """Per window of completion time: goodput (answers within the SLA per second), answered, shed, late."""
    out = []
    for start in range(0, seconds, width):
        done = [r for r in records if start <= r.sent_s + r.latency_s < start + width]
        sent = [r for r in records if start <= r.sent_s < start + width]
        ok = [r for r in done if r.ok]
        out.append({"t": start, "sent": len(sent), "answered": len(ok),
                    "goodput": sum(r.latency_s <= sla for r in ok) / width,
                    "shed": sum(not r.ok for r in done), "late": sum(r.latency_s > sla for r in ok),
                    "p99": float(np.percentile([r.latency_s for r in ok], 99)) if ok else float("nan")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policy", default="ipa", help="the policy that plans the config")
    ap.add_argument("--load", type=float, default=1.0, help="the load the config is planned for")
    ap.add_argument("--no-step", action="store_true", help="measure the capacity only")
    ap.add_argument("--high", type=float, default=3.0, help="the overload, times the measured capacity")
    ap.add_argument("--low", type=float, default=0.5, help="before and after, times the measured capacity")
    ap.add_argument("--seconds", default="30,60,40", help="before, during and after the overload")
    ap.add_argument("--no-serving", action="store_true", help="plan without the measured serving cost")
    args = ap.parse_args()
    before, during, after = (int(x) for x in args.seconds.split(","))

    spec = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    table = load_profiles(ROOT / "profiles/video-cpu-2core.csv", spec)
    serving = None if args.no_serving else from_meta(table.meta)
    cpus = len(os.sched_getaffinity(0))
    problem = make_problem(args.policy, spec, table, max_cores=cpus, cpus=cpus,
                           serving=serving.with_client(True) if serving else None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = RaySettings(port=port)
    started = connect(settings, spec)
    rt = RayRuntime(spec, settings, serving_latency_s=serving.latency_s if serving else 0.0)
    calibrator = Calibrator(table)
    try:
        first = solve(problem, args.load).config
        rt.start(first, stage_estimates(table, first))
        replay(rt, np.full(20, args.load), 0)
        calibrator.observe(rt.batch_timings())
        planned = problem.with_profiles(calibrator.table)
        config = solve(planned, args.load).config
        rt.apply(config, stage_estimates(planned.profiles, config))
        at_low = planned.assess_config(config, args.load).capacity_rps
        replay(rt, np.full(20, 0.8 * at_low), 1)
        calibrator.observe(rt.batch_timings())
        planned = problem.with_profiles(calibrator.table)
        predicted = planned.assess_config(config, args.load).capacity_rps
        print(f"machine: {platform.processor() or platform.machine()}, {cpus} CPUs; calibration {calibrator.ratios()}")
        print(f"config for {args.load:g} rps: {config_as_dict(config)}; predicted capacity {at_low:.2f} rps "
              f"(calibrated at {args.load:g} rps), {predicted:.2f} rps (calibrated at {0.8 * at_low:.2f} rps)")

        capacity, steps = 0.0, []
        for i, f in enumerate((0.8, 1.0, 1.2, 1.5)):
            records, _ = replay(rt, np.full(20, f * predicted), 10 + i)
            goodput = float(np.mean([w["goodput"] for w in windows(records, 20, spec.sla_s, 1)[5:]]))
            steps.append(f"{f * predicted:.2f} rps -> {goodput:.2f}")
            capacity = max(capacity, goodput)
        print(f"offered -> goodput: {'; '.join(steps)}")
        print(f"measured capacity {capacity:.2f} rps; predicted/measured {predicted / capacity:.2f} "
              f"({(predicted - capacity) / capacity * 100:+.0f}%)")
        if args.no_step:
            return

        rps = np.concatenate([np.full(before, args.low * capacity), np.full(during, args.high * capacity),
                              np.full(after, args.low * capacity)])
        records, _ = replay(rt, rps, 2)
        single = requests.post(rt.url, data=photo_jpegs()[0], headers={"content-type": "image/jpeg"}, timeout=60)
    finally:
        rt.stop()
        shutdown(started)

    print(f"\nstep: {args.low:g}x ({args.low * capacity:.2f} rps) for {before} s, {args.high:g}x ({args.high * capacity:.2f} "
          f"rps) for {during} s, {args.low:g}x for {after} s; SLA {spec.sla_s:g} s")
    print(f"{'window':>7} {'sent':>5} {'answered':>8} {'goodput/s':>10} {'of capacity':>11} {'shed':>5} {'late':>5} {'p99 s':>6}")
    rows = windows(records, len(rps), spec.sla_s)
    for w in rows:
        print(f"{w['t']:>5} s {w['sent']:>5} {w['answered']:>8} {w['goodput']:>10.2f} {w['goodput'] / capacity:>10.0%} "
              f"{w['shed']:>5} {w['late']:>5} {w['p99']:>6.2f}")
    overload = [w for w in rows if before <= w["t"] < before + during]
    settled = [r for r in records if r.sent_s >= before + during + 20]
    violations = sum(not r.ok or r.latency_s > spec.sla_s for r in settled)
    latency = single.json().get("latency_s", float("nan")) if single.status_code == 200 else float("nan")
    print(f"\ncapacity predicted within 15%: {abs(predicted - capacity) / capacity <= 0.15} "
          f"({(predicted - capacity) / capacity * 100:+.0f}%)")
    print(f"goodput >= 80% of capacity in every overload window: {min(w['goodput'] for w in overload) >= 0.8 * capacity} "
          f"(lowest {min(w['goodput'] for w in overload) / capacity:.0%})")
    print(f"no violation from 20 s after the overload: {violations == 0} ({violations} of {len(settled)})")
    print(f"a single request right after: HTTP {single.status_code}, {latency:.2f} s (SLA {spec.sla_s:g} s)")


if __name__ == "__main__":
    main()
