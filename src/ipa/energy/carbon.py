"""Grid carbon intensity over time: grams of CO2 beside joules, and the weight that follows the grid.

A series is a CSV of `hour,gco2_per_kwh` (Clover's form: one value per hour, `../shared/data/carbon/`). A
workload's second t sees the hour `first + t * speedup / 3600`: real time by default, K hours of the series
per hour of workload with `speedup` K (a 20-minute pattern with K = 72 sees a whole day). Within an hour the
intensity is that hour's value, as Clover re-plans once per hour; past the last hour the series starts over
(a day's shape repeats; the run's files say so). Grams = joules x intensity / 3.6e6 (a kWh is 3.6e6 J).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipa.errors import ConfigError

J_PER_KWH = 3.6e6
FORMAT = "a CSV with the header hour,gco2_per_kwh and one row per hour (whole hours, increasing; grams >= 0)"


@dataclass(frozen=True)
class CarbonSeries:
    hours: np.ndarray  # whole hours, increasing
    g_per_kwh: np.ndarray  # the grid's intensity from each hour to the next
    source: str = ""

    @property
    def mean(self) -> float:
        """The intensity averaged over time (hours weighted by how long each lasts until the next)."""
        return float(np.average(self.g_per_kwh, weights=self._spans()))

    @property
    def span_h(self) -> float:
        """Hours the series covers before it starts over: to its last hour, and that hour itself."""
        return float(self._spans().sum())

    def _spans(self) -> np.ndarray:
        return np.diff(np.append(self.hours, self.hours[-1] + 1)).astype(float)

    def at(self, seconds: np.ndarray | float, speedup: float = 1.0) -> np.ndarray:
        """Intensity at each second since the workload started (the series' first hour at t = 0)."""
        elapsed_h = (np.asarray(seconds, dtype=float) * speedup / 3600.0) % self.span_h
        idx = np.searchsorted(self.hours - self.hours[0], elapsed_h, side="right") - 1
        return self.g_per_kwh[np.clip(idx, 0, len(self.hours) - 1)]

    def over(self, start_s: float, seconds: float, speedup: float = 1.0) -> float:
        """Mean intensity over [start_s, start_s + seconds): what an interval planned at start_s will see."""
        t = start_s + np.arange(max(1, math.ceil(seconds)))
        return float(self.at(t, speedup).mean())

    def describe(self, speedup: float = 1.0) -> str:
        return (f"{self.source}: {len(self.hours)} hours, {self.g_per_kwh.min():.4g}-{self.g_per_kwh.max():.4g} "
                f"gCO2/kWh (mean {self.mean:.4g}), {speedup:g} hours of it per hour of workload")


def co2_g(energy_j: np.ndarray, g_per_kwh: np.ndarray) -> np.ndarray:
    return np.asarray(energy_j, dtype=float) * g_per_kwh / J_PER_KWH


def read_carbon(path: str | Path) -> CarbonSeries:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--carbon {path}: {'a directory, not a file' if p.is_dir() else 'file not found'}; "
                          f"expected {FORMAT}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--carbon {p}: not a text file ({e}); expected {FORMAT}") from None
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or [c.strip().lower() for c in rows[0]] != ["hour", "gco2_per_kwh"]:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise ConfigError(f"--carbon {p}: line 1 is {got!r}; expected {FORMAT}")
    hours, values = [], []
    for line_no, r in enumerate(rows[1:], start=2):
        try:
            if len(r) != 2:
                raise ValueError(f"{len(r)} fields")
            h, g = float(r[0]), float(r[1])
            if not (h.is_integer() and math.isfinite(g) and g >= 0):
                raise ValueError("not a whole hour and grams >= 0")
        except ValueError as e:
            raise ConfigError(f"--carbon {p}: line {line_no}: {','.join(r)!r} ({e}); expected {FORMAT}") from None
        if hours and h <= hours[-1]:
            raise ConfigError(f"--carbon {p}: line {line_no}: hour {h:g} after hour {hours[-1]:g}; expected {FORMAT}")
        hours.append(h)
        values.append(g)
    if not hours:
        raise ConfigError(f"--carbon {p}: no hours after the header; expected {FORMAT}")
    return CarbonSeries(np.array(hours), np.array(values), str(p))


def intensity_over_time(carbon: CarbonSeries | None, speedup: float = 1.0) -> Callable[[float], float] | None:
    """The grid's intensity at a second of a workload (None without a carbon series): what a runtime logs."""
    if carbon is None:
        return None
    return lambda t: float(carbon.at(t, speedup))


def with_co2(series: dict[str, np.ndarray], carbon: CarbonSeries | None, speedup: float = 1.0
             ) -> dict[str, np.ndarray]:
    """A run's per-second series with the grid's intensity and the grams of CO2 of each second's joules (itself
    without a carbon series)."""
    if carbon is None:
        return series
    intensity = carbon.at(np.arange(len(series["energy_j"])), speedup)
    return series | {"carbon_g_per_kwh": intensity, "co2_g": co2_g(series["energy_j"], intensity)}
