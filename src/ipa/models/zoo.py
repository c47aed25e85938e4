"""Model zoo: the default factory of the builder protocol (`ipa.models.builder`). Vision variants are
torchvision architectures, YOLOv5 and Segment Anything; speech and text variants are `transformers`
architectures (`ipa.models.hf`). The stage's kind, from the pipeline spec, says which. Every variant is built
with random weights or a local checkpoint: a name that would make torchvision fetch weights (a detector in a
classification stage, say) is refused before torch is asked.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ipa.errors import ConfigError
from ipa.models import hf, sam
from ipa.spec import PipelineSpec, StageSpec

RESIZE, CROP = 256, 224  # torchvision's ImageNet evaluation transform: shorter side to 256, centre crop 224
SCORE_THRESHOLD = 0.05  # detections below this score are not reported
VISION_KINDS = ("detection", "classification", "segmentation")
OWN_MODEL = "or give the variant its own model (model: \"package.module:factory\", see the README's \"Your own pipeline\")"


@dataclass
class Model:
    """A vision variant as the builder protocol's batch callable: photos (or (photo, box) for segmentation) in,
    one JSON answer each out."""

    name: str
    kind: str  # "detection", "classification" or "segmentation"
    module: Any  # torch.nn.Module in eval mode
    device: str = "cpu"

    def __call__(self, items: list) -> list[dict[str, Any]]:
        import torch

        device = self.device
        with torch.inference_mode():
            if self.kind == "segmentation":
                return sam.segment(self.module, [sam.request(im, box, device) for im, box in items])
            if self.kind == "detection":
                x = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255).to(device)
                     for im in items]
                return [_detections(d) for d in self.module(x)]
            probs = self.module(torch.stack([to_classifier_input(im) for im in items]).to(device)).softmax(-1).cpu()
        score, label = probs.max(-1)
        return [{"label": int(c), "score": round(float(s), 4)} for c, s in zip(label, score)]


def _detections(d: dict[str, Any]) -> dict[str, Any]:
    d = {k: v.cpu() for k, v in d.items()}
    keep = d["scores"] >= SCORE_THRESHOLD
    return {"boxes": d["boxes"][keep].round().int().tolist(), "labels": d["labels"][keep].tolist(),
            "scores": [round(float(s), 4) for s in d["scores"][keep]]}


def factory(variant: str, device: str = "cpu", weights: str | None = None, *, stage: StageSpec):
    """The zoo's builder: the stage's kind says which family `variant` comes from."""
    kind = stage.kind or stage_kind(stage)
    if kind not in VISION_KINDS:
        return hf.build(stage.variant(variant), stage, weights, device)
    return _build_vision(variant, kind, weights, device)


def kind_of(name: str) -> str:
    """The kind of a torchvision, YOLOv5 or Segment Anything variant, from its name (specs that give no kind)."""
    import torchvision

    from ipa.models import yolo

    if sam.is_sam(name):
        return "segmentation"
    if yolo.is_yolo(name):
        return "detection"
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return "detection"
    if name in torchvision.models.list_models(module=torchvision.models):
        return "classification"
    raise ConfigError(
        f"variant '{name}' is not a torchvision classification or detection architecture "
        f"(see torchvision.models.list_models()), a YOLOv5 variant ({', '.join(yolo.VARIANTS)}) nor a Segment "
        f"Anything variant ({', '.join(sam.VARIANTS)}); "
        f"a speech or text stage needs its kind in the pipeline spec ({', '.join(hf.KINDS)}); {OWN_MODEL}"
    )


def stage_kind(stage: StageSpec) -> str:
    """The stage's kind: as the spec says, else what its variants' names make it (one kind for all)."""
    if stage.kind:
        return stage.kind
    kinds = {v.name: kind_of(v.name) for v in stage.variants}
    if len(set(kinds.values())) > 1:
        raise ConfigError(f"stage '{stage.name}' mixes variants of different kinds ({kinds}): one kind per stage "
                          "(give the stage a kind, and variants of that kind)")
    return next(iter(kinds.values()))


def pipeline_kinds(spec: PipelineSpec) -> list[str]:
    return [stage_kind(s) for s in spec.stages]


def stage_of(name: str, accuracy: float = 0.0) -> StageSpec:
    """A stage of one zoo variant, its kind from the name: how benches and tests build a variant alone
    (`builder.build(stage_of("resnet18"), "resnet18")`)."""
    return StageSpec(name=kind_of(name), kind=kind_of(name), variants=[{"name": name, "accuracy": accuracy}])


def _build_vision(name: str, kind: str, weights: str | None, device: str) -> Model:
    import torch

    module = _vision_module(name, kind)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"weights for '{name}': {path} is not a file (a state dict saved with torch.save)")
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    module.eval().to(device)
    return Model(name, kind, module, device)


def _vision_module(name: str, kind: str):
    """The architecture with random weights; a name of another kind is refused (torchvision would otherwise
    fetch a backbone's weights for a detector it is asked to build as a classifier)."""
    import torchvision

    from ipa.models import yolo

    if kind == "segmentation":
        if not sam.is_sam(name):
            raise ConfigError(f"variant '{name}' in a segmentation stage: the zoo's segmenters are Segment Anything's "
                              f"({', '.join(sam.VARIANTS)}); {OWN_MODEL}")
        return sam.build_module(name)
    actual = kind_of(name)
    if actual != kind:
        raise ConfigError(f"variant '{name}' is a {actual} model, but its stage is kind {kind}: put it in a {actual} "
                          f"stage, or use a {kind} variant")
    if yolo.is_yolo(name):
        return yolo.build_module(name)
    builder = torchvision.models.get_model_builder(name)
    params = inspect.signature(builder).parameters
    return builder(**{k: None for k in ("weights", "weights_backbone") if k in params})


@cache
def photos_hwc() -> tuple[np.ndarray, ...]:
    """The photos scikit-learn ships (china.jpg, flower.jpg; 427x640 RGB), uint8 HxWxC."""
    from sklearn.datasets import load_sample_images

    return tuple(np.array(img, copy=True) for img in load_sample_images().images)


def to_classifier_input(photo: np.ndarray):
    """torchvision's ImageNet evaluation transform, step for step as its weights' `transforms()` do it: shorter side
    to 256 (bilinear, antialiased, on the uint8 pixels), centre crop 224, to float, normalise. What a torchvision
    checkpoint expects; with random weights it costs the same."""
    import torch
    import torchvision.transforms.functional as TF

    t = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)
    t = TF.center_crop(TF.resize(t, [RESIZE], antialias=True), [CROP, CROP])
    return TF.normalize(TF.convert_image_dtype(t, torch.float), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def central_box(photo: np.ndarray) -> list[int]:
    """The middle half of the photo: the box prompt profiles use when no detector gave one."""
    h, w = photo.shape[:2]
    return [w // 4, h // 4, 3 * w // 4, 3 * h // 4]
