"""Does the simulator predict real serving? Predicted (before the run), twin (fitted to it) and real, cell by cell.

    python bench/prediction.py [--out bench-prediction] [--seconds 60] [--profiles P] [--no-refresh] [--descending]

What a user does, as commands: copy the shipped video profiles to OUT/profiles.csv and refresh them for this
machine (`ipa profile --serving --out OUT/profiles.csv`: serving's cost and the models' pace here), size the
loads from the plan's capacity on this machine's CPUs (fa2-low's cheapest config), then serve
`ipa experiment --runtime ray --profiles OUT/profiles.csv --max-cores CPUS` for fa2-low and ipa at half, about
one and about two times that capacity and on a step from half to 1.5x capacity for one minute. Each real cell
is predicted before it runs (`fidelity.csv`: predicted, twin, real); this prints the prediction's errors
against the targets and writes OUT/prediction.csv and OUT/prediction.md, then the same cells simulated at the
pace each one's batches ran at (OUT/at-cell-pace.md, as with --at-cell-pace below). Needs the machine to itself.

    python bench/prediction.py --again OUT

serves OUT's cells once more as they were (the same refreshed profiles, config and loads: `ipa experiment
OUT/run/config.yaml --out OUT/again`) and sets the second real run against the first with the same targets
(OUT/repeat.csv, OUT/repeat.md): how well this machine reproduces its own figures, the floor under any prediction
of them; the second run's own prediction against it goes to OUT/again-prediction.md. About as long as the run.

    python bench/prediction.py --repredict OUT

predicts OUT's finished cells again with the simulator as it is now (the same profiles, config and loads, each
cell from the pace the run started it at and the speed its 10 s moved at before it, as the run gathered them, the
median over the prediction's seeds with its band; no serving, under a minute) against the same real runs, into OUT/reprediction.csv and OUT/reprediction.md: how a change to the simulator
would have done on a run already made. With --at-cell-pace each cell is simulated at
the CPU pace its own real batches had, pooled and each served variant's, with the speed its own 10 s moved at
replayed in order (OUT/at-cell-pace.md): not a prediction (the pace is measured in the run), but what is left of
the error once this VM's speed, which moves within and between cells, is known; and again 3% slower and 3% faster,
marking the figures that so small a pace error moves across their whole target band. OUT may also be one served
run's folder (`--repredict OUT/again`: the second serving; its tables go beside it as again-reprediction.md, ...).

    python bench/prediction.py --tally A.csv B.csv ...

sets several runs' scored tables side by side (prediction.csv, reprediction.csv, at-cell-pace.csv, repeat.csv, ...;
loads and steps may differ from run to run): per cell kind (half, one and two times capacity by the order of each
run's static loads, and the step), policy and metric, how many runs met the target and each run's signed error,
and a mark where every run erred the same way (a bias of the model rather than the machine's noise), and how many
figures met their target in the cells whose pace was predicted within 5% and in the others (each scored row carries
its cell's pace, predicted and real; for repeat.csv the first run's pace stands for the prediction); it writes
nothing. One run says little on this VM; a change to the simulator is judged on all of them.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ipa.profiles.calibration import BatchTiming
    from ipa.profiles.table import ProfileTable
    from ipa.machine.replay import Speed

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "profiles/video-cpu-2core.csv"
# metric -> (kind, bound): relative error in percent, or absolute difference in points
TARGETS = {"throughput_rps": ("rel", 10), "completed": ("rel", 10), "sla_violation_pct": ("abs", 5),
           "p99_latency_s": ("rel", 25), "energy_j": ("rel", 15), "pas": ("rel", 3)}
PACE_APART = (0.97, 1.03)  # with --at-cell-pace: each cell simulated again this much slower and faster


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
    ap.add_argument("--descending", action="store_true", help="serve the static loads highest first (two, one, then "
                    "half capacity, then the step): the half-capacity cells then start from what busy cells served")
    ap.add_argument("--repredict", metavar="OUT", help="predict OUT's finished cells again (no serving)")
    ap.add_argument("--at-cell-pace", action="store_true", help="with --repredict: simulate each cell at the pace "
                    "its real batches had, 10 s by 10 s (OUT/at-cell-pace.md; the model's error once the machine's "
                    "speed is known)")
    ap.add_argument("--tally", nargs="+", metavar="CSV", help="several runs' scored tables side by side: the "
                    "errors per cell kind, policy and metric, and which all err the same way")
    ap.add_argument("--again", metavar="OUT", help="serve OUT's cells again as they were; the second real run "
                    "against the first (OUT/repeat.md)")
    args = ap.parse_args()
    if args.tally:
        print(tally([Path(p) for p in args.tally]))
        return
    if args.again:
        again(Path(args.again).resolve())
        return
    if args.repredict:
        repredict(Path(args.repredict).resolve(), args.at_cell_pace)
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
    policies = args.policy or ["fa2-low", "ipa"]
    run = out / "run"
    ipa("experiment", "--runtime", "ray", "--profiles", str(profiles), "--max-cores", str(cpus),
        *(x for w in workloads for x in ("--workload", w)), *(x for p in policies for x in ("--policy", p)),
        "--out", str(run))
    compare(read_fidelity(run / "fidelity.csv"), out / "prediction", f"capacity {cap:.1f} rps planned on {cpus} CPUs")
    repredict(out, at_cell_pace=True)  # how much of what was missed is this machine's speed moving under the run


def again(out: Path) -> None:
    """OUT's cells served once more from the same start; the second real run against the first."""
    first = read_fidelity(out / "run" / "fidelity.csv")
    ipa("experiment", str(out / "run" / "config.yaml"), "--out", str(out / "again"))
    second = read_fidelity(out / "again" / "fidelity.csv")
    repeat(first, second, out / "repeat")
    compare(second, out / "again-prediction", "the second run against what was predicted before each of its cells")


def repeat(first: list[dict], second: list[dict], stem: Path) -> int:
    """Each figure of the second real run against the first's, with the targets a prediction has (STEM.csv,
    STEM.md); returns how many are within them."""
    before = {(r["workload"], r["policy"], r["metric"]): r["real"] for r in first}
    cells = [(r["workload"], r["policy"], r["metric"], r["real"]) for r in second if r["metric"] == "machine_pace"]
    both = {(w, p): {"pace_predicted": before[(w, p, m)], "pace_real": real}  # the first run's pace as a prediction's
            for w, p, m, real in cells if (w, p, m) in before}
    scored, paces = [], []
    for r in second:
        key = (r["workload"], r["policy"], r["metric"])
        if key not in before or r["metric"] not in ("machine_pace", *TARGETS):
            continue
        a, b = float(before[key]), float(r["real"])
        if math.isnan(a) or math.isnan(b):
            continue
        if r["metric"] == "machine_pace":  # not a target: what each run's models ran at, to read the rest by
            paces.append(f"{key[0]} {key[1]} {a:.2f} -> {b:.2f}")
            continue
        e, ok = error(r["metric"], a, b)
        scored.append({"workload": key[0], "policy": key[1], "metric": key[2], "first": a, "second": b, "error": e,
                       "unit": "pts" if TARGETS[r["metric"]][0] == "abs" else "%",
                       "target": TARGETS[r["metric"]][1], "met": ok} | both.get(key[:2], {}))
    if not scored:
        sys.exit(f"{stem.parent}: the two runs share no cell to compare")
    with stem.with_suffix(".csv").open("w") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in scored for k in r)), extrasaction="ignore")
        w.writeheader()
        w.writerows(scored)
    lines = ["| cell | metric | first run | second run | second vs first | target |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} {r['policy']} | {r['metric']} | {r['first']:.4g} | {r['second']:.4g} | "
              f"{r['error']:+.1f} {r['unit']} | {'met' if r['met'] else 'MISSED'} (±{r['target']}) |" for r in scored]
    met = sum(r["met"] for r in scored)
    lines.append(f"\n{met} of {len(scored)} figures of the second real run within the targets of the first's: the same "
                 "cells, profiles, config and loads served twice on this machine")
    if paces:
        lines.append("\nthe models' CPU pace over the profiles in each cell, first run -> second: " + ", ".join(paces))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return met


def read_fidelity(path: Path) -> list[dict]:
    from ipa.experiment import fidelity

    if not path.is_file():
        sys.exit(f"{path.parent.parent}: no finished run there ({path} not found; bench/prediction.py --out OUT "
                 "writes it)")
    return fidelity.read(path)


def repredict(out: Path, at_cell_pace: bool = False) -> None:
    """OUT's real cells against a prediction made now, from what the run's own prediction was made with.
    `at_cell_pace`: each cell simulated at the CPU pace its real batches had, pooled and each served variant's own,
    at the speed its own 10 s moved at (`cell_speed`) and the spread its batches had within them, which the run
    measured (not a prediction: what is left is the model's error once the machine's own speed is known), and again
    at that pace 3% slower and 3% faster: how far a pace known only that well moves each figure."""
    import json
    from dataclasses import replace

    from ipa.experiment.cells import Setup, cell_dir, shape
    from ipa.experiment.config import load_experiment
    from ipa.experiment.prediction import predict
    from ipa.machine.measure import WINDOW_S, served_paces, served_spread
    from ipa.machine.tracker import SpeedTracker, cell_pace, own_paces
    from ipa.profiles.calibration import BatchTiming
    from ipa.workload import load_workload

    run, out, prefix = served(out)
    fidelity = read_fidelity(run / "fidelity.csv")  # first: without a finished run there is no config either
    cfg = load_experiment(run / "config.yaml", runtime="sim")
    setup = Setup.load(cfg)
    twins = {(r["workload"], r["policy"], r["metric"]): r["twin"] for r in fidelity}
    started = {(r["workload"], r["policy"]): float(r["predicted"]) for r in fidelity if r["metric"] == "machine_pace"}
    # the machine's speed as served before each cell, as the run gathered it (`RayCluster._follow`)
    seen = setup.speed or None
    served_so_far = SpeedTracker.refreshed(seen)
    rows = []
    for name in cfg.workloads:
        w = shape(load_workload(name, cfg.trace), cfg.duration_s, cfg.load_scale)
        for policy in cfg.policies:
            real = cell_dir(run, w.name, policy) / "summary.json"
            if not real.is_file():
                continue
            real = json.loads(real.read_text())
            with (cell_dir(run, w.name, policy) / "batches.csv").open() as f:
                batches = [BatchTiming(r["stage"], r["variant"], int(r["cores"]), int(r["size"]), float(r["seconds"]),
                                       float(r["cpu_s"]) if r["cpu_s"] else None,
                                       float(r["t_s"]) if r.get("t_s") else None) for r in csv.DictReader(f)]
            # against the variants' paces as followed so far, as the run measured it
            before = setup.at_speed(seen) if seen else setup
            planned, measured = cell_pace(before.speed, before.profiles, batches)
            cell_setup = setup
            if seen and started.get((w.name, policy)):  # the pace the run's prediction had
                seen = replace(seen, pace=started[(w.name, policy)])
                cell_setup = setup.at_speed(seen)
            known = None
            if seen and at_cell_pace and measured:  # the variants the cell served at their own paces and spread
                own = own_paces(seen.variant_pace, served_paces(setup.profiled, batches))
                spread = served_spread(setup.profiles, batches, window_s=WINDOW_S)
                cell_setup = setup.at_speed(replace(seen, pace=measured, variant_pace=own,
                                                      window_spread=spread or seen.window_spread))
                known = cell_speed(cell_setup.profiles, batches, w.seconds)
            predicted = predict(cell_setup, w, policy, known)
            apart = {}
            if cell_setup.speed and at_cell_pace:
                pace = cell_setup.speed.pace
                apart = {f: predict(cell_setup.at_speed(replace(cell_setup.speed, pace=pace * f)), w,
                                    policy, known).summary for f in PACE_APART}
            band = {"predicted_low": predicted.low, "predicted_high": predicted.high} if not at_cell_pace else {}
            rows += [{"workload": w.name, "policy": policy, "metric": m, "predicted": predicted.summary[m],
                      **{k: v.get(m, "nan") for k, v in band.items()},
                      "twin": twins.get((w.name, policy, m), "nan"), "real": real[m],
                      **{f"at_x{f:g}": s[m] for f, s in apart.items()}} for m in TARGETS]
            rows.append({"workload": w.name, "policy": policy, "metric": "machine_pace",
                         "predicted": cell_setup.speed.pace if cell_setup.speed else planned,
                         "twin": "nan", "real": measured if measured else "nan"})
            if seen and measured:  # what this cell served joins what the next one starts from (as the run does)
                seen = served_so_far.follow(seen, setup.at_speed(seen).profiles, setup.profiled, batches, seen.pace,
                                            measured)
    how = (" at each cell's own measured pace, pooled and each served variant's, its own 10 s and their spread (not a "
           "prediction)"
           if at_cell_pace else " with the simulator of today")
    compare(rows, out / (prefix + ("at-cell-pace" if at_cell_pace else "reprediction")),
            f"simulated again on {run}{how}")


def served(out: Path) -> tuple[Path, Path, str]:
    """The served run to repredict, where its tables go and their names' prefix: OUT/run into OUT; a run's own
    folder (OUT/again, holding fidelity.csv) beside it as again-*."""
    if (out / "fidelity.csv").is_file():
        return out, out.parent, f"{out.name}-"
    return out / "run", out, ""


def tally(paths: list[Path]) -> str:
    """Several runs' scored tables (`compare`'s or `repeat`'s CSV) side by side, as a markdown table."""
    errors: dict[tuple[str, str, str], list[tuple[float, bool]]] = {}
    totals, scored = [], []
    for path in paths:
        if not path.is_file():
            sys.exit(f"{path}: not found (bench/prediction.py writes OUT/prediction.csv, OUT/at-cell-pace.csv, ...)")
        with path.open() as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"workload", "policy", "metric", "error", "met"} <= set(rows[0]):
            sys.exit(f"{path}: not a table of scored figures (no workload, policy, metric, error and met columns)")
        kinds = cell_kinds([r["workload"] for r in rows])
        for r in rows:
            errors.setdefault((kinds[r["workload"]], r["policy"], r["metric"]), []).append(
                (float(r["error"]), r["met"] == "True"))
        totals.append(f"{sum(r['met'] == 'True' for r in rows)}/{len(rows)}")
        scored += rows
    lines = [f"runs: {', '.join(str(p) for p in paths)}", f"within target: {', '.join(totals)}",
             *by_pace(scored), "",
             "| cell | policy | metric | met | errors, run by run | same sign |", "|---|---|---|---|---|---|"]
    for (kind, policy, metric), v in sorted(errors.items(), key=lambda kv: (KINDS.index(kv[0][0]), kv[0][1:])):
        kind_of, bound = TARGETS.get(metric, ("rel", 10))
        lines.append(f"| {kind} | {policy} | {metric} | {sum(m for _, m in v)}/{len(v)} | "
                     + " ".join(f"{e:+.0f}" for e, _ in v) + f" {'pts' if kind_of == 'abs' else '%'} | "
                     + one_way([e for e, _ in v], bound) + " |")
    return "\n".join(lines)


PACE_KNOWN = 0.05  # a cell whose pace was predicted this close counts as one whose pace was known


def by_pace(scored: list[dict]) -> list[str]:
    """How many scored figures met their target in the cells whose pace was predicted within PACE_KNOWN and in the
    others (no line for tables without the pace): on this VM the pace moves 6-8% from one cell to the next whatever
    rule predicts it, so this says which share of the misses is the machine's and which the model's."""
    paced = [(float(r["pace_real"]) / float(r["pace_predicted"]) - 1, r["met"] in (True, "True"))
             for r in scored if r.get("pace_predicted") and r.get("pace_real")]
    paced = [(e, met) for e, met in paced if math.isfinite(e)]
    if not paced:
        return []
    near = [met for e, met in paced if abs(e) < PACE_KNOWN]
    far = [met for e, met in paced if abs(e) >= PACE_KNOWN]
    share = lambda v: f"{sum(v)}/{len(v)} ({100 * sum(v) / len(v):.0f}%)" if v else "none"  # noqa: E731
    return [f"figures within target where the cell's pace was predicted within {PACE_KNOWN:.0%}: {share(near)}; "
            f"where it was off by more: {share(far)}"]


def one_way(errors: list[float], bound: float) -> str:
    """'all +' or 'all -' when three or more runs erred and every error past a quarter of the target's bound lies
    on one side, with at least half the runs past it: a lean the machine's noise would not give every run."""
    past = [e for e in errors if abs(e) >= bound / 4]
    if len(errors) < 3 or 2 * len(past) < len(errors):
        return ""
    return "all +" if min(past) > 0 else "all -" if max(past) < 0 else ""


KINDS = ("half", "one", "two", "step", "other")


def cell_kinds(workloads: list[str]) -> dict[str, str]:
    """Each workload's kind in a run: its static loads by rate, lowest first, as half, one and two times capacity
    (how `main` sizes them), a step as the step; anything else as other."""
    static = sorted({w for w in workloads if w.startswith("static:")}, key=lambda w: float(w.split(":")[1]))
    kinds = dict(zip(static, KINDS[:3])) if len(static) == 3 else {}
    return {w: kinds.get(w, "step" if w.startswith("step:") else "other") for w in workloads}


def cell_speed(profiles: ProfileTable, batches: list[BatchTiming], seconds: int) -> Speed:
    """The speed a cell's own batches moved at, each 10 s's pace over the whole cell's (`Simulator(speed=...)`);
    a 10 s with too few batches to say (`WINDOW_LEAST`) keeps the cell's pace. Hindsight: what
    --at-cell-pace replays."""
    import numpy as np

    from ipa.machine.measure import WINDOW_LEAST, WINDOW_S, by_window, machine_pace

    whole = machine_pace(profiles, batches)
    groups = by_window(batches)
    spans = max(1, math.ceil(seconds / WINDOW_S))
    paces = [machine_pace(profiles, groups[k]) if len(groups.get(k, ())) >= WINDOW_LEAST else None
             for k in range(spans)]
    return np.arange(spans) * WINDOW_S, np.asarray([p[0] / whole[0] if p and whole else 1.0 for p in paces])


def in_band(row: dict) -> bool | None:
    """Whether the real figure lies within the prediction's band (its lowest and highest over the seeds with the
    machine at the starting, fastest and slowest pace seen) widened by the target's bound; None when the run had
    no band."""
    try:
        ends = [float(row[k]) for k in ("predicted", "predicted_low", "predicted_high")]
    except (KeyError, TypeError, ValueError):
        return None
    if any(math.isnan(v) for v in ends):  # no band
        return None
    lo, hi, real = min(ends), max(ends), float(row["real"])
    kind, bound = TARGETS[row["metric"]]
    if kind == "abs":
        return lo - bound <= real <= hi + bound
    return lo * (1 - bound / 100) <= real <= hi * (1 + bound / 100)


def sensitive(row: dict, apart: list[str]) -> bool:
    """Whether the figures simulated at the paces apart differ by more than the target's whole band (2 x bound)."""
    if len(apart) < 2:
        return False
    lo, hi = float(row[apart[0]]), float(row[apart[-1]])
    kind, bound = TARGETS[row["metric"]]
    spread = abs(hi - lo) if kind == "abs" else abs(hi - lo) / abs(float(row["predicted"])) * 100 if float(
        row["predicted"]) else 0.0
    return spread > 2 * bound


def compare(fidelity_rows: list[dict], stem: Path, footer: str) -> None:
    """Each metric's error against its target, as STEM.csv and a markdown table in STEM.md."""
    rows = []
    paces = {(r["workload"], r["policy"]): {"pace_predicted": r["predicted"], "pace_real": r["real"]}
             for r in fidelity_rows if r["metric"] == "machine_pace" and str(r["real"]) not in ("", "nan")}
    for r in fidelity_rows:
        if r["metric"] not in TARGETS or str(r["predicted"]) in ("", "nan") or str(r["real"]) in ("", "nan"):
            continue
        e, ok = error(r["metric"], float(r["predicted"]), float(r["real"]))
        rows.append(r | {"error": e, "unit": "pts" if TARGETS[r["metric"]][0] == "abs" else "%",
                         "target": TARGETS[r["metric"]][1], "met": ok, "in_band": in_band(r)}
                    | paces.get((r["workload"], r["policy"]), {}))
    with stem.with_suffix(".csv").open("w") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    apart = [f"at_x{f:g}" for f in PACE_APART if f"at_x{f:g}" in rows[0]]
    banded = any(r["in_band"] is not None for r in rows)
    head = "".join(f" pace x{k[4:]} |" for k in apart) + (" band (lowest - highest) |" if banded else "")
    lines = [f"| cell | metric | predicted | twin | real | real vs predicted | target |{head}",
             "|---|---|---|---|---|---|---|" + "---|" * (len(apart) + banded)]
    for r in rows:
        band = (f" {float(r['predicted_low']):.4g} - {float(r['predicted_high']):.4g}: "
                f"{'in' if r['in_band'] else 'OUT'} |" if r["in_band"] is not None else " |") if banded else ""
        lines.append(f"| {r['workload']} {r['policy']} | {r['metric']} | {float(r['predicted']):.4g} | "
                     f"{float(r['twin']):.4g} | {float(r['real']):.4g} | {r['error']:+.1f} {r['unit']} | "
                     f"{'met' if r['met'] else 'MISSED'} (±{r['target']}) |" + "".join(
                         f" {float(r[k]):.4g}{' *' if sensitive(r, apart) else ''} |" for k in apart) + band)
    met = sum(r["met"] for r in rows)
    lines.append(f"\n{met} of {len(rows)} within target; {footer}")
    lines += [f"\n{line}" for line in by_pace(rows)]
    if banded:
        lines.append(f"\n{sum(bool(r['in_band']) for r in rows)} of {len(rows)} within the prediction's band "
                     "(its lowest and highest over the seeds, the simulated machine at the pace the cell started from "
                     "and at the fastest and slowest 10 s of pace seen before it) widened by the target")
    if apart:
        n = sum(sensitive(r, apart) for r in rows)
        lines.append(f"\n*: {n} figures move by more than their whole target band ({len(rows)} in all) when the pace is "
                     f"{(1 - PACE_APART[0]) * 100:.0f}% slower instead of {(PACE_APART[1] - 1) * 100:.0f}% faster: "
                     "they can be predicted within target only with the pace known better than that")
    paces = [r for r in fidelity_rows if r["metric"] == "machine_pace" and str(r["real"]) not in ("", "nan")]
    if paces:
        lines.append("\nthe models' CPU pace over the profiles, predicted at -> the real cell's batches: " + ", ".join(
            f"{r['workload']} {r['policy']} {float(r['predicted']):.2f} -> {float(r['real']):.2f}" for r in paces))
    same = [r for r in fidelity_rows if r["metric"] == "same_config_pct" and str(r["real"]) not in ("", "nan")]
    if same:
        lines.append("\nof the prediction's decisions (every seed's), the share whose config the real loop also chose "
                     "then: " + ", ".join(f"{r['workload']} {r['policy']} {float(r['real']):.0f}%" for r in same))
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
