"""The control loop: monitor -> calibrate -> predict -> optimize -> apply, every adaptation interval.

It sees a runtime only through `Runtime` (apply a config, read the observed rates and the batches
it ran, advance time), so the simulator and Ray Serve run the same loop. With a calibrator, every
plan is made with the profile values corrected by the batches measured so far, and each decision
records the correction and the capacity the plan expects. On a known machine (`Problem.cpus`) the plan
also holds the contention its config makes there (`Problem.contended`, the simulator's machine model), and
admission starts from those stretched rows, so a real run starts where calibration would have taken it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ipa.optimize.problem import Problem
from ipa.optimize.solvers import solve
from ipa.predict.base import Predictor
from ipa.profiles.calibration import BatchTiming, Calibrator
from ipa.runtime.admission import StageEstimate, stage_estimates
from ipa.spec import PipelineConfig, config_as_dict

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """`expected`: the service time the plan expects of each stage (admission starts from it); `load_rps`: the load
    the plan is for (what the runtime sizes itself by: the ingress's replicas)."""

    def start(self, config: PipelineConfig, expected: dict[str, StageEstimate] | None = None,
              load_rps: float | None = None) -> None: ...

    def apply(self, config: PipelineConfig, expected: dict[str, StageEstimate] | None = None,
              load_rps: float | None = None) -> None: ...

    def resizes(self, load_rps: float) -> bool: ...

    def observed_rates(self) -> np.ndarray: ...

    def batch_timings(self) -> list[BatchTiming]: ...

    def run_until(self, t: float) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    interval_s: float = 10.0  # IPA's adaptation interval
    history_s: int = 120  # IPA: 2 minutes of monitored load
    solver: str = "exact"
    margin_pct: float = 0.0  # IPA's predictor_margin: plan for the prediction plus this many percent


def adapt(
    runtime: Runtime,
    problem: Problem,
    predictor: Predictor | None,
    duration_s: float,
    settings: LoopSettings = LoopSettings(),
    policy: str = "ipa",
    oracle: Callable[[float], float] | None = None,
    initial_rate: float = 0.0,
    on_decision: Callable[[dict[str, Any]], None] = lambda d: None,
    calibrator: Calibrator | None = None,
    reweigh: Callable[[Problem, float], Problem] | None = None,
) -> list[dict[str, Any]]:
    """Run the loop for `duration_s`; returns one record per decision.

    `reweigh(problem, t)`: the problem the interval starting at t solves (ipa-carbon's energy weight follows the
    grid); its delta is recorded.

    `oracle(t)` replaces the predictor with the true peak of [t, t + interval). The first decision
    sees `initial_rate` as its only history, so every policy starts sized for the same load.
    A failing predictor or solver is logged and the current config kept.
    """
    records: list[dict[str, Any]] = []
    config: PipelineConfig | None = None
    solver = _solver(settings.solver)
    t = 0.0
    while t < duration_s:
        observed = runtime.observed_rates()
        history = observed[-settings.history_s:] if len(observed) else np.array([initial_rate])
        record: dict[str, Any] = {"t": t}
        timings = runtime.batch_timings()  # drained every interval, used or not
        planned = problem
        if reweigh is not None:
            planned = reweigh(problem, t)
            record["delta"] = planned.weights.delta
        if calibrator is not None:
            calibrator.observe(timings)
            planned = planned.with_profiles(calibrator.table)
            record["calibration"] = calibrator.ratios()
        try:
            load = oracle(t) if oracle else float(predictor.predict(history)) * (1 + settings.margin_pct / 100)  # type: ignore[union-attr]
            decision = solve(planned, load, solver, policy)
        except Exception as e:  # keep serving: a bad prediction or solve must not stop the pipeline
            log.warning("decision at t=%.0f s failed (%s); keeping the current config", t, e)
            record |= {"error": str(e)}
            if config is None:
                raise
        else:
            a = decision.assessment
            record |= {
                "predicted_rps": load, "feasible": a.feasible, "objective": a.objective, "accuracy": a.accuracy,
                "cores": a.cores, "power_w": a.power_w, "latency_s": a.latency_s, "capacity_rps": a.capacity_rps,
                "cpu_demand": a.cpu_demand, "serving_cores": a.serving_cores, "solve_ms": decision.solve_ms,
                "reason": decision.reason, "unservable": decision.unservable, "config": config_as_dict(a.config),
            }
            if a.contention:
                record["contention"] = a.contention
            expected = stage_estimates(decision.profiles or planned.profiles, decision.config)
            record["expected"] = {stage: [e.batch_s, e.per_request_s, e.tail_s]  # admission's start
                                  for stage, e in expected.items()}
            if config is None:
                runtime.start(decision.config, expected, load)
            elif decision.config != config or runtime.resizes(load):
                runtime.apply(decision.config, expected, load)
            config = decision.config
        records.append(record)
        on_decision(record)
        t = min(t + settings.interval_s, duration_s)
        runtime.run_until(t)
    return records


def _solver(name: str):
    """The solver the loop calls: Q-learning as one object for the whole run, so it learns across decisions."""
    if name == "q-learning":
        from ipa.optimize.qlearning import QLearning

        return QLearning()
    return name
