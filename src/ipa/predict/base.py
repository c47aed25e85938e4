"""The predictor interface: history of per-second rates -> the peak rate expected over the next interval."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

STEP_S = 10  # IPA: the history is summarised as the max of each 10 s step
HISTORY_S = 120  # over the last 2 minutes (12 values)
HORIZON_S = 20  # and the target is the max over the next 20 s


def step_maxima(history: np.ndarray, step: int = STEP_S, window: int = HISTORY_S) -> np.ndarray:
    """Max of each `step`-second slice of the last `window` seconds; short histories are padded at the front."""
    h = np.asarray(history, dtype=float)[-window:]
    if len(h) == 0:
        h = np.zeros(1)
    if len(h) < window:
        h = np.concatenate([np.full(window - len(h), h[0]), h])
    return h.reshape(-1, step).max(axis=1)


class Predictor(ABC):
    name: str = "predictor"

    @abstractmethod
    def predict(self, history: np.ndarray) -> float:
        """Expected peak rate (rps) of the next interval from the per-second rates so far (oldest first)."""

    def predict_many(self, histories: np.ndarray) -> np.ndarray:
        """One prediction per row of equal-length histories; backends override when they can batch."""
        return np.array([self.predict(h) for h in histories])
