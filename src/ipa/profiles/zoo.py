"""Model zoo: real torchvision architectures (weights=None unless a local checkpoint is given) and real photos."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ipa.errors import ConfigError
from ipa.profiles import sam

CLASSIFIER_INPUT = 224


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


def kind_of(name: str) -> str:
    import torchvision

    if sam.is_sam(name):
        return "segmentation"
    if name in torchvision.models.list_models(module=torchvision.models.detection):
        return "detection"
    if name in torchvision.models.list_models(module=torchvision.models):
        return "classification"
    raise ConfigError(
        f"variant '{name}' is not a torchvision classification or detection architecture "
        f"(see torchvision.models.list_models()) nor a Segment Anything variant ({', '.join(sam.VARIANTS)})"
    )


def build(name: str, weights: str | Path | None = None, device: str = "cpu") -> Model:
    """Build the architecture with random weights (nothing is downloaded) or load a local checkpoint."""
    import torch
    import torchvision

    kind = kind_of(name)
    if kind == "segmentation":
        module = sam.build_module(name)
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
