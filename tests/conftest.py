"""Fixtures: small pipelines and profile tables built in memory, no files needed."""

from __future__ import annotations

import random

import pytest

from ipa.profiles.synthetic import synthetic_pipeline
from ipa.profiles.table import Profile, ProfileTable
from ipa.spec import PipelineSpec


def random_instance(rng: random.Random, max_stages: int = 5, max_variants: int = 8) -> tuple[PipelineSpec, ProfileTable]:
    """Random sizes in the ranges the foundation issue asks the solver to be proven on."""
    return synthetic_pipeline(
        rng, rng.randint(2, max_stages), rng.randint(2, max_variants),
        batches=sorted(rng.sample([1, 2, 4, 8], rng.randint(1, 4))),
        cores=sorted(rng.sample([1, 2, 4, 8], rng.randint(1, 4))),
        accuracy_method=rng.choice(["multiply", "sum", "average"]),
    )


def two_stage() -> tuple[PipelineSpec, ProfileTable]:
    """A hand-made detector -> classifier pipeline with numbers one can check by hand."""
    spec = PipelineSpec.model_validate({
        "name": "tiny", "sla_s": 1.0,
        "stages": [
            {"name": "detect", "variants": [{"name": "small", "accuracy": 20}, {"name": "big", "accuracy": 40}]},
            {"name": "classify", "variants": [{"name": "r18", "accuracy": 70}, {"name": "r50", "accuracy": 76}]},
        ],
    })
    rows = []
    for stage, variant, lat1, joules in [("detect", "small", 0.05, 0.5), ("detect", "big", 0.25, 3.0),
                                         ("classify", "r18", 0.02, 0.2), ("classify", "r50", 0.08, 0.9)]:
        for b in (1, 2, 4, 8):
            for c in (1, 2):
                lat = lat1 * (0.5 + 0.5 * b) / c**0.8
                rows.append(Profile(stage, variant, b, c, lat, b / lat, joules * (0.6 + 0.4 * b), lat * 0.9,
                                    "estimate", 1.5 if variant in ("big", "r50") else 0.5))
    return spec, ProfileTable(rows, {"idle_power_w_per_core": 3.0}, "tiny")


@pytest.fixture
def tiny():
    return two_stage()
