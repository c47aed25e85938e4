"""What every cell runner shares, whatever runs it: the setup, the control loop's parts, the cell's files."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ipa._io import write_csv, write_json
from ipa.adapt import LoopSettings
from ipa.energy.carbon import CarbonSeries, read_carbon
from ipa.experiment.config import ExperimentConfig
from ipa.machine.speed import MachineSpeed
from ipa.machine.speed import from_meta as speed_from_meta
from ipa.optimize.policies import follow_grid, make_problem
from ipa.optimize.problem import Problem
from ipa.paths import resolve, resolve_profiles
from ipa.predict import Predictor, history_s, make_predictor
from ipa.profiles.calibration import Calibrator
from ipa.profiles.serving import ServingCost
from ipa.profiles.serving import from_meta as serving_from_meta
from ipa.profiles.table import ProfileTable, load_profiles
from ipa.spec import PipelineSpec, StageConfig, load_pipeline
from ipa.workload import Workload

SUMMARY_COLUMNS = [
    "workload", "policy", "pas", "cost_cores", "energy_j", "co2_g", "energy_method", "sla_violation_pct", "dropped_pct",
    "rejected_pct", "p99_latency_s", "goodput_rps", "decisions", "solve_ms_mean", "avg_power_w",
    "energy_per_request_j", "objective", "sized_for_true_peak_pct", "reconfigurations", "throughput_rps", "arrivals",
    "completed", "in_flight", "runtime", "unservable_decisions",
]


@dataclass
class Setup:
    """What every cell of one experiment shares, loaded and validated once.

    `profiles` are what plans are made with; `machine` what the simulator runs (the same table unless
    `sim.true_profiles` names another); `serving` what serving costs beside the models and `speed` the machine's
    speed, both from the profiles' meta (None when never measured or `serving: false`); `profiled` the profiles as
    measured, before any machine's speed (what a speed measured later applies to).
    """

    cfg: ExperimentConfig
    spec: PipelineSpec
    profiles: ProfileTable
    machine: ProfileTable
    serving: ServingCost | None
    carbon: CarbonSeries | None = None
    profiled: ProfileTable | None = None
    speed: MachineSpeed | None = None

    @classmethod
    def load(cls, cfg: ExperimentConfig) -> Setup:
        spec = load_pipeline(resolve(cfg.pipeline))
        profiled = load_profiles(resolve_profiles(cfg.profiles, cfg.pipeline), spec)
        serving = serving_from_meta(profiled.meta, profiled.source) if cfg.serving else None
        speed = speed_from_meta(profiled.meta, profiled.source) if cfg.serving else None
        machine = load_profiles(resolve(cfg.sim.true_profiles), spec) if cfg.sim.true_profiles else profiled
        carbon = read_carbon(cfg.carbon) if cfg.carbon else None
        setup = cls(cfg, spec, profiled, machine, serving, carbon, profiled)
        return setup.at_speed(speed) if speed else setup

    def updated(self, **fields) -> Setup:
        """The same setup with some config fields changed (what a runtime learns about its cluster)."""
        return replace(self, cfg=self.cfg.model_copy(update=fields))

    def at_speed(self, speed: MachineSpeed) -> Setup:
        """The same setup on a machine at `speed` (the speed a real cell was served at, say): plans run the
        profiles at it, and so does the simulated machine unless `sim.true_profiles` names its own."""
        profiled = self.profiled or self.profiles
        profiles = speed.table(profiled)
        machine = self.machine if self.cfg.sim.true_profiles else profiles
        return replace(self, profiles=profiles, machine=machine, speed=speed, profiled=profiled)

    def paced(self) -> list[tuple[float, Setup]]:
        """(pace, this setup with the simulated machine at that pace) for the fastest and the slowest pace serving
        was seen at (`MachineSpeed.pace_range`), the plans as they are: the prediction's band; empty when no range
        is known."""
        if self.speed is None or not self.speed.pace_range or self.cfg.sim.true_profiles:
            return []
        return [(p, replace(self, machine=self.at_speed(self.speed.at(p)).machine)) for p in self.speed.pace_range]

    def problem(self, policy: str, weights: dict[str, float] | None = None, client: bool = False) -> Problem:
        """The policy's problem; `weights` overrides some configured weights (the frontier's sweep);
        `client`: the load generator shares the serving machine."""
        c = self.cfg
        base = {"oracle": "ipa", "ipa-q": "ipa", "ipa-carbon": "ipa-energy"}.get(policy, policy)
        update = dict(weights or {})
        if base == "ipa-energy":
            update.setdefault("delta", c.energy_delta)
        w = c.weights.model_copy(update=update)
        serving = self.serving.with_client(client) if self.serving else None
        return make_problem(base, self.spec, self.profiles, w, scaling_cap=c.scaling_cap,
                            batching_cap=c.batching_cap, replicas=c.rim_replicas if base == "rim-high" else None,
                            max_cores=c.max_cores, serving=serving, cpus=c.cpus)

    def reweigh(self, policy: str) -> Callable[[Problem, float], Problem] | None:
        """ipa-carbon's weight per interval: ipa-energy's delta times the intensity the interval will see over the
        series' mean (the series is known ahead, as Clover assumes), so a mean hour weighs as ipa-energy does."""
        if policy != "ipa-carbon" or self.carbon is None:
            return None
        return follow_grid(self.carbon, self.cfg.interval_s, self.cfg.carbon_speedup)

    def calibrator(self) -> Calibrator:
        return Calibrator(self.profiles, self.cfg.calibration)

    @property
    def serving_latency_s(self) -> float:
        return self.serving.latency_s if self.serving else 0.0


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def cell_dir(out: Path, workload: str, policy: str) -> Path:
    return out / "cells" / f"{slug(workload)}__{policy}"


def true_peak(rps: np.ndarray, interval_s: float) -> Callable[[float], float]:
    def peak(t: float) -> float:
        window = rps[int(t) : int(t + interval_s)]
        return float(window.max()) if len(window) else 0.0

    return peak


def control(c: ExperimentConfig, workload: Workload, policy: str) -> tuple[Predictor | None, LoopSettings, float]:
    """What a cell's control loop runs with, simulated or real: predictor, loop settings, initial rate."""
    initial = float(workload.rps[0]) if workload.seconds else 0.0
    predictor = None if policy == "oracle" else make_predictor(c.predictor, c.load_scale, initial)
    solver = "q-learning" if policy == "ipa-q" else c.solver
    return predictor, LoopSettings(c.interval_s, history_s(predictor, c.history_s), solver,
                                   c.predictor_margin_pct), initial


def score_decisions(setup: Setup, decisions: list[dict[str, Any]], peak: Callable[[float], float]) -> None:
    """Each decision's config scored at its interval's true peak with IPA's objective, whatever the policy."""
    scorer = setup.problem("ipa")
    for d in decisions:
        if "config" in d:
            real = peak(d["t"])
            a = scorer.assess_config({s: StageConfig(**c) for s, c in d["config"].items()}, real)
            d |= {"true_peak_rps": real, "realized_objective": a.objective, "realized_feasible": a.feasible}


def shape(w: Workload, duration_s: int | None, scale: float) -> Workload:
    """The first `duration_s` seconds, rates times `scale` (a 2-core machine cannot serve the trace's peaks)."""
    from ipa.workload.patterns import check_rates

    if duration_s is None and scale == 1.0:
        return check_rates(w)
    rps = w.rps[:duration_s] * scale
    return check_rates(Workload(w.name, rps, f"{w.source}, first {len(rps)} s, x{scale:g}"),
                       f" with --load-scale {scale:g}" if scale != 1.0 else "")


CARBON_COLUMNS = ["carbon_g_per_kwh", "co2_g"]  # with a carbon series only
SERIES_COLUMNS = ["arrivals", "completions", "drops", "rejected", "violations", "pas", "p50_latency_s",
                  "p99_latency_s", "core_seconds", "serving_cpu_s", "energy_idle_j", "energy_dynamic_j",
                  "energy_serving_j", "energy_j"]


def cell_settings(setup: Setup, w: Workload, policy: str) -> dict[str, Any]:
    """Everything that shapes one cell's results, as the user configured it (what a resumed run must match).

    The pipeline, the profiles and the workload count by content (a hash), not by path: the same
    trace read from another place is the same workload. Settings of the runtime a cell does not use
    (Ray's and the prediction's for the simulator) do not count, nor does the HTTP port.
    """
    skip = {"workloads", "policies", "trace", "pipeline", "profiles", "carbon"} | (
        {"ray", "prediction_seeds"} if setup.cfg.runtime == "sim" else set())
    config = setup.cfg.model_dump(mode="json", exclude=skip)
    if "ray" in config:
        config["ray"].pop("port", None)
    profiles = json.dumps([[getattr(r, f) for f in r.__dataclass_fields__] for r in setup.profiles.rows]
                          + [setup.profiles.meta], default=str)
    machine = json.dumps([[getattr(r, f) for f in r.__dataclass_fields__] for r in setup.machine.rows], default=str)
    return {"policy": policy, "workload": w.name, "workload_sha": _sha(w.rps.astype(float).tobytes()),
            "pipeline_sha": _sha(json.dumps(setup.spec.model_dump(), sort_keys=True).encode()),
            "profiles_sha": _sha(profiles.encode()), "machine_sha": _sha(machine.encode()),
            "carbon_sha": _sha(setup.carbon.g_per_kwh.tobytes() + setup.carbon.hours.tobytes()) if setup.carbon else None,
            "config": config}


def differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between the settings a cell was computed with and the ones asked for now, in words."""
    if old is None:
        return ["the earlier run did not record its settings"]
    out = []
    for key in ("workload_sha", "pipeline_sha", "profiles_sha", "machine_sha", "carbon_sha"):
        if old.get(key) != new.get(key):
            out.append(f"{key.removesuffix('_sha')} content")
    out += _config_diff(old.get("config", {}), new["config"], "")
    return out


def _config_diff(old: dict, new: dict, prefix: str) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


def read_settings(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "cell.json").read_text())
    except (OSError, ValueError):
        return None


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:16]


def write_cell(folder: Path, cell: dict[str, Any]) -> None:
    """Series and decisions first, summary.json last: its presence marks the cell finished."""
    series = cell["series"]
    n = len(series["arrivals"])
    columns = SERIES_COLUMNS + [k for k in CARBON_COLUMNS if k in series]
    write_csv(folder / "timeseries.csv", ({"second": i} | {k: series[k][i] for k in columns} for i in range(n)),
              ["second", *columns])
    write_decisions(folder / "decisions.csv", cell["decisions"])
    write_json(folder / "summary.json", cell["summary"])


def write_decisions(path: Path, decisions: list[dict[str, Any]]) -> None:
    """One row a decision; what is a mapping (config, calibration, expected) as JSON."""
    write_csv(path, [{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in d.items()} for d in decisions])


def load_cell(out: Path, workload: str, policy: str) -> tuple[dict[str, np.ndarray], list[dict]]:
    folder = cell_dir(out, workload, policy)
    with (folder / "timeseries.csv").open() as f:
        rows = list(csv.DictReader(f))
    series = {k: np.array([float(r[k]) if r[k] != "" else np.nan for r in rows]) for k in rows[0]} if rows else {}
    with (folder / "decisions.csv").open() as f:
        decisions = list(csv.DictReader(f))
    return series, decisions
