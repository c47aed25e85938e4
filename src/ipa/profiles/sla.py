"""IPA's SLA, derived from the profiles as IPA's optimizer derives it (`Task.sla`, `Pipeline.sla`).

Per variant: its p99 latency at the smallest profiled batch and the smallest core count, times
`sla_factor` (IPA: 5). Per stage: 5 x the mean of that over the stage's variants. The pipeline's SLA is
the sum over its stages. Generous by design: IPA sizes the SLA so that every variant can serve within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ipa.errors import ConfigError
from ipa.profiles.table import ProfileTable
from ipa.spec import PipelineSpec

STAGE_FACTOR = 5.0  # IPA's Task.sla: mean over variants, times 5


@dataclass(frozen=True)
class DerivedSla:
    sla_s: float
    stages: dict[str, float]  # stage -> its SLA
    variants: dict[tuple[str, str], float]  # (stage, variant) -> the latency the rule starts from


def ipa_sla(spec: PipelineSpec, profiles: ProfileTable, sla_factor: float = 5.0) -> DerivedSla:
    variants: dict[tuple[str, str], float] = {}
    stages: dict[str, float] = {}
    for stage in spec.stages:
        rows = profiles.for_stage(stage.name)
        for v in stage.variants:
            own = [p for p in rows if p.variant == v.name]
            if not own:
                raise ConfigError(f"no profile rows for {stage.name}/{v.name}: profile every variant to derive the SLA")
            least = min(own, key=lambda p: (p.batch, p.cores))
            variants[(stage.name, v.name)] = least.latency_p99_s
        stages[stage.name] = STAGE_FACTOR * float(np.mean([sla_factor * variants[(stage.name, v.name)]
                                                           for v in stage.variants]))
    return DerivedSla(sum(stages.values()), stages, variants)
