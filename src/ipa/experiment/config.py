"""Experiment config: everything a run needs, saved into its result folder as it ran."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ipa.optimize.policies import DEFAULT_ENERGY_DELTA, POLICIES, RIM_DEFAULT_REPLICAS
from ipa.optimize.problem import Weights
from ipa.paths import default_profiles
from ipa.predict import PREDICTORS
from ipa.profiles.calibration import CalibrationSettings
from ipa.runtime.admission import AdmissionSettings
from ipa.runtime.ray.cluster import RaySettings
from ipa.runtime.sim import SimSettings
from ipa.spec import Strict, load_model, read_yaml

# ipa-q: IPA's problem, solved by Q-learning; ipa-carbon: ipa-energy weighted by the grid's intensity (needs carbon)
EXPERIMENT_POLICIES = (*POLICIES, "oracle", "ipa-q", "ipa-carbon")
DEFAULT_POLICIES = (*POLICIES, "oracle")
PAPER_WORKLOADS = ["bursty", "steady-low", "steady-high", "fluctuating"]
SUITE = ("video", "audio-qa", "audio-sent", "sum-qa", "nlp")  # IPA's five pipelines: configs/experiments/<name>.yaml


class ExperimentConfig(Strict):
    pipeline: str = "configs/pipelines/video.yaml"
    profiles: str = Field(default=None, validate_default=True,  # type: ignore[assignment]
                          description="default: the shipped profiles/<pipeline>-cpu-2core.csv")
    workloads: list[str] = Field(default_factory=lambda: list(PAPER_WORKLOADS), min_length=1)
    policies: list[str] = Field(default_factory=lambda: list(DEFAULT_POLICIES), min_length=1)
    predictor: str = "lstm"
    predictor_margin_pct: float = Field(default=0.0, ge=0, le=1000, description="IPA's predictor_margin: plan for "
                                        "the predicted load plus this many percent (20 for its audio pipelines)")
    runtime: Literal["sim", "ray"] = "sim"
    solver: str = "exact"
    seed: int = Field(default=0, ge=0)
    prediction_seeds: int = Field(default=5, ge=1, le=100, description="--runtime ray: each cell's prediction is "
                                  "the median over this many simulator seeds (ipa.experiment.prediction)")
    interval_s: float = Field(default=10.0, gt=0)
    history_s: int = Field(default=120, ge=10)
    weights: Weights = Weights()
    energy_delta: float = Field(default=DEFAULT_ENERGY_DELTA, gt=0, description="delta of ipa-energy")
    scaling_cap: int = Field(default=100, ge=1)
    batching_cap: int = Field(default=8, ge=1)
    rim_replicas: int = Field(default=RIM_DEFAULT_REPLICAS, ge=1)
    max_cores: int | None = Field(default=None, ge=1, description="core budget; --runtime ray: the cluster's CPUs")
    cpus: float | None = Field(default=None, gt=0, description="physical CPUs replicas and serving share "
                               "(default: the core budget; --runtime ray: this machine's for a local cluster)")
    serving: bool = Field(default=True, description="plan with the serving cost measured with the profiles")
    admission: AdmissionSettings = AdmissionSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    sim: SimSettings = SimSettings()
    ray: RaySettings = RaySettings()
    duration_s: int | None = Field(default=None, ge=1, description="serve only the first S seconds of each workload")
    load_scale: float = Field(default=1.0, gt=0, description="multiply every workload's rate (fit it to the machine)")
    trace: str | None = None
    carbon: str | None = Field(default=None, description="hourly grid carbon intensity, hour,gco2_per_kwh (CSV): "
                               "co2_g beside energy, and what ipa-carbon follows")
    carbon_speedup: float = Field(default=1.0, gt=0, le=1e6, description="hours of the carbon series per hour of "
                                  "workload (72: a 20-minute pattern sees a day)")

    @model_validator(mode="after")
    def _carbon_for_ipa_carbon(self) -> ExperimentConfig:
        if "ipa-carbon" in self.policies and not self.carbon:
            raise ValueError("policy ipa-carbon follows the grid's carbon intensity: give it a series with "
                             "--carbon FILE (hour,gco2_per_kwh; e.g. ../shared/data/carbon/ciso-sep.csv)")
        if self.carbon_speedup != 1.0 and not self.carbon:
            raise ValueError("carbon_speedup (--carbon-speedup) plays a carbon series faster: give the series with "
                             "--carbon FILE")
        return self

    @field_validator("profiles", mode="before")
    @classmethod
    def _profiles_of_the_pipeline(cls, v: str | None, info) -> str:
        return v if v is not None else default_profiles(info.data.get("pipeline") or "configs/pipelines/video.yaml")

    @field_validator("policies")
    @classmethod
    def _known_policies(cls, v: list[str]) -> list[str]:
        for p in v:
            _one_of(p, EXPERIMENT_POLICIES, "policy")
        return _once(v, "policy")

    @field_validator("workloads")
    @classmethod
    def _workloads_once(cls, v: list[str]) -> list[str]:
        return _once(v, "workload")

    @field_validator("solver")
    @classmethod
    def _known_solver(cls, v: str) -> str:
        from ipa.optimize.solvers import SOLVERS

        return _one_of(v, SOLVERS, "solver")

    @field_validator("predictor")
    @classmethod
    def _known_predictor(cls, v: str) -> str:
        return _one_of(v, PREDICTORS, "predictor")


def _once(values: list[str], what: str) -> list[str]:
    """Each at most once: a repeat would run the same cells twice and write their rows twice."""
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{what} given more than once: {', '.join(twice)}")
    return values


def _one_of(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r} (allowed: {', '.join(allowed)})")
    return value


# The command line's flag for each field it can set, so an error names what the user typed
FLAGS = {"workloads": "--workload", "policies": "--policy", "predictor": "--predictor", "solver": "--solver",
         "runtime": "--runtime", "profiles": "--profiles", "pipeline": "--pipeline", "seed": "--seed",
         "trace": "--trace", "duration_s": "--duration", "load_scale": "--load-scale", "max_cores": "--max-cores",
         "carbon": "--carbon", "carbon_speedup": "--carbon-speedup",
         "ray.address": "--address", "ray.port": "--port", "ray.cpus": "--ray-cpus", "ray.device": "--device"}


def load_experiment(path: str | Path | None, ray: dict | None = None, **overrides) -> ExperimentConfig:
    """The YAML file (if any) with command-line overrides; `ray` overrides single fields of its `ray` section."""
    data = read_yaml(path) if path else {}
    given = {k: v for k, v in overrides.items() if v not in (None, (), [])}
    data = (data or {}) | given
    given_ray = {k: v for k, v in (ray or {}).items() if v is not None}
    if given_ray:
        data["ray"] = dict(data.get("ray") or {}) | given_ray
    flags = {f: FLAGS[f] for f in [*given, *(f"ray.{k}" for k in given_ray)] if f in FLAGS}
    return load_model(ExperimentConfig, data, str(path or "options"), flags)
