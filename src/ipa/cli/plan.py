"""Planning: the best config for one load, IPA's SLA rule, and what a pipeline spec makes of itself."""

from __future__ import annotations

import json
import sys

import click
from rich.table import Table

from ipa.cli import cli, console, err_console, error, print_table
from ipa.cli.options import build_problem, problem_options, serving_line
from ipa.optimize.policies import POLICIES
from ipa.optimize.solvers import SOLVERS


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
