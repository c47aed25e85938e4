"""Segment Anything as a stage: the real SAM architecture (random weights), box-prompted like the pipeline does."""

from __future__ import annotations

import numpy as np
import pytest

from ipa.errors import ConfigError
from ipa.models import sam
from ipa.models.builder import build
from ipa.models.zoo import central_box, kind_of, photos_hwc, stage_of
from ipa.spec import load_pipeline


def test_sam_variants_are_segmentation_and_unknown_names_list_them():
    assert {kind_of(v) for v in sam.VARIANTS} == {"segmentation"}
    with pytest.raises(ConfigError, match="sam_vit_b, sam_vit_l, sam_vit_h"):
        kind_of("sam_vit_x")


def test_the_shipped_segment_pipeline_names_real_variants():
    spec = load_pipeline("configs/pipelines/segment.yaml")
    assert [s.name for s in spec.stages] == ["detect", "segment"]
    assert [kind_of(v.name) for v in spec.stage("segment").variants] == ["segmentation"] * 3
    assert {kind_of(v.name) for v in spec.stage("detect").variants} == {"detection"}


def test_a_request_resizes_the_photo_to_1024_and_the_box_with_it():
    photo = photos_hwc()[0]  # 427 x 640
    r = sam.request(photo, [160, 106, 480, 320])
    assert tuple(r["image"].shape) == (3, 683, 1024)  # long side 1024, aspect kept
    assert r["original_size"] == (427, 640)
    sx, sy = 1024 / 640, 683 / 427  # SAM scales each axis by the rounded new size over the old
    np.testing.assert_allclose(r["boxes"].numpy(), [[160 * sx, 106 * sy, 480 * sx, 320 * sy]], rtol=1e-5)
    whole = sam.request(photo)
    assert whole["box"] == [0, 0, 640, 427]


@pytest.mark.slow
def test_sam_vit_b_draws_a_mask_per_request_at_the_photo_size():
    runner = build(stage_of("sam_vit_b"), "sam_vit_b")
    assert 90e6 < sum(p.numel() for p in runner.serve_batch.module.parameters()) < 95e6  # the paper's 91M encoder + decoder
    photo = photos_hwc()[1]
    out = runner([(photo, central_box(photo))])
    assert len(out) == 1
    assert out[0]["box"] == central_box(photo)
    assert 0 <= out[0]["mask_area"] <= photo.shape[0] * photo.shape[1]
    assert np.isfinite(out[0]["mask_score"])
