"""Fidelity: a real cell beside its simulated twin, metric by metric.

The twin serves the same workload (same seed, so the same arrivals) with the configs the real run chose,
each from the time it was chosen, so the table measures the simulator, not two control loops that
drifted apart (a plan one interval later on one side moves every figure after it). It runs on the
machine as the real run measured it: the profiles corrected by every batch the run timed (calibration
over the whole run, so the batch times hold the contention of that load), the reconfiguration delays it
timed, its drop limit and batch timeout, and the same admission rule. What still differs is what the
simulator does not model, which is what the table is for.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from ipa._io import write_csv
from ipa.experiment.cells import Setup
from ipa.runtime.sim import SimSettings

METRICS = ["throughput_rps", "completed", "goodput_rps", "p99_latency_s", "sla_violation_pct", "dropped_pct",
           "rejected_pct", "energy_j", "avg_power_w", "cost_cores", "pas"]
COLUMNS = ["workload", "policy", "metric", "sim", "real", "real_vs_sim_pct", "note"]


def twin(setup: Setup, real: dict[str, Any]) -> Setup:
    """The setup that simulates the machine the real cell ran on. Each replica keeps its cores (no `sim.cpus`):
    the batch times the run measured already hold the contention of its load, and processor sharing on
    top, even with that contention taken out first, predicted less of it than this VM showed."""
    sim = SimSettings(drop_limit_s=real["drop_limit_s"], batch_timeout_s=real["batch_wait_s"],
                      reconfig_s=real["delays"] or None, serving_latency_s=setup.serving_latency_s)
    cfg = setup.cfg.model_copy(update={"sim": sim})
    return Setup(cfg, setup.spec, setup.profiles, real["learned"], setup.serving)


def compare(workload: str, policy: str, sim: dict[str, Any], real: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m in METRICS:
        a, b = sim.get(m), real.get(m)
        numbers = isinstance(a, float | int) and isinstance(b, float | int)
        rel = (b - a) / a * 100 if numbers and a else float("nan")
        note = (f"sim: profiles ({sim['energy_method']}); real: {real['energy_method']}"
                if m in ("energy_j", "avg_power_w") else "")
        rows.append({"workload": workload, "policy": policy, "metric": m, "sim": a, "real": b,
                     "real_vs_sim_pct": rel, "note": note})
    return rows


def merge(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace this cell's rows in fidelity.csv, keep the others (a resumed run adds to it)."""
    keep = []
    if path.is_file():
        with path.open() as f:
            keep = [r for r in csv.DictReader(f) if (r["workload"], r["policy"]) != (rows[0]["workload"], rows[0]["policy"])]
    write_csv(path, keep + rows, COLUMNS)
