"""The profile table: one row per (stage, variant, batch, cores), read from CSV plus a meta sidecar."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from ipa._io import write_csv, write_json
from ipa.errors import ProfileError
from ipa.spec import PipelineSpec

REQUIRED = ("stage", "variant", "batch", "cores", "latency_p99_s", "throughput_rps", "energy_j_per_batch")
ENERGY_METHODS = ("rapl", "perf", "nvml", "estimate", "example")


@dataclass(frozen=True)
class Profile:
    """Measured behaviour of one variant at one (batch, cores); latencies are of a whole batch."""

    stage: str
    variant: str
    batch: int
    cores: int
    latency_p99_s: float
    throughput_rps: float
    energy_j_per_batch: float
    latency_p50_s: float | None = None
    energy_method: str = "estimate"
    load_s: float | None = None
    memory_mb: float | None = None
    cpu_s_per_batch: float | None = None  # CPU seconds a batch burns (all its threads); None: cores x p50
    cpu_share: float | None = None  # of its cores, the share a batch keeps busy with the machine to itself; None: all

    @property
    def p50(self) -> float:
        return self.latency_p50_s if self.latency_p50_s is not None else self.latency_p99_s

    @property
    def cpu_s(self) -> float:
        """CPU seconds per batch: measured, or the reserved cores busy for the whole batch."""
        return self.cpu_s_per_batch if self.cpu_s_per_batch is not None else self.cores * self.p50

    @property
    def alone_s(self) -> float:
        """Seconds a batch takes with the machine to itself: its CPU over the CPUs it keeps busy then. Below the
        p50 when the p50 was measured on a busy machine (it holds the wait for a core)."""
        return min(self.p50, self.cpu_s / (self.cores * (self.cpu_share or 1.0)))


def row_at(rows: Sequence[Profile], size: int) -> Profile | None:
    """What a batch of `size` costs, from one (stage, variant, cores)'s `rows` by batch ascending: the row profiled
    at that size, else the straight line between the profiled batches either side of it (the smallest row below
    them all; None above the largest). Not the next larger row: served partial batches burn what the line says
    (docs/results.md)."""
    hi = next((i for i, p in enumerate(rows) if p.batch >= size), None)
    if hi is None:
        return None
    upper = rows[hi]
    if upper.batch == size or hi == 0:
        return upper
    lower = rows[hi - 1]
    f = (size - lower.batch) / (upper.batch - lower.batch)

    def line(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a + f * (b - a)

    measured_cpu = lower.cpu_s_per_batch is not None or upper.cpu_s_per_batch is not None
    return replace(upper, batch=size, latency_p99_s=line(lower.latency_p99_s, upper.latency_p99_s),
                   latency_p50_s=line(lower.p50, upper.p50) if upper.latency_p50_s is not None else None,
                   throughput_rps=line(lower.throughput_rps, upper.throughput_rps),
                   energy_j_per_batch=line(lower.energy_j_per_batch, upper.energy_j_per_batch),
                   cpu_s_per_batch=line(lower.cpu_s, upper.cpu_s) if measured_cpu else None,
                   cpu_share=line(lower.cpu_share, upper.cpu_share) if upper.cpu_share is not None else None)


_INT = {"batch", "cores"}
_FLOAT = {f.name for f in fields(Profile)} - _INT - {"stage", "variant", "energy_method"}


@dataclass
class ProfileTable:
    rows: list[Profile]
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        self._index = {(p.stage, p.variant, p.batch, p.cores): p for p in self.rows}
        if len(self._index) < len(self.rows):
            raise ProfileError(f"{self.source}: two rows profile the same (stage, variant, batch, cores)")
        self._by_stage: dict[str, list[Profile]] = {}
        self._by_variant: dict[tuple[str, str, int], list[Profile]] = {}
        for p in self.rows:
            self._by_stage.setdefault(p.stage, []).append(p)
        for p in sorted(self.rows, key=lambda p: p.batch):
            self._by_variant.setdefault((p.stage, p.variant, p.cores), []).append(p)

    def for_stage(self, stage: str) -> list[Profile]:
        return self._by_stage.get(stage, [])

    def batches(self, stage: str, variant: str, cores: int) -> list[Profile]:
        """One (stage, variant, cores)'s rows, by batch ascending (what `row_at` reads)."""
        return self._by_variant.get((stage, variant, cores), [])

    def get(self, stage: str, variant: str, batch: int, cores: int) -> Profile | None:
        return self._index.get((stage, variant, batch, cores))

    def lookup(self, stage: str, variant: str, batch: int, cores: int) -> Profile:
        p = self.get(stage, variant, batch, cores)
        if p is None:
            raise ProfileError(f"{self.source}: no profile for {stage}/{variant} at batch {batch}, {cores} cores")
        return p

    @property
    def idle_power_w_per_core(self) -> float | None:
        v = self.meta.get("idle_power_w_per_core")
        return float(v) if v is not None else None

    @cached_property
    def joules_per_cpu_second(self) -> float:
        """What a second of busy CPU costs on this machine beyond its idle draw (median over the rows: on the estimate
        the model's dynamic watts per core, on RAPL what the package measured); 0 with no row to say."""
        timed = [p for p in self.rows if p.cpu_s_per_batch] or self.rows  # CPU measured, else cores x p50
        ratios = sorted(p.energy_j_per_batch / p.cpu_s for p in timed if p.cpu_s > 0 and p.energy_j_per_batch > 0)
        return ratios[len(ratios) // 2] if ratios else 0.0

    @property
    def energy_methods(self) -> list[str]:
        return sorted({p.energy_method for p in self.rows})

    @property
    def energy_label(self) -> str:
        """One word for reports: the method, or `estimate` if any row is estimated."""
        methods = self.energy_methods
        if "estimate" in methods:
            return "estimate"
        return methods[0] if len(methods) == 1 else "+".join(methods)

    def at_pace(self, factor: float | Callable[[Profile], float], source: str, spread: float = 1.0) -> ProfileTable:
        """The table of a machine that does every row's work `factor` (or `factor(row)`) times slower: its batches
        take that much longer and burn that much more CPU, and the joules that CPU costs (unlike `slower`, a wait).
        `spread`: the p99 over p50 its batches have when served (a row keeps its own if that is wider)."""
        of = factor if callable(factor) else (lambda p: factor)
        if not callable(factor) and factor == 1.0 and spread == 1.0:
            return self
        rows = [replace(slow, cpu_s_per_batch=p.cpu_s * of(p), energy_j_per_batch=p.energy_j_per_batch * of(p),
                        latency_p99_s=max(slow.latency_p99_s, slow.p50 * spread))
                for slow, p in zip(self.slower(of, source).rows, self.rows)]
        return ProfileTable(rows, self.meta, source)

    def slower(self, factor: Callable[[Profile], float], source: str) -> ProfileTable:
        """The table of a machine on which each row's batches take `factor(row)` times as long (same joules)."""
        rows = []
        for p in self.rows:
            f = factor(p)
            rows.append(p if f == 1.0 else replace(
                p, latency_p99_s=p.latency_p99_s * f, throughput_rps=p.throughput_rps / f,
                latency_p50_s=p.latency_p50_s * f if p.latency_p50_s is not None else None))
        return ProfileTable(rows, self.meta, source)

    def check_against(self, spec: PipelineSpec) -> None:
        """Every row names a known stage and variant; every stage has at least one profiled variant."""
        for i, p in enumerate(self.rows):
            stage = next((s for s in spec.stages if s.name == p.stage), None)
            if stage is None:
                raise ProfileError(
                    f"{self.source}: row {i + 2}: unknown stage '{p.stage}' "
                    f"(pipeline '{spec.name}' has: {', '.join(spec.stage_names)})"
                )
            if p.variant not in {v.name for v in stage.variants}:
                raise ProfileError(
                    f"{self.source}: row {i + 2}: unknown variant '{p.variant}' for stage '{p.stage}' "
                    f"(allowed: {', '.join(v.name for v in stage.variants)})"
                )
        for s in spec.stages:
            if not self.for_stage(s.name):
                raise ProfileError(f"{self.source}: no rows for stage '{s.name}' of pipeline '{spec.name}'")

    def unprofiled(self, spec: PipelineSpec) -> list[tuple[str, str]]:
        """(stage, variant) of every variant of the spec without a row: plans cannot choose them."""
        have = {(p.stage, p.variant) for p in self.rows}
        return [(s.name, v.name) for s in spec.stages for v in s.variants if (s.name, v.name) not in have]

    def describe_unprofiled(self, spec: PipelineSpec) -> str:
        """One line on the variants plans leave out for want of rows ("" when every variant has some)."""
        missing = self.unprofiled(spec)
        if not missing:
            return ""
        names = ", ".join(f"{s}/{v}" for s, v in missing)
        return (f"{len(missing)} variant(s) have no rows in {self.source}, so plans leave them out (fa2-low and "
                f"fa2-high freeze the least and most accurate profiled ones): {names}; profile them with "
                "ipa profile --stage STAGE --variants NAME --out PROFILES")

    def save(self, path: str | Path) -> Path:
        """Write the CSV and its `.meta.json` sidecar atomically."""
        cols = [f.name for f in fields(Profile)]
        write_csv(path, (asdict(p) for p in self.rows), cols)
        write_json(meta_path(path), self.meta)
        return Path(path)


def meta_path(path: str | Path) -> Path:
    return Path(f"{path}.meta.json")


def load_profiles(path: str | Path, spec: PipelineSpec | None = None) -> ProfileTable:
    """Read and validate a profile CSV; errors name the file, the row and the column."""
    p = Path(path)
    if not p.is_file():
        raise ProfileError(f"{p}: " + ("a directory, not a profile CSV" if p.is_dir() else "profile file not found"))
    try:
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise ProfileError(f"{p}: missing required column(s): {', '.join(missing)} (required: "
                                   f"{', '.join(REQUIRED)})")
            rows = [_parse_row(r, line, p) for line, r in enumerate(reader, start=2)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ProfileError(f"{p}: not a CSV text file ({e}): a profile is the CSV ipa profile writes") from None
    if not rows:
        raise ProfileError(f"{p}: no profile rows")
    seen: dict[tuple[str, str, int, int], int] = {}
    for line, r in enumerate(rows, start=2):
        key = (r.stage, r.variant, r.batch, r.cores)
        if key in seen:
            raise ProfileError(f"{p}: rows {seen[key]} and {line} both profile {r.stage}/{r.variant} at batch "
                               f"{r.batch}, {r.cores} cores: keep one (plans and the simulator would read different ones)")
        seen[key] = line
    mp = meta_path(p)
    meta = json.loads(mp.read_text()) if mp.is_file() else {}
    table = ProfileTable(rows, meta, str(p))
    if spec is not None:
        table.check_against(spec)
    return table


def _parse_row(raw: dict[str, str | None], line: int, path: Path) -> Profile:
    values: dict[str, Any] = {}
    for name in [f.name for f in fields(Profile)]:
        text = (raw.get(name) or "").strip()
        if not text:
            if name in REQUIRED:
                raise ProfileError(f"{path}: row {line}: empty value in required column '{name}'")
            continue
        values[name] = _convert(name, text, line, path)
    for name in ("latency_p99_s", "throughput_rps", "batch", "cores", "latency_p50_s", "cpu_s_per_batch", "cpu_share"):
        if name in values and not values[name] > 0:
            raise ProfileError(f"{path}: row {line}: '{name}' must be positive, got {values[name]}")
    for name in ("energy_j_per_batch", "load_s"):
        if name in values and values[name] < 0:
            raise ProfileError(f"{path}: row {line}: '{name}' must be >= 0, got {values[name]}")
    _check_consistent(values, line, path)
    method = values.get("energy_method", "estimate")
    if method not in ENERGY_METHODS:
        raise ProfileError(f"{path}: row {line}: 'energy_method' is '{method}' (allowed: {', '.join(ENERGY_METHODS)})")
    return Profile(**values)


MAX_SPEEDUP = 10.0  # throughput above batch / p50 by more than this is not a measurement


def _check_consistent(v: dict[str, Any], line: int, path: Path) -> None:
    """What one measurement cannot give: a median above its 99th percentile, more than all of the cores busy, or a
    throughput the batch's own time rules out (a measured mean is never far below the median)."""
    where = f"{path}: row {line} ({v['stage']}/{v['variant']}, batch {v['batch']}, {v['cores']} cores)"
    p50, p99 = v.get("latency_p50_s"), v["latency_p99_s"]
    if p50 is not None and p50 > p99 * (1 + 1e-9):
        raise ProfileError(f"{where}: latency_p50_s {p50:g} is above latency_p99_s {p99:g} (a median cannot exceed "
                           "the 99th percentile: are the columns swapped?)")
    if v.get("cpu_share", 0) > 1:
        raise ProfileError(f"{where}: cpu_share {v['cpu_share']:g} is above 1 (the share of its cores a batch keeps busy)")
    limit = MAX_SPEEDUP * v["batch"] / (p50 if p50 is not None else p99)
    if v["throughput_rps"] > limit:
        raise ProfileError(f"{where}: throughput_rps {v['throughput_rps']:g} is more than {MAX_SPEEDUP:g} x what a "
                           f"batch of {v['batch']} in {p50 if p50 is not None else p99:g} s allows ({limit:.4g} rps)")


def _convert(name: str, text: str, line: int, path: Path) -> Any:
    try:
        if name in _INT:
            return int(text)
        if name in _FLOAT:
            v = float(text)
            if not math.isfinite(v):
                raise ValueError
            return v
        return text
    except ValueError:
        kind = "an integer" if name in _INT else "a finite number"
        raise ProfileError(f"{path}: row {line}: column '{name}' must be {kind}, got '{text}'") from None
