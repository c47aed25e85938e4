"""Fidelity: a real cell beside the simulator's prediction of it and its simulated twin, metric by metric.

The prediction is made before the real cell runs, by the simulator's own control loop on the profiles the
run starts from and the machine's CPUs, the median over several seeds with their range as its band
(`ipa.experiment.prediction`): nothing the run will measure goes into it, so it is what a user learns from
`ipa experiment --max-cores N` before serving.

The twin is a component test of the queueing and admission code, not a prediction: it is fitted to the
run it judges. It serves the same workload (same seed, so the same arrivals) with the configs the real run
chose, each from the time it was chosen, so the table measures the simulator, not two control loops that
drifted apart (a plan one interval later on one side moves every figure after it). It runs on the
machine as the real run measured it: the profiles corrected by every batch the run timed (calibration
over the whole run, so the batch times hold the contention of that load), the reconfiguration delays it
timed, its drop limit and batch timeout, the same admission rule, and serving's own latency per answer
as the run measured it (each answer's time neither in a model nor queued for one: HTTP, decode, hops), and each
replica's own overhead per batch as the run measured it.
Each simulated batch takes its row's p50 times the pace the run's batches had at that moment
(`ipa.machine.replay.batch_paces`), so the machine's slow spells fall where they fell.
What still differs is what the simulator does not model, which is what the table is for.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ipa._io import write_csv
from ipa.experiment.cells import Setup
from ipa.experiment.prediction import Prediction
from ipa.runtime.loadgen import RequestRecord
from ipa.runtime.ray.overhead import batch_overheads
from ipa.runtime.sim import SimSettings

METRICS = ["throughput_rps", "completed", "goodput_rps", "p99_latency_s", "sla_violation_pct", "dropped_pct",
           "rejected_pct", "energy_j", "avg_power_w", "cost_cores", "pas"]
COLUMNS = ["workload", "policy", "metric", "predicted", "predicted_low", "predicted_high", "twin", "real",
           "real_vs_predicted_pct", "real_vs_twin_pct", "note"]
OLD_NAMES = {"sim": "twin", "real_vs_sim_pct": "real_vs_twin_pct"}  # fidelity.csv before the prediction column


def twin(setup: Setup, real: dict[str, Any]) -> Setup:
    """The setup that simulates the machine the real cell ran on. Each replica keeps its cores (no `sim.cpus`):
    the batch times the run measured already hold the contention of its load, and processor sharing on
    top, even with that contention taken out first, predicted less of it than served batches showed."""
    sim = SimSettings(drop_limit_s=real["drop_limit_s"], batch_timeout_s=real["batch_wait_s"],
                      reconfig_s=real["delays"] or None, serving_latency_s=setup.serving_latency_s,
                      serving_latency_spread_s=serving_latency(real["records"]))
    cfg = setup.cfg.model_copy(update={"sim": sim})
    overheads = batch_overheads(real["batches"])  # the replicas' own, as this run measured them
    serving = replace(setup.serving, batch_overhead_s=overheads) if setup.serving and overheads else setup.serving
    return replace(setup, cfg=cfg, machine=real["learned"], serving=serving, carbon=None)


def serving_latency(records: list[RequestRecord], at_least: int = 20) -> tuple[float, float] | None:
    """(p50, p99) of what serving itself took of each answer (neither in a model nor queued for one), or None
    with fewer than `at_least` answers that say."""
    overheads = [r.overhead_s for r in records if r.ok and r.overhead_s is not None]
    if len(overheads) < at_least:
        return None
    p50, p99 = np.percentile(np.maximum(overheads, 0.0), [50, 99])
    return float(p50), float(p99)


def compare(workload: str, policy: str, predicted: Prediction, twin: dict[str, Any], real: dict[str, Any],
            pace: tuple[float, float | None] | None = None, same_config: float | None = None) -> list[dict[str, Any]]:
    """Each metric's predicted (the median over the prediction's seeds), its band (lowest and highest over the
    seeds at the fastest, starting and slowest pace), twin and real figure. `pace`: the models' CPU against their
    profiled rows as the prediction ran them and as the real cell's batches burned it (a machine's speed moves
    from cell to cell; a figure that moved with it says so). `same_config`: `prediction.same_config_pct`."""
    nan = float("nan")
    p_low, p_high = predicted.paces or (nan, nan)
    rows = []
    if pace is not None:
        rows.append({"workload": workload, "policy": policy, "metric": "machine_pace", "predicted": pace[0],
                     "predicted_low": p_low, "predicted_high": p_high,
                     "twin": nan, "real": pace[1], "real_vs_predicted_pct": _relative(pace[1], pace[0]),
                     "real_vs_twin_pct": nan,
                     "note": "the models' CPU per batch over their profiled rows' (median): predicted, as "
                             "ipa profile --serving measured it or the last cells were served at (low, high: the "
                             "fastest and slowest of it over 10 s seen so far); real, this cell's batches"})
    if same_config is not None:
        rows.append({"workload": workload, "policy": policy, "metric": "same_config_pct", "predicted": nan,
                     "predicted_low": nan, "predicted_high": nan, "twin": 100.0, "real": same_config,
                     "real_vs_predicted_pct": nan, "real_vs_twin_pct": nan,
                     "note": "of the prediction's decisions (every seed's), the share whose config the real loop "
                             "chose at the same time; below 100 the loops chose differently, and PAS, latency and "
                             "energy follow the choice"})
    for m in METRICS:
        p, t, r = predicted.summary.get(m), twin.get(m), real.get(m)
        note = (f"predicted, twin: profiles + serving's CPU ({predicted.summary['energy_method']}); real: the meter "
                f"({real['energy_method']})" if m in ("energy_j", "avg_power_w") else "")
        rows.append({"workload": workload, "policy": policy, "metric": m, "predicted": p,
                     "predicted_low": predicted.low.get(m, nan), "predicted_high": predicted.high.get(m, nan),
                     "twin": t, "real": r, "real_vs_predicted_pct": _relative(r, p), "real_vs_twin_pct": _relative(r, t),
                     "note": note})
    return rows


def _relative(real: Any, sim: Any) -> float:
    numbers = isinstance(sim, float | int) and isinstance(real, float | int)
    return (real - sim) / sim * 100 if numbers and sim else float("nan")


def merge(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace this cell's rows in fidelity.csv, keep the others (a resumed run adds to it)."""
    keep = [r for r in read(path) if (r["workload"], r["policy"]) != (rows[0]["workload"], rows[0]["policy"])]
    write_csv(path, keep + rows, COLUMNS)


def read(path: Path) -> list[dict[str, Any]]:
    """fidelity.csv's rows under today's column names (none when there is no file)."""
    if not path.is_file():
        return []
    with path.open() as f:
        return [_renamed(r) for r in csv.DictReader(f)]


def _renamed(row: dict[str, str]) -> dict[str, Any]:
    """An older row under today's names; a band from before the seeds (one seed at the fastest and the slowest
    pace: either end may be the lower) as its lowest and highest."""
    out = {OLD_NAMES.get(k, k): v for k, v in row.items()}
    if "predicted_fast" in out:
        ends = [out.pop("predicted_fast"), out.pop("predicted_slow", "")]
        try:
            out["predicted_low"], out["predicted_high"] = sorted(float(e) for e in ends)
        except ValueError:
            out["predicted_low"] = out["predicted_high"] = ""
    return out
