"""A real cell's prediction: the simulator's own control loop, run before the cell over several seeds.

One simulated run is one draw: its batch times and its arrivals are random, and an adaptive loop that calibrates
on those batches chooses its configs from them. Near a config's capacity that draw decides the choice, so a
prediction is the median over `prediction_seeds` seeds (seed, seed + 1, ...), not one of them.

The machine's speed is not one number over a cell either: it switches between levels for tens of seconds at a time,
whatever the load, and queues grow in the slow spells, which independent draws of batch times spread evenly. So each
seed's machine replays a stretch of the speed as served so far (`MachineSpeed.pace_windows`, the refresh's 10 s and
every cell's since), from a point of its own, as slowness over the pace the cell starts from, with each batch drawn
around it at the spread left within 10 s (`MachineSpeed.window_spread`).

The band is what the prediction holds possible: every figure's lowest and highest over the same seeds with the
simulated machine at the pace the cell starts from and at the fastest and slowest pace seen before it
(`Setup.paced`), the plans as predicted.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field, replace
from typing import Any

from ipa.experiment.cells import Setup
from ipa.experiment.sim_cell import run_sim_cell
from ipa.machine.replay import Speed, stretch
from ipa.workload import Workload


@dataclass
class Prediction:
    summary: dict[str, Any]  # each number the median over the seeds at the starting pace; the rest as seed 0's
    low: dict[str, float]  # each number's lowest over every seed at every pace of the band
    high: dict[str, float]
    paces: tuple[float, float] | None  # the fastest and slowest pace of the band (None: the machine's range unknown)
    decisions: list[dict[str, Any]] = field(default_factory=list)  # each seed's at the starting pace, with its seed


def predict(setup: Setup, w: Workload, policy: str, known: Speed | None = None) -> Prediction:
    """The cell simulated as a real run's prediction (`client`: the load generator shares the machine).
    `known`: the speed the cell itself ran at, replayed by every seed instead of a stretch of what came before:
    hindsight, not a prediction (`bench/prediction.py --at-cell-pace`)."""
    seeds = [setup.cfg.seed + i for i in range(setup.cfg.prediction_seeds)]
    moving = within_windows(setup)
    runs = [(s, run_sim_cell(_seeded(moving, s), w, policy, client=True,
                             speed=known if known is not None else speed(setup, w.seconds, s))) for s in seeds]
    summaries = [cell["summary"] for _, cell in runs]
    paced = setup.paced()
    band = summaries + [run_sim_cell(_seeded(at, s), w, policy, client=True)["summary"]
                        for _, at in paced for s in seeds]
    decisions = [{"seed": s} | d for s, cell in runs for d in cell["decisions"]]
    return Prediction(median(summaries), _extreme(band, min), _extreme(band, max),
                      (paced[0][0], paced[-1][0]) if paced else None, decisions)


def speed(setup: Setup, seconds: int, seed: int) -> Speed | None:
    """A stretch of the machine's speed as served (`ipa.machine.replay.stretch`), from a point `seed` draws; None
    when fewer than two 10 s are known or the simulated machine is given (`sim.true_profiles`)."""
    if setup.speed is None or setup.cfg.sim.true_profiles:
        return None
    return stretch(setup.speed.pace_windows, seconds, seed)


def within_windows(setup: Setup) -> Setup:
    """The setup whose simulated machine draws each batch at the spread served batches had within 10 s (the
    speed's moves replayed by `speed` instead); the plans as they are. Itself when `speed` has nothing to replay."""
    s = setup.speed
    if s is None or len(s.pace_windows) < 2 or setup.cfg.sim.true_profiles:
        return setup
    return replace(setup, machine=s.within_windows().table(setup.profiled or setup.profiles))


def median(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Each number the median over the summaries (what is not a number as the first has it)."""
    out = dict(summaries[0])
    for k, v in out.items():
        values = [s.get(k) for s in summaries]
        if _number(v) and all(_number(x) for x in values):
            out[k] = statistics.median(values)
    return out


def _extreme(summaries: list[dict[str, Any]], pick) -> dict[str, float]:
    keys = [k for k, v in summaries[0].items() if _number(v)]
    return {k: pick(s[k] for s in summaries) for k in keys if all(_number(s.get(k)) for s in summaries)}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN


def _seeded(setup: Setup, seed: int) -> Setup:
    return setup if setup.cfg.seed == seed else setup.updated(seed=seed)


def same_config_pct(predicted: list[dict[str, Any]], real: list[dict[str, Any]]) -> float | None:
    """Of the prediction's decisions (every seed's), the share in percent whose config the real loop chose at the
    same time: below 100 the two loops chose differently, and PAS, latency and energy follow the choice. None when
    either side decided nothing."""
    chosen = {round(float(d["t"]), 3): d.get("config") for d in real if d.get("config")}
    pairs = [(d.get("config"), chosen[round(float(d["t"]), 3)]) for d in predicted
             if d.get("config") and round(float(d["t"]), 3) in chosen]
    return 100.0 * sum(a == b for a, b in pairs) / len(pairs) if pairs else None
