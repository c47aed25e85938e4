"""Running: the comparison (simulated or served), the energy frontier, and serving with adaptation."""

from __future__ import annotations

import sys

import click

from ipa._signals import Terminated
from ipa.cli import cli, console, err_console, error, log_to, note, print_table
from ipa.cli.options import (
    build_problem,
    carbon_options,
    carbon_series,
    float_list,
    problem_options,
    ray_options,
    serving_line,
    trace_option,
)
from ipa.energy.detect import METERS
from ipa.experiment.config import DEFAULT_POLICIES, EXPERIMENT_POLICIES, SUITE
from ipa.optimize.policies import POLICIES
from ipa.optimize.solvers import SOLVERS
from ipa.predict import PREDICTORS


@cli.command()
@click.argument("configs", nargs=-1, type=click.Path())
@click.option("--all-pipelines", is_flag=True,
              help=f"run IPA's five pipelines ({', '.join(SUITE)}) into one report, a section each")
@click.option("--workload", "workloads", multiple=True, help="any workload form; repeat for several")
@click.option("--policy", "policies", multiple=True, type=click.Choice(EXPERIMENT_POLICIES),
              help=f"{', '.join(DEFAULT_POLICIES)} (the default {len(DEFAULT_POLICIES)}), ipa-q (ipa by Q-learning), "
                   "ipa-carbon (ipa-energy following the grid; needs --carbon)")
@click.option("--predictor", type=click.Choice(PREDICTORS), default=None, help="default: lstm")
@click.option("--solver", type=click.Choice(list(SOLVERS)), default=None, help="default: exact")
@click.option("--runtime", type=click.Choice(["sim", "ray"]), default=None)
@click.option("--profiles", default=None, help="profile CSV (default: the shipped 2-core CPU profiles)")
@click.option("--pipeline", default=None)
@click.option("--seed", type=int, default=None)
@click.option("--duration", type=int, default=None, help="serve only the first S seconds of each workload")
@click.option("--load-scale", type=float, default=None, help="multiply the workload's rate (fit it to the machine)")
@click.option("--max-cores", type=int, default=None, help="core budget of the pipeline (--runtime ray: the cluster's CPUs)")
@ray_options
@trace_option
@carbon_options
@click.option("--out", type=click.Path(), default=None, help="result folder (default results/<timestamp>); resumed if it exists")
def experiment(configs, all_pipelines, workloads, policies, predictor, solver, runtime, profiles, pipeline, seed,
               duration, load_scale, max_cores, address, port, ray_cpus, device, ingress_replicas, trace, carbon,
               carbon_speedup, out):
    """Compare policies on workloads: summary table, CSVs, plots and report.html.

    Several CONFIGs (or --all-pipelines) run one after the other into OUT/<config name>/, with one
    report.html and summary.csv over all of them."""
    from pathlib import Path

    from ipa.experiment.config import load_experiment
    from ipa.paths import resolve, results_folder

    if all_pipelines:
        if configs:
            raise click.UsageError("give CONFIG files or --all-pipelines, not both")
        configs = tuple(str(resolve(f"configs/experiments/{name}.yaml")) for name in SUITE)
    overrides = dict(workloads=list(workloads), policies=list(policies), predictor=predictor, solver=solver,
                     runtime=runtime, profiles=profiles, pipeline=pipeline, seed=seed, trace=trace, duration_s=duration,
                     load_scale=load_scale, max_cores=max_cores, carbon=carbon, carbon_speedup=carbon_speedup,
                     ray={"address": address, "port": port, "cpus": ray_cpus, "device": device,
                          "ingress_replicas": ingress_replicas})
    from ipa._io import check_writable

    cfgs = [load_experiment(c, **overrides) for c in (configs or (None,))]  # every config checked before any runs
    out_dir = check_writable(out or results_folder(), "--out")
    if len(cfgs) == 1:
        summaries, report = _experiment(cfgs[0], out_dir)
        _print_summary(summaries)
        console.print(f"results in {out_dir}/ (summary.csv, cells/*/timeseries.csv, decisions.csv, *.png); "
                      f"report: {report}")
    else:
        summaries = _experiment_suite([Path(c).stem for c in configs], cfgs, out_dir)
    if _unservable(summaries):
        sys.exit(1)


def _unservable(summaries: list[dict]) -> bool:
    """Say loudly which cells had plans that could serve nothing (an SLA no config meets, a core budget below the
    smallest config): their figures are not results."""
    bad = [s for s in summaries if s.get("unservable_decisions")]
    for s in bad:
        error(f"{s['workload']} / {s['policy']}: {s['unservable_decisions']} of {s['decisions']} plans could serve "
              f"nothing within the constraints ({s.get('unservable_reason', '')}); this cell's figures are not results")
    return bool(bad)


def _experiment(cfg, out_dir, title: str = "ipa experiment"):
    """One experiment config: its cells, then its report. Returns (summaries, report path)."""
    from rich.progress import Progress

    from ipa.experiment.report import build_report
    from ipa.experiment.runner import run_experiment

    if cfg.runtime == "ray":
        log_to(err_console)
        seconds = (cfg.duration_s or 1200) * len(cfg.workloads) * len(cfg.policies)
        err_console.print(f"serving {len(cfg.workloads) * len(cfg.policies)} cells in real time: up to "
                          f"{seconds / 60:.0f} min{'' if cfg.duration_s else ' (--duration S serves the first S seconds)'}",
                          highlight=False)
    from ipa.experiment.cells import Setup

    setup = Setup.load(cfg)
    note(setup.profiles.describe_unprofiled(setup.spec))
    cells = len(cfg.workloads) * len(cfg.policies)
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("simulating" if cfg.runtime == "sim" else "serving on Ray", total=cells)
        done = [0]  # cells finished

        def step(msg, summary):
            done[0] += 1
            bar.update(task, completed=done[0])
            if summary is None:
                bar.console.print(f"  {msg}", highlight=False)
                return
            bar.console.print(f"  {msg}: PAS {summary['pas']:.4f}, cost {summary['cost_cores']:.1f} cores, "
                              f"energy {summary['energy_j'] / 1000:.1f} kJ ({summary['energy_method']}), "
                              f"SLA violations {summary['sla_violation_pct']:.2f}%", highlight=False)

        summaries = run_experiment(cfg, out_dir, step, tick=lambda f: bar.update(task, completed=done[0] + f))
    idle = sorted({s["workload"] for s in summaries if not s.get("arrivals")})
    if idle:
        note(f"no request arrived in {', '.join(idle)}{f' (--load-scale {cfg.load_scale:g})' if cfg.load_scale != 1 else ''}"
             ": its PAS and latencies are nan and its energy is the machine idling")
    return summaries, build_report(out_dir, summaries, title)


# The printed summary, rounded for people (summary.csv keeps every figure exact): column -> (heading, format)
SUMMARY_SHOWN = {"workload": ("workload", "{}"), "policy": ("policy", "{}"), "pas": ("PAS", "{:.4f}"),
                 "cost_cores": ("cores", "{:.1f}"), "energy_j": ("energy kJ", "{:,.1f}"),
                 "co2_g": ("CO2 g", "{:,.1f}"), "energy_method": ("energy from", "{}"),
                 "sla_violation_pct": ("SLA violations", "{:.2f}%"), "dropped_pct": ("dropped", "{:.2f}%"),
                 "p99_latency_s": ("p99 s", "{:.3f}"), "objective": ("objective", "{:.3f}"),
                 "solve_ms_mean": ("solve ms", "{:.1f}")}


def _print_summary(summaries, title: str = "summary") -> None:
    from ipa.experiment.metrics import has_co2

    shown = [c for c in SUMMARY_SHOWN if c != "co2_g" or has_co2(summaries)]
    print_table([{SUMMARY_SHOWN[c][0]: human(s.get(c), c) for c in shown} for s in summaries], title)


def human(value, column: str) -> str:
    """A summary figure as the printed table shows it: joules as kJ, percentages with their sign, no exponent."""
    if value is None or value == "":
        return ""
    if isinstance(value, float) and value != value:
        return "nan"
    if column == "energy_j" and isinstance(value, int | float):
        value = value / 1000
    return SUMMARY_SHOWN[column][1].format(value)


def _experiment_suite(names: list[str], cfgs, out_dir) -> list[dict]:
    """Several experiments, each in its own folder, then one report and one summary over all of them."""
    from ipa._io import write_csv
    from ipa.experiment.cells import SUMMARY_COLUMNS
    from ipa.experiment.report import build_suite_report
    from ipa.paths import resolve
    from ipa.spec import load_pipeline

    if len(set(names)) != len(names):
        raise click.UsageError(f"config file names must differ (each names its folder): {', '.join(names)}")
    parts, rows = [], []
    for name, cfg in zip(names, cfgs):
        pipeline = load_pipeline(resolve(cfg.pipeline)).name
        err_console.print(f"{name}: pipeline {pipeline}, profiles {cfg.profiles}", highlight=False)
        summaries, _ = _experiment(cfg, out_dir / name, f"ipa experiment: {name}")
        _print_summary(summaries, f"{name} ({pipeline})")
        parts.append((f"{name} ({pipeline})", name, summaries))
        rows += [{"experiment": name} | s for s in summaries]
        write_csv(out_dir / "summary.csv", rows, ["experiment", *SUMMARY_COLUMNS])
    report = build_suite_report(out_dir, parts)
    console.print(f"results in {out_dir}/<experiment>/ for {', '.join(names)}; summary.csv over all; "
                  f"report: {report}")
    return rows


@cli.command()
@click.option("--pipeline", type=click.Path(), default="configs/pipelines/video.yaml", show_default=True)
@click.option("--profiles", type=click.Path(), default=None,
              help="profile CSV (default: the shipped profiles/<pipeline>-cpu-2core.csv)")
@click.option("--policy", type=click.Choice([*POLICIES, "ipa-carbon"]),
              default="ipa", help="ipa-carbon: ipa-energy following the grid (needs --carbon)")
@click.option("--predictor", type=click.Choice(PREDICTORS), default="lstm", show_default=True)
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
              help="adaptation interval, seconds")
@click.option("--load", "initial_load", type=float, default=1.0, show_default=True,
              help="requests per second to size the first config for (before any traffic is seen)")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop after S seconds (default: until Ctrl-C)")
@click.option("--weights", type=click.Path(), default=None, help="folder of <variant>.pth checkpoints (default: random weights)")
@click.option("--meter", type=click.Choice(METERS), default="auto", show_default=True)
@click.option("--out", type=click.Path(), default=None, help="log folder (default results/serve-<timestamp>)")
@click.option("--trust-request-start", is_flag=True, default=False,
              help="count each request in the second its X-Request-Start header says: only behind a front proxy "
                   "that sets that header and does not pass a client's on (otherwise: when it reaches the ingress)")
@carbon_options
@ray_options
@problem_options
def serve(pipeline, profiles, policy, predictor, interval, initial_load, duration, weights, meter, out,
          trust_request_start, carbon, carbon_speedup, address, port, ray_cpus, device, ingress_replicas, **problem_kw):
    """Serve the pipeline on Ray Serve at http://127.0.0.1:PORT/ and adapt it to the traffic it sees."""
    from ipa._io import check_writable
    from ipa.adapt import LoopSettings
    from ipa.energy.detect import open_meter
    from ipa.paths import results_folder
    from ipa.predict import make_predictor
    from ipa.runtime.ray.cluster import RaySettings, check_port_free
    from ipa.runtime.ray.runtime import for_profiles
    from ipa.serve import ServeSession
    from ipa.spec import load_model

    series = carbon_series(carbon, carbon_speedup)
    if policy == "ipa-carbon" and series is None:
        raise click.UsageError("--policy ipa-carbon follows the grid's carbon intensity: give the series with --carbon FILE")
    problem = build_problem("ipa-energy" if policy == "ipa-carbon" else policy, pipeline, profiles, **problem_kw)
    settings = load_model(RaySettings, {k: v for k, v in {"address": address, "port": port, "cpus": ray_cpus,
                                                         "weights": weights, "meter": meter, "device": device,
                                                         "ingress_replicas": ingress_replicas,
                                                         "trust_request_start": trust_request_start}.items()
                                        if v is not None}, "options")
    settings = for_profiles(settings, problem.profiles.meta)
    if not settings.address:
        check_port_free(settings.host, settings.port)  # before anything is written or started
    out_dir = check_writable(out or results_folder("serve"), "--out")
    log_to(err_console)
    detection = open_meter(settings.meter, gpu=True)
    err_console.print(detection.explain(), highlight=False)
    speedup = carbon_speedup or 1.0
    if series is not None:
        err_console.print(f"carbon: {series.describe(speedup)}; grams of CO2 in energy.csv and /metrics "
                          f"(ipa_co2_grams), as {detection.meter.method if detection.meter else 'no meter'} as the "
                          "energy they come from", markup=False, highlight=False)
    takes = _takes(problem.spec)
    with ServeSession(settings, problem.spec) as session:
        problem = session.fit(problem, problem_kw.get("cpus"))
        err_console.print(serving_line(problem, initial_load, settings.ingress_replicas), markup=False,
                          highlight=False)
        runtime, stopped = session.serve(
            problem, detection.meter, make_predictor(predictor), LoopSettings(interval_s=interval), policy, out_dir,
            duration_s=duration, initial_load=initial_load, carbon=series, carbon_speedup=speedup,
            on_start=lambda rt: err_console.print(f"serving on {rt.url} (POST {takes}; GET {rt.url}metrics for "
                                                  "Prometheus); Ctrl-C stops", highlight=False),
            on_decision=_show_decision)
        if stopped is not None:
            err_console.print("terminated (SIGTERM): stopping" if isinstance(stopped, Terminated) else "stopping")
        co2 = f"; {runtime.co2_g:.3g} g of CO2 in all" if series is not None else ""
        err_console.print(f"logs in {out_dir}/ (decisions.csv, energy.csv, reconfigurations.csv, events.csv){co2}",
                          highlight=False)


def _show_decision(d: dict, runtime) -> None:
    """One line per decision of `ipa serve`: the load it planned for, the config, what it holds."""
    if "config" not in d:
        return
    cfg = ", ".join(f"{s}: {c['variant']} b{c['batch']} x{c['replicas']} ({c['cores']} cores)"
                    for s, c in d["config"].items())
    calibrated = ", ".join(f"{k} x{v:.2f}" for k, v in d.get("calibration", {}).items())
    ingress = runtime.ingresses_for(d["predicted_rps"])
    err_console.print(f"t={d['t']:.0f} s  predicted {d['predicted_rps']:.1f} rps -> {cfg}; holds "
                      f"{d['capacity_rps']:.1f} rps, serving takes {d['serving_cores']:.2f} cores "
                      f"({ingress} ingress replica{'' if ingress == 1 else 's'})"
                      + (f"; measured slower than profiled: {calibrated}" if calibrated else "")
                      + ("" if d["feasible"] else f"  [infeasible: {d['reason']}]"), markup=False, highlight=False)


def _takes(spec) -> str:
    """What a client POSTs to this pipeline, in words."""
    from ipa.models.zoo import pipeline_kinds
    from ipa.runtime.ray.media import ACCEPTS
    from ipa.spec import MEDIA

    return ACCEPTS[MEDIA[pipeline_kinds(spec)[0]][0]][2]


@cli.command()
@click.argument("config", required=False, type=click.Path())
@click.option("--workload", default="bursty", show_default=True)
@click.option("--deltas", default="0,0.02,0.05,0.1,0.2,0.5,1,2", show_default=True, help="energy weights per watt")
@click.option("--betas", default="1", show_default=True, help="cost weights (one curve each)")
@click.option("--profiles", default=None)
@click.option("--pipeline", default=None)
@click.option("--load-scale", type=float, default=None, help="multiply the workload's rate")
@trace_option
@carbon_options
@click.option("--out", type=click.Path(), default=None, help="default results/frontier-<timestamp>")
def frontier(config, workload, deltas, betas, profiles, pipeline, load_scale, trace, carbon, carbon_speedup, out):
    """Sweep ipa-energy's energy weight: PAS vs energy vs cost, with the baselines as points."""

    from ipa._io import check_writable
    from ipa.experiment.config import load_experiment
    from ipa.experiment.frontier import COLUMNS
    from ipa.experiment.frontier import frontier as run_frontier
    from ipa.paths import results_folder

    cfg = load_experiment(config, profiles=profiles, pipeline=pipeline, load_scale=load_scale, trace=trace,
                          carbon=carbon, carbon_speedup=carbon_speedup)
    sweep = float_list(deltas), float_list(betas)  # checked before the folder is made
    out_dir = check_writable(out or results_folder("frontier"), "--out")
    points = run_frontier(cfg, workload, *sweep, out_dir, progress=lambda m: err_console.print(m, highlight=False))
    print_table([{c: p[c] for c in COLUMNS} for p in points], f"frontier on {workload}")
    console.print(f"wrote {out_dir}/frontier.csv and frontier.png")
