"""One (workload, policy) cell on Ray Serve: real models, replayed load, measured energy, same files as the simulator.

The cell's figures come from what the load generator saw (every request's latency and status) and
what the sampler measured each second (energy, CPUs Ray reserved). The same workload is then
simulated with the delays measured here, and both land side by side in the fidelity table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ipa._io import write_csv, write_json
from ipa.adapt import adapt
from ipa.energy.detect import open_meter
from ipa.experiment.metrics import summarize
from ipa.runtime.loadgen import LoadGenerator, RequestRecord, arrival_times, photo_jpegs
from ipa.runtime.ray_runtime import CHANGE_KINDS, RayRuntime, Reconfiguration, Sample
from ipa.runtime.sim import SimResult, SimSettings, _per_second_percentiles
from ipa.spec import PipelineSpec, aggregate_accuracy
from ipa.workload import Workload

log = logging.getLogger(__name__)
FIDELITY_METRICS = ["p99_latency_s", "throughput_rps", "sla_violation_pct", "dropped_pct", "energy_j",
                    "avg_power_w", "cost_cores", "pas"]


def run_ray_cell(setup, workload: Workload, policy: str, runtime: RayRuntime) -> dict[str, Any]:
    """Serve the workload for its whole length under `policy`; returns series, decisions, summary and logs."""
    from ipa.experiment.runner import control, score_decisions, true_peak

    c = setup.cfg
    problem = setup.problem(policy)
    peak = true_peak(workload.rps, c.interval_s)
    rng = np.random.default_rng(c.seed)
    loadgen = LoadGenerator(runtime.url, arrival_times(workload.rps, rng), photo_jpegs(), runtime.drop_limit_s + 5)
    runtime.on_start = loadgen.start
    predictor, loop, initial = control(c, workload, policy)
    try:
        decisions = adapt(runtime, problem, predictor, workload.seconds, loop, policy,
                          oracle=peak if policy == "oracle" else None, initial_rate=initial)
    finally:
        loadgen.stop(wait_s=runtime.drop_limit_s + 5)  # answers still in flight come back or time out
        runtime.stop()
    score_decisions(setup, decisions, peak)
    result = collect(setup.spec, workload.seconds, loadgen.records, loadgen.sent, runtime.samples,
                     runtime.reconfigurations)
    method = runtime.samples[-1].method if runtime.samples else "none"
    summary = {"workload": workload.name, "policy": policy} | summarize(result, decisions, method)
    summary["runtime"] = "ray"
    return {"series": result.series, "decisions": decisions, "summary": summary, "records": loadgen.records,
            "samples": runtime.samples, "reconfigurations": runtime.reconfigurations, "events": runtime.events}


def collect(spec: PipelineSpec, seconds: int, records: list[RequestRecord], sent: int, samples: list[Sample],
            reconfigurations: list[Reconfiguration]) -> SimResult:
    """Per-second series in the simulator's form. Drops are non-200 answers and requests never answered."""
    n = max(seconds, 1)
    s = {k: np.zeros(n) for k in ("arrivals", "completions", "drops", "violations", "pas_sum", "core_seconds")}
    lat, lat_sec, pas = [], [], []
    for r in records:
        s["arrivals"][min(int(r.sent_s), n - 1)] += 1
        sec = min(int(r.sent_s + r.latency_s), n - 1)
        if r.ok and r.variants:
            p = request_pas(spec, r.variants)
            s["completions"][sec] += 1
            s["pas_sum"][sec] += p
            s["violations"][sec] += r.latency_s > spec.sla_s
            lat.append(r.latency_s)
            lat_sec.append(sec)
            pas.append(p)
        else:
            s["drops"][sec] += 1
            s["violations"][sec] += 1
    energy, metered = np.zeros(n), np.zeros(n, dtype=bool)
    for sample in samples:
        i = int(round(sample.t_s)) - 1  # the sample at the end of second i covers [i, i + 1)
        if 0 <= i < n:
            s["core_seconds"][i] = sample.reserved_cpus
            if sample.joules:
                energy[i] += sum(sample.joules.values())
                metered[i] = True
    s["energy_j"] = np.where(metered, energy, np.nan)  # a second the meter missed stays unknown, not zero
    s["energy_idle_j"] = np.full(n, np.nan)  # a meter measures the whole; no idle/dynamic split
    s["energy_dynamic_j"] = np.full(n, np.nan)
    lat_a, sec_a = np.array(lat), np.array(lat_sec, dtype=np.int64)
    s["p50_latency_s"], s["p99_latency_s"] = _per_second_percentiles(lat_a, sec_a, n)
    done = s["completions"]
    s["pas"] = np.divide(s["pas_sum"], done, out=np.full(n, np.nan), where=done > 0)
    completed = int(done.sum())
    dropped = int(s["drops"].sum())
    return SimResult(seconds, s, lat_a, np.array(pas), sent, completed, dropped, sent - len(records),
                     sum(r.ok for r in reconfigurations))


def request_pas(spec: PipelineSpec, variants: dict[str, str]) -> float:
    """The PAS of one request from the variants that served it, as the simulator scores its requests."""
    accs = [spec.stage(s.name).variant(variants[s.name]).accuracy_fraction for s in spec.stages]
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


def write_ray_logs(cell_dir: Path, cell: dict[str, Any]) -> None:
    """What only a real run has: every request, the energy log, reconfiguration timings, fault events."""
    write_csv(cell_dir / "requests.csv",
              ({"sent_s": r.sent_s, "latency_s": r.latency_s, "status": r.status,
                "variants": json.dumps(r.variants) if r.variants else "", "error": r.error} for r in cell["records"]),
              ["sent_s", "latency_s", "status", "variants", "error"])
    write_runtime_logs(cell_dir, cell["samples"], cell["reconfigurations"], cell["events"])


def write_runtime_logs(folder: Path, samples: list[Sample], reconfigurations: list[Reconfiguration],
                       events: list[dict[str, Any]]) -> None:
    """The runtime's own logs (also what `ipa serve --out` keeps): energy per second, reconfigurations, faults."""
    write_csv(folder / "energy.csv",
              ({"t_s": round(s.t_s, 3), "domain": d, "joules": j, "method": s.method, "reserved_cpus": s.reserved_cpus}
               for s in samples for d, j in s.joules.items()),
              ["t_s", "domain", "joules", "method", "reserved_cpus"])
    write_csv(folder / "reconfigurations.csv",
              ({**asdict(r), "kinds": "+".join(r.kinds)} for r in reconfigurations),
              ["t_s", "seconds", "kinds", "ok", "error"])
    write_csv(folder / "events.csv", events, ["t_s", "event", "detail"])


def fidelity(setup, workload: Workload, policy: str, real: dict[str, Any], delays: dict[str, float],
             drop_limit_s: float, batch_wait_s: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Simulate the same cell with the measured delays; rows of (metric, sim, real) for the report."""
    from ipa.experiment.runner import run_cell

    sim_setup = type(setup)(setup.cfg.model_copy(update={"sim": SimSettings(
        drop_limit_s=drop_limit_s, batch_timeout_s=batch_wait_s, reconfig_s=delays or None)}),
        setup.spec, setup.profiles)
    sim = run_cell(sim_setup, workload, policy)["summary"]
    rows = []
    for m in FIDELITY_METRICS:
        a, b = sim.get(m), real.get(m)
        rel = (b - a) / a * 100 if isinstance(a, float | int) and isinstance(b, float | int) and a else float("nan")
        rows.append({"workload": workload.name, "policy": policy, "metric": m, "sim": a, "real": b,
                     "real_vs_sim_pct": rel,
                     "note": f"sim: profiles ({sim['energy_method']}); real: {real['energy_method']}"
                     if m in ("energy_j", "avg_power_w") else ""})
    return sim, rows


def save_cell(cell_dir: Path, cell: dict[str, Any], sim_summary: dict[str, Any] | None) -> None:
    from ipa.experiment.runner import write_cell

    write_ray_logs(cell_dir, cell)
    if sim_summary is not None:
        write_json(cell_dir / "sim_summary.json", sim_summary)
    write_cell(cell_dir, cell)  # summary.json last: the cell is finished


def serve_cell(setup, workload: Workload, policy: str, cell_dir: Path, out: Path) -> dict[str, Any] | None:
    """Run, simulate alongside, write; None (with a warning) when the cluster cannot hold the policy's config."""
    from ipa.runtime.ray_runtime import ReconfigurationError

    cfg = setup.cfg
    detection = open_meter(cfg.ray.meter, gpu=True)
    log.info("%s", detection.explain())
    runtime = RayRuntime(setup.spec, cfg.ray, detection.meter)
    try:
        cell = run_ray_cell(setup, workload, policy, runtime)
    except ReconfigurationError as e:
        log.warning("%s / %s not served: %s", workload.name, policy, e)
        return None
    delays = measured_delays(runtime.reconfigurations)
    sim, rows = fidelity(setup, workload, policy, cell["summary"], delays, runtime.drop_limit_s, runtime.batch_wait_s)
    cell["summary"] |= {"measured_delays_s": json.dumps(delays)}
    save_cell(cell_dir, cell, sim)
    _merge_fidelity(out / "fidelity.csv", rows)
    return cell["summary"]


def _merge_fidelity(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    keep = []
    if path.is_file():
        with path.open() as f:
            keep = [r for r in csv.DictReader(f) if (r["workload"], r["policy"]) != (rows[0]["workload"], rows[0]["policy"])]
    write_csv(path, keep + rows, ["workload", "policy", "metric", "sim", "real", "real_vs_sim_pct", "note"])
