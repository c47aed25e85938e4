"""Online calibration: the profile values a plan uses, corrected by the batch times replicas measure.

Profiles are measured once, on one machine, one model at a time. Served, the same variant can be
slower: another machine, other processes on the cores, pre- and post-processing around the model.
Each executed batch reports how long it took; the ratio to the profile's median for that (batch,
cores) is the correction. Per (stage, variant), the ratio is the median over the last `window`
batches (robust to outliers), clamped to `bounds`. A variant with too few batches borrows its
stage's ratio, and a stage with too few the pipeline's: a machine twice as slow is twice as slow
for every model, and that is learned from the first variant served. A ratio moves only when the
new estimate differs from it by more than `tolerance`, so noise does not make plans flap.

Latencies are multiplied by the ratio and throughputs divided by it. Served batches also vary more
than one model alone on idle cores: once `spread_batches` batches are in, the p99 is the p50 times the
measured p99/p50 of the last of them. A third ratio, learned the same
way from the CPU seconds each batch burned, corrects the CPU a batch costs: wall time under contention
includes waiting for a core, which is not CPU the plan must find room for. The last kind is the CPU
share: of its cores, the share a batch keeps busy when it has the machine to itself (the 90th
percentile of CPU / (wall x cores) over the last batches; under contention the rest is the wait for
a core). With it a simulator can take the contention out of a wall time measured on a busy machine
and put back the contention of its own load (`Profile.alone_s`). Energy per batch follows the CPU
ratio, not the time ratio: a batch that waits for a core burns no more joules, one that burns twice
the CPU (a slower machine than the profiled one) burns twice the dynamic energy. Without measured CPU
it keeps the profiled value.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import replace
from typing import NamedTuple

from pydantic import Field, model_validator

from ipa.profiles.table import Profile, ProfileTable, row_at
from ipa.spec import Strict


class BatchTiming(NamedTuple):
    """One batch a replica ran: which model, on how many cores, how many requests, how long it took, how
    much CPU it burned, when it ended, in seconds since the run started, and the wall time the replica spent on
    it outside the model (`overhead_s`: hand-off, decoding, thread hops; None: not measured), and how long the
    replica sat idle before it (`idle_s`, from its previous batch's end; None: its first, or not measured)."""

    stage: str
    variant: str
    cores: int
    size: int
    seconds: float
    cpu_s: float | None = None
    t_s: float | None = None
    overhead_s: float | None = None
    idle_s: float | None = None


class CalibrationSettings(Strict):
    enabled: bool = Field(default=True, description="plan with the corrected values (it always learns them)")
    window: int = Field(default=32, ge=1, description="batches per (stage, variant) the median is taken over")
    min_batches: int = Field(default=3, ge=1, description="before a variant's own ratio replaces its stage's")
    bounds: tuple[float, float] = Field(default=(0.25, 4.0), description="the ratio stays within these")
    tolerance: float = Field(default=0.05, ge=0, description="relative change below which a ratio stays put")
    spread_batches: int = Field(default=50, ge=10, description="batches before the measured p99/p50 replaces "
                                "the profiled one (the last 4x this many are kept)")

    @model_validator(mode="after")
    def _ordered(self) -> CalibrationSettings:
        lo, hi = self.bounds
        if not 0 < lo <= 1 <= hi:
            raise ValueError(f"bounds must satisfy 0 < low <= 1 <= high, got {self.bounds}")
        return self


class Calibrator:
    def __init__(self, profiles: ProfileTable, settings: CalibrationSettings | None = None):
        self.profiles = profiles
        self.settings = settings or CalibrationSettings()
        self._samples: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=self.settings.window))
        self._cpu_samples: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=self.settings.window))
        self._tail: dict[tuple[str, str], deque[float]] = defaultdict(
            lambda: deque(maxlen=4 * self.settings.spread_batches))
        self._ratios: dict[tuple[str, str], float] = {}
        self._cpu_ratios: dict[tuple[str, str], float] = {}
        self._spreads: dict[tuple[str, str], float] = {}
        self._share_samples: dict[tuple[str, str], deque[float]] = defaultdict(
            lambda: deque(maxlen=4 * self.settings.spread_batches))
        self._shares: dict[tuple[str, str], float] = {}
        self._learned: ProfileTable = profiles
        self._rows: dict[tuple[str, str, int, int], Profile | None] = {}
        self._keys = list(dict.fromkeys((p.stage, p.variant) for p in profiles.rows))
        self.observed = 0

    def observe(self, timings: Iterable[BatchTiming]) -> None:
        """Take in measured batches, then update the ratios and the calibrated table."""
        samples, cpu_samples, tail, row_for = self._samples, self._cpu_samples, self._tail, self._row
        for t in timings:
            row = row_for(t)
            if row is None or not 0 < t.seconds < math.inf:
                continue
            key = (t.stage, t.variant)
            samples[key].append(t.seconds / row.p50)
            tail[key].append(t.seconds / row.p50)
            if t.cpu_s is not None and 0 < t.cpu_s < math.inf:
                cpu_samples[key].append(t.cpu_s / row.cpu_s)
                self._share_samples[key].append(min(1.0, t.cpu_s / (t.seconds * t.cores)))
            self.observed += 1
        s = self.settings
        moved = self._update(self._samples, self._ratios, _median, s.min_batches)
        moved |= self._update(self._tail, self._spreads, _spread, s.spread_batches)
        moved |= self._update(self._share_samples, self._shares, _share, s.min_batches, (0.05, 1.0))
        if self._update(self._cpu_samples, self._cpu_ratios, _median, s.min_batches) or moved:
            self._learned = self._corrected()

    def _row(self, t: BatchTiming) -> Profile | None:
        key = (t.stage, t.variant, t.cores, t.size)
        if key not in self._rows:
            self._rows[key] = row_of(self.profiles, t)
        return self._rows[key]

    def _corrected(self) -> ProfileTable:
        time_r, cpu_r, spread, share = dict(self._ratios), dict(self._cpu_ratios), dict(self._spreads), dict(self._shares)
        slower = self.profiles.slower(lambda p: time_r.get((p.stage, p.variant), 1.0),
                                      f"{self.profiles.source} (calibrated)")
        cpu_known = any(self._cpu_samples.values())
        rows = []
        for p, raw in zip(slower.rows, self.profiles.rows):
            key = (p.stage, p.variant)
            if key in cpu_r or cpu_known:  # a ratio of 1 (not stored) is the profiled CPU, not the slower wall time
                ratio = cpu_r.get(key, 1.0)
                p = replace(p, cpu_s_per_batch=ratio * raw.cpu_s, energy_j_per_batch=ratio * raw.energy_j_per_batch)
            if key in spread:
                p = replace(p, latency_p99_s=p.p50 * spread[key])
            if key in share:
                p = replace(p, cpu_share=share[key])
            rows.append(p)
        return ProfileTable(rows, slower.meta, slower.source)

    def _update(self, samples: dict[tuple[str, str], deque[float]], ratios: dict[tuple[str, str], float],
                stat, at_least: int, bounds: tuple[float, float] | None = None) -> bool:
        """Recompute one kind of ratio (time, spread, CPU share or CPU) for every variant, from its own batches,
        its stage's or the pipeline's; True if any moved by more than the tolerance."""
        s = self.settings
        lo, hi = bounds or s.bounds
        if not any(samples.values()):
            return False
        own = {key: stat(q, at_least) for key, q in samples.items()}
        by_stage: dict[str, float | None] = {}
        pipeline: list[float | None] = []  # computed once, only when a whole stage lacks batches

        def stage_level(stage: str) -> float | None:
            if stage not in by_stage:
                by_stage[stage] = stat([r for (st, _), q in samples.items() if st == stage for r in q], at_least)
            return by_stage[stage]

        def pipeline_level() -> float | None:
            if not pipeline:
                pipeline.append(stat([r for q in samples.values() for r in q], at_least))
            return pipeline[0]

        changed = False
        for key in self._keys:
            estimate = own.get(key)
            if estimate is None:
                estimate = stage_level(key[0])
            if estimate is None:
                estimate = pipeline_level()
            if estimate is None:
                continue
            estimate = min(max(estimate, lo), hi)
            current = ratios.get(key, 1.0)
            if abs(estimate / current - 1) > s.tolerance:
                ratios[key] = estimate
                changed = True
        return changed

    @property
    def table(self) -> ProfileTable:
        """The profiles as plans should see them now: corrected when enabled, as profiled otherwise."""
        return self._learned if self.settings.enabled else self.profiles

    @property
    def learned(self) -> ProfileTable:
        """The profiles corrected by everything measured so far, whether plans use them or not."""
        return self._learned

    def ratios(self) -> dict[str, float]:
        """'stage/variant' -> time ratio, for the ones that differ from 1 (what decisions.csv logs)."""
        return {f"{stage}/{variant}": round(r, 4) for (stage, variant), r in sorted(self._ratios.items()) if r != 1.0}

    def cpu_ratios(self) -> dict[str, float]:
        """'stage/variant' -> CPU ratio (measured CPU seconds per batch / cores x profiled median)."""
        return {f"{stage}/{variant}": round(r, 4) for (stage, variant), r in sorted(self._cpu_ratios.items())
                if r != 1.0}


def row_of(profiles: ProfileTable, t: BatchTiming) -> Profile | None:
    """What the profiles say a batch of its size costs (`row_at`, as the simulator charges it)."""
    return row_at(profiles.batches(t.stage, t.variant, t.cores), t.size)


def measured(profiles: ProfileTable, batches: list[BatchTiming], settings: CalibrationSettings | None = None
             ) -> ProfileTable:
    """The profiles as a whole run measured them: the same corrections from every batch it ran, not the last
    window of them (what a simulator of that run should serve with)."""
    n = max(len(batches), 1)
    settings = (settings or CalibrationSettings()).model_copy(
        update={"window": n, "spread_batches": max(10, math.ceil(n / 4)), "tolerance": 0.0})
    calibrator = Calibrator(profiles, settings)
    calibrator.observe(batches)
    return calibrator.learned


def _median(values: Iterable[float], at_least: int) -> float | None:
    v = sorted(values)
    return quantile(v, 0.5) if len(v) >= at_least else None


def _spread(values: Iterable[float], at_least: int) -> float | None:
    """p99 / p50 of the batch times (at least 1)."""
    v = sorted(values)
    if len(v) < at_least:
        return None
    return max(1.0, quantile(v, 0.99) / quantile(v, 0.5))


def _share(values: Iterable[float], at_least: int) -> float | None:
    """The CPU share of the batches that had their cores (nearly) to themselves: the 90th percentile."""
    v = sorted(values)
    return quantile(v, 0.9) if len(v) >= at_least else None


def quantile(ordered: list[float], q: float) -> float:
    """numpy's default (linear) quantile of a sorted list: small samples, no array overhead."""
    pos = q * (len(ordered) - 1)
    i = int(pos)
    if i + 1 >= len(ordered):
        return ordered[-1]
    return ordered[i] + (ordered[i + 1] - ordered[i]) * (pos - i)
