"""`ipa ...`: one subcommand per job. Errors the user can fix print as one message, no traceback."""

from __future__ import annotations

import json
import os
import sys

import click
from rich.console import Console
from rich.table import Table

from ipa._signals import Terminated, stop_on_sigterm
from ipa.energy.detect import METERS
from ipa.errors import IpaError
from ipa.experiment.config import DEFAULT_POLICIES, EXPERIMENT_POLICIES
from ipa.optimize.policies import POLICIES
from ipa.optimize.solvers import SOLVERS
from ipa.predict import PREDICTORS

# Text we print holds paths, workload names and [brackets] from users: never markup or :emoji: codes.
console = Console(soft_wrap=True, markup=False, emoji=False, highlight=False, **({} if sys.stdout.isatty() else {"width": 200}))
err_console = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Energy-aware inference pipeline adaptation."""


def error(text: str) -> None:
    """An error the user can fix, printed as it is (no markup: messages hold paths and [brackets])."""
    err_console.print("error: " + text, style="red")


def note(text: str) -> None:
    """Something the user should know that does not stop the command (nothing when `text` is empty)."""
    if text:
        err_console.print("note: " + text, style="yellow")


def main() -> None:
    stop_on_sigterm()
    try:
        code = cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        terminated = isinstance(e, Terminated) or isinstance(e.__context__, Terminated)
        err_console.print("terminated" if terminated else "interrupted", style="yellow", markup=False)
        sys.exit(143 if terminated else 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except IpaError as e:
        error(str(e))
        sys.exit(2)
    except (OSError, UnicodeDecodeError) as e:  # a path the checks above did not foresee: one line, not a traceback
        if os.environ.get("IPA_DEBUG"):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        error(f"{where}{getattr(e, 'strerror', None) or e} (IPA_DEBUG=1 shows where)")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def problem_options(f):
    """Options shared by every command that builds an optimisation problem."""
    opts = [
        click.option("--alpha", type=float, default=2.0, show_default=True, help="accuracy weight"),
        click.option("--beta", type=float, default=1.0, show_default=True, help="cost (cores) weight"),
        click.option("--gamma", type=float, default=1e-6, show_default=True, help="batch weight"),
        click.option("--delta", type=float, default=None, help="energy weight per watt (ipa-energy; default 0.1)"),
        click.option("--idle-power-w", type=float, default=None, help="idle watts per reserved core (default: profile meta)"),
        click.option("--scaling-cap", type=int, default=100, show_default=True),
        click.option("--batching-cap", type=int, default=8, show_default=True),
        click.option("--freeze", multiple=True, metavar="STAGE=VARIANT", help="freeze a stage's variant"),
        click.option("--replicas", type=int, default=None, help="freeze replicas of every stage"),
        click.option("--max-cores", type=int, default=None, help="core budget of the whole pipeline (ipa serve: the cluster's CPUs)"),
        click.option("--cpus", type=float, default=None,
                     help="physical CPUs replicas and serving share (default: --max-cores; ipa serve: this machine's)"),
        click.option("--serving/--no-serving", "with_serving", default=True, show_default=True,
                     help="plan with the serving cost measured with the profiles (ipa profile --serving)"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def ray_options(f):
    """Where the Ray runtime runs: a local cluster by default, or an existing one."""
    opts = [
        click.option("--address", default=None, help="join this Ray cluster (ray://... or HOST:PORT); default: a local one"),
        click.option("--port", type=int, default=None, help="HTTP port of the pipeline on 127.0.0.1 (default 8000)"),
        click.option("--ray-cpus", type=int, default=None, help="logical CPUs of the local cluster (default: this machine's)"),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                     help="where replicas run the models (default: where the profiles were measured)"),
        click.option("--ingress-replicas", type=click.IntRange(1, 64), default=None,
                     help="replicas of the HTTP ingress (default: planned from the load and serving's CPU per request "
                          "in the profiles' meta, one event loop per ~70% of a core)"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def parse_freeze(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        stage, sep, variant = item.partition("=")
        if not sep or not stage or not variant:
            raise click.BadParameter(f"'{item}' is not STAGE=VARIANT", param_hint="--freeze")
        out[stage] = variant
    return out


def build_problem(policy, pipeline, profiles, alpha, beta, gamma, delta, idle_power_w, scaling_cap,
                  batching_cap, freeze, replicas, max_cores, cpus, with_serving):
    """`load_problem` from the problem options (`problem_options`), the unprofiled variants named."""
    from ipa.optimize import Weights
    from ipa.optimize.policies import load_problem
    from ipa.spec import load_model

    weights = load_model(Weights, {"alpha": alpha, "beta": beta, "gamma": gamma, "delta": delta or 0.0}, "options")
    problem = load_problem(policy, pipeline, profiles, weights, with_serving, idle_power_w_per_core=idle_power_w,
                           scaling_cap=scaling_cap, batching_cap=batching_cap, freeze=parse_freeze(freeze),
                           replicas=replicas, max_cores=max_cores, cpus=cpus)
    note(problem.profiles.describe_unprofiled(problem.spec))
    return problem


def serving_line(problem, load: float, ingresses: int | None = None) -> str:
    """What serving takes from the plan at this load, in one line (or why nothing); `ingresses`: a count the user
    fixed (--ingress-replicas)."""
    if problem.serving is None:
        return "serving: not planned for (no 'serving' in the profiles' meta: measure it with ipa profile --serving)"
    return problem.serving.describe(load, problem.cpus, ingresses)


@cli.command()
@click.option("--pipeline", type=click.Path(), default="configs/pipelines/video.yaml", show_default=True)
@click.option("--profiles", type=click.Path(), default=None,
              help="profile CSV (default: the shipped profiles/<pipeline>-cpu-2core.csv)")
@click.option("--load", "load", type=float, required=True, help="requests per second to sustain")
@click.option("--policy", type=click.Choice(POLICIES), default="ipa")
@click.option("--solver", type=click.Choice(list(SOLVERS)), default="exact",
              show_default=True, help="milp: HiGHS (pip install highspy); gurobi: IPA's formulation (pip install gurobipy)")
@problem_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def optimize(pipeline, profiles, load, policy, solver, as_json, **problem_kw):
    """Choose the best pipeline config for one load."""
    from ipa.optimize import solve

    problem = build_problem(policy, pipeline, profiles, **problem_kw)
    decision = solve(problem, load, solver=solver, policy=policy)
    if decision.reason:
        err_console.print("infeasible: " + decision.reason, style="yellow", markup=False, highlight=False)
    err_console.print(serving_line(problem, load), markup=False, highlight=False)
    if as_json:  # a program reads `feasible` and `holds_rps`; the exit code stays 0
        click.echo(json.dumps(decision.to_json(), indent=2))
        return
    a = decision.assessment
    t = Table(title=f"{problem.spec.name} @ {load:g} rps, policy {policy}, solver {solver}")
    for col in ("stage", "variant", "batch", "replicas", "cores/replica"):
        t.add_column(col)
    for stage, sc in a.config.items():
        t.add_row(stage, sc.variant, str(sc.batch), str(sc.replicas), str(sc.cores))
    console.print(t)
    console.print(
        f"feasible={a.feasible}  objective={a.objective:.4f}  accuracy={a.accuracy:.4f}  cores={a.cores}  "
        f"power={a.power_w:.1f} W ({problem.profiles.energy_label})  latency={a.latency_s:.3f} s  "
        f"(SLA {problem.spec.sla_s} s)  capacity={a.capacity_rps:.2f} rps  solve={decision.solve_ms:.2f} ms"
        + (f"\nserves {a.capacity_rps:.2f} of {load:g} rps: {load - a.capacity_rps:.2f} rps short (power and "
           "latency are for what it serves)" if a.capacity_rps < load else ""),
        markup=False, highlight=False,
    )
    if a.contention:
        console.print(f"sharing {problem.cpus:g} CPUs with serving at {load:g} rps, each stage's batches take "
                      + ", ".join(f"{s} x{f:.2f}" for s, f in a.contention.items())
                      + " their work alone (the plan's latency and capacity hold it)", markup=False, highlight=False)
    if not decision.feasible:
        error("no feasible configuration at this load: " + ("nothing can be served within the constraints"
              if decision.unservable else f"the one above holds {decision.holds_rps:.2f} of {load:g} rps"))
        sys.exit(1)


@cli.command()
@click.option("--pipeline", type=click.Path(), default="configs/pipelines/video.yaml", show_default=True)
@click.option("--profiles", type=click.Path(), default=None,
              help="profile CSV (default: the shipped profiles/<pipeline>-cpu-2core.csv)")
@click.option("--sla-factor", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="IPA's sla_factor: each variant's batch-1 p99 at its fewest cores is multiplied by it")
@click.option("--json", "as_json", is_flag=True)
def sla(pipeline, profiles, sla_factor, as_json):
    """The SLA IPA derives from the profiles: per stage 5 x the mean over variants of sla_factor x the batch-1
    p99 at the fewest cores, summed over the stages."""
    from ipa.paths import resolve, resolve_profiles
    from ipa.profiles import load_profiles
    from ipa.profiles.sla import ipa_sla
    from ipa.spec import load_pipeline

    spec = load_pipeline(resolve(pipeline))
    path = resolve_profiles(profiles, pipeline)
    derived = ipa_sla(spec, load_profiles(path, spec), sla_factor)
    if as_json:
        click.echo(json.dumps({"sla_s": derived.sla_s, "stages": derived.stages, "spec_sla_s": spec.sla_s}))
        return
    rows = [{"stage": st, "variant": v, "batch-1 p99 at fewest cores (s)": lat, "stage SLA (s)": derived.stages[st]}
            for (st, v), lat in derived.variants.items()]
    print_table(rows, f"{spec.name}: IPA's SLA from {path}")
    console.print(f"pipeline SLA {derived.sla_s:.2f} s (the spec says {spec.sla_s:g} s)")


@cli.group("spec")
def spec_group() -> None:
    """Pipeline specs: the YAML's schema, and what a spec makes of itself."""


@spec_group.command("schema")
def spec_schema():
    """Print the JSON Schema of the pipeline YAML (from the pydantic models that validate it)."""
    from ipa.spec import PipelineSpec

    click.echo(json.dumps(PipelineSpec.model_json_schema(), indent=2))


@spec_group.command("check")
@click.argument("file", type=click.Path())
@click.option("--profiles", type=click.Path(), default=None,
              help="profile CSV to look the variants up in (default: the shipped one of the pipeline, if any)")
@click.option("--weights", type=click.Path(), default=None, help="folder of checkpoints, as ipa profile and serve take it")
@click.option("--json", "as_json", is_flag=True)
def spec_check(file, profiles, weights, as_json):
    """Validate a pipeline YAML and say what it infers: each stage's kind and media, each variant's builder,
    checkpoint and profile rows. Exit 2 when something would stop a run."""
    from dataclasses import asdict

    from ipa.errors import ConfigError
    from ipa.paths import resolve, resolve_profiles
    from ipa.profiles import load_profiles
    from ipa.spec import load_pipeline
    from ipa.spec_check import check

    spec = load_pipeline(resolve(file))
    table, missing = None, ""
    try:
        table = load_profiles(resolve_profiles(profiles, file), spec)
    except ConfigError as e:
        if profiles:
            raise
        missing = str(e)
    report = check(spec, table, weights)
    if missing:
        report.notes.append(missing)
    if as_json:
        click.echo(json.dumps(asdict(report) | {"valid": not report.problems, "pipeline": spec.name}, indent=2))
    else:
        print_table(report.rows, f"{spec.name}: SLA {spec.sla_s:g} s, accuracy {spec.accuracy_method}"
                                 + (f" ({spec.normalize_accuracy} normalised)" if spec.normalize_accuracy != "none" else ""))
        if report.media:
            console.print(f"media: {report.media}")
        for note in report.notes:
            console.print(f"note: {note}")
        for problem in report.problems:
            error(problem)
        console.print(f"{file}: " + ("valid" if not report.problems else f"{len(report.problems)} problem(s)"))
    if report.problems:
        sys.exit(2)


@cli.group()
def energy() -> None:
    """Energy meters: what this machine can measure, and live readings."""


@energy.command("watch", context_settings={"ignore_unknown_options": True})
@click.option("--interval", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="seconds between lines")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="stop after S seconds (default: until the command ends or Ctrl-C)")
@click.option("--meter", type=click.Choice(METERS), default="auto", show_default=True)
@click.option("--csv", "csv_path", type=click.Path(), default=None, help="also write the lines to this CSV")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def energy_watch(interval, duration, meter, csv_path, command):
    """Print joules per interval, then the total; with `-- COMMAND ...` measure that command's run."""
    from dataclasses import asdict

    from ipa._io import check_writable, write_csv
    from ipa.energy import open_meter
    from ipa.energy.watch import watch

    if csv_path:
        check_writable(csv_path, "--csv", folder=False)

    if duration is None and not command:
        duration = float("inf")
    detection = open_meter(meter)
    err_console.print(detection.explain())
    m = detection.meter
    m.start()
    try:
        w = watch(m, interval, None if duration == float("inf") else duration, command,
                  on_row=lambda r: click.echo(f"{r.t:10.3f} s {r.joules:10.3f} Joules {r.domain:<10} {r.method}"))
    finally:
        m.stop()
    total = sum(r.joules for r in w.rows)
    click.echo(f"total {total:.3f} Joules in {w.elapsed_s:.3f} s, average {total / w.elapsed_s if w.elapsed_s else 0:.2f} "
               f"W, method {m.method}")
    if csv_path:
        write_csv(csv_path, [asdict(r) for r in w.rows])
    if w.exit_code:  # the measured command failed: say so with its own exit code, as `time` does
        err_console.print(f"{command[0]} exited with {w.exit_code}", style="yellow")
        sys.exit(w.exit_code if 0 < w.exit_code < 256 else 1)


def _device(text: str) -> str:
    import re

    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise click.BadParameter(f"'{text}' (allowed: cpu, cuda, cuda:N)", param_hint="--device")
    return text


def number_list(text: str, kind: type = int, minimum: float = 1) -> list:
    """`1,2,4` -> [1, 2, 4]; a clear error for anything else."""
    import math

    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"'{text}' is not a comma-separated list of {kind.__name__}s") from None
    if not values:
        raise click.BadParameter(f"'{text}': no values given (a comma-separated list, e.g. 1,2)")
    if not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"'{text}': values must be finite numbers")
    if min(values) < minimum:
        raise click.BadParameter(f"'{text}': values must be >= {minimum}")
    return values


def int_list(text: str) -> list[int]:
    return number_list(text, int, 1)


@cli.command()
@click.option("--pipeline", type=click.Path(), default="configs/pipelines/video.yaml", show_default=True)
@click.option("--stage", default=None, help="profile one stage only")
@click.option("--variants", default=None, help="comma-separated variants (default: all of the stage)")
@click.option("--batches", default="1,2,4,8", show_default=True)
@click.option("--cores", default="1,2", show_default=True)
@click.option("--repeats", type=int, default=10, show_default=True, help="timed batches per (batch, cores)")
@click.option("--warmup", type=int, default=2, show_default=True)
@click.option("--min-window", type=float, default=1.0, show_default=True,
              help="measure each (batch, cores) for at least this many seconds (energy counter resolution)")
@click.option("--meter", type=click.Choice(METERS), default="auto", show_default=True)
@click.option("--device", default="cpu", show_default=True, callback=lambda c, p, v: _device(v),
              help="cpu, cuda or cuda:N (GPU energy through NVML)")
@click.option("--weights", type=click.Path(), default=None, help="folder of <variant>.pth checkpoints")
@click.option("--serving", is_flag=True,
              help="measure what serving costs beside the models (Ray, HTTP, ingress) into OUT's meta file instead")
@click.option("--requests", "n_requests", type=int, default=150, show_default=True, help="--serving: requests sent")
@click.option("--out", type=click.Path(), required=True, help="profile CSV (resumed if it exists)")
def profile(pipeline, stage, variants, batches, cores, repeats, warmup, min_window, meter, device, weights, serving,
            n_requests, out):
    """Measure latency, throughput and energy of real models; writes a profile CSV + meta sidecar.

    With --serving, serve the pipeline's cheapest config on a local Ray cluster instead and store what
    serving costs beside the models (latency per request, CPU of the proxy, ingress and Ray) in the
    existing profile's meta file, where ipa optimize, serve and experiment plan with it.
    """
    from pathlib import Path

    from rich.progress import Progress

    from ipa.energy import open_meter
    from ipa.profiles import profiler
    from ipa.spec import load_pipeline

    from ipa._io import check_writable

    spec = load_pipeline(pipeline)
    check_writable(out, "--out", folder=False)
    if serving:
        _profile_serving(spec, Path(out), n_requests)
        return
    cores_list = int_list(cores)
    usable = len(os.sched_getaffinity(0))
    if max(cores_list) > usable:
        raise click.BadParameter(f"{cores}: this machine lets us use {usable} CPUs", param_hint="--cores")
    plan_list = profiler.plans(spec, stage, variants.split(",") if variants else None, int_list(batches), cores_list)
    if device.startswith("cuda") and meter == "auto":
        meter = "nvml"
    detection = open_meter(meter, gpu=False)
    err_console.print(detection.explain(), highlight=False)
    settings = profiler.ProfilerSettings(repeats=repeats, warmup=warmup, min_window_s=min_window, device=device,
                                         weights=weights)
    total = sum(len(p.batches) * len(p.cores) for p in plan_list)
    with Progress(console=err_console) as bar:
        task = bar.add_task("profiling", total=total)

        def step(msg: str) -> None:
            bar.console.print(msg, highlight=False)
            bar.advance(task, 1 if "done before" not in msg else len(int_list(batches)))

        table = profiler.run(spec, plan_list, Path(out), detection.meter, detection.meter.description, settings, step)
    console.print(f"wrote {len(table.rows)} rows to {out} (+ {profiler.meta_path(out).name}), energy: {table.energy_label}")


def _profile_serving(spec, out, n_requests: int) -> None:
    from ipa._io import write_json
    from ipa.profiles import load_profiles
    from ipa.profiles.table import meta_path
    from ipa.runtime.ray.overhead import measure_serving
    from ipa.runtime.ray.cluster import RaySettings, free_port

    if not out.is_file():
        from ipa.errors import ConfigError
        from ipa.paths import REPO, default_profiles

        shipped = default_profiles(spec.name)
        copy = (f", or copy the shipped {shipped} and its .meta.json there" if (REPO / shipped).is_file() else "")
        raise ConfigError(f"--out {out}: no profile CSV there. --serving adds serving's cost to the profiles of the "
                          f"models it serves: measure them first (ipa profile --pipeline PIPELINE --out {out}){copy}")
    table = load_profiles(out, spec)  # the profile it belongs to must exist and fit the pipeline
    if n_requests < 4:
        raise click.BadParameter(f"{n_requests}: at least 4 requests are needed", param_hint="--requests")
    _log_to(err_console)
    rate = _serving_rate(spec, table)
    err_console.print(f"measuring the serving cost: {n_requests} requests at {rate:.2g} rps on a local Ray cluster "
                      f"in bursts between idle windows (about {(n_requests / rate + 35) / 60 + 1:.0f} min)",
                      highlight=False)
    cost, speed, meta = measure_serving(spec, RaySettings(port=free_port()), requests=n_requests, rate_rps=rate,
                                        profiles=table)
    write_json(meta_path(out), table.meta | {"serving": cost.to_meta() | speed.to_meta() | meta})
    served = [name for name in (f"{s}/{c['variant']}" for s, c in meta["config"].items()) if name in speed.variant_pace]
    console.print(f"serving on this machine: {cost.latency_s * 1000:.0f} ms per request outside the models, "
                  f"{cost.cpu_fixed_cores:.2f} cores with no traffic + {cost.cpu_per_request_s * 1000:.1f} ms CPU per "
                  f"request (+ {cost.client_cpu_per_request_s * 1000:.1f} ms for a local load generator); the models "
                  f"ran at {speed.pace:.2f}x their profiled CPU"
                  + (f" ({speed.pace_range[0]:.2f}-{speed.pace_range[1]:.2f} over 10 s)" if speed.pace_range else "")
                  + f" with a p99 {speed.spread:.2f}x their median "
                  f"({meta['pace_batches']} batches) and each replica spent "
                  + ", ".join(f"{ms * 1000:.1f} ms ({stage})" for stage, ms in cost.batch_overhead_s.items())
                  + " per batch outside its model"
                  + (f"; per variant x{speed.variant_range()} of that pace (served: "
                     + ", ".join(f"{name} x{speed.variant_pace[name]:.2f}" for name in served)
                     + "; the others timed alone on a core)"
                     if speed.variant_pace else "")
                  + "; plans and "
                  f"predictions with these profiles will run them so; written to {meta_path(out)}"
                  + (f" (the VM's host took {meta['steal']:.0%} of its CPU meanwhile: figures measured on a busy host "
                     "run high; measure again when it is quieter)" if meta.get("steal", 0) >= 0.02 else ""),
                  markup=False, highlight=False)
    note(speed.unsteady())


def _serving_rate(spec, table) -> float:
    """5 rps, or half of what the cheapest config (one 1-core replica per stage) sustains if that is less: at a
    few rps the idle draw is most of serving's CPU, and per request is what is left after taking it out."""
    rates = [p.throughput_rps for s in spec.stages for p in table.for_stage(s.name)
             if p.variant == s.least_accurate.name and p.batch == 1 and p.cores == 1]
    return min([5.0] + [0.5 * r for r in rates])


def print_table(rows: list[dict], title: str = "", floatfmt: str = "{:.4g}") -> None:
    if not rows:
        console.print(f"{title}: (no rows)")
        return
    t = Table(title=title or None)
    for col in rows[0]:
        t.add_column(str(col))
    for r in rows:
        t.add_row(*[floatfmt.format(v) if isinstance(v, float) else "" if v is None else str(v) for v in r.values()])
    console.print(t)


trace_option = click.option("--trace", type=click.Path(), default=None,
                            help="Twitter trace file (else $IPA_TRACE, else ../shared/data/twitter-trace/)")


def carbon_options(f):
    """--carbon FILE and --carbon-speedup K: grams of CO2 beside joules, and the series ipa-carbon follows."""
    f = click.option("--carbon-speedup", type=float, default=None,
                     help="hours of the carbon series per hour of workload (default 1: real time; 72: a day in 20 min)")(f)
    return click.option("--carbon", type=click.Path(), default=None,
                        help="hourly grid carbon intensity, CSV hour,gco2_per_kwh (e.g. ../shared/data/carbon/ciso-sep.csv)")(f)


@cli.group()
def workload() -> None:
    """Workloads: the Twitter trace's patterns, any window, files, synthetic patterns."""


@workload.command("show")
@click.argument("name")
@trace_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--plot", type=click.Path(), default=None, help="write a PNG of the rate over time")
def workload_show(name, trace, as_json, plot):
    """Seconds, min, mean, max, p99 and burstiness of a workload."""
    from ipa.workload import load_workload

    w = load_workload(name, trace)
    stats = w.stats()
    if plot:
        from ipa._io import check_writable
        from ipa.experiment.plots import plot_workload

        plot_workload(w, check_writable(plot, "--plot", folder=False))
    if as_json:
        click.echo(json.dumps(stats | {"name": w.name, "source": w.source}))
        return
    print_table([{"workload": w.name} | stats], f"workload {w.name} ({w.source})")


@cli.group()
def predictor() -> None:
    """Load predictors: train the LSTM, compare them all."""


@predictor.command("train")
@click.argument("name", type=click.Choice(["lstm"]))
@trace_option
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(), default=None, help="weights JSON (default: the packaged file)")
def predictor_train(name, trace, epochs, seed, out):
    """Train IPA's LSTM on the first 14 days of the trace and write its weights."""

    from ipa.predict import lstm
    from ipa.workload import find_trace, read_trace

    from ipa._io import check_writable

    data = read_trace(find_trace(trace))
    meta = lstm.train(data, check_writable(out, "--out", folder=False) if out else lstm.WEIGHTS, epochs=epochs, seed=seed,
                      log=lambda m: err_console.print(m, highlight=False))
    console.print(f"wrote {out or lstm.WEIGHTS}: {meta['samples']} samples, seed {seed}")


@predictor.command("eval")
@trace_option
@click.option("--predictors", default="reactive,max,avg,arima,lstm", show_default=True)
@click.option("--stride", type=click.IntRange(min=1), default=300, show_default=True, help="seconds between evaluated points")
@click.option("--json", "as_json", is_flag=True)
def predictor_eval(trace, predictors, stride, as_json):
    """RMSE, MAE and under-prediction of every predictor on the test days (15-21)."""
    from ipa.predict.evaluate import evaluate
    from ipa.workload import find_trace, read_trace

    data = read_trace(find_trace(trace))
    rows = evaluate(data, predictors.split(","), stride,
                    progress=lambda n: err_console.print(f"evaluated {n}", highlight=False))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        print_table(rows, f"predictors on test days, one point every {stride} s")


SUITE = ("video", "audio-qa", "audio-sent", "sum-qa", "nlp")  # IPA's five pipelines: configs/experiments/<name>.yaml


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
        _log_to(err_console)
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


SUMMARY_SHOWN = ["workload", "policy", "pas", "cost_cores", "energy_j", "energy_method", "sla_violation_pct",
                 "dropped_pct", "p99_latency_s", "objective", "solve_ms_mean"]


def _print_summary(summaries, title: str = "summary") -> None:
    from ipa.experiment.metrics import has_co2

    co2 = has_co2(summaries)
    shown = [x for c in SUMMARY_SHOWN for x in ((c, "co2_g") if c == "energy_j" and co2 else (c,))]
    print_table([{c: s.get(c) for c in shown} for s in summaries], title)


def _experiment_suite(names: list[str], cfgs, out_dir) -> list[dict]:
    """Several experiments, each in its own folder, then one report and one summary over all of them."""
    from ipa._io import write_csv
    from ipa.experiment.cells import SUMMARY_COLUMNS
    from ipa.paths import resolve
    from ipa.experiment.report import build_suite_report
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


def _log_to(con: Console) -> None:
    """Warnings and progress of the serving runtime on stderr (replica down, failed reconfiguration, meter)."""
    import logging

    from rich.logging import RichHandler

    handler = RichHandler(console=con, show_path=False, show_time=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("ray", "ray.serve", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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

    series = _carbon_series(carbon, carbon_speedup)
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
    _log_to(err_console)
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


def _carbon_series(path: str | None, speedup: float | None):
    """ipa serve's --carbon series (None without one); a speedup needs a series, and is > 0."""
    from ipa.energy.carbon import read_carbon

    if speedup is not None and not speedup > 0:
        raise click.BadParameter(f"{speedup:g}: hours of the series per hour must be > 0", param_hint="--carbon-speedup")
    if path is None:
        if speedup is not None:
            raise click.UsageError("--carbon-speedup plays a carbon series faster: give the series with --carbon FILE")
        return None
    return read_carbon(path)


def _takes(spec) -> str:
    """What a client POSTs to this pipeline, in words."""
    from ipa.models.zoo import pipeline_kinds
    from ipa.runtime.ray.media import ACCEPTS
    from ipa.spec import MEDIA

    return ACCEPTS[MEDIA[pipeline_kinds(spec)[0]][0]][2]


def float_list(text: str) -> list[float]:
    """Each value once, in the order given: a repeated weight would be simulated and plotted twice."""
    return list(dict.fromkeys(number_list(text, float, 0)))


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

    from ipa.experiment.config import load_experiment
    from ipa.experiment.frontier import COLUMNS
    from ipa.experiment.frontier import frontier as run_frontier

    from ipa._io import check_writable
    from ipa.paths import results_folder

    cfg = load_experiment(config, profiles=profiles, pipeline=pipeline, load_scale=load_scale, trace=trace,
                          carbon=carbon, carbon_speedup=carbon_speedup)
    sweep = float_list(deltas), float_list(betas)  # checked before the folder is made
    out_dir = check_writable(out or results_folder("frontier"), "--out")
    points = run_frontier(cfg, workload, *sweep, out_dir, progress=lambda m: err_console.print(m, highlight=False))
    print_table([{c: p[c] for c in COLUMNS} for p in points], f"frontier on {workload}")
    console.print(f"wrote {out_dir}/frontier.csv and frontier.png")


if __name__ == "__main__":
    main()
