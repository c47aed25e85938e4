"""Does the simulator predict real serving? Predicted (before the run), twin (fitted to it) and real, cell by cell.

    python bench/prediction.py [--out bench-prediction] [--seconds 60] [--profiles P] [--no-refresh] [--descending]

What a user does, as commands: copy the shipped video profiles to OUT/profiles.csv and refresh them for this
machine (`ipa profile --serving`: serving's cost and the machine's speed here), size the loads from the plan's
capacity on this machine's CPUs (fa2-low's cheapest config), then serve `ipa experiment --runtime ray` for fa2-low
and ipa at half, about one and about two times that capacity and on a step from half to 1.5x capacity. Each real
cell is predicted before it runs (OUT/run/fidelity.csv); the run is scored as `ipa fidelity` scores it
(OUT/prediction.md), then simulated again at each cell's own pace (OUT/at-cell-pace.md). Needs the machine to itself.

    python bench/prediction.py --again OUT        the same cells served once more, set against the first serving
    python bench/prediction.py --repredict OUT    OUT's cells predicted again by today's simulator (--at-cell-pace)
    python bench/prediction.py --tally A.csv ...  several runs' scored tables side by side

The scoring is the library's (`ipa.experiment.fidelity.score`); this script only drives the runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ipa.experiment.fidelity.repredict import read_run, repredict
from ipa.experiment.fidelity.score import report, repeat, tally

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "profiles/video-cpu-2core.csv"


def ipa(*args: str) -> None:
    print("$ ipa " + " ".join(args), flush=True)
    subprocess.run([str(Path(sys.executable).with_name("ipa")), *args], check=True, cwd=ROOT)


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


def served(out: Path) -> tuple[Path, Path, str]:
    """The served run, where its tables go and their names' prefix: OUT/run into OUT; a run's own folder
    (OUT/again, holding fidelity.csv) beside it as again-*."""
    if (out / "fidelity.csv").is_file():
        return out, out.parent, f"{out.name}-"
    return out / "run", out, ""


def again_at_cell_pace(out: Path, at_cell_pace: bool) -> None:
    run, out, prefix = served(out)
    name = "at-cell-pace" if at_cell_pace else "reprediction"
    how = (" at each cell's own measured pace, pooled and each served variant's, its own 10 s and their spread (not a "
           "prediction)" if at_cell_pace else " with the simulator of today")
    print(report(repredict(run, at_cell_pace), out / (prefix + name), f"simulated again on {run}{how}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-prediction")
    ap.add_argument("--seconds", type=int, default=60, help="length of each static cell")
    ap.add_argument("--profiles", help="profiles refreshed for this machine already (skips the copy)")
    ap.add_argument("--no-refresh", action="store_true", help="do not run ipa profile --serving on them")
    ap.add_argument("--policy", action="append", help="default: fa2-low and ipa")
    ap.add_argument("--descending", action="store_true", help="serve the static loads highest first")
    ap.add_argument("--repredict", metavar="OUT", help="predict OUT's finished cells again (no serving)")
    ap.add_argument("--at-cell-pace", action="store_true", help="with --repredict: at each cell's own pace")
    ap.add_argument("--tally", nargs="+", metavar="CSV", help="several runs' scored tables side by side")
    ap.add_argument("--again", metavar="OUT", help="serve OUT's cells again; the second run against the first")
    args = ap.parse_args()
    if args.tally:
        print(tally([Path(p) for p in args.tally]))
        return
    if args.again:
        out = Path(args.again).resolve()
        ipa("experiment", str(out / "run" / "config.yaml"), "--out", str(out / "again"))
        print(repeat(read_run(out / "run"), read_run(out / "again"), out / "repeat")[1])
        print(report(read_run(out / "again"), out / "again-prediction", "the second run against its predictions"))
        return
    if args.repredict:
        again_at_cell_pace(Path(args.repredict).resolve(), args.at_cell_pace)
        return
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
    loads = (two, one, half) if args.descending else (half, one, two)
    workloads = [f"static:{r}:{args.seconds}" for r in loads] + [step]
    print(f"planned capacity on {cpus} CPUs: {cap:.1f} rps; workloads: {', '.join(workloads)}", flush=True)
    ipa("experiment", "--runtime", "ray", "--profiles", str(profiles), "--max-cores", str(cpus),
        *(x for w in workloads for x in ("--workload", w)),
        *(x for p in (args.policy or ["fa2-low", "ipa"]) for x in ("--policy", p)), "--out", str(out / "run"))
    print(report(read_run(out / "run"), out / "prediction", f"capacity {cap:.1f} rps planned on {cpus} CPUs"))
    again_at_cell_pace(out, at_cell_pace=True)  # how much of what was missed is the machine's speed moving


if __name__ == "__main__":
    main()
