"""The machine's speed over time, for the simulator to replay: a machine has slow spells, and queues grow in them,
which independent draws of batch times do not reproduce.

`Speed`: the machine's slowness from each moment on, the same for every stage (a prediction replays a stretch of
the 10-s paces served so far, `stretch`). `Pace`: per stage, the batches a real run measured, each as a multiple of
its row's p50 (the twin replays a run's own, `batch_paces`).
"""

from __future__ import annotations

import math

import numpy as np

from ipa.machine.measure import WINDOW_LEAST, WINDOW_S, by_window, machine_pace
from ipa.profiles.calibration import BatchTiming, row_of
from ipa.profiles.table import Profile, ProfileTable

Pace = dict[str, tuple[np.ndarray, np.ndarray]]  # stage -> (when each batch ended, its time / its row's p50), by time
Speed = tuple[np.ndarray, np.ndarray]  # (when each span starts, the machine's slowness from then on), by time
SPEED_STREAM = 23  # each seed's stretch of the machine's speed comes from its own stream, not the arrivals'


def stretch(windows: tuple[float, ...], seconds: int, seed: int) -> Speed | None:
    """A stretch of the machine's speed as served: one 10 s after another from a point `seed` draws (round to the
    first when it runs out), each as slowness over the median of them all; None when fewer than two are known."""
    paces = np.asarray(windows, dtype=float)
    if len(paces) < 2:
        return None
    start = int(np.random.default_rng([seed, SPEED_STREAM]).integers(len(paces)))
    spans = max(1, math.ceil(seconds / WINDOW_S))
    return np.arange(spans) * WINDOW_S, paces[(start + np.arange(spans)) % len(paces)] / np.median(paces)


def batch_paces(batches: list[BatchTiming], machine: ProfileTable) -> Pace:
    """Per stage, the measured batches over time as multiples of their rows' p50 on `machine` (the run's own
    calibrated profiles)."""
    out: Pace = {}
    by_stage: dict[str, list[tuple[float, float]]] = {}
    rows: dict[tuple[str, str, int, int], Profile | None] = {}
    for b in batches:
        key = (b.stage, b.variant, b.cores, b.size)
        row = rows[key] if key in rows else rows.setdefault(key, row_of(machine, b))
        if b.t_s is None or row is None or b.seconds <= 0:
            continue
        by_stage.setdefault(b.stage, []).append((b.t_s, b.seconds / row.p50))
    for stage, points in by_stage.items():
        points.sort()
        out[stage] = (np.array([t for t, _ in points]), np.array([r for _, r in points]))
    return out


def own_speed(profiles: ProfileTable, batches: list[BatchTiming], seconds: int) -> Speed:
    """The speed a cell's own batches moved at, each 10 s's pace over the whole cell's (`Simulator(speed=...)`);
    a 10 s with too few batches to say (`WINDOW_LEAST`) keeps the cell's pace. Hindsight: what a re-prediction at
    the cell's own pace replays."""

    whole = machine_pace(profiles, batches)
    groups = by_window(batches)
    spans = max(1, math.ceil(seconds / WINDOW_S))
    paces = [machine_pace(profiles, groups[k]) if len(groups.get(k, ())) >= WINDOW_LEAST else None
             for k in range(spans)]
    return np.arange(spans) * WINDOW_S, np.asarray([p[0] / whole[0] if p and whole else 1.0 for p in paces])
