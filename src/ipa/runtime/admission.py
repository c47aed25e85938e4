"""Deadline-aware admission: refuse at arrival what cannot finish within the SLA, expire what waits too long.

Once a queue holds more than the SLA's worth of work, every request behind it is served late: the
pipeline spends its CPU on answers nobody counts and goodput falls to zero. So at arrival the request's
finish is estimated from the work ahead of it and the current config's service times, and it is
refused at once (HTTP 503 with Retry-After) when the estimate passes `target` x SLA. A request that
was admitted but waits until it can no longer finish in time leaves the stage queue before a model
runs on it. The ingress and the simulator share this class, so they shed the same requests.

The estimate walks the stages in order. At stage s, with n_s replicas taking batches of b_s that last
t_s, a_s admitted requests are there now: about busy_s = min(n_s, ceil(a_s / b_s)) batches run, and the
q_s others there or upstream (all served there before this one) make floor(q_s / b_s) batches more. The
request reaches stage s when it leaves stage s - 1. The queued batches take the free replicas first;
after them it needs the m-th of the running batches to end, with m = floor(q_s / b_s) + 1 - free_s;
running batches end spread over a batch time (the m-th after m / (busy_s + 1) of it), then the stage
goes on in rounds of n_s. Its own batch fills with the b_s - 1 - (q_s mod b_s) arrivals it still needs
at the current rate, at most the batch timeout:

    start_s = 0                                                    if m <= 0 (a replica is left for it)
            = t_s * m / (busy_s + 1)                               if m <= busy_s
            = t_s * busy_s / (busy_s + 1) + t_s * (m - busy_s) / n_s   otherwise
    leave_s = max(leave_{s-1}, start_s) + fill_s + t_s
    finish  = o + leave_last                                       (o: serving's own latency per request)

The service times start from the plan's (calibrated) profile values at each reconfiguration and
follow the measured batches from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import Field

from ipa.profiles.table import ProfileTable
from ipa.spec import PipelineConfig, Strict


class AdmissionSettings(Strict):
    enabled: bool = True
    target: float = Field(default=1.0, gt=0, le=2, description="admit while the estimated finish is within target x SLA")
    smoothing: float = Field(default=0.2, gt=0, le=1, description="weight of each measured batch in the running times")


@dataclass(frozen=True)
class StageEstimate:
    """What the plan expects one stage to take under its config (nan: unknown, the first batch measured sets it)."""

    batch_s: float  # one batch at the config's batch size (median)
    per_request_s: float  # replica-seconds per request at that batch size (1 / one replica's throughput)


UNKNOWN = StageEstimate(math.nan, math.nan)


@dataclass
class _Stage:
    replicas: int
    batch: int
    wait_s: float
    batch_s: float
    per_request_s: float


@dataclass(frozen=True)
class Verdict:
    admit: bool
    estimate_s: float  # expected seconds from arrival to answer
    retry_after_s: int  # when refused: seconds until the queue ahead has drained enough


class Admission:
    def __init__(self, sla_s: float, overhead_s: float = 0.0, settings: AdmissionSettings | None = None):
        self.sla_s, self.overhead_s = sla_s, overhead_s
        self.settings = settings or AdmissionSettings()
        self.stages: list[_Stage] = []
        self._rest: list[float] = [0.0]  # per stage, the batch times from it to the last (start-by offsets)

    def configure(self, i: int, replicas: int, batch: int, wait_s: float, expected: StageEstimate) -> None:
        """Stage i now runs this config: its times restart from the plan's expectation."""
        st = _Stage(replicas, batch, wait_s, expected.batch_s, expected.per_request_s)
        if i < len(self.stages):
            self.stages[i] = st
        else:
            self.stages.append(st)
        self._sum_rest()

    def observe(self, i: int, seconds: float, size: int) -> None:
        """A batch of `size` requests took `seconds` at stage i."""
        if not (seconds > 0 and size > 0 and i < len(self.stages)):
            return
        st, a = self.stages[i], self.settings.smoothing
        if math.isnan(st.batch_s):
            st.batch_s, st.per_request_s = seconds, seconds / size
            self._sum_rest()
            return
        step = a * (seconds - st.batch_s)
        st.batch_s += step
        st.per_request_s += a * (seconds / size - st.per_request_s)
        rest = self._rest
        for j in range(i + 1):  # the start-by offsets of stage i and those before it include stage i's time
            rest[j] += step

    def _sum_rest(self) -> None:
        rest = [0.0] * (len(self.stages) + 1)
        for i in range(len(self.stages) - 1, -1, -1):
            t = self.stages[i].batch_s
            rest[i] = rest[i + 1] + (0.0 if math.isnan(t) else t)
        self._rest = rest

    def estimate(self, at: Sequence[int], rate_rps: float) -> float:
        """Seconds from arrival to answer for a request arriving now; `at[s]`: admitted requests now at stage s
        (queued for it or in its batches)."""
        leave = 0.0
        ahead = 0
        i = 0
        for st in self.stages:
            here = at[i]
            i += 1
            ahead += here
            t = st.batch_s
            if t != t:  # nan: not known yet
                continue
            n, b = st.replicas, st.batch
            busy = min(n, -(-here // b))
            queued = max(0, ahead - min(here, busy * b))
            m = queued // b + 1 - (n - busy)  # the running batches that must end before it starts
            if m > 0:
                start = t * m / (busy + 1) if m <= busy else t * busy / (busy + 1) + t * (m - busy) / n
                if start > leave:
                    leave = start
            leave += t
            if b > 1:
                leave += _fill(st, queued, rate_rps)
        return self.overhead_s + leave

    def admits(self, at: Sequence[int], rate_rps: float) -> bool:
        """decide(...).admit, without building the verdict (the simulator asks at every arrival)."""
        return not self.settings.enabled or self.estimate(at, rate_rps) <= self.settings.target * self.sla_s

    def decide(self, at: Sequence[int], rate_rps: float) -> Verdict:
        est = self.estimate(at, rate_rps)
        limit = self.settings.target * self.sla_s
        if not self.settings.enabled or est <= limit:
            return Verdict(True, est, 0)
        return Verdict(False, est, max(1, math.ceil(est - limit)))

    def start_by(self, arrival: float, i: int) -> float:
        """The latest time stage i may start a request and still answer it within the SLA (inf when disabled)."""
        if not self.settings.enabled:
            return math.inf
        return arrival + self.sla_s - self.overhead_s - self._rest[i]


def _fill(st: _Stage, ahead: int, rate_rps: float) -> float:
    """Expected wait for the request's batch to fill: the arrivals it still needs after the `ahead % b` requests
    that share it, at the current rate, at most the batch timeout."""
    missing = st.batch - 1 - ahead % st.batch
    if missing <= 0:
        return 0.0
    return min(st.wait_s, missing / rate_rps) if rate_rps > 0 else st.wait_s


def stage_estimates(profiles: ProfileTable, config: PipelineConfig) -> dict[str, StageEstimate]:
    """What each stage's config takes according to `profiles` (the plan's, calibrated or not)."""
    out = {}
    for stage, c in config.items():
        row = profiles.lookup(stage, c.variant, c.batch, c.cores)
        out[stage] = StageEstimate(row.p50, 1.0 / row.throughput_rps)
    return out
