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
    needs_s: int = 0  # seconds of history it needs beyond the loop's own (Rescaled averages over more)

    @abstractmethod
    def predict(self, history: np.ndarray) -> float:
        """Expected peak rate (rps) of the next interval from the per-second rates so far (oldest first)."""

    def predict_many(self, histories: np.ndarray) -> np.ndarray:
        """One prediction per row of equal-length histories; backends override when they can batch."""
        return np.array([self.predict(h) for h in histories])


class Rescaled(Predictor):
    """A predictor fitted to the trace's rates, serving the trace scaled by `factor` (`--load-scale`).

    Two things break at a small scale. The LSTM learned absolute rates (its inputs are divided by one
    fixed scale, the trace's p99.9), so at x0.02 it sees near-zero inputs and answers with its bias, ~2 rps
    for a 0.1 rps load. And per-second counts of a sparse load are 0 or 1, so every 10 s maximum is 1 rps
    whatever the rate. One trace-scale second is 1/factor seconds of the scaled load: the history is
    averaged over that many seconds, mapped back to the trace's scale, and the prediction forward.
    Until `needs_s` seconds have been seen, the missing past is `prior` (the rate every policy starts
    sized for): ten seconds without a request say nothing about a 0.03 rps load.
    """

    def __init__(self, inner: Predictor, factor: float, prior: float | None = None):
        if factor <= 0:
            raise ValueError(f"load scale must be > 0, got {factor}")
        self.inner, self.factor, self.prior = inner, factor, prior
        self.window = max(1, round(1 / factor))
        self.needs_s = HISTORY_S + self.window  # 12 steps of trailing means, each over `window` seconds
        self.name = inner.name

    def to_trace_scale(self, history: np.ndarray) -> np.ndarray:
        """Trailing means over `window` seconds (fewer at the start), divided by the factor; works on rows."""
        h = np.asarray(history, dtype=float)
        missing = self.needs_s - h.shape[-1]
        if self.prior is not None and missing > 0:
            h = np.concatenate([np.full((*h.shape[:-1], missing), self.prior), h], axis=-1)
        if self.window > 1 and h.shape[-1]:
            c = np.cumsum(np.concatenate([np.zeros((*h.shape[:-1], 1)), h], axis=-1), axis=-1)
            end = np.arange(1, h.shape[-1] + 1)
            start = np.maximum(0, end - self.window)
            h = (c[..., end] - c[..., start]) / (end - start)
        return h / self.factor

    def predict(self, history: np.ndarray) -> float:
        return self.inner.predict(self.to_trace_scale(history)) * self.factor

    def predict_many(self, histories: np.ndarray) -> np.ndarray:
        return self.inner.predict_many(self.to_trace_scale(histories)) * self.factor
