"""`ipa spec check`: what a pipeline spec makes of itself before anything runs. Each stage's kind (given, or
inferred from the zoo's names), what it takes and gives on, and each variant's builder, checkpoint and profile
rows. Problems that would stop a run (a module that does not import, a checkpoint that is not there) are listed
as problems; what only limits it (a variant never profiled) as notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ipa.errors import IpaError
from ipa.models import builder
from ipa.profiles.table import ProfileTable
from ipa.spec import MEDIA, PipelineSpec


@dataclass
class SpecReport:
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per variant
    media: str = ""  # the chain of media from the request to the last stage's answer
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check(spec: PipelineSpec, profiles: ProfileTable | None, weights_dir: str | None = None) -> SpecReport:
    from ipa.models.samples import sample_set
    from ipa.models.zoo import stage_kind

    report = SpecReport()
    search = builder.search_path(spec)
    kinds = []
    for stage in spec.stages:
        try:
            kind = stage_kind(stage)
        except IpaError as e:
            report.problems.append(f"stage '{stage.name}': {e}")
            continue
        kinds.append(kind)
        for v in stage.variants:
            rows = profiles.for_stage(stage.name) if profiles else []
            profiled = sorted({(p.batch, p.cores) for p in rows if p.variant == v.name})
            report.rows.append({
                "stage": stage.name, "kind": kind + ("" if stage.kind else " (inferred)"),
                "takes": MEDIA[kind][0], "gives": MEDIA[kind][1], "variant": v.name, "accuracy": v.accuracy,
                "model": v.model or "zoo", "weights": _weights(v, weights_dir, report),
                "profiled (batch x cores)": _profiled(profiled, profiles),
            })
            if v.model:
                try:
                    builder.load_factory(v.model, search, v.name)
                except IpaError as e:
                    report.problems.append(str(e))
            if profiles is not None and not profiled:
                report.notes.append(f"variant '{v.name}' of stage '{stage.name}' has no rows in {profiles.source}: "
                                    "plans cannot choose it until it is profiled")
    if len(kinds) == len(spec.stages):
        source = sample_set(spec, kinds)
        report.media = " -> ".join([MEDIA[kinds[0]][0]] + [f"{s.name} -> {MEDIA[k][1]}" for s, k in zip(spec.stages, kinds)])
        report.notes.insert(0, f"profiles and load use the '{source}' samples; a request body is "
                               f"{MEDIA[kinds[0]][0]}")
    return report


def _weights(variant, weights_dir: str | None, report: SpecReport) -> str:
    try:
        path = builder.checkpoint(variant, weights_dir)
    except IpaError as e:
        report.problems.append(str(e))
        return "missing"
    return path or "random"


def _profiled(points: list[tuple[int, int]], profiles: ProfileTable | None) -> str:
    if profiles is None:
        return "(no profiles)"
    if not points:
        return "none"
    batches = sorted({b for b, _ in points})
    cores = sorted({c for _, c in points})
    return f"{','.join(map(str, batches))} x {','.join(map(str, cores))}"
