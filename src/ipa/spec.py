"""Pipeline spec (stages, variants, published accuracy, SLA) and the configs chosen for it."""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ipa.errors import ConfigError

AccuracyMethod = Literal["multiply", "sum", "average"]
AccuracyNormalization = Literal["none", "rank"]
StageKind = Literal["detection", "classification", "segmentation", "speech-recognition", "question-answering",
                    "text-classification", "translation", "summarization"]
SampleSet = Literal["photos", "speech", "english", "french"]
M = TypeVar("M", bound=BaseModel)

# What each kind of stage takes and gives on: a stage takes what the one before it gives. Detection gives
# the photo on (with its boxes); text-classification passes its input text on (IPA's language id does).
MEDIA: dict[str, tuple[str, str]] = {
    "detection": ("image", "image"), "classification": ("image", "label"), "segmentation": ("image", "mask"),
    "speech-recognition": ("audio", "text"), "question-answering": ("text", "text"),
    "text-classification": ("text", "text"), "translation": ("text", "text"), "summarization": ("text", "text"),
}
GENERATIVE = ("speech-recognition", "translation", "summarization")


class Strict(BaseModel):
    """Base for every config model: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ArchitectureSpec(Strict):
    """A `transformers` model built from its config with random weights: `model_class(config_class(**config))`."""

    model_class: str = Field(min_length=1, description="transformers class, e.g. RobertaForQuestionAnswering")
    config: dict[str, typing.Any] = Field(default_factory=dict, description="sizes given to the class's config")


class VariantSpec(Strict):
    """One model that can serve a stage: its name, published accuracy, and how it is built (the zoo's model of that
    name, or the user's own factory named by `model`)."""

    name: str = Field(min_length=1, description="the zoo's name (torchvision, YOLOv5, SAM, the transformers "
                      "names of PIPELINES.md), or any name for a variant with its own model or checkpoint folder")
    accuracy: float = Field(ge=-100, le=100, description="published figure in percent; negative: a negated "
                            "error rate, as IPA writes word error rates (-WER)")
    source: str = ""
    model: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
                              description="the variant's factory as an import path 'package.module:factory' (a "
                              "module of the environment, of the pipeline YAML's folder or of the working directory); "
                              "default: the model zoo (torchvision, YOLOv5, Segment Anything, transformers)")
    weights: str | None = Field(default=None, description="local checkpoint (a file, or a transformers folder "
                                "with its tokenizer or feature extractor), relative to the YAML's folder; default: "
                                "random weights, or --weights DIR's DIR/<variant>")
    architecture: ArchitectureSpec | None = Field(default=None, description="transformers variants: the class "
                                                  "and sizes (default: the zoo's entry for the variant's name)")

    @model_validator(mode="after")
    def _own_model_or_zoo(self) -> VariantSpec:
        if self.model and self.architecture:
            raise ValueError(f"variant '{self.name}': architecture applies to the zoo's transformers variants, not "
                             f"to one with its own model ({self.model})")
        return self

    @property
    def accuracy_fraction(self) -> float:
        """The figure as a fraction in [0, 1] where higher is better: a negated error rate -e scores 1 - e
        (word accuracy for -WER), so every accuracy method (a product too) sees a positive score."""
        return (100.0 + self.accuracy if self.accuracy < 0 else self.accuracy) / 100.0


class StageSpec(Strict):
    """One step of the pipeline: what kind of model it runs and the variants it may choose among."""

    name: str = Field(min_length=1)
    kind: StageKind | None = Field(default=None, description="what the stage does, and so what its models are "
                                   "given and give on (default: inferred from torchvision, YOLOv5 or Segment Anything "
                                   "variant names; needed for every other stage)")
    metric: str = Field(default="", description="what the variants' accuracy measures, e.g. 'COCO box mAP', '-WER'")
    max_new_tokens: int | None = Field(default=None, ge=1, le=1024, description="generation cap of a generative "
                                       "stage: random weights never emit an end token, so every answer has this many")
    variants: list[VariantSpec] = Field(min_length=1)

    @field_validator("variants")
    @classmethod
    def _unique_variants(cls, variants: list[VariantSpec]) -> list[VariantSpec]:
        names = [v.name for v in variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique, repeated: {', '.join(dupes)}")
        signs = {v.accuracy < 0 for v in variants}
        if len(signs) > 1:
            raise ValueError("accuracies of one stage must all be scores (>= 0) or all negated error rates (< 0), "
                             f"got {', '.join(f'{v.name}: {v.accuracy:g}' for v in variants)}")
        return variants

    @model_validator(mode="after")
    def _generation_cap(self) -> StageSpec:
        if self.kind in GENERATIVE and self.max_new_tokens is None:
            raise ValueError(f"a {self.kind} stage needs max_new_tokens (random weights never end a generation)")
        if self.max_new_tokens is not None and self.kind not in GENERATIVE:
            raise ValueError(f"max_new_tokens applies to {', '.join(GENERATIVE)} stages, not to kind {self.kind}")
        own = [v.name for v in self.variants if v.model]
        if own and self.kind is None:
            raise ValueError(f"stage '{self.name}' has variants with their own model ({', '.join(own)}): give the "
                             f"stage a kind (allowed: {', '.join(MEDIA)}), which says what its model is given")
        return self

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
    """A pipeline: its stages in order (each takes what the one before gives on), its SLA and how the stages'
    accuracies make the Pipeline Accuracy Score."""

    name: str = Field(min_length=1)
    sla_s: float = Field(gt=0, description="end-to-end latency SLA in seconds")
    accuracy_method: AccuracyMethod = "multiply"
    normalize_accuracy: AccuracyNormalization = Field(default="none", description="rank: IPA's normalisation, "
                                                      "each stage's variants scored 0..1 by accuracy rank")
    samples: SampleSet | None = Field(default=None, description="the shipped inputs profiles and load use "
                                      "(default: photos, or the speech clip for a speech pipeline, or English text)")
    stages: list[StageSpec] = Field(min_length=1)
    _folder: str | None = PrivateAttr(default=None)  # the YAML's folder, where a variant's own module may be

    @property
    def folder(self) -> str | None:
        """The folder of the YAML file this spec was loaded from (None for a spec built in code)."""
        return self._folder

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: list[StageSpec]) -> list[StageSpec]:
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got: {', '.join(names)}")
        return stages

    @model_validator(mode="after")
    def _stages_chain(self) -> PipelineSpec:
        """Each declared kind takes what the stage before it gives (a label or a mask ends a pipeline)."""
        for before, after in zip(self.stages, self.stages[1:]):
            if before.kind and after.kind and MEDIA[before.kind][1] != MEDIA[after.kind][0]:
                raise ValueError(f"stage '{after.name}' ({after.kind}) takes {MEDIA[after.kind][0]}, but stage "
                                 f"'{before.name}' ({before.kind}) gives {MEDIA[before.kind][1]}")
        if self.samples and self.stages[0].kind:
            want = {"photos": "image", "speech": "audio", "english": "text", "french": "text"}[self.samples]
            if MEDIA[self.stages[0].kind][0] != want:
                raise ValueError(f"samples '{self.samples}' are {want}, but the first stage "
                                 f"'{self.stages[0].name}' ({self.stages[0].kind}) takes {MEDIA[self.stages[0].kind][0]}")
        return self

    def accuracy_score(self, stage: str, variant: str) -> float:
        """The score plans and PAS use for a variant: its fraction, or IPA's rank normalisation of it."""
        try:
            return self._scores[(stage, variant)]
        except KeyError:
            self.stage(stage).variant(variant)  # raises naming the allowed stages or variants
            raise

    @cached_property
    def _scores(self) -> dict[tuple[str, str], float]:
        out = {}
        for st in self.stages:
            ranked = sorted(st.variants, key=lambda v: v.accuracy)
            for i, v in enumerate(ranked):
                rank = 1.0 if len(ranked) == 1 else i / (len(ranked) - 1)
                out[(st.name, v.name)] = v.accuracy_fraction if self.normalize_accuracy == "none" else rank
        return out

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


def describe_validation_error(err: ValidationError, source: str, model: type[BaseModel],
                              flags: dict[str, str] | None = None) -> str:
    """Turn pydantic's report into lines that name the file, the field and what is allowed; a field the command
    line set is named by its flag (`flags`: field path -> flag)."""
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        flag = next((f for path, f in (flags or {}).items() if loc == path or loc.startswith(path + ".")), None)
        if flag:
            lines.append(f"  {flag} (field '{loc}'): {e['msg']}" + (f", got {e.get('input')!r}"
                                                                    if e["type"] != "value_error" else ""))
            continue
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


def load_model(model: type[M], data: typing.Any, source: str, flags: dict[str, str] | None = None) -> M:
    """Validate `data` as `model`; raise ConfigError naming `source` and the field (or its flag, `flags`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source, model, flags)) from None


YAML_MAX_VALUES = 100_000  # values a config may hold once its aliases are expanded (a spec holds hundreds)


class _StrictLoader(yaml.SafeLoader):
    """yaml's safe loader, refusing a key given twice in one mapping (the last one would win without a word)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[typing.Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (lines {seen[key]} and {line}): give each key once",
                    key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


def _expanded(value: typing.Any, budget: list[int]) -> None:
    """Count the values `value` holds with every alias expanded, down to 0 in `budget[0]` (then stop)."""
    budget[0] -= 1
    if budget[0] < 0:
        return
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        _expanded(child, budget)
        if budget[0] < 0:
            return


def read_yaml(path: str | Path) -> typing.Any:
    """A YAML file's value: a key given twice is refused naming it and its lines, and a file whose aliases expand
    past YAML_MAX_VALUES values (a few kB can expand to billions) is refused before anything reads it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: " + ("a directory, not a YAML file" if p.is_dir() else "file not found"))
    try:
        value = yaml.load(p.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deep to be a config") from None
    budget = [YAML_MAX_VALUES]
    _expanded(value, budget)
    if budget[0] < 0:
        raise ConfigError(f"{p}: its aliases expand to more than {YAML_MAX_VALUES:,} values (an alias bomb?): "
                          "write the values out instead")
    return value


def load_pipeline(path: str | Path) -> PipelineSpec:
    """The spec in a YAML file; a variant's relative `weights:` are taken from the file's folder."""
    spec = load_model(PipelineSpec, read_yaml(path), str(path))
    folder = Path(path).resolve().parent
    stages = [st.model_copy(update={"variants": [_anchored(v, folder) for v in st.variants]}) for st in spec.stages]
    spec = spec.model_copy(update={"stages": stages})
    spec._folder = str(folder)
    return spec


def _anchored(variant: VariantSpec, folder: Path) -> VariantSpec:
    if not variant.weights:
        return variant
    path = Path(variant.weights).expanduser()
    return variant.model_copy(update={"weights": str(path if path.is_absolute() else folder / path)})
