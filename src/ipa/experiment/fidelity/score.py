"""Scoring a real run against its prediction: each figure's error against its target, whether the real figure lies
in the prediction's band, split by whether the cell's pace was predicted within 5%; several runs side by side; a
second serving of the same cells against the first.

The contract the simulator is judged by: the point prediction within these targets where the machine's speed holds
(the cell's pace predicted within `PACE_KNOWN`), and the real figure inside the prediction's band where it does
not (docs/fidelity.md has the figures measured on this project's VM and the commands).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ipa._io import atomic_write_text, write_csv
from ipa.errors import ConfigError

# metric -> (kind, bound): relative error in percent, or absolute difference in points
TARGETS = {"throughput_rps": ("rel", 10), "completed": ("rel", 10), "sla_violation_pct": ("abs", 5),
           "p99_latency_s": ("rel", 25), "energy_j": ("rel", 15), "pas": ("rel", 3)}
PACE_APART = (0.97, 1.03)  # at a cell's own pace: each cell simulated again this much slower and faster
PACE_KNOWN = 0.05  # a cell whose pace was predicted this close counts as one whose pace was known
KINDS = ("half", "one", "two", "step", "other")


def error(metric: str, predicted: float, real: float) -> tuple[float, bool]:
    """The real figure's error against the predicted one (percent, or points), and whether it is within target."""
    kind, bound = TARGETS[metric]
    if kind == "abs":
        e = real - predicted
    else:
        e = (real - predicted) / predicted * 100 if predicted else float("inf")
    return e, abs(e) <= bound


def in_band(row: dict) -> bool | None:
    """Whether the real figure lies within the prediction's band (its lowest and highest over the seeds with the
    machine at the starting, fastest and slowest pace seen) widened by the target's bound; None when the run had
    no band."""
    try:
        ends = [float(row[k]) for k in ("predicted", "predicted_low", "predicted_high")]
    except (KeyError, TypeError, ValueError):
        return None
    if any(math.isnan(v) for v in ends):
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
    predicted = float(row["predicted"])
    spread = abs(hi - lo) if kind == "abs" else abs(hi - lo) / abs(predicted) * 100 if predicted else 0.0
    return spread > 2 * bound


def by_pace(scored: list[dict]) -> list[str]:
    """How many scored figures met their target in the cells whose pace was predicted within PACE_KNOWN and in the
    others (no line for tables without the pace): which share of the misses is the machine's speed moving and which
    the model's."""
    paced = [(float(r["pace_real"]) / float(r["pace_predicted"]) - 1, r["met"] in (True, "True"))
             for r in scored if r.get("pace_predicted") and r.get("pace_real")]
    paced = [(e, met) for e, met in paced if math.isfinite(e)]
    if not paced:
        return []
    near = [met for e, met in paced if abs(e) < PACE_KNOWN]
    far = [met for e, met in paced if abs(e) >= PACE_KNOWN]

    def share(v: list[bool]) -> str:
        return f"{sum(v)}/{len(v)} ({100 * sum(v) / len(v):.0f}%)" if v else "none"

    return [f"figures within target where the cell's pace was predicted within {PACE_KNOWN:.0%}: {share(near)}; "
            f"where it was off by more: {share(far)}"]


def _known(value: Any) -> bool:
    return str(value) not in ("", "nan")


def score(fidelity_rows: list[dict]) -> list[dict]:
    """fidelity.csv's rows (or a re-prediction's) with each target metric's error, whether it met its target and
    lies in the band, and its cell's pace as predicted and as served."""
    rows = []
    paces = {(r["workload"], r["policy"]): {"pace_predicted": r["predicted"], "pace_real": r["real"]}
             for r in fidelity_rows if r["metric"] == "machine_pace" and _known(r["real"])}
    for r in fidelity_rows:
        if r["metric"] not in TARGETS or not _known(r["predicted"]) or not _known(r["real"]):
            continue
        e, ok = error(r["metric"], float(r["predicted"]), float(r["real"]))
        rows.append(r | {"error": e, "unit": "pts" if TARGETS[r["metric"]][0] == "abs" else "%",
                         "target": TARGETS[r["metric"]][1], "met": ok, "in_band": in_band(r)}
                    | paces.get((r["workload"], r["policy"]), {}))
    return rows


def report(fidelity_rows: list[dict], stem: Path, footer: str) -> str:
    """Score the rows into STEM.csv and a markdown table into STEM.md; returns the table."""
    rows = score(fidelity_rows)
    if not rows:
        raise ConfigError(f"{stem.parent}: no figure to score (no cell has both a prediction and a real figure)")
    write_csv(stem.with_suffix(".csv"), rows, list(dict.fromkeys(k for r in rows for k in r)))
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
    lines.append(f"\n{sum(r['met'] for r in rows)} of {len(rows)} within target; {footer}")
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
    paces = [r for r in fidelity_rows if r["metric"] == "machine_pace" and _known(r["real"])]
    if paces:
        lines.append("\nthe models' CPU pace over the profiles, predicted at -> the real cell's batches: " + ", ".join(
            f"{r['workload']} {r['policy']} {float(r['predicted']):.2f} -> {float(r['real']):.2f}" for r in paces))
    same = [r for r in fidelity_rows if r["metric"] == "same_config_pct" and _known(r["real"])]
    if same:
        lines.append("\nof the prediction's decisions (every seed's), the share whose config the real loop also chose "
                     "then: " + ", ".join(f"{r['workload']} {r['policy']} {float(r['real']):.0f}%" for r in same))
    text = "\n".join(lines)
    atomic_write_text(stem.with_suffix(".md"), text + "\n")
    return text


def repeat(first: list[dict], second: list[dict], stem: Path) -> tuple[int, str]:
    """Each figure of a second real run against the first's, with the targets a prediction has (STEM.csv, STEM.md):
    how well the machine reproduces its own figures, the floor under any prediction of them. Returns how many are
    within them, and the table."""
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
        raise ConfigError(f"{stem.parent}: the two runs share no cell to compare")
    write_csv(stem.with_suffix(".csv"), scored, list(dict.fromkeys(k for r in scored for k in r)))
    lines = ["| cell | metric | first run | second run | second vs first | target |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['workload']} {r['policy']} | {r['metric']} | {r['first']:.4g} | {r['second']:.4g} | "
              f"{r['error']:+.1f} {r['unit']} | {'met' if r['met'] else 'MISSED'} (±{r['target']}) |" for r in scored]
    met = sum(r["met"] for r in scored)
    lines.append(f"\n{met} of {len(scored)} figures of the second real run within the targets of the first's: the same "
                 "cells, profiles, config and loads served twice on this machine")
    if paces:
        lines.append("\nthe models' CPU pace over the profiles in each cell, first run -> second: " + ", ".join(paces))
    text = "\n".join(lines)
    atomic_write_text(stem.with_suffix(".md"), text + "\n")
    return met, text


def tally(paths: list[Path]) -> str:
    """Several runs' scored tables (`report`'s or `repeat`'s CSV) side by side, as a markdown table: per cell kind,
    policy and metric, how many runs met the target, each run's signed error, and whether every run erred the same
    way (a lean of the model rather than the machine's noise)."""
    errors: dict[tuple[str, str, str], list[tuple[float, bool]]] = {}
    totals, scored = [], []
    for path in paths:
        if not path.is_file():
            raise ConfigError(f"{path}: not found (ipa fidelity RUN writes RUN/prediction.csv, RUN/at-cell-pace.csv, "
                              "...)")
        with path.open() as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"workload", "policy", "metric", "error", "met"} <= set(rows[0]):
            raise ConfigError(f"{path}: not a table of scored figures (no workload, policy, metric, error and met "
                              "columns)")
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


def one_way(errors: list[float], bound: float) -> str:
    """'all +' or 'all -' when three or more runs erred and every error past a quarter of the target's bound lies
    on one side, with at least half the runs past it: a lean the machine's noise would not give every run."""
    past = [e for e in errors if abs(e) >= bound / 4]
    if len(errors) < 3 or 2 * len(past) < len(errors):
        return ""
    return "all +" if min(past) > 0 else "all -" if max(past) < 0 else ""


def cell_kinds(workloads: list[str]) -> dict[str, str]:
    """Each workload's kind in a run: three static loads by rate, lowest first, as half, one and two times capacity
    (how bench/prediction.py sizes them), a step as the step; anything else as other."""
    static = sorted({w for w in workloads if w.startswith("static:")}, key=lambda w: float(w.split(":")[1]))
    kinds = dict(zip(static, KINDS[:3])) if len(static) == 3 else {}
    return {w: kinds.get(w, "step" if w.startswith("step:") else "other") for w in workloads}
