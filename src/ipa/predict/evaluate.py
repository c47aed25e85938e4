"""Compare predictors on the trace's test days (14-21): RMSE, MAE, under-prediction rate, time per call."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from ipa.predict import make_predictor
from ipa.predict.lstm import TEST_DAYS, TRAIN_DAYS, series, windows


def evaluate(trace: np.ndarray, names: Sequence[str], stride_s: int = 300,
             progress: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Every predictor on the same points: one every `stride_s` seconds of the test days."""
    data = windows(series(trace, TRAIN_DAYS, TEST_DAYS), stride=stride_s)
    rows = []
    for name in names:
        predictor = make_predictor(name)
        t0 = time.perf_counter()
        pred = np.array([predictor.predict(h) for h in data.histories])
        per_call_ms = (time.perf_counter() - t0) * 1000 / len(pred)
        err = pred - data.y
        rows.append({
            "predictor": name,
            "points": len(pred),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "mae": float(np.mean(np.abs(err))),
            "under_prediction_pct": float(np.mean(pred < data.y) * 100),
            "mean_over_provision_rps": float(np.mean(np.maximum(err, 0))),
            "ms_per_call": per_call_ms,
        })
        progress(name)
    return rows
