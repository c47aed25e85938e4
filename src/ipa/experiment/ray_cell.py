"""One (workload, policy) cell on Ray Serve: real models, replayed load, measured energy, same files as the simulator.

The cell's figures come from what the load generator saw (every request's latency and status) and
what the sampler measured each second (energy, CPUs Ray reserved). It also returns what the run
learned about the machine (calibrated profiles, reconfiguration delays), which the orchestration
hands to the simulator for the fidelity twin.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ipa._io import write_csv, write_json
from ipa.adapt import adapt
from ipa.energy.carbon import intensity_over_time, with_co2
from ipa.energy.detect import open_meter
from ipa.experiment.cells import Setup, control, score_decisions, true_peak, write_cell, write_decisions
from ipa.experiment.metrics import summarize
from ipa.experiment.prediction import Prediction
from ipa.machine.tracker import FOLLOW_CELLS, SpeedTracker, cell_pace
from ipa.models.samples import request_bodies
from ipa.models.zoo import pipeline_kinds
from ipa.profiles.calibration import BatchTiming, measured
from ipa.runtime.loadgen import LoadGenerator, RequestRecord, arrival_times
from ipa.runtime.ray.cluster import ReconfigurationError
from ipa.runtime.ray.ledger import PUSH_S
from ipa.runtime.ray.runtime import CHANGE_KINDS, RayRuntime, Reconfiguration, Sample, write_runtime_logs
from ipa.runtime.series import Recorder, SimResult
from ipa.serve import ServeSession
from ipa.spec import PipelineSpec, aggregate_accuracy
from ipa.workload import Workload

log = logging.getLogger(__name__)


class RayCluster:
    """One Ray cluster for every cell of an experiment, shut down however the run ends (Ctrl-C too).

    Entering it connects (or starts a local cluster) and fits the setup to it: replicas run where the
    profiles were measured, the core budget is the cluster's CPUs, and the CPUs that replicas and
    serving share are this machine's for a local cluster.
    """

    def __init__(self, setup: Setup):
        self.setup = setup
        self._tracker = SpeedTracker.refreshed(setup.speed)  # as served: the refresh's, then each cell's
        self._session: ServeSession | None = None

    def __enter__(self) -> RayCluster:
        from ipa.runtime.ray.runtime import for_profiles

        cfg = self.setup.cfg
        self._session = ServeSession(cfg.ray, self.setup.spec).__enter__()
        max_cores, cpus = self._session.budget(cfg.max_cores, cfg.cpus)
        # the cells' only client is the experiment's own load generator, which stamps each request as it sends it
        ray_settings = for_profiles(cfg.ray, self.setup.profiles.meta).model_copy(update={"trust_request_start": True})
        self.setup = self.setup.updated(ray=ray_settings, max_cores=max_cores, cpus=cpus)
        return self

    def __exit__(self, *exc) -> None:
        if self._session is not None:
            self._session.__exit__(*exc)

    def run(self, workload: Workload, policy: str) -> dict[str, Any] | None:
        """Serve one cell; None (with a warning) when the cluster cannot hold the policy's config."""
        cfg = self.setup.cfg
        detection = open_meter(cfg.ray.meter, gpu=True)
        log.info("%s", detection.explain())
        runtime = RayRuntime(self.setup.spec, cfg.ray, detection.meter, cfg.admission, self.setup.serving_latency_s,
                             serving=self.setup.serving)
        runtime.carbon = intensity_over_time(self.setup.carbon, self.setup.cfg.carbon_speedup)
        try:
            real = run_ray_cell(self.setup, workload, policy, runtime)
        except ReconfigurationError as e:
            log.warning("%s / %s not served: %s", workload.name, policy, e)
            return None
        self._follow(real["batches"])
        return real

    def _follow(self, batches: list[BatchTiming]) -> None:
        """The next cell starts from the machine as lately served (`ipa.machine.tracker`): the median of the paces
        the last three cells' batches ran at, the refresh's counting as one before the first."""
        s = self.setup
        before, after = cell_pace(s.speed, s.profiles, batches)
        if s.speed is None or after is None:
            return
        self.setup = s.at_speed(self._tracker.follow(s.speed, s.profiles, s.profiled or s.profiles, batches,
                                                     before, after))
        log.info("this cell's models ran at x%.2f of their profiled CPU (it started from x%.2f); the next starts "
                 "from x%.2f, the median of the last %d", after, before, self.setup.speed.pace,
                 min(len(self._tracker.paces), FOLLOW_CELLS))


def run_ray_cell(setup: Setup, workload: Workload, policy: str, runtime: RayRuntime) -> dict[str, Any]:
    """Serve the workload for its whole length under `policy`; returns series, decisions, summary, logs
    and what was learned about the machine."""
    c = setup.cfg
    problem = setup.problem(policy, client=True)  # the load generator runs on this machine
    peak = true_peak(workload.rps, c.interval_s)
    rng = np.random.default_rng(c.seed)
    bodies, content_type = request_bodies(setup.spec, pipeline_kinds(setup.spec))
    loadgen = LoadGenerator(runtime.url, arrival_times(workload.rps, rng), bodies, runtime.drop_limit_s + 5,
                            content_type)
    def start_load(t0: float) -> None:
        loadgen.start(t0)
        while loadgen.thread_id is None and loadgen.running:
            time.sleep(0.01)
        runtime.client_threads.append(loadgen.thread_id)  # its CPU is the client's, not serving's

    runtime.on_start = start_load
    predictor, loop, initial = control(c, workload, policy)
    calibrator = setup.calibrator()
    try:
        decisions = adapt(runtime, problem, predictor, workload.seconds, loop, policy,
                          oracle=peak if policy == "oracle" else None, initial_rate=initial, calibrator=calibrator,
                          reweigh=setup.reweigh(policy))
    finally:
        loadgen.stop(wait_s=runtime.drop_limit_s + 5)  # answers still in flight come back or time out
        time.sleep(2 * PUSH_S)  # the ingress replicas' last pushes of what they saw
        calibrator.observe(runtime.batch_timings())
        runtime.stop()
    score_decisions(setup, decisions, peak)
    result = collect(setup.spec, workload.seconds, loadgen.records, loadgen.sent, runtime.samples,
                     runtime.reconfigurations)
    result.series = with_co2(result.series, setup.carbon, setup.cfg.carbon_speedup)
    method = runtime.samples[-1].method if runtime.samples else "none"
    delays = measured_delays(runtime.reconfigurations)
    summary = {"workload": workload.name, "policy": policy} | summarize(result, decisions, method, setup.spec.sla_s)
    summary |= {"runtime": "ray", "measured_delays_s": json.dumps(delays),
                "calibration": json.dumps(calibrator.ratios()), "serving_cores": _mean(runtime.samples, "serving_cpus"),
                "replica_cores": _mean(runtime.samples, "replica_cpus")}
    return {"series": result.series, "decisions": decisions, "summary": summary, "records": loadgen.records,
            "samples": runtime.samples, "reconfigurations": runtime.reconfigurations, "events": runtime.events,
            "batches": runtime.batches, "learned": measured(setup.profiles, list(runtime.batches), c.calibration),
            "delays": delays, "drop_limit_s": runtime.drop_limit_s, "batch_wait_s": runtime.batch_wait_s}


def _mean(samples: list[Sample], field: str) -> float:
    """Mean of a sampled figure over the run (nan when it was not measured: a joined cluster)."""
    values = [getattr(s, field) for s in samples if not np.isnan(getattr(s, field))]
    return float(np.mean(values)) if values else float("nan")


def collect(spec: PipelineSpec, seconds: int, records: list[RequestRecord], sent: int, samples: list[Sample],
            reconfigurations: list[Reconfiguration]) -> SimResult:
    """Per-second series in the simulator's form. Drops are non-200 answers and requests never answered;
    rejected, of those, the ones refused at admission."""
    books = Recorder(seconds, spec.sla_s)
    n = books.n
    for r in records:
        books.arrived(min(int(r.sent_s), n - 1))
        sec = min(int(r.sent_s + r.latency_s), n - 1)
        if r.ok and r.variants:
            books.completed(sec, r.latency_s, request_pas(spec, r.variants))
        else:
            books.dropped(sec, rejected=r.reason == "admission")
    s = books.s
    energy, metered = np.zeros(n), np.zeros(n, dtype=bool)
    s["serving_cpu_s"] = np.full(n, np.nan)  # measured where the sampler could (a local cluster)
    for sample in samples:
        i = int(round(sample.t_s)) - 1  # the sample at the end of second i covers [i, i + 1)
        if 0 <= i < n:
            s["core_seconds"][i] = sample.reserved_cpus
            s["serving_cpu_s"][i] = sample.serving_cpus
            if sample.joules:
                energy[i] += sum(sample.joules.values())
                metered[i] = True
    s["energy_j"] = np.where(metered, energy, np.nan)  # a second the meter missed stays unknown, not zero
    s["energy_idle_j"] = np.full(n, np.nan)  # a meter measures the whole; no idle/dynamic split
    s["energy_dynamic_j"] = s["energy_serving_j"] = np.full(n, np.nan)
    series, lat, pas = books.series()
    return SimResult(seconds, series, lat, pas, sent, len(lat), int(series["drops"].sum()), sent - len(records),
                     sum(r.ok for r in reconfigurations), int(series["rejected"].sum()))


def request_pas(spec: PipelineSpec, variants: dict[str, str]) -> float:
    """The PAS of one request from the variants that served it, as the simulator scores its requests."""
    accs = [spec.accuracy_score(s.name, variants[s.name]) for s in spec.stages]
    return aggregate_accuracy(spec.accuracy_method, accs)


def measured_delays(reconfigurations: list[Reconfiguration]) -> dict[str, float]:
    """Median seconds per kind of change: from changes of that kind alone where there are some."""
    out = {}
    for kind in CHANGE_KINDS:
        alone = [r.seconds for r in reconfigurations if r.ok and r.kinds == [kind]]
        mixed = [r.seconds for r in reconfigurations if r.ok and kind in r.kinds]
        if alone or mixed:
            out[kind] = float(np.median(alone or mixed))
    return out


def save_cell(folder: Path, cell: dict[str, Any], predicted: Prediction | None = None,
              twin: dict[str, Any] | None = None) -> None:
    """What only a real run has (every request and batch, energy, reconfigurations, faults, the profiles as
    calibrated on the machine), the prediction's summary and decisions (every seed's) and the twin's summary, then
    the simulator's files, summary.json last: the cell is finished."""
    write_csv(folder / "requests.csv",
              ({"sent_s": r.sent_s, "latency_s": r.latency_s, "service_s": r.service_s, "queued_s": r.queued_s,
                "status": r.status, "reason": r.reason, "variants": json.dumps(r.variants) if r.variants else "",
                "error": r.error} for r in cell["records"]),
              ["sent_s", "latency_s", "service_s", "queued_s", "status", "reason", "variants", "error"])
    write_runtime_logs(folder, cell["samples"], cell["reconfigurations"], cell["events"])
    write_csv(folder / "batches.csv", (t._asdict() for t in cell["batches"]), list(BatchTiming._fields))
    cell["learned"].save(folder / "calibrated-profiles.csv")
    if predicted is not None:
        write_json(folder / "predicted_summary.json", predicted.summary)
        write_decisions(folder / "predicted_decisions.csv", predicted.decisions)
    if twin is not None:
        write_json(folder / "twin_summary.json", twin)
    write_cell(folder, cell)
