"""ARIMA on the 10 s step maxima of the last 2 minutes, forecasting the next 20 s (statsmodels)."""

from __future__ import annotations

import warnings

import numpy as np

from ipa.predict.base import HORIZON_S, STEP_S, Predictor, step_maxima


class Arima(Predictor):
    name = "arima"

    def __init__(self, order: tuple[int, int, int] = (1, 0, 0)):
        self.order = order

    def predict(self, history: np.ndarray) -> float:
        from statsmodels.tsa.arima.model import ARIMA

        y = step_maxima(history)
        if np.ptp(y) == 0:
            return float(y[-1])  # a constant series: ARIMA has nothing to fit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fit = ARIMA(y, order=self.order).fit()
                forecast = fit.forecast(HORIZON_S // STEP_S)
            except (np.linalg.LinAlgError, ValueError):
                return float(y[-1])
        return float(max(0.0, np.max(forecast)))
