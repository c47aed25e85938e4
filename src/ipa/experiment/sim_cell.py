"""One (workload, policy) cell in the simulator: the control loop driving `ipa.runtime.sim`."""

from __future__ import annotations

from typing import Any

from ipa.adapt import adapt
from ipa.experiment.cells import Setup, control, score_decisions, true_peak
from ipa.experiment.metrics import summarize
from ipa.runtime.sim import Simulator
from ipa.workload import Workload


def run_sim_cell(setup: Setup, workload: Workload, policy: str, weights: dict[str, float] | None = None
                 ) -> dict[str, Any]:
    """Simulate one policy on one workload; returns the series, decisions and summary."""
    c = setup.cfg
    problem = setup.problem(policy, weights)
    peak = true_peak(workload.rps, c.interval_s)
    settings = c.sim
    if settings.serving_latency_s is None:
        settings = settings.model_copy(update={"serving_latency_s": setup.serving_latency_s})
    sim = Simulator(setup.spec, setup.machine, problem.idle_power_w_per_core, workload.rps, settings, c.seed,
                    c.admission)
    predictor, loop, initial = control(c, workload, policy)
    decisions = adapt(sim, problem, predictor, workload.seconds, loop, policy,
                      oracle=peak if policy == "oracle" else None, initial_rate=initial, calibrator=setup.calibrator())
    sim.drain()
    score_decisions(setup, decisions, peak)
    result = sim.result()
    summary = {"workload": workload.name, "policy": policy, "runtime": "sim"}
    summary |= summarize(result, decisions, setup.profiles.energy_label, setup.spec.sla_s)
    return {"series": result.series, "decisions": decisions, "summary": summary}
