"""IPA's own detector variants, YOLOv5 n/s/m/l/x, from Ultralytics' model definitions (an optional extra).

`pip install 'ipa[yolo]'` installs `ultralytics` (AGPL-3.0, hence optional). Its YOLOv5 definitions are
the `u` revision: YOLOv5's backbone and neck with the anchor-free head of YOLOv8, which is what the package
builds offline today (the original anchor-based `yolov5` package pins huggingface-hub below 0.25, which
`transformers` 5 cannot run with). Random weights, as every variant here; the accuracies IPA plans with
are its own (configs/pipelines/video-yolo.yaml). The detector takes torchvision's interface (a list of
CHW images in [0, 1], answers a list of {boxes, labels, scores}) so the rest of the zoo, the profiler
and the serving replicas treat it as any detector.
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.nn.functional as F

from ipa.errors import ConfigError

VARIANTS = ("yolov5n", "yolov5s", "yolov5m", "yolov5l", "yolov5x")
SIZE = 640  # the letterboxed input side
CONF, IOU, MAX_DET, MAX_NMS = 0.25, 0.45, 300, 1000


def is_yolo(name: str) -> bool:
    return name in VARIANTS


def build_module(name: str):
    """The architecture with random weights, wrapped to torchvision's detection interface."""
    from PIL import Image

    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "ipa-ultralytics"))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    # Importing Ultralytics replaces PIL.Image.open (to pip-install a HEIF plugin when Pillow cannot read a file)
    # and torch.save process-wide: undo both, so the rest of ipa decodes and saves as it does without the extra.
    originals = Image.open, torch.save
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as e:
        raise ConfigError(f"variant '{name}' needs Ultralytics' model definitions: pip install 'ipa[yolo]' "
                          "(ultralytics, AGPL-3.0 licensed, so not installed by default)") from e
    finally:
        Image.open, torch.save = originals
    return Detector(DetectionModel(f"{name}u.yaml", nc=80, verbose=False))


class Detector(torch.nn.Module):
    """Letterbox each image to 640x640, run the network, keep the confident boxes after non-maximum
    suppression, and map them back to the image's own pixels."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """A checkpoint of the Ultralytics network itself (DIR/<variant>.pth), as `--weights` gives it."""
        return self.net.load_state_dict(state, strict=strict, assign=assign)

    def forward(self, images):
        batch, frames = [], []
        for im in images:
            x, frame = letterbox(im)
            batch.append(x)
            frames.append(frame)
        raw = self.net(torch.stack(batch))
        raw = raw[0] if isinstance(raw, (list, tuple)) else raw
        return [_detections(pred, frame) for pred, frame in zip(raw, frames)]


def letterbox(image):
    """(3, 640, 640) input and (scale, pad_x, pad_y) to map its boxes back."""
    _, h, w = image.shape
    scale = SIZE / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
    out = torch.full((3, SIZE, SIZE), 114 / 255, dtype=image.dtype, device=image.device)
    px, py = (SIZE - nw) // 2, (SIZE - nh) // 2
    out[:, py:py + nh, px:px + nw] = resized
    return out, (scale, px, py)


def _detections(pred, frame) -> dict:
    """(4 + classes, anchors) of xywh boxes and class probabilities -> torchvision's detection dict."""
    from torchvision.ops import batched_nms, box_convert

    scale, px, py = frame
    scores, labels = pred[4:].max(0)
    keep = (scores > CONF).nonzero().flatten()
    keep = keep[scores[keep].argsort(descending=True)[:MAX_NMS]]
    boxes = box_convert(pred[:4, keep].T, "cxcywh", "xyxy")
    chosen = batched_nms(boxes, scores[keep], labels[keep], IOU)[:MAX_DET]
    boxes = (boxes[chosen] - torch.tensor([px, py, px, py], dtype=boxes.dtype, device=boxes.device)) / scale
    return {"boxes": boxes, "labels": labels[keep][chosen] + 1, "scores": scores[keep][chosen]}
