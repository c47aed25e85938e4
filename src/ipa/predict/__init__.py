"""Load predictors: history of per-second rates -> expected peak of the next interval."""

from __future__ import annotations

from ipa.errors import ConfigError
from ipa.predict.base import Predictor

PREDICTORS = ("reactive", "max", "avg", "arima", "lstm")


def make_predictor(name: str) -> Predictor:
    if name == "reactive":
        from ipa.predict.simple import Reactive

        return Reactive()
    if name == "max":
        from ipa.predict.simple import WindowMax

        return WindowMax()
    if name == "avg":
        from ipa.predict.simple import WindowAvg

        return WindowAvg()
    if name == "arima":
        from ipa.predict.arima import Arima

        return Arima()
    if name == "lstm":
        from ipa.predict.lstm import Lstm

        return Lstm()
    raise ConfigError(f"unknown predictor '{name}' (allowed: {', '.join(PREDICTORS)})")


__all__ = ["PREDICTORS", "Predictor", "make_predictor"]
