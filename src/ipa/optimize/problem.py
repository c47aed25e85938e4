"""The optimisation problem of DESIGN.md section 3: options per stage, objective, constraints."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import Field

from ipa.machine.contention import shared_rate
from ipa.profiles.serving import ServingCost
from ipa.profiles.table import Profile, ProfileTable
from ipa.spec import PipelineConfig, PipelineSpec, StageConfig, Strict, aggregate_accuracy, config_as_dict

EPS = 1e-9


class Weights(Strict):
    """Objective weights: alpha*A - beta*cores - gamma*sum(batch) - delta*power_w. IPA's defaults."""

    alpha: float = Field(default=2.0, ge=0)
    beta: float = Field(default=1.0, ge=0)
    gamma: float = Field(default=1e-6, ge=0)
    delta: float = Field(default=0.0, ge=0)


@dataclass(frozen=True)
class Option:
    """One stage's choice with everything the objective and constraints need, for one load."""

    stage: str
    variant: str
    batch: int
    cores: int
    replicas: int
    accuracy: float  # fraction
    latency_s: float  # p99 of a batch plus the batch-fill wait
    capacity_rps: float  # replicas * throughput of one replica
    power_w: float  # idle power of reserved cores + dynamic power at this load
    penalty: float  # beta*cores + gamma*batch + delta*power of this stage
    cpu_demand: float = 0.0  # cores the replicas burn at this load (busy fraction x reserved cores)

    @property
    def config(self) -> StageConfig:
        return StageConfig(self.variant, self.batch, self.replicas, self.cores)

    @property
    def total_cores(self) -> int:
        return self.replicas * self.cores


@dataclass(frozen=True)
class Problem:
    """Everything fixed between decisions; `options(load)` gives what each stage may choose."""

    spec: PipelineSpec
    profiles: ProfileTable
    weights: Weights = Weights()
    idle_power_w_per_core: float = 0.0
    scaling_cap: int = 100
    batching_cap: int = 8
    frozen_variants: Mapping[str, str] = field(default_factory=dict)
    frozen_replicas: int | None = None
    max_cores: int | None = None  # the cluster's core budget for the whole pipeline (None: unbounded)
    serving: ServingCost | None = None  # latency and CPU of serving outside the models (profile meta)
    cpus: float | None = None  # physical CPUs replicas and serving share (None: not bounded)
    stretch: Mapping[str, float] = field(default_factory=dict)  # the contention the rows hold (`contended`)

    def within_budget(self, cores: float) -> bool:
        return self.max_cores is None or cores <= self.max_cores + EPS

    @property
    def latency_budget_s(self) -> float:
        """What the stages may take: the SLA less serving's own latency per request."""
        return self.spec.sla_s - (self.serving.latency_s if self.serving else 0.0)

    def serving_cores(self, load: float) -> float:
        return self.serving.cores(load) if self.serving else 0.0

    def serving_power_w(self, load: float) -> float:
        """The power serving's CPU draws at `load` beyond idle, as the simulator and a meter count it."""
        return self.serving_cores(load) * self.profiles.joules_per_cpu_second

    def cpu_budget(self, load: float) -> float:
        """CPU cores the replicas may burn at `load`: the machine's, less what serving takes (inf: unbounded)."""
        return math.inf if self.cpus is None else self.cpus - self.serving_cores(load)

    def with_delta(self, delta: float) -> Problem:
        """The same problem with another energy weight (ipa-carbon's, interval by interval)."""
        return replace(self, weights=self.weights.model_copy(update={"delta": delta}))

    def with_profiles(self, profiles: ProfileTable) -> Problem:
        """The same problem planned with other profile values (the calibrated ones)."""
        return replace(self, profiles=profiles)

    def contention(self, chosen: Sequence[Option], load: float) -> dict[str, float]:
        """Per stage, how many times its batches' work alone (`Profile.alone_s`) they take while `chosen` and
        serving share the machine's CPUs at `load` (`shared_rate`, the simulator's model; own: one replica's
        demand); empty when the machine is not known."""
        if self.cpus is None:
            return {}
        demand = sum(o.cpu_demand for o in chosen) + self.serving_cores(load)
        return {o.stage: 1.0 / shared_rate(demand, o.cpu_demand / o.replicas, self.cpus) for o in chosen}

    def contended(self, chosen: Sequence[Option], load: float) -> Problem:
        """This problem with each stage's rows as long as the contention `chosen` makes at `load` says: a row's
        work alone times its stage's stretch. A row measured on a busy machine already holds some of it (its p50
        is above its work alone), so it stretches less, or shrinks when the load is now lighter."""
        stretch = self.contention(chosen, load)
        if not stretch:
            return self
        words = ", ".join(f"{s} x{f:.2f}" for s, f in stretch.items())
        table = self.profiles.slower(lambda p: p.alone_s / p.p50 * stretch.get(p.stage, 1.0),
                                     f"{self.profiles.source} (sharing {self.cpus:g} CPUs: {words})")
        return replace(self.with_profiles(table), stretch=stretch)

    def option(self, profile: Profile, load: float, replicas: int | None = None) -> Option:
        """Score one profile row at `load`; replicas default to the fewest that sustain it."""
        n = replicas or self.frozen_replicas or max(1, math.ceil(load / profile.throughput_rps - EPS))
        fill = (profile.batch - 1) / load if load > 0 else 0.0
        served = min(load, n * profile.throughput_rps)  # a replica cannot burn more than it can serve
        power = n * profile.cores * self.idle_power_w_per_core + served * profile.energy_j_per_batch / profile.batch
        w = self.weights
        acc = self.spec.accuracy_score(profile.stage, profile.variant)
        return Option(
            stage=profile.stage,
            variant=profile.variant,
            batch=profile.batch,
            cores=profile.cores,
            replicas=n,
            accuracy=acc,
            latency_s=profile.latency_p99_s + fill,
            capacity_rps=n * profile.throughput_rps,
            power_w=power,
            penalty=w.beta * n * profile.cores + w.gamma * profile.batch + w.delta * power,
            cpu_demand=min(served / profile.batch * profile.cpu_s, n * profile.cores),
        )

    def candidates(self, stage: str, load: float) -> list[Option]:
        """Every allowed (variant, batch, cores) of a stage, replicas capped, sustaining the load or not."""
        out = []
        frozen = self.frozen_variants.get(stage)
        for p in self.profiles.for_stage(stage):
            if p.batch > self.batching_cap or (frozen and p.variant != frozen):
                continue
            o = self.option(p, load)
            if o.replicas > self.scaling_cap:
                o = self.option(p, load, replicas=self.scaling_cap)
            out.append(o)
        return out

    def fewer_replicas(self, stage: str, load: float) -> list[Option]:
        """Every candidate also with fewer replicas: what a core budget too small for the load can still run."""
        out = []
        for o in self.candidates(stage, load):
            p = self.profiles.lookup(stage, o.variant, o.batch, o.cores)
            low = o.replicas if self.frozen_replicas else 1
            out += [self.option(p, load, replicas=r) for r in range(low, o.replicas + 1)]
        return out

    def options(self, load: float) -> list[list[Option]]:
        """Per stage, in pipeline order, the options that sustain `load` within the scaling cap, core and CPU budget."""
        cpu = self.cpu_budget(load) + EPS
        return [
            [o for o in self.candidates(s, load) if o.capacity_rps >= load - EPS and self.within_budget(o.total_cores)
             and o.cpu_demand <= cpu]
            for s in self.spec.stage_names
        ]

    def capacity(self, chosen: Sequence[Option]) -> float:
        """The most rps a config sustains: its slowest stage, or the CPU it and serving share when that runs out first."""
        stages = min(o.capacity_rps for o in chosen)
        if self.cpus is None:
            return stages
        per_request = sum(self._cpu_per_request(o) for o in chosen)
        fixed, serving_per_request = 0.0, 0.0
        if self.serving:
            fixed, serving_per_request = self.serving.cores(0.0), self.serving.cores(1.0) - self.serving.cores(0.0)
        cpu_limited = max(0.0, self.cpus - fixed) / (per_request + serving_per_request)
        return min(stages, cpu_limited)

    def _cpu_per_request(self, o: Option) -> float:
        p = self.profiles.lookup(o.stage, o.variant, o.batch, o.cores)
        return min(p.cpu_s / p.batch, o.cores / p.throughput_rps)

    def objective(self, chosen: Sequence[Option]) -> float:
        acc = aggregate_accuracy(self.spec.accuracy_method, [o.accuracy for o in chosen])
        return self.weights.alpha * acc - sum(o.penalty for o in chosen)

    def assess(self, chosen: Sequence[Option], load: float) -> Assessment:
        latency = sum(o.latency_s for o in chosen)
        short = [o.stage for o in chosen if o.capacity_rps < load - EPS]
        cores = sum(o.total_cores for o in chosen)
        demand = sum(o.cpu_demand for o in chosen)
        serving_w = self.serving_power_w(load)  # the same for every config at this load: it moves no choice
        return Assessment(
            config={o.stage: o.config for o in chosen},
            objective=self.objective(chosen) - self.weights.delta * serving_w,
            accuracy=aggregate_accuracy(self.spec.accuracy_method, [o.accuracy for o in chosen]),
            cores=cores,
            power_w=sum(o.power_w for o in chosen) + serving_w,
            latency_s=latency + (self.serving.latency_s if self.serving else 0.0),
            feasible=(not short and latency <= self.latency_budget_s + EPS and self.within_budget(cores)
                      and demand <= self.cpu_budget(load) + EPS),
            short_stages=short,
            capacity_rps=self.capacity(chosen),
            cpu_demand=demand,
            serving_cores=self.serving_cores(load),
            contention=dict(self.stretch),
        )

    def assess_config(self, config: PipelineConfig, load: float) -> Assessment:
        """Score a given config (any replicas) at a load, e.g. the one a runtime is serving."""
        return self.assess(self.chosen(config, load), load)

    def chosen(self, config: PipelineConfig, load: float) -> list[Option]:
        """A given config's options on this problem's rows at a load, its replicas kept."""
        return [self.option(self.profiles.lookup(s, sc.variant, sc.batch, sc.cores), load, replicas=sc.replicas)
                for s, sc in ((s, config[s]) for s in self.spec.stage_names)]


@dataclass(frozen=True)
class Assessment:
    config: PipelineConfig
    objective: float
    accuracy: float
    cores: int
    power_w: float  # the stages' (idle of reserved cores + dynamic) and serving's CPU
    latency_s: float  # end to end: the stages' batches and batch-fill waits, plus serving's own latency
    feasible: bool
    short_stages: list[str] = field(default_factory=list)
    capacity_rps: float = math.inf  # the most this config sustains (slowest stage, or the CPU it shares)
    cpu_demand: float = 0.0  # cores the replicas burn at the load
    serving_cores: float = 0.0  # cores serving takes at the load
    contention: dict[str, float] = field(default_factory=dict)  # per stage, batch time / work alone (planned)


@dataclass(frozen=True)
class Decision:
    """A solver's answer at one load; `reason` says why it is infeasible when it is, `holds_rps` how much of the
    load it serves within every constraint (0: none at all, an SLA or core budget nothing meets)."""

    policy: str
    solver: str
    load_rps: float
    assessment: Assessment
    solve_ms: float
    reason: str = ""
    holds_rps: float | None = None
    profiles: ProfileTable | None = None  # the rows it was planned on (the machine's contention in them)

    @property
    def unservable(self) -> bool:
        """Nothing can be served within the SLA and the budget, at any load."""
        return self.holds_rps is not None and self.holds_rps <= 0 and self.load_rps > 0

    @property
    def feasible(self) -> bool:
        return self.assessment.feasible

    @property
    def config(self) -> PipelineConfig:
        return self.assessment.config

    def to_json(self) -> dict[str, Any]:
        a = self.assessment
        return {
            "feasible": a.feasible,
            "config": config_as_dict(a.config),
            "objective": a.objective,
            "accuracy": a.accuracy,
            "cores": a.cores,
            "power_w": a.power_w,
            "latency_s": a.latency_s,
            "capacity_rps": a.capacity_rps,
            "served_rps": min(self.load_rps, a.capacity_rps),
            "shortfall_rps": max(0.0, self.load_rps - a.capacity_rps),
            "cpu_demand": a.cpu_demand,
            "serving_cores": a.serving_cores,
            "contention": a.contention,
            "solve_ms": self.solve_ms,
            "policy": self.policy,
            "solver": self.solver,
            "load_rps": self.load_rps,
            "reason": self.reason,
            "holds_rps": self.holds_rps,
        }
