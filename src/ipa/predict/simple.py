"""Baseline predictors: the last value, the max and the mean over a recent window."""

from __future__ import annotations

import numpy as np

from ipa.predict.base import HISTORY_S, Predictor


class Reactive(Predictor):
    """Tomorrow is today: the last second's rate."""

    name = "reactive"

    def predict(self, history: np.ndarray) -> float:
        return float(history[-1]) if len(history) else 0.0

    def predict_many(self, histories: np.ndarray) -> np.ndarray:
        return histories[:, -1].astype(float)


class WindowMax(Predictor):
    name = "max"

    def __init__(self, window_s: int = HISTORY_S):
        self.window_s = window_s

    def predict(self, history: np.ndarray) -> float:
        return float(np.max(history[-self.window_s:])) if len(history) else 0.0

    def predict_many(self, histories: np.ndarray) -> np.ndarray:
        return histories[:, -self.window_s:].max(axis=1).astype(float)


class WindowAvg(Predictor):
    name = "avg"

    def __init__(self, window_s: int = HISTORY_S):
        self.window_s = window_s

    def predict(self, history: np.ndarray) -> float:
        return float(np.mean(history[-self.window_s:])) if len(history) else 0.0

    def predict_many(self, histories: np.ndarray) -> np.ndarray:
        return histories[:, -self.window_s:].mean(axis=1)
