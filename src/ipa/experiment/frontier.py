"""The trade-off curve: ipa-energy swept along the energy weight (and cost weight), baselines as points. With a
carbon series, ipa-carbon is swept beside it and the curve is PAS vs grams of CO2."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ipa._io import write_csv
from ipa.experiment.cells import Setup, shape
from ipa.experiment.config import ExperimentConfig
from ipa.experiment.plots import frontier_plot
from ipa.experiment.sim_cell import run_sim_cell
from ipa.workload import load_workload

BASELINES = ("ipa", "fa2-low", "fa2-high", "rim-high")
COLUMNS = ["workload", "policy", "delta", "beta", "pas", "cost_cores", "energy_j", "co2_g", "energy_method",
           "sla_violation_pct", "dropped_pct", "p99_latency_s"]


def frontier(cfg: ExperimentConfig, workload: str, deltas: Sequence[float], betas: Sequence[float], out: Path,
             progress: Callable[[str], None] = lambda s: None) -> list[dict[str, Any]]:
    setup = Setup.load(cfg)
    w = shape(load_workload(workload, cfg.trace), cfg.duration_s, cfg.load_scale)
    points = []
    sweeps = ("ipa-energy", "ipa-carbon") if setup.carbon else ("ipa-energy",)
    for sweep in sweeps:
        for beta in betas:
            for delta in deltas:
                policy = sweep if delta > 0 else "ipa"
                s = run_sim_cell(setup, w, policy, {"delta": delta, "beta": beta})["summary"]
                points.append(s | {"policy": sweep, "delta": delta, "beta": beta})
                progress(f"{sweep} delta={delta:g} beta={beta:g}: PAS {s['pas']:.4f}, "
                         f"energy {s['energy_j'] / 1000:.1f} kJ{_co2(s)}")
    for policy in BASELINES:
        s = run_sim_cell(setup, w, policy)["summary"]
        points.append(s | {"delta": 0.0, "beta": cfg.weights.beta})
        progress(f"{policy}: PAS {s['pas']:.4f}, energy {s['energy_j'] / 1000:.1f} kJ{_co2(s)}")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "frontier.csv", points, COLUMNS)
    frontier_plot(points, out / "frontier.png", setup.profiles.energy_label, sweeps,
                  "co2_g" if setup.carbon else "energy_j")
    return points


def _co2(summary: dict[str, Any]) -> str:
    g = summary.get("co2_g")
    return f", {g:.1f} g CO2" if g is not None else ""
