"""The one meter interface everything above sees: cumulative joules per domain, and a method label."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reading:
    """Cumulative joules per domain since the meter started, at a monotonic time."""

    t: float
    joules: dict[str, float]
    method: str

    @property
    def total(self) -> float:
        return sum(self.joules.values())

    def minus(self, earlier: Reading) -> dict[str, float]:
        return {d: j - earlier.joules.get(d, 0.0) for d, j in self.joules.items()}


@dataclass
class Measurement:
    """Energy of one window (a batch, a run): filled in when the window closes."""

    method: str = ""
    seconds: float = 0.0
    joules: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.joules.values())

    @property
    def watts(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


class EnergyMeter(ABC):
    """Start, read cumulative joules per domain, stop. Subclasses wrap one backend each."""

    method: str = "unknown"

    def start(self) -> None:
        """Begin counting; reads after this are relative to now."""

    @abstractmethod
    def read(self) -> Reading:
        """Cumulative joules per domain since `start`."""

    def stop(self) -> None:
        """Release what the meter holds (a subprocess, a library handle)."""

    @property
    def description(self) -> str:
        return self.method

    def __enter__(self) -> EnergyMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def window(self) -> Iterator[Measurement]:
        """`with meter.window() as m:` ... then `m.joules`, `m.seconds`: the energy of the block."""
        m = Measurement(self.method)
        before = self.read()
        try:
            yield m
        finally:
            after = self.read()
            m.seconds = after.t - before.t
            m.joules = after.minus(before)


def now() -> float:
    return time.monotonic()
