"""Synthetic pipelines with plausible profiles, for tests and solver benchmarks (not for results)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from ipa.profiles.table import Profile, ProfileTable
from ipa.spec import PipelineSpec


def synthetic_pipeline(
    rng: random.Random,
    n_stages: int,
    n_variants: int,
    batches: Sequence[int] = (1, 2, 4, 8),
    cores: Sequence[int] = (1, 2, 4),
    accuracy_method: str = "multiply",
    sla_s: float | None = None,
) -> tuple[PipelineSpec, ProfileTable]:
    """Bigger variants are more accurate, slower and hungrier; batching and cores speed them up."""
    stages, rows = [], []
    for s in range(n_stages):
        accs = sorted(rng.uniform(20, 95) for _ in range(n_variants))
        variants = []
        for v, acc in enumerate(accs):
            name = f"s{s}v{v}"
            variants.append({"name": name, "accuracy": round(acc, 3)})
            base = rng.uniform(0.005, 0.04) * (1 + v)
            for b in batches:
                for c in cores:
                    lat = base * (0.4 + 0.6 * b) / c**0.7 * rng.uniform(0.9, 1.1)
                    rows.append(Profile(f"s{s}", name, b, c, lat, b / lat, lat * c * rng.uniform(3, 8), lat * 0.8,
                                        "example"))
        stages.append({"name": f"s{s}", "variants": variants})
    spec = PipelineSpec.model_validate({
        "name": "synthetic", "sla_s": sla_s or rng.uniform(0.2, 2.0) * n_stages,
        "stages": stages, "accuracy_method": accuracy_method,
    })
    return spec, ProfileTable(rows, {"idle_power_w_per_core": rng.uniform(1, 5)}, "synthetic")
