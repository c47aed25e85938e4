"""What several commands take: the problem's knobs, where Ray runs, the trace, a carbon series, lists of numbers."""

from __future__ import annotations

import click

from ipa.cli import note


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


trace_option = click.option("--trace", type=click.Path(), default=None,
                            help="Twitter trace file (else $IPA_TRACE, else ../shared/data/twitter-trace/)")


def carbon_options(f):
    """--carbon FILE and --carbon-speedup K: grams of CO2 beside joules, and the series ipa-carbon follows."""
    f = click.option("--carbon-speedup", type=float, default=None,
                     help="hours of the carbon series per hour of workload (default 1: real time; 72: a day in 20 min)")(f)
    return click.option("--carbon", type=click.Path(), default=None,
                        help="hourly grid carbon intensity, CSV hour,gco2_per_kwh (e.g. ../shared/data/carbon/ciso-sep.csv)")(f)


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


def device_name(text: str) -> str:
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


def float_list(text: str) -> list[float]:
    """Each value once, in the order given: a repeated weight would be simulated and plotted twice."""
    return list(dict.fromkeys(number_list(text, float, 0)))


def carbon_series(path: str | None, speedup: float | None):
    """ipa serve's --carbon series (None without one); a speedup needs a series, and is > 0."""
    from ipa.energy.carbon import read_carbon

    if speedup is not None and not speedup > 0:
        raise click.BadParameter(f"{speedup:g}: hours of the series per hour must be > 0", param_hint="--carbon-speedup")
    if path is None:
        if speedup is not None:
            raise click.UsageError("--carbon-speedup plays a carbon series faster: give the series with --carbon FILE")
        return None
    return read_carbon(path)
