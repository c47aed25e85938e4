"""Pipeline spec (stages, variants, published accuracy, SLA) and the configs chosen for it."""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ipa.errors import ConfigError

AccuracyMethod = Literal["multiply", "sum", "average"]
M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config model: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class VariantSpec(Strict):
    name: str = Field(min_length=1)
    accuracy: float = Field(gt=0, le=100, description="published accuracy in percent")
    source: str = ""
    weights: str | None = Field(default=None, description="local checkpoint; None builds weights=None")

    @property
    def accuracy_fraction(self) -> float:
        return self.accuracy / 100.0


class StageSpec(Strict):
    name: str = Field(min_length=1)
    variants: list[VariantSpec] = Field(min_length=1)

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, variants: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique, repeated: {', '.join(dupes)}")
        return variants

    def variant(self, name: str) -> VariantSpec:
        for v in self.variants:
            if v.name == name:
                return v
        allowed = ", ".join(v.name for v in self.variants)
        raise ConfigError(f"stage '{self.name}' has no variant '{name}' (allowed: {allowed})")

    @property
    def least_accurate(self) -> VariantSpec:
        return min(self.variants, key=lambda v: v.accuracy)


class PipelineSpec(Strict):
    name: str = Field(min_length=1)
    sla_s: float = Field(gt=0, description="end-to-end latency SLA in seconds")
    accuracy_method: AccuracyMethod = "multiply"
    stages: list[StageSpec] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: list[StageSpec]) -> list[StageSpec]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got: {', '.join(names)}")
        return stages

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(
            f"pipeline '{self.name}' has no stage '{name}' (allowed: {', '.join(self.stage_names)})"
        )

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


def aggregate_accuracy(method: AccuracyMethod, fractions: typing.Sequence[float]) -> float:
    """Pipeline Accuracy Score from per-stage accuracies (fractions). Monotone in each one."""
    if method == "multiply":
        out = 1.0
        for a in fractions:
            out *= a
        return out
    total = float(sum(fractions))
    return total if method == "sum" else total / len(fractions)


@dataclass(frozen=True)
class StageConfig:
    variant: str
    batch: int
    replicas: int
    cores: int

    def as_dict(self) -> dict[str, typing.Any]:
        return asdict(self)


PipelineConfig = dict[str, StageConfig]


def config_as_dict(config: PipelineConfig) -> dict[str, dict[str, typing.Any]]:
    return {stage: sc.as_dict() for stage, sc in config.items()}


def describe_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    """Turn pydantic's report into lines that name the file, the field and what is allowed."""
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] not in ("missing", "value_error") and not isinstance(e.get("input"), dict | list):
            msg += f", got {e.get('input')!r}"
        lines.append(f"  field '{loc}': {msg}")
        if e["type"] in ("extra_forbidden", "missing"):
            lines.append(f"    allowed fields here: {_allowed_fields(model, e['loc'])}")
    return "\n".join(lines)


def _allowed_fields(top: type[BaseModel], loc: tuple) -> str:
    """Walk the error's location down the model's fields to the model that holds the bad field."""
    model: type[BaseModel] | None = top
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        model = _inner_model(field.annotation) if field else None
    return ", ".join(model.model_fields) if model else "see the documentation"


def _inner_model(annotation: typing.Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found:
            return found
    return None


def load_model(model: type[M], data: typing.Any, source: str) -> M:
    """Validate `data` as `model`; raise ConfigError naming `source` and the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source, model)) from None


def read_yaml(path: str | Path) -> typing.Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: file not found")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None


def load_pipeline(path: str | Path) -> PipelineSpec:
    return load_model(PipelineSpec, read_yaml(path), str(path))
