"""Workloads by name: the IPA paper's four trace windows, any trace window, a file, synthetic patterns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ipa.errors import ConfigError
from ipa.workload.trace import find_trace, read_trace

DAMPING = 8
# IPA's experiment configs (data/configs/final/video-mul-*.yaml): [start, end) windows, damped by 8.
PATTERNS: dict[str, list[tuple[int, int]]] = {
    "bursty": [(1301160, 1302360)],
    "steady-low": [(1299600, 1300800)],
    "steady-high": [(1768800, 1769400), (1768800, 1769400)],
    "fluctuating": [(1301400, 1302000), (1308600, 1309200)],
}
FORMS = (
    "a pattern name (bursty, steady-low, steady-high, fluctuating), trace:START-END[/DAMPING], file:PATH, "
    "static:RPS:SECONDS, step:LOW:HIGH:SECONDS[:AT], sine:MEAN:AMPLITUDE:PERIOD:SECONDS, "
    "spike:BASE:PEAK:SECONDS[:AT:WIDTH]"
)


@dataclass(frozen=True)
class Workload:
    """Requests per second, one value per second."""

    name: str
    rps: np.ndarray
    source: str

    @property
    def seconds(self) -> int:
        return len(self.rps)

    def stats(self) -> dict[str, float]:
        r = self.rps.astype(float)
        mean = float(r.mean()) if len(r) else 0.0
        std = float(r.std()) if len(r) else 0.0
        return {
            "seconds": self.seconds,
            "min": float(r.min()),
            "mean": round(mean, 4),
            "max": float(r.max()),
            "p99": float(np.percentile(r, 99)),
            "cv": round(std / mean, 4) if mean else 0.0,  # burstiness: std / mean
            "peak_to_mean": round(float(r.max()) / mean, 4) if mean else 0.0,
            "total_requests": float(r.sum()),
        }


def damp(values: np.ndarray, factor: int) -> np.ndarray:
    """IPA's damping: int(x / factor), truncating."""
    return (values // factor).astype(np.int64)


def trace_window(trace: np.ndarray, windows: list[tuple[int, int]], damping: int = DAMPING) -> np.ndarray:
    for start, end in windows:
        if start >= end:
            raise ConfigError(f"trace window {start}-{end} is empty or reversed: START must be below END "
                              "(trace:START-END, seconds from the trace's start)")
        if not 0 <= start < end <= len(trace):
            raise ConfigError(f"trace window {start}-{end} is outside the trace (0-{len(trace)})")
    return damp(np.concatenate([trace[s:e] for s, e in windows]), damping)


def load_workload(text: str, trace: str | Path | None = None) -> Workload:
    """Parse any workload form (see FORMS); trace-based forms find the trace as `find_trace` does."""
    if text in PATTERNS:
        path = find_trace(trace)
        return Workload(text, trace_window(read_trace(path), PATTERNS[text]), f"{path} {PATTERNS[text]} /{DAMPING}")
    kind, _, rest = text.partition(":")
    parsers = {"trace": _trace, "file": _file, "static": _static, "step": _step, "sine": _sine, "spike": _spike}
    if kind not in parsers or not rest:
        raise ConfigError(f"unknown workload '{text}' (allowed: {FORMS})")
    try:
        return parsers[kind](text, rest, trace)
    except (ValueError, IndexError):
        raise ConfigError(f"workload '{text}' is malformed (allowed: {FORMS})") from None


# form, its fields in order, how many are required
SYNTHETIC = {
    "static": ("static:RPS:SECONDS", ("RPS", "SECONDS"), 2),
    "step": ("step:LOW:HIGH:SECONDS[:AT]", ("LOW", "HIGH", "SECONDS", "AT"), 3),
    "sine": ("sine:MEAN:AMPLITUDE:PERIOD:SECONDS", ("MEAN", "AMPLITUDE", "PERIOD", "SECONDS"), 4),
    "spike": ("spike:BASE:PEAK:SECONDS[:AT:WIDTH]", ("BASE", "PEAK", "SECONDS", "AT", "WIDTH"), 3),
}


MAX_RATE = 1e6  # requests per second: far above any trace here, low enough that plans and simulations stay finite
RATES = ("RPS", "LOW", "HIGH", "MEAN", "AMPLITUDE", "BASE", "PEAK")


def check_rates(w: Workload, hint: str = "") -> Workload:
    """A workload's rates must stay below MAX_RATE (after any scaling: `hint` names it)."""
    if len(w.rps) and float(np.max(w.rps)) > MAX_RATE:
        raise ConfigError(f"workload '{w.name}' reaches {float(np.max(w.rps)):.3g} rps{hint}, above the {MAX_RATE:g} "
                          "rps ipa plans and simulates (is it a typo?)")
    return w


def _fields(text: str, rest: str, kind: str) -> dict[str, float]:
    """The named numbers of a synthetic form; each must be finite and >= 0, a count of seconds a whole number."""
    form, names, required = SYNTHETIC[kind]
    parts = rest.split(":")
    if not required <= len(parts) <= len(names):
        raise ConfigError(f"workload '{text}': expected {form} ({len(parts)} value(s) given)")
    out = {}
    for name, raw in zip(names, parts):
        try:
            v = float(raw)
        except ValueError:
            raise ConfigError(f"workload '{text}': {name} must be a number, got '{raw}' ({form})") from None
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"workload '{text}': {name} must be a finite number >= 0, got '{raw}' ({form})")
        if name in RATES and v > MAX_RATE:
            raise ConfigError(f"workload '{text}': {name} {raw} rps is above the {MAX_RATE:g} rps ipa plans and "
                              f"simulates ({form})")
        if name in ("SECONDS", "AT", "WIDTH") and v != int(v):
            raise ConfigError(f"workload '{text}': {name} must be a whole number of seconds, got '{raw}' ({form})")
        out[name] = v
    if out["SECONDS"] < 1:
        raise ConfigError(f"workload '{text}': SECONDS must be at least 1, got '{parts[names.index('SECONDS')]}' "
                          f"({form})")
    if "PERIOD" in out and out["PERIOD"] <= 0:
        raise ConfigError(f"workload '{text}': PERIOD must be > 0 ({form})")
    return out


def _trace(text: str, rest: str, trace) -> Workload:
    window, _, damping = rest.partition("/")
    start, end = (int(x) for x in window.split("-"))
    factor = int(damping) if damping else DAMPING
    if factor < 1:
        raise ConfigError(f"workload '{text}': DAMPING divides the trace's rates, so it must be a whole number >= 1, "
                          f"got {factor} (trace:START-END[/DAMPING])")
    path = find_trace(trace)
    return Workload(text, trace_window(read_trace(path), [(start, end)], factor), f"{path} [{start}, {end}) /{factor}")


def _file(text: str, rest: str, trace) -> Workload:
    from ipa.workload.trace import FORMAT

    path = Path(rest)
    if not path.is_file():
        raise ConfigError(f"workload '{text}': {path} is " + ("a directory" if path.is_dir() else "not there")
                          + f" ({FORMAT})")
    return Workload(text, read_trace(path), str(path))


def _static(text: str, rest: str, trace) -> Workload:
    f = _fields(text, rest, "static")
    return Workload(text, np.full(int(f["SECONDS"]), f["RPS"]), "synthetic")


def _step(text: str, rest: str, trace) -> Workload:
    f = _fields(text, rest, "step")
    seconds = int(f["SECONDS"])
    at = _inside(text, "step", f, seconds)
    return Workload(text, np.where(np.arange(seconds) < at, f["LOW"], f["HIGH"]).astype(float), "synthetic")


def _sine(text: str, rest: str, trace) -> Workload:
    """Fractional rates are kept (arrivals keep their running total), so a small amplitude is not rounded away."""
    f = _fields(text, rest, "sine")
    if f["AMPLITUDE"] > f["MEAN"]:
        raise ConfigError(f"workload '{text}': AMPLITUDE must be at most MEAN ({f['AMPLITUDE']:g} > {f['MEAN']:g}): "
                          "the rate would go below 0, be cut there, and average more than MEAN "
                          f"({SYNTHETIC['sine'][0]})")
    t = np.arange(int(f["SECONDS"]))
    return Workload(text, np.maximum(0.0, f["MEAN"] + f["AMPLITUDE"] * np.sin(2 * np.pi * t / f["PERIOD"])),
                    "synthetic")


def _spike(text: str, rest: str, trace) -> Workload:
    f = _fields(text, rest, "spike")
    seconds = int(f["SECONDS"])
    at = _inside(text, "spike", f, seconds)
    width = int(f.get("WIDTH", max(1, seconds // 20)))
    if not 1 <= width <= seconds - at:
        raise ConfigError(f"workload '{text}': WIDTH must be 1 to {seconds - at} (the spike from AT={at} must end by "
                          f"SECONDS={seconds}), got {width} ({SYNTHETIC['spike'][0]})")
    t = np.arange(seconds)
    return Workload(text, np.where((t >= at) & (t < at + width), f["PEAK"], f["BASE"]).astype(float), "synthetic")


def _inside(text: str, kind: str, f: dict[str, float], seconds: int) -> int:
    """AT (default SECONDS/2): the second the rate changes, which must fall inside the workload, else a step is a
    static rate and a spike never comes."""
    at = int(f.get("AT", seconds // 2))
    if not 0 < at < seconds:
        given = f"got {at}" if "AT" in f else f"SECONDS/2 is {at}: give SECONDS >= 2"
        raise ConfigError(f"workload '{text}': AT must be 1 to {seconds - 1} seconds, inside the workload ({given}) "
                          f"({SYNTHETIC[kind][0]})")
    return at
