"""Load predictors: history of per-second rates -> expected peak of the next interval."""

from __future__ import annotations

from ipa.errors import ConfigError
from ipa.predict.base import Predictor, Rescaled

PREDICTORS = ("reactive", "max", "avg", "arima", "lstm")


def make_predictor(name: str, load_scale: float = 1.0, prior: float | None = None) -> Predictor:
    """The named predictor; for a workload scaled by `load_scale`, one that predicts at the trace's scale
    (with `prior`, the initial rate, standing in for the history not yet seen)."""
    inner = _make(name)
    return inner if load_scale == 1.0 else Rescaled(inner, load_scale, prior)


def history_s(predictor: Predictor | None, default: int) -> int:
    """Seconds of monitored history the loop should keep for this predictor."""
    return max(default, predictor.needs_s if predictor else 0)


def _make(name: str) -> Predictor:
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


__all__ = ["PREDICTORS", "Predictor", "history_s", "make_predictor"]
