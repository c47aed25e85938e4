"""Following the machine's speed from one served cell to the next.

A refresh (`ipa profile --serving`) is one short measurement at one load, and the machine drifts after it. Each real
cell served says again how fast the machine ran its batches: the pace, the spread within 10 s and each variant's
pace over the pooled one. The next cell starts from the median of the last `FOLLOW_CELLS` of each, the refresh's
counting as the first, whatever load the cells ran at: the pace follows the clock, not the load.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace

import numpy as np

from ipa.machine.measure import WINDOW_S, machine_pace, served_paces, served_spread, window_paces
from ipa.machine.speed import MachineSpeed
from ipa.profiles.calibration import BatchTiming
from ipa.profiles.table import ProfileTable

FOLLOW_CELLS = 3  # a real cell starts from the median of this many cells served last


def lately(values: list[float]) -> float | None:
    """The median of the last FOLLOW_CELLS values (None: none yet)."""
    return float(np.median(values[-FOLLOW_CELLS:])) if values else None


def cell_pace(speed: MachineSpeed | None, profiles: ProfileTable, batches: list[BatchTiming]
              ) -> tuple[float, float | None]:
    """The pace a cell's prediction ran the models at (`speed.pace`) and the one its batches had (None when none of
    them was timed against a row of `profiles`, the profiles as planned: already at `speed`)."""
    planned = speed.pace if speed else 1.0
    measured = machine_pace(profiles, batches)
    return planned, planned * measured[0] if measured else None


@dataclass
class SpeedTracker:
    """The paces, spreads within 10 s and variant paces of the cells served so far, the refresh's first."""

    paces: list[float] = field(default_factory=list)
    spreads: list[float] = field(default_factory=list)
    variant_paces: dict[str, list[float]] = field(default_factory=dict)

    @classmethod
    def refreshed(cls, speed: MachineSpeed | None) -> SpeedTracker:
        if speed is None:
            return cls()
        return cls([speed.pace], [speed.window_spread] if speed.window_spread else [],
                   {name: [f] for name, f in speed.variant_pace.items()})

    def follow(self, speed: MachineSpeed, profiles: ProfileTable, profiled: ProfileTable,
               batches: list[BatchTiming], before: float, after: float) -> MachineSpeed:
        """`speed` once a cell has served `batches` at the pace `after`, having started from `before` (`profiles`
        at that pace, `profiled` as measured): pace, spread and variant paces as lately served, the range of paces
        seen widened by this cell's 10-s windows (the next band) and those windows joining the speed the next
        prediction replays (`MachineSpeed.pace_windows`) in order."""
        self.paces.append(after)
        spread = served_spread(profiles, batches, window_s=WINDOW_S)
        self.spreads += [spread] if spread else []
        for name, f in own_paces(speed.variant_pace, served_paces(profiled, batches)).items():
            self.variant_paces.setdefault(name, []).append(f)
        windows = (*speed.pace_windows, *(before * w for w in window_paces(profiles, batches)))
        seen = [*speed.pace_range, *windows]
        return replace(speed, pace=lately(self.paces) or speed.pace,
                       pace_range=(min(seen), max(seen)) if seen else (), pace_windows=windows,
                       window_spread=lately(self.spreads) or speed.window_spread,
                       variant_pace={name: lately(fs) for name, fs in self.variant_paces.items()})


def own_paces(refresh: dict[str, float], served: dict[str, float]) -> dict[str, float]:
    """Each variant's pace over the pooled one as a cell ran it: a served variant's own (`served_paces`); another
    moved with its stage's served ones (the refresh ties it to them: its pace alone on a core over theirs), by the
    median of their change; a stage the cell did not serve as the refresh measured it."""
    moved: dict[str, list[float]] = {}
    for name, own in served.items():
        if name in refresh:
            moved.setdefault(name.split("/")[0], []).append(own / refresh[name])
    out = {name: f * statistics.median(moved[name.split("/")[0]]) if name.split("/")[0] in moved else f
           for name, f in refresh.items()}
    return out | served
