"""A serving session: the pipeline on a Ray cluster (a local one started, or one joined), the plan fitted to that
cluster, and the cluster stopped however the session ends. `ipa serve` serves in one; the experiment's real cells
share one (`ipa.experiment.ray_cell.RayCluster`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ipa._io import write_csv
from ipa.adapt import LoopSettings, adapt
from ipa.energy.carbon import CarbonSeries
from ipa.energy.common import EnergyMeter
from ipa.optimize.policies import follow_grid
from ipa.optimize.problem import Problem
from ipa.predict import Predictor
from ipa.profiles.calibration import Calibrator
from ipa.runtime.ray.cluster import RaySettings, connect, shutdown
from ipa.runtime.ray.runtime import RayRuntime, write_runtime_logs
from ipa.spec import PipelineSpec


class ServeSession:
    """Connects on entry (`connect`: a local cluster is guarded, a joined one is left running) and shuts down on
    exit. The plan is fitted to the cluster it serves on: its CPUs are the core budget, and the CPUs replicas and
    serving share are this machine's for a local cluster (its logical count may declare more), the cluster's
    otherwise."""

    def __init__(self, settings: RaySettings, spec: PipelineSpec):
        self.settings, self.spec = settings, spec
        self.started = False
        self.cluster_cpus = 1
        self.machine_cpus = 1.0

    def __enter__(self) -> ServeSession:
        import ray

        self.started = connect(self.settings, self.spec)
        self.cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.machine_cpus = float(self.cluster_cpus if self.settings.address else len(os.sched_getaffinity(0)))
        return self

    def __exit__(self, *exc) -> None:
        shutdown(self.started)

    def budget(self, max_cores: int | None, cpus: float | None) -> tuple[int, float]:
        """The core budget and the CPUs replicas and serving share: as given, else the cluster's."""
        return (max_cores if max_cores is not None else self.cluster_cpus,
                cpus if cpus is not None else self.machine_cpus)

    def fit(self, problem: Problem, cpus: float | None = None) -> Problem:
        """`problem` planned within this cluster (`cpus`: as the user gave them, None when not)."""
        max_cores, shared = self.budget(problem.max_cores, cpus)
        return replace(problem, max_cores=max_cores, cpus=shared)

    def serve(self, problem: Problem, meter: EnergyMeter | None, predictor: Predictor, loop: LoopSettings,
              policy: str, out: Path, *, duration_s: float | None = None, initial_load: float = 1.0,
              carbon: CarbonSeries | None = None, carbon_speedup: float = 1.0,
              on_start: Callable[[RayRuntime], None] = lambda rt: None,
              on_decision: Callable[[dict[str, Any], RayRuntime], None] = lambda d, rt: None
              ) -> tuple[RayRuntime, KeyboardInterrupt | None]:
        """Serve and adapt until `duration_s` (None: until interrupted), every decision written to
        out/decisions.csv as it is made, the runtime's logs (energy, reconfigurations, events) when it stops. Ctrl-C
        or SIGTERM (`ipa._signals.Terminated`) ends it: returned beside the runtime, None when it ran its time. The
        cluster stays up: the session's exit stops it."""
        runtime = RayRuntime(problem.spec, self.settings, meter,
                             serving_latency_s=problem.serving.latency_s if problem.serving else 0.0,
                             serving=problem.serving)
        if carbon is not None:
            runtime.carbon = lambda t: float(carbon.at(t, carbon_speedup))
        runtime.on_start = lambda t0: on_start(runtime)
        decisions: list[dict[str, Any]] = []

        def decided(d: dict[str, Any]) -> None:
            decisions.append({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in d.items()})
            write_csv(out / "decisions.csv", decisions)
            on_decision(d, runtime)

        stopped = None
        try:
            adapt(runtime, problem, predictor, duration_s if duration_s else float("inf"), loop, policy,
                  initial_rate=initial_load, on_decision=decided, calibrator=Calibrator(problem.profiles),
                  reweigh=follow_grid(carbon, loop.interval_s, carbon_speedup) if policy == "ipa-carbon" else None)
        except KeyboardInterrupt as e:
            stopped = e
        finally:
            runtime.stop()
            write_csv(out / "decisions.csv", decisions)  # also when stopped before the first decision
            write_runtime_logs(out, runtime.samples, runtime.reconfigurations, runtime.events)
        return runtime, stopped
