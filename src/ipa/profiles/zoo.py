"""Model zoo: every variant as a runnable model, built with random weights (nothing is downloaded) or a local
checkpoint. Vision variants are torchvision architectures and Segment Anything; speech and text variants are
`transformers` architectures (`ipa.profiles.hf`). The stage's kind, from the pipeline spec, says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from ipa.errors import ConfigError
from ipa.profiles import hf, sam
from ipa.spec import PipelineSpec, StageSpec

CLASSIFIER_INPUT = 224
SCORE_THRESHOLD = 0.05  # detections below this score are not reported
VISION_KINDS = ("detection", "classification", "segmentation")


@dataclass
class Model:
    name: str
    kind: str  # "detection", "classification" or "segmentation"
    module: object  # torch.nn.Module in eval mode
    device: str = "cpu"

    def inputs(self, batch: int):
        """A batch of real photos in the form the model takes, on the model's device."""
        import torch

        device = self.device
        photos = [photos_hwc()[i % len(photos_hwc())] for i in range(batch)]
        if self.kind == "segmentation":
            return [sam.request(p, central_box(p), device) for p in photos]
        if self.kind == "detection":
            return [torch.from_numpy(p).permute(2, 0, 1).float().div(255).to(device) for p in photos]
        return torch.stack([to_classifier_input(p) for p in photos]).to(device)

    def __call__(self, x):
        import torch

        if self.kind == "segmentation":
            return sam.segment(self.module, x)
        with torch.inference_mode():
            return self.module(x)

    def serve(self, items: list) -> list[dict[str, Any]]:
        """A served batch: photos for detection and classification, (photo, box) for segmentation."""
        import torch

        device = self.device
        if self.kind == "segmentation":
            return self([sam.request(im, box, device) for im, box in items])
        if self.kind == "detection":
            x = [torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255).to(device) for im in items]
            out = []
            for d in self(x):
                d = {k: v.cpu() for k, v in d.items()}
                keep = d["scores"] >= SCORE_THRESHOLD
                out.append({"boxes": d["boxes"][keep].round().int().tolist(), "labels": d["labels"][keep].tolist(),
                            "scores": [round(float(s), 4) for s in d["scores"][keep]]})
            return out
        probs = self(torch.stack([to_classifier_input(im) for im in items]).to(device)).softmax(-1).cpu()
        score, label = probs.max(-1)
        return [{"label": int(c), "score": round(float(s), 4)} for c, s in zip(label, score)]

    def warmup_item(self) -> Any:
        blank = np.zeros((64, 64, 3), np.uint8)
        return (blank, None) if self.kind == "segmentation" else blank


def kind_of(name: str) -> str:
    """The kind of a torchvision, YOLOv5 or Segment Anything variant, from its name (specs that give no kind)."""
    import torchvision

    from ipa.profiles import yolo

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
        f"a speech or text stage needs its kind in the pipeline spec ({', '.join(hf.KINDS)})"
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


def build(name: str, weights: str | Path | None = None, device: str = "cpu", stage: StageSpec | None = None,
          spec: PipelineSpec | None = None):
    """Build a variant ready to run. `stage` (its spec) gives the kind and, for speech and text variants, the
    architecture and generation cap; `spec` the pipeline, whose inputs a speech or text model is profiled with."""
    kind = stage_kind(stage) if stage else kind_of(name)
    if kind not in VISION_KINDS:
        if stage is None:
            raise ConfigError(f"variant '{name}' is a {kind} model: build it with its stage's spec")
        model = hf.build(stage.variant(name), stage.model_copy(update={"kind": kind}), weights, device)
        if spec is not None:
            from ipa.profiles.samples import stage_items

            kinds = pipeline_kinds(spec)
            model.samples = lambda batch: stage_items(spec, kinds, stage.name, batch)
        return model
    return _build_vision(name, kind, weights, device)


def _build_vision(name: str, kind: str, weights: str | Path | None, device: str) -> Model:
    import torch
    import torchvision

    from ipa.profiles import yolo

    if kind == "segmentation":
        module = sam.build_module(name)
    elif yolo.is_yolo(name):
        module = yolo.build_module(name)
    else:
        kwargs = {"weights": None} | ({"weights_backbone": None} if kind == "detection" else {})
        module = torchvision.models.get_model(name, **kwargs)
    if weights:
        path = Path(weights)
        if path.is_dir():
            path = path / f"{name}.pth"
        if not path.is_file():
            raise ConfigError(f"weights for '{name}' not found at {path}")
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    module.eval().to(device)
    return Model(name, kind, module, device)


@cache
def photos_hwc() -> tuple[np.ndarray, ...]:
    """The photos scikit-learn ships (china.jpg, flower.jpg; 427x640 RGB), uint8 HxWxC."""
    from sklearn.datasets import load_sample_images

    return tuple(np.array(img, copy=True) for img in load_sample_images().images)


def to_classifier_input(photo: np.ndarray, box: tuple[int, int, int, int] | None = None):
    """Crop (x1, y1, x2, y2) if given, resize to 224x224, normalise as ImageNet models expect."""
    import torch
    import torch.nn.functional as F

    if box is not None:
        x1, y1, x2, y2 = box
        photo = photo[y1:y2, x1:x2]
    t = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1).float().div(255).unsqueeze(0)
    t = F.interpolate(t, size=(CLASSIFIER_INPUT, CLASSIFIER_INPUT), mode="bilinear", align_corners=False)[0]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (t - mean) / std


def central_box(photo: np.ndarray) -> list[int]:
    """The middle half of the photo: the box prompt profiles use when no detector gave one."""
    h, w = photo.shape[:2]
    return [w // 4, h // 4, 3 * w // 4, 3 * h // 4]
