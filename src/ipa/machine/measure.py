"""Measuring the machine's speed from the batches it served: its pace (CPU per batch against the profiled rows),
each variant's own, the pace of every 10 s, and how far batch times spread. `MachineSpeed` holds the results."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from ipa.profiles.calibration import BatchTiming, quantile, row_of
from ipa.profiles.table import ProfileTable

WINDOW_S = 10.0  # the span over which the machine's speed is taken as one (`window_paces`)
WINDOW_LEAST = 8  # batches a window needs before its pace says anything


def machine_pace(profiles: ProfileTable, batches: Iterable[BatchTiming]) -> tuple[float, int] | None:
    """How many times the profiles' CPU seconds this machine's served batches burned (the median, and how many
    batches say; wall time over p50 where a batch's CPU was not measured), or None when no batch matches a row.
    CPU, not wall time: the wait for a core at that moment's load is the simulator's to add."""
    ratios = []
    for t in batches:
        row = row_of(profiles, t)
        if row is None or not 0 < t.seconds < math.inf:
            continue
        cpu = t.cpu_s is not None and 0 < t.cpu_s < math.inf
        ratios.append(t.cpu_s / row.cpu_s if cpu else t.seconds / row.p50)
    return (quantile(sorted(ratios), 0.5), len(ratios)) if ratios else None


def window_paces(profiles: ProfileTable, batches: Iterable[BatchTiming], window_s: float = WINDOW_S,
                 least: int = WINDOW_LEAST) -> list[float]:
    """`machine_pace` of each `window_s` of the batches (by when they ended) that holds at least `least` of them.
    A machine's speed is not one number even within a minute, whatever the load: a prediction says how its figures
    move over the range of paces the machine was seen to run at (`Setup.paced`)."""
    groups = by_window(batches, window_s)
    paces = [machine_pace(profiles, group) for _, group in sorted(groups.items()) if len(group) >= least]
    return [p[0] for p in paces if p is not None]


def by_window(batches: Iterable[BatchTiming], window_s: float = WINDOW_S) -> dict[int, list[BatchTiming]]:
    """The batches by the `window_s` they ended in (its index from the run's start); those with no end time left out."""
    groups: dict[int, list[BatchTiming]] = defaultdict(list)
    for t in batches:
        if t.t_s is not None and math.isfinite(t.t_s):
            groups[int(t.t_s // window_s)].append(t)
    return groups


def served_paces(profiles: ProfileTable, batches: Iterable[BatchTiming], least: int = 10) -> dict[str, float]:
    """Per served 'stage/variant' with at least `least` batches: its own `machine_pace` over all of theirs. The
    rows were profiled one model at a time on another day, and a machine's speed is not one number across models:
    one pace for all would plan one stage too fast and the next too slow."""
    batches = list(batches)
    pooled = machine_pace(profiles, batches)
    if pooled is None:
        return {}
    groups: dict[str, list[BatchTiming]] = defaultdict(list)
    for t in batches:
        groups[f"{t.stage}/{t.variant}"].append(t)
    out = {}
    for name, group in groups.items():
        own = machine_pace(profiles, group)
        if own is not None and own[1] >= least:
            out[name] = own[0] / pooled[0]
    return out


def served_spread(profiles: ProfileTable, batches: Iterable[BatchTiming], window_s: float | None = None,
                  least: int = WINDOW_LEAST) -> float | None:
    """Served batches' 99th percentile over their median, each stage's batch times against their own median (at
    least 1), or None when no batch matches a row: served, a machine's speed moves from one 10 s to the next, and
    batch times spread far wider than profiled. With `window_s`: each batch against its stage's median within its
    `window_s` (of those with at least `least`), the spread left once the machine's speed over time
    (`window_paces`) is known."""
    groups = defaultdict(list)
    for t in batches:
        row = row_of(profiles, t)
        if row is not None and 0 < t.seconds < math.inf:
            if window_s is None:
                groups[t.stage].append(t.seconds / row.p50)
            elif t.t_s is not None and math.isfinite(t.t_s):
                groups[(t.stage, int(t.t_s // window_s))].append(t.seconds / row.p50)
    relative = []
    for ratios in groups.values():
        if window_s is None or len(ratios) >= least:
            mid = quantile(sorted(ratios), 0.5)
            relative.extend(r / mid for r in ratios)
    return max(1.0, quantile(sorted(relative), 0.99)) if relative else None
