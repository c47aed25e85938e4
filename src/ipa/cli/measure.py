"""Measuring: profiles of real models (and serving's cost), energy readings, workloads, load predictors."""

from __future__ import annotations

import json
import os
import sys

import click

from ipa.cli import cli, console, err_console, log_to, note, print_table
from ipa.cli.options import device_name, int_list, trace_option
from ipa.energy.detect import METERS


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
@click.option("--device", default="cpu", show_default=True, callback=lambda c, p, v: device_name(v),
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

    from ipa._io import check_writable
    from ipa.energy import open_meter
    from ipa.profiles import profiler
    from ipa.spec import load_pipeline

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
    from ipa.runtime.ray.cluster import RaySettings, free_port
    from ipa.runtime.ray.overhead import measure_serving

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
    log_to(err_console)
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

    from ipa._io import check_writable
    from ipa.predict import lstm
    from ipa.workload import find_trace, read_trace

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
