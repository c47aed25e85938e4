"""The machine's speed: how fast this machine runs the profiled rows right now.

Profiles are measured once, one model at a time; the machine they run on moves. `MachineSpeed` holds what serving
measured of it (`ipa profile --serving`, then every real cell served): the models' CPU per batch against their rows
(`pace`), each variant's own pace against that, how far served batch times spread (overall and within 10 s), the
fastest and slowest 10 s seen and every 10 s in order. `table` is the profiles as the machine runs them now: plans,
the simulated machine and the prediction all take it from there. It is kept in the profile's meta file beside
serving's cost (`serving` section), and read back with `from_meta`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ipa.errors import ProfileError
from ipa.profiles.table import ProfileTable

UNSTEADY = 0.10  # a measurement whose fastest and slowest 10 s differ by more than this is worth a warning


@dataclass(frozen=True)
class MachineSpeed:
    pace: float = 1.0  # the models' CPU per batch served on this machine / profiled (the day's or the VM's speed)
    spread: float = 1.0  # served batches' p99 over their p50 (a row's own, if wider, stays)
    # per 'stage/variant': its pace over `pace` (a machine's speed is not one number across models): a served
    # variant's from its own batches, another's from its pace alone on a core against its stage's served variant's
    variant_pace: dict[str, float] = field(default_factory=dict)
    # the lowest and highest `pace` of any 10 s served: the machine at its fastest and slowest; () when not measured
    pace_range: tuple[float, ...] = ()
    # every 10 s's `pace` in the order served: how the machine's speed moves over time (`replay.stretch`)
    pace_windows: tuple[float, ...] = ()
    # served batches' p99 over their p50 within each 10 s: `spread` less the speed's moves (None: not measured)
    window_spread: float | None = None
    source: str = ""  # when and where it was measured

    def of(self, stage: str, variant: str) -> float:
        """How many times its profiled work one of the variant's batches takes here."""
        return self.pace * self.variant_pace.get(f"{stage}/{variant}", 1.0)

    def table(self, profiles: ProfileTable) -> ProfileTable:
        """The profiles as this machine runs them: every row's work at its variant's pace, batches spread as
        served. The one way a table follows the machine's speed."""
        if self.pace == 1.0 and self.spread == 1.0 and not self.variant_pace:
            return profiles
        own = f", per variant x{self.variant_range()} of it" if self.variant_pace else ""
        return profiles.at_pace(lambda p: self.of(p.stage, p.variant),
                                f"{profiles.source} (as served here: x{self.pace:.2f} CPU{own}, p99 >= "
                                f"{self.spread:.2f} x p50, from ipa profile --serving"
                                f"{' ' + self.source if self.source else ''})", self.spread)

    def at(self, pace: float) -> MachineSpeed:
        """The same machine at another overall pace (the band's fastest or slowest)."""
        return replace(self, pace=pace)

    def within_windows(self) -> MachineSpeed:
        """The same machine drawing each batch at the spread left within 10 s: its moves over time replayed apart."""
        return replace(self, spread=self.window_spread or self.spread)

    def variant_range(self) -> str:
        """The variants' own paces as one figure or a range ('1.01', '1.00-1.33')."""
        lo, hi = min(self.variant_pace.values(), default=1.0), max(self.variant_pace.values(), default=1.0)
        return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"

    def unsteady(self, moved: float = UNSTEADY) -> str:
        """A warning when the speed moved more than `moved` between the fastest and slowest 10 s measured: served
        figures move as much from run to run, and no prediction made before a run is closer than that."""
        span = self.pace_range
        if len(span) != 2 or span[1] <= span[0] * (1 + moved):
            return ""
        return (f"this machine's speed moved {span[1] / span[0] - 1:.0%} between the fastest and the slowest "
                "10 s of the measurement, with the same work: served latency and throughput will move as much from "
                "one run to the next, and predictions (ipa experiment --profiles) cannot be closer; python "
                "bench/drift.py measures how the machine's speed moves with nothing else running")

    def to_meta(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("source")
        return out


def from_meta(meta: dict[str, Any], source: str = "") -> MachineSpeed | None:
    """The machine's speed from a profile's meta file (its `serving` section), or None when never measured."""
    raw = meta.get("serving")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProfileError(f"{source}: 'serving' in the meta file must be a mapping")
    variants = raw.get("variant_pace", {})
    if not isinstance(variants, dict) or not all(_factor(v) for v in variants.values()):
        raise ProfileError(f"{source}: serving.variant_pace must map each 'stage/variant' to a factor > 0, "
                           f"got {variants!r}")
    span = raw.get("pace_range", [])
    if not isinstance(span, list | tuple) or len(span) not in (0, 2) or not all(_factor(v) for v in span) or (
            span and span[0] > span[1]):
        raise ProfileError(f"{source}: serving.pace_range must be [lowest, highest]: two paces > 0 (the "
                           f"fastest and the slowest the models ran), got {span!r}")
    windows = raw.get("pace_windows", [])
    if not isinstance(windows, list | tuple) or not all(_factor(v) for v in windows):
        raise ProfileError(f"{source}: serving.pace_windows must be a list of paces > 0 (each 10 s served, in "
                           f"order), got {windows!r}")
    factors = {}
    for name in ("pace", "spread"):
        v = raw.get(name, 1.0)
        if not _factor(v):
            raise ProfileError(f"{source}: serving.{name} must be a finite number > 0, got {v!r}")
        factors[name] = float(v)
    within = raw.get("window_spread")
    if within is not None and (not _number(within) or not 1 <= within < math.inf):
        raise ProfileError(f"{source}: serving.window_spread must be a finite number >= 1 (p99 over p50), got "
                           f"{within!r}")
    return MachineSpeed(**factors, variant_pace={str(k): float(v) for k, v in variants.items()},
                        pace_range=tuple(float(v) for v in span), pace_windows=tuple(float(v) for v in windows),
                        window_spread=float(within) if within is not None else None,
                        source=str(raw.get("measured", source)))


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _factor(v: Any) -> bool:
    return _number(v) and 0 < v < math.inf
