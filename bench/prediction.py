"""Does the simulator predict real serving? Predicted (before the run), twin (fitted to it) and real, cell by cell.

    python bench/prediction.py [--out bench-prediction] [--seconds 60] [--profiles P] [--no-refresh]

What a user does, as commands: copy the shipped video profiles to OUT/profiles.csv and refresh them for this
machine (`ipa profile --serving --out OUT/profiles.csv`: serving's cost and the models' pace here), size the
loads from the plan's capacity on this machine's CPUs (fa2-low's cheapest config), then serve
`ipa experiment --runtime ray --profiles OUT/profiles.csv --max-cores CPUS` for fa2-low and ipa at half, about
one and about two times that capacity and on a step from half to 1.5x capacity for one minute. Each real cell
is predicted before it runs (`fidelity.csv`: predicted, twin, real); this prints the prediction's errors
against the targets and writes OUT/prediction.csv and OUT/prediction.md. Needs the machine to itself.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "profiles/video-cpu-2core.csv"
# metric -> (kind, bound): relative error in percent, or absolute difference in points
TARGETS = {"throughput_rps": ("rel", 10), "completed": ("rel", 10), "sla_violation_pct": ("abs", 5),
           "p99_latency_s": ("rel", 25), "energy_j": ("rel", 15), "pas": ("rel", 3)}


def ipa(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("ipa")), *args]
    print("$ ipa " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def capacity(profiles: Path, cpus: int) -> float:
    """The most rps the cheapest config holds on `cpus` CPUs with the load generator beside it, as planned."""
    from ipa.experiment.cells import Setup
    from ipa.experiment.config import load_experiment
    from ipa.optimize.solvers import solve

    setup = Setup.load(load_experiment(None, profiles=str(profiles), max_cores=cpus, cpus=float(cpus)))
    problem = setup.problem("fa2-low", client=True)
    lo, hi = 0.1, 200.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if solve(problem, mid).feasible else (lo, mid)
    return lo


def error(metric: str, predicted: float, real: float) -> tuple[float, bool]:
    kind, bound = TARGETS[metric]
    if kind == "abs":
        e = real - predicted
    else:
        e = (real - predicted) / predicted * 100 if predicted else float("inf")
    return e, abs(e) <= bound


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-prediction")
    ap.add_argument("--seconds", type=int, default=60, help="length of each static cell")
    ap.add_argument("--profiles", help="profiles refreshed for this machine already (skips the copy)")
    ap.add_argument("--no-refresh", action="store_true", help="do not run ipa profile --serving on them")
    ap.add_argument("--policy", action="append", help="default: fa2-low and ipa")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cpus = len(os.sched_getaffinity(0))
    profiles = Path(args.profiles).resolve() if args.profiles else out / "profiles.csv"
    if not args.profiles:
        shutil.copy(SHIPPED, profiles)
        shutil.copy(SHIPPED.with_name(SHIPPED.name + ".meta.json"), profiles.with_name(profiles.name + ".meta.json"))
    if not args.no_refresh:
        ipa("profile", "--serving", "--pipeline", "configs/pipelines/video.yaml", "--out", str(profiles))
    cap = capacity(profiles, cpus)
    half, one, two = (max(1, round(cap * f)) for f in (0.5, 1.0, 2.0))
    step = f"step:{half}:{max(one + 1, round(cap * 1.5))}:{30 + 60}:30"
    workloads = [f"static:{r}:{args.seconds}" for r in (half, one, two)] + [step]
    print(f"planned capacity on {cpus} CPUs: {cap:.1f} rps; workloads: {', '.join(workloads)}", flush=True)
    policies = args.policy or ["fa2-low", "ipa"]
    run = out / "run"
    ipa("experiment", "--runtime", "ray", "--profiles", str(profiles), "--max-cores", str(cpus),
        *(x for w in workloads for x in ("--workload", w)), *(x for p in policies for x in ("--policy", p)),
        "--out", str(run))
    rows = []
    with (run / "fidelity.csv").open() as f:
        for r in csv.DictReader(f):
            if r["metric"] not in TARGETS or r["predicted"] in ("", "nan") or r["real"] in ("", "nan"):
                continue
            e, ok = error(r["metric"], float(r["predicted"]), float(r["real"]))
            rows.append(r | {"error": e, "unit": "pts" if TARGETS[r["metric"]][0] == "abs" else "%",
                             "target": TARGETS[r["metric"]][1], "met": ok})
    with (out / "prediction.csv").open("w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"| cell | metric | predicted | twin | real | real vs predicted | target |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} {r['policy']} | {r['metric']} | {float(r['predicted']):.4g} | "
                     f"{float(r['twin']):.4g} | {float(r['real']):.4g} | {r['error']:+.1f} {r['unit']} | "
                     f"{'met' if r['met'] else 'MISSED'} (±{r['target']}) |")
    met = sum(r["met"] for r in rows)
    lines.append(f"\n{met} of {len(rows)} within target; capacity {cap:.1f} rps planned on {cpus} CPUs")
    (out / "prediction.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
