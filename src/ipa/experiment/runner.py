"""Run (workload x policy) cells, each written atomically into its own folder; finished cells are kept."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ipa._io import atomic_write_text, write_csv, write_json
from ipa.adapt import LoopSettings, adapt
from ipa.experiment.config import ExperimentConfig, resolve
from ipa.experiment.metrics import summarize
from ipa.optimize.policies import make_problem
from ipa.optimize.problem import Problem
from ipa.predict import Predictor, history_s, make_predictor
from ipa.profiles.table import ProfileTable, load_profiles
from ipa.runtime.sim import Simulator
from ipa.spec import PipelineSpec, load_pipeline
from ipa.workload import Workload, load_workload

SUMMARY_COLUMNS = [
    "workload", "policy", "pas", "cost_cores", "energy_j", "energy_method", "sla_violation_pct", "dropped_pct",
    "p99_latency_s", "decisions", "solve_ms_mean", "avg_power_w", "energy_per_request_j", "objective",
    "sized_for_true_peak_pct", "reconfigurations", "throughput_rps", "arrivals", "completed", "in_flight", "runtime",
]


@dataclass
class Setup:
    """What every cell of one experiment shares, loaded and validated once."""

    cfg: ExperimentConfig
    spec: PipelineSpec
    profiles: ProfileTable

    @classmethod
    def load(cls, cfg: ExperimentConfig) -> Setup:
        spec = load_pipeline(resolve(cfg.pipeline))
        return cls(cfg, spec, load_profiles(resolve(cfg.profiles), spec))

    def problem(self, policy: str, weights: dict[str, float] | None = None) -> Problem:
        """The policy's problem; `weights` overrides some of the configured weights (the frontier's sweep)."""
        c = self.cfg
        base = "ipa" if policy == "oracle" else policy
        update = dict(weights or {})
        if base == "ipa-energy":
            update.setdefault("delta", c.energy_delta)
        weights = c.weights.model_copy(update=update)
        return make_problem(base, self.spec, self.profiles, weights, scaling_cap=c.scaling_cap,
                            batching_cap=c.batching_cap, replicas=c.rim_replicas if base == "rim-high" else None,
                            max_cores=c.max_cores)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def true_peak(rps: np.ndarray, interval_s: float) -> Callable[[float], float]:
    def peak(t: float) -> float:
        window = rps[int(t) : int(t + interval_s)]
        return float(window.max()) if len(window) else 0.0

    return peak


def control(c: ExperimentConfig, workload: Workload, policy: str) -> tuple[Predictor | None, LoopSettings, float]:
    """What a cell's control loop runs with, simulated or real: predictor, loop settings, initial rate."""
    initial = float(workload.rps[0]) if workload.seconds else 0.0
    predictor = None if policy == "oracle" else make_predictor(c.predictor, c.load_scale, initial)
    return predictor, LoopSettings(c.interval_s, history_s(predictor, c.history_s), c.solver), initial


def run_cell(setup: Setup, workload: Workload, policy: str, weights: dict[str, float] | None = None) -> dict[str, Any]:
    """Simulate one policy on one workload; returns the series, decisions and summary."""
    c = setup.cfg
    problem = setup.problem(policy, weights)
    peak = true_peak(workload.rps, c.interval_s)
    sim = Simulator(setup.spec, setup.profiles, problem.idle_power_w_per_core, workload.rps, c.sim, c.seed)
    predictor, loop, initial = control(c, workload, policy)
    decisions = adapt(sim, problem, predictor, workload.seconds, loop, policy,
                      oracle=peak if policy == "oracle" else None, initial_rate=initial)
    score_decisions(setup, decisions, peak)
    result = sim.result()
    summary = {"workload": workload.name, "policy": policy, "runtime": "sim"}
    summary |= summarize(result, decisions, setup.profiles.energy_label)
    return {"series": result.series, "decisions": decisions, "summary": summary}


def score_decisions(setup: Setup, decisions: list[dict[str, Any]], peak: Callable[[float], float]) -> None:
    """Each decision's config scored at its interval's true peak with IPA's objective, whatever the policy."""
    scorer = setup.problem("ipa")
    for d in decisions:
        if "config" in d:
            real = peak(d["t"])
            a = scorer.assess_config(_config(d["config"]), real)
            d |= {"true_peak_rps": real, "realized_objective": a.objective, "realized_feasible": a.feasible}


def _config(d: dict) -> dict:
    from ipa.spec import StageConfig

    return {s: StageConfig(**c) for s, c in d.items()}


def write_cell(cell_dir: Path, cell: dict[str, Any]) -> None:
    """Series and decisions first, summary.json last: its presence marks the cell finished."""
    series = cell["series"]
    n = len(series["arrivals"])
    cols = ["arrivals", "completions", "drops", "violations", "pas", "p50_latency_s", "p99_latency_s",
            "core_seconds", "energy_idle_j", "energy_dynamic_j", "energy_j"]
    write_csv(cell_dir / "timeseries.csv", ({"second": i} | {k: series[k][i] for k in cols} for i in range(n)),
              ["second", *cols])
    rows = [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in d.items()} for d in cell["decisions"]]
    write_csv(cell_dir / "decisions.csv", rows)
    write_json(cell_dir / "summary.json", cell["summary"])


def shape(w: Workload, duration_s: int | None, scale: float) -> Workload:
    """The first `duration_s` seconds, rates times `scale` (a 2-core machine cannot serve the trace's peaks)."""
    if duration_s is None and scale == 1.0:
        return w
    rps = w.rps[:duration_s] * scale
    return Workload(w.name, rps, f"{w.source}, first {len(rps)} s, x{scale:g}")


def run_experiment(cfg: ExperimentConfig, out: Path, progress: Callable[[str, dict | None], None] = lambda m, s: None
                   ) -> list[dict[str, Any]]:
    """All cells; a cell whose summary.json exists (an earlier, interrupted run) is not run again."""
    setup = Setup.load(cfg)
    workloads = [shape(load_workload(w, cfg.trace), cfg.duration_s, cfg.load_scale) for w in cfg.workloads]
    out.mkdir(parents=True, exist_ok=True)
    cells = [(w, p, out / "cells" / f"{slug(w.name)}__{p}") for w in workloads for p in cfg.policies]
    todo = [c for c in cells if not (c[2] / "summary.json").is_file()]
    summaries = []
    with _serving(cfg, setup.spec, bool(todo)) as serve_cell:
        if serve_cell:
            import ray

            from ipa.runtime.ray_runtime import for_profiles

            update = {"ray": for_profiles(cfg.ray, setup.profiles.meta)}
            if cfg.max_cores is None:  # the optimizer plans within the cluster it serves on
                update["max_cores"] = int(ray.cluster_resources().get("CPU", 1))
            setup = Setup(cfg.model_copy(update=update), setup.spec, setup.profiles)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(setup.cfg.model_dump(), sort_keys=False))
        for w, policy, cell_dir in cells:
            done = cell_dir / "summary.json"
            if done.is_file():
                summary = json.loads(done.read_text())
                progress(f"{w.name} / {policy}: kept from the earlier run", summary)
            else:
                summary = serve_cell(setup, w, policy, cell_dir, out) if serve_cell else None
                if summary is None and serve_cell:
                    progress(f"{w.name} / {policy}: skipped (see the warning above)", None)
                    continue
                if summary is None:
                    cell = run_cell(setup, w, policy)
                    write_cell(cell_dir, cell)
                    summary = cell["summary"]
                progress(f"{w.name} / {policy}", summary)
            summaries.append(summary)
            write_csv(out / "summary.csv", summaries, SUMMARY_COLUMNS)
    return summaries


@contextmanager
def _serving(cfg: ExperimentConfig, spec: PipelineSpec, needed: bool):
    """For --runtime ray: one Ray cluster for every cell, shut down however the run ends (Ctrl-C too)."""
    if cfg.runtime != "ray" or not needed:
        yield None
        return
    from ipa.experiment.real import serve_cell
    from ipa.runtime.ray_runtime import connect, shutdown

    started = connect(cfg.ray, spec)
    try:
        yield serve_cell
    finally:
        shutdown(started)


def load_cell(out: Path, workload: str, policy: str) -> tuple[dict[str, np.ndarray], list[dict]]:
    import csv

    cell_dir = out / "cells" / f"{slug(workload)}__{policy}"
    with (cell_dir / "timeseries.csv").open() as f:
        rows = list(csv.DictReader(f))
    series = {k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows]) for k in rows[0]} if rows else {}
    with (cell_dir / "decisions.csv").open() as f:
        decisions = list(csv.DictReader(f))
    return series, decisions
