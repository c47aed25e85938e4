"""A model of your own, served by ipa: a small convolutional classifier in two sizes.

ipa calls `classifier(variant, device, weights)` once per replica (and once per profiled batch size and core
count). It returns a callable that serves one batch: a list of RGB uint8 arrays (H, W, 3) in (the crops the
detector found, or whole photos), a list of JSON-serialisable answers out, in the same order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

WIDTHS = {"tinynet-s": 16, "tinynet-l": 96}  # the two variants: channels of the first layer
SIDE = 96  # pixels the network sees


class TinyNet(torch.nn.Module):
    def __init__(self, width: int, classes: int = 10):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(width, 2 * width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * width, 4 * width, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(4 * width, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Classify:
    """The batch callable: preprocessing, the network, and answers ipa can put in JSON."""

    def __init__(self, net: TinyNet, device: str):
        self.net, self.device = net, device

    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        x = torch.stack([self.prepare(im) for im in images]).to(self.device)
        with torch.inference_mode():
            probs = self.net(x).softmax(-1).cpu()
        score, label = probs.max(-1)
        return [{"label": int(c), "score": round(float(p), 6)} for c, p in zip(label, score)]

    @staticmethod
    def prepare(image: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(255).unsqueeze(0)
        return F.interpolate(t, size=(SIDE, SIDE), mode="bilinear", align_corners=False)[0]


def classifier(variant: str, device: str = "cpu", weights: str | None = None) -> Classify:
    """The factory ipa calls: `variant` is the name in the pipeline YAML; `weights` a state dict file or None."""
    torch.manual_seed(0)  # the same random weights in every replica (and in a direct call)
    net = TinyNet(WIDTHS[variant])
    if weights:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return Classify(net.eval().to(device), device)
