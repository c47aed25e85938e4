"""One (workload, policy) cell in the simulator: the control loop driving `ipa.runtime.sim`, or the configs
of a real run replayed at the times it chose them (its fidelity twin)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ipa.adapt import adapt
from ipa.energy.carbon import with_co2
from ipa.experiment.cells import Setup, control, score_decisions, true_peak
from ipa.experiment.metrics import summarize
from ipa.machine.replay import Pace, Speed
from ipa.runtime.admission import StageEstimate, stage_estimates
from ipa.runtime.sim import Simulator
from ipa.spec import StageConfig
from ipa.workload import Workload


def run_sim_cell(setup: Setup, workload: Workload, policy: str, weights: dict[str, float] | None = None,
                 replay: list[dict[str, Any]] | None = None, pace: Pace | None = None,
                 tick: Callable[[float], None] = lambda done: None, client: bool = False,
                 speed: Speed | None = None) -> dict[str, Any]:
    """Simulate one policy on one workload; returns the series, decisions and summary. With `replay` (the
    decisions of a real run), the simulator serves those configs from those times instead of deciding;
    with `pace`, its batches take the times that run's batches took then (`ipa.runtime.sim.Simulator`); with
    `speed`, its machine's slowness moves over time as given.
    `tick` hears the fraction of the workload simulated, at every decision. `client`: the load generator
    shares the machine (a real run's prediction): its CPU is planned for and counted.

    The simulated machine has `sim.cpus` CPUs, else the experiment's `cpus`, else its core budget: when the
    machine is known its replicas, serving and client share it, and its whole idle draw counts."""
    c = setup.cfg
    problem = setup.problem(policy, weights, client=client)
    peak = true_peak(workload.rps, c.interval_s)
    settings = c.sim
    if settings.serving_latency_s is None:
        settings = settings.model_copy(update={"serving_latency_s": setup.serving_latency_s})
    if settings.cpus is None and replay is None:  # a twin keeps each replica on its cores (ipa.experiment.fidelity)
        settings = settings.model_copy(update={"cpus": c.cpus or c.max_cores})
    serving = setup.serving.with_client(client) if setup.serving else None
    sim = Simulator(setup.spec, setup.machine, problem.idle_power_w_per_core, workload.rps, settings, c.seed,
                    c.admission, serving, pace, speed)
    if replay is None:
        predictor, loop, initial = control(c, workload, policy)
        decisions = adapt(sim, problem, predictor, workload.seconds, loop, policy,
                          oracle=peak if policy == "oracle" else None, initial_rate=initial,
                          calibrator=setup.calibrator(), on_decision=lambda d: tick(d["t"] / workload.seconds),
                          reweigh=setup.reweigh(policy))
    else:
        decisions = replayed(sim, setup, replay, workload.seconds)
    sim.drain()
    score_decisions(setup, decisions, peak)
    result = sim.result()
    result.series = with_co2(result.series, setup.carbon, setup.cfg.carbon_speedup)
    summary = {"workload": workload.name, "policy": policy, "runtime": "sim"}
    summary |= summarize(result, decisions, setup.profiles.energy_label, setup.spec.sla_s)
    return {"series": result.series, "decisions": decisions, "summary": summary}


def replayed(sim: Simulator, setup: Setup, decisions: list[dict[str, Any]], duration_s: float) -> list[dict[str, Any]]:
    """Serve each decision's config from its time on (a failed decision keeps the config before it), admission
    expecting what the decision's plan expected of each stage (the simulated machine's profiles where it
    did not say); returns the decisions, copied."""
    started = False
    for i, d in enumerate(decisions):
        if "config" in d:
            config = {stage: StageConfig(**c) for stage, c in d["config"].items()}
            expected = stage_estimates(setup.machine, config)
            expected |= {stage: StageEstimate(*e) for stage, e in (d.get("expected") or {}).items()}
            if started:
                sim.apply(config, expected)
            else:
                sim.start(config, expected)
                started = True
        if started:
            sim.run_until(decisions[i + 1]["t"] if i + 1 < len(decisions) else duration_s)
    return copy.deepcopy(decisions)
