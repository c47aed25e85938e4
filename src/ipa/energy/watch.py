"""`ipa energy watch`: one line per interval (time, joules, domain, method), like the study's Figure 1."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ipa.energy.common import EnergyMeter
from ipa.errors import ConfigError


@dataclass(frozen=True)
class IntervalRow:
    t: float  # seconds since the watch started
    domain: str
    joules: float
    method: str


@dataclass(frozen=True)
class Watched:
    rows: list[IntervalRow]
    elapsed_s: float
    exit_code: int | None  # the command's (None without one, or when the watch stopped it)


def watch(
    meter: EnergyMeter,
    interval_s: float = 1.0,
    duration_s: float | None = None,
    command: Sequence[str] | None = None,
    on_row: Callable[[IntervalRow], None] = lambda r: None,
) -> Watched:
    """Sample until the duration passes or the command exits; the rows, the elapsed time, the command's exit code."""
    proc = _start(command) if command else None
    rows: list[IntervalRow] = []
    start = last = meter.read()
    next_t = start.t + interval_s
    end_t = start.t + duration_s if duration_s is not None else float("inf")
    try:
        while True:
            deadline = min(next_t, end_t)
            while time.monotonic() < deadline and not (proc and proc.poll() is not None):
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            cur = meter.read()
            for domain, j in cur.minus(last).items():
                row = IntervalRow(cur.t - start.t, domain, j, cur.method)
                rows.append(row)
                on_row(row)
            last, next_t = cur, next_t + interval_s
            if (proc and proc.poll() is not None) or cur.t >= end_t - 1e-3:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C ends the watch; the caller still prints the totals
    finally:
        if proc and proc.poll() is None:
            proc.terminate()
    return Watched(rows, last.t - start.t, proc.poll() if proc else None)


def _start(command: Sequence[str]) -> subprocess.Popen:
    try:
        return subprocess.Popen(list(command))
    except (FileNotFoundError, PermissionError, NotADirectoryError) as e:
        raise ConfigError(f"cannot run {command[0]!r}: {e.strerror or e} (give a command on the PATH or a path "
                          "to an executable after --)") from None
