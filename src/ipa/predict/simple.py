"""Baseline predictors: the last value, the max and the mean over a recent window."""

from __future__ import annotations

import numpy as np

from ipa.predict.base import HISTORY_S, Predictor


class Reactive(Predictor):
    """Tomorrow is today: the last second's rate."""

    name = "reactive"

    def predict(self, history: np.ndarray) -> float:
        return float(history[-1]) if len(history) else 0.0


class Window(Predictor):
    """A statistic of the last `window_s` seconds: `max` (IPA's conservative choice) or `avg`."""

    def __init__(self, name: str, reduce, window_s: int = HISTORY_S):
        self.name, self.reduce, self.window_s = name, reduce, window_s

    def predict(self, history: np.ndarray) -> float:
        return float(self.reduce(history[-self.window_s:])) if len(history) else 0.0


def WindowMax(window_s: int = HISTORY_S) -> Window:  # noqa: N802 - reads like the class it builds
    return Window("max", np.max, window_s)


def WindowAvg(window_s: int = HISTORY_S) -> Window:  # noqa: N802
    return Window("avg", np.mean, window_s)
