"""Policies: which knobs are free. Each builds a Problem from the same spec, profiles and weights."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ipa.energy.carbon import CarbonSeries
from ipa.errors import ConfigError
from ipa.optimize.problem import Problem, Weights
from ipa.profiles.serving import ServingCost
from ipa.profiles.table import ProfileTable
from ipa.spec import PipelineSpec

POLICIES = ("ipa", "ipa-energy", "fa2-low", "fa2-high", "rim-high")

# Default energy weight of `ipa-energy`, per watt. One core costs beta = 1; a core running flat
# out draws about 7-10 W of package power on the servers IPA-style systems run on (TDP / cores),
# so 0.1/W prices a saturated core's energy like a second reservation of it. That is large enough
# to prefer variants and batches with fewer joules per request when accuracy ties, and small
# enough that accuracy (alpha = 2 on a score in [0, 1]) is still traded only for real savings.
DEFAULT_ENERGY_DELTA = 0.1
RIM_DEFAULT_REPLICAS = 3


def make_problem(
    policy: str,
    spec: PipelineSpec,
    profiles: ProfileTable,
    weights: Weights | None = None,
    *,
    idle_power_w_per_core: float | None = None,
    scaling_cap: int = 100,
    batching_cap: int = 8,
    freeze: Mapping[str, str] | None = None,
    replicas: int | None = None,
    max_cores: int | None = None,
    serving: ServingCost | None = None,
    cpus: float | None = None,
) -> Problem:
    """The problem a policy solves. Explicit `freeze`/`replicas` override the policy's defaults.

    `serving` is what serving costs beside the models (default: none); `cpus` the physical CPUs
    replicas and serving share (default: the core budget, when there is one).
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown policy '{policy}' (allowed: {', '.join(POLICIES)})")
    if scaling_cap < 1 or batching_cap < 1:
        raise ConfigError(f"scaling_cap and batching_cap must be >= 1, got {scaling_cap} and {batching_cap}")
    if replicas is not None and not 1 <= replicas <= scaling_cap:
        raise ConfigError(f"replicas must be in 1..scaling_cap ({scaling_cap}), got {replicas}")
    if max_cores is not None and max_cores < 1:
        raise ConfigError(f"max_cores (the core budget) must be >= 1, got {max_cores}")
    if cpus is not None and not cpus > 0:
        raise ConfigError(f"cpus must be > 0, got {cpus}")
    cpus = cpus if cpus is not None else (float(max_cores) if max_cores is not None and serving else None)
    weights = _policy_weights(policy, weights or Weights())
    frozen = _check_freeze(spec, dict(freeze or {}))
    idle = idle_power_w_per_core if idle_power_w_per_core is not None else (profiles.idle_power_w_per_core or 0.0)
    base = Problem(spec, profiles, weights, idle, scaling_cap, batching_cap, frozen, replicas, max_cores, serving, cpus)
    if policy == "fa2-low":
        frozen = least_accurate_profiled(spec, profiles) | frozen
    elif policy == "fa2-high":
        frozen = most_accurate_within_sla(base) | frozen
    elif policy == "rim-high":
        replicas = replicas or RIM_DEFAULT_REPLICAS
    return Problem(spec, profiles, weights, idle, scaling_cap, batching_cap, frozen, replicas, max_cores, serving, cpus)


def follow_grid(carbon: CarbonSeries, interval_s: float, speedup: float = 1.0) -> Callable[[Problem, float], Problem]:
    """ipa-carbon: the problem of the interval starting at t, its energy weight times the intensity that interval
    will see over the series' mean (known ahead, as Clover assumes), so a mean hour weighs as ipa-energy does."""
    mean = carbon.mean or 1.0

    def at(problem: Problem, t: float) -> Problem:
        return problem.with_delta(problem.weights.delta * carbon.over(t, interval_s, speedup) / mean)

    return at


def _policy_weights(policy: str, w: Weights) -> Weights:
    if policy == "ipa-energy":
        return w if w.delta > 0 else w.model_copy(update={"delta": DEFAULT_ENERGY_DELTA})
    if w.delta > 0:
        raise ConfigError(f"delta (energy weight) applies to policy 'ipa-energy'; '{policy}' has delta 0")
    return w


def _check_freeze(spec: PipelineSpec, freeze: dict[str, str]) -> dict[str, str]:
    for stage, variant in freeze.items():
        spec.stage(stage).variant(variant)  # raises ConfigError naming the allowed values
    return freeze


def least_accurate_profiled(spec: PipelineSpec, profiles: ProfileTable) -> dict[str, str]:
    """FA2-low's variants: each stage's least accurate variant among those with profile rows."""
    out = {}
    for s in spec.stages:
        profiled = {p.variant for p in profiles.for_stage(s.name)}
        out[s.name] = min((v for v in s.variants if v.name in profiled), key=lambda v: v.accuracy,
                          default=s.least_accurate).name
    return out


def most_accurate_within_sla(problem: Problem) -> dict[str, str]:
    """FA2-high's variants: the most accurate combination whose batch-1 latency meets the SLA.

    The same exact solver answers it: only accuracy counts, batch 1, one request at a time.
    """
    from ipa.optimize.solvers import exact

    accuracy_only = Problem(
        problem.spec, problem.profiles, Weights(alpha=1, beta=0, gamma=0, delta=0),
        0.0, problem.scaling_cap, 1, problem.frozen_variants, None, serving=problem.serving,
    )
    chosen = exact(accuracy_only, 0.0)
    if chosen is None:
        return least_accurate_profiled(problem.spec, problem.profiles)
    return {o.stage: o.variant for o in chosen}


def load_problem(policy: str, pipeline: str, profiles: str | None, weights: Weights, with_serving: bool = True,
                 **knobs) -> Problem:
    """The policy's problem for a pipeline spec and profile CSV as a user names them (`ipa.paths.resolve`; the
    shipped profiles when none are named): with serving's cost and the machine's speed from the profiles' meta
    unless `with_serving` is off. `knobs`: `make_problem`'s."""
    from ipa.machine.speed import from_meta as speed_from_meta
    from ipa.paths import resolve, resolve_profiles
    from ipa.profiles import load_profiles
    from ipa.profiles.serving import from_meta
    from ipa.spec import load_pipeline

    spec = load_pipeline(resolve(pipeline))
    table = load_profiles(resolve_profiles(profiles, pipeline), spec)
    serving = from_meta(table.meta, table.source) if with_serving else None
    speed = speed_from_meta(table.meta, table.source) if with_serving else None
    return make_problem(policy, spec, speed.table(table) if speed else table, weights, serving=serving, **knobs)
