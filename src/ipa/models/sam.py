"""Segment Anything (Meta's `segment-anything` package): the three published variants, box-prompted.

The segment stage takes the photo and the detector's box and returns the mask SAM draws inside it,
so the image encoder (the whole cost: a ViT over a 1024x1024 input) runs once per request, as in
SAM's own batched `forward`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ipa.errors import ConfigError

# our variant name -> segment_anything's registry key; parameters as the SAM paper gives them
VARIANTS = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h"}


def is_sam(name: str) -> bool:
    return name in VARIANTS


def build_module(name: str):
    """The architecture with random weights (SAM's registry with checkpoint=None loads nothing)."""
    try:
        from segment_anything import sam_model_registry
    except ImportError as e:  # pragma: no cover - a dependency of ipa, absent only in broken installs
        raise ConfigError(f"variant '{name}' needs the segment-anything package: pip install segment-anything") from e
    return sam_model_registry[VARIANTS[name]](checkpoint=None)


def request(photo: np.ndarray, box: list[int] | tuple[int, ...] | None = None,
            device: str = "cpu") -> dict[str, Any]:
    """One entry of SAM's batched input: the photo resized to 1024 on its long side, the box rescaled."""
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = photo.shape[:2]
    box = list(box) if box is not None else [0, 0, w, h]
    resize = ResizeLongestSide(1024)
    image = torch.as_tensor(resize.apply_image(np.ascontiguousarray(photo)), device=device)
    boxes = torch.as_tensor(resize.apply_boxes(np.array([box], dtype=np.float32), (h, w)), device=device)
    return {"image": image.permute(2, 0, 1).contiguous(), "original_size": (h, w), "boxes": boxes, "box": box}


def segment(module, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Masks for a batch of box-prompted requests: the area and SAM's own IoU estimate of each."""
    import torch

    with torch.inference_mode():
        outs = module([{k: r[k] for k in ("image", "original_size", "boxes")} for r in requests],
                      multimask_output=False)
    return [{"box": r["box"], "mask_area": int(o["masks"][0, 0].sum()),
             "mask_score": round(float(o["iou_predictions"][0, 0]), 4)} for r, o in zip(requests, outs)]
