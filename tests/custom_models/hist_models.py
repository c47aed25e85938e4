"""Models of a user's own: a detector that boxes the brightest quadrant of a photo, and a colour-histogram
classifier in two sizes of different cost. Imported by ipa from this folder (the pipeline YAML's), not as a
package: `model: "hist_models:classifier"`. Answers use numpy scalars on purpose (ipa makes them JSON)."""

from __future__ import annotations

import numpy as np
import torch

HIDDEN = {"hist-s": 8, "hist-l": 1024}
CLASSES = 5


def detector(variant: str, device: str, weights: str | None):
    return lambda images: [{"boxes": [brightest_quadrant(im)], "scores": [np.float32(1.0)]} for im in images]


def brightest_quadrant(image: np.ndarray) -> list[int]:
    h, w = image.shape[:2]
    quads = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h)]
    return list(max(quads, key=lambda q: float(image[q[1]:q[3], q[0]:q[2]].mean())))


class HistogramClassifier:
    """16 bins per channel -> hidden -> hidden -> classes, random weights from a fixed seed."""

    def __init__(self, hidden: int, device: str):
        g = torch.Generator().manual_seed(hidden)
        self.layers = [torch.randn(a, b, generator=g).to(device) / a ** 0.5
                       for a, b in ((48, hidden), (hidden, hidden), (hidden, CLASSES))]
        self.device = device

    def __call__(self, images: list[np.ndarray]) -> list[dict]:
        x = torch.stack([histogram(im) for im in images]).to(self.device)
        for i, w in enumerate(self.layers):
            x = x @ w
            x = x.relu() if i < len(self.layers) - 1 else x
        score, label = x.softmax(-1).max(-1)
        return [{"label": np.int64(c), "score": round(float(s), 6)} for c, s in zip(label, score)]


def histogram(image: np.ndarray) -> torch.Tensor:
    bins = [np.histogram(image[..., c], bins=16, range=(0, 256))[0] for c in range(3)]
    return torch.from_numpy(np.concatenate(bins).astype(np.float32) / (image.shape[0] * image.shape[1]))


def classifier(variant: str, device: str, weights: str | None) -> HistogramClassifier:
    return HistogramClassifier(HIDDEN[variant], device)
