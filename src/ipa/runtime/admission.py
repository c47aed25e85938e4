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
    leave_s = max(leave_{s-1}, start_s) + fill_s + T_s
    finish  = O + leave_last

The batches ahead take t_s, the running median of the stage's batch times (started from the plan's
calibrated profile value at each reconfiguration, then following the measured batches); the request's own
batch takes T_s, the tail: the largest of t_s, the 90th percentile of the stage's last 32 batches (the plan's
99th percentile before the config has run one), and t_s times the pipeline's slowdown. The slowdown is the median of the last 4 batches' times over their own stage's running median:
about 1 while nothing changes, and on a shared machine what slows one stage slows the next, so the classifier is
expected slow as soon as the detector's batches are, not after its own first slow batch. When no batch has ended for two of the slowest stage's batch times, the slowdown
lapses and every stage goes back to its plan's times: a pipeline that admits nothing measures nothing, and one
slow batch (a model switch under load) would otherwise keep it shut for good. O is serving's own
latency: the largest of what the profiles measured, that at the pipeline's slowdown (the proxy and the ingress share
the machine too), and the 90th percentile of the time the last 64 answers spent outside the models. The start-by
time of stage s is arrival + SLA - O - (T_s + ... + T_last): a request is started only if it can finish when its
own batches are slow ones: with the medians alone, answers on a saturated machine come later than the SLA.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

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
    tail_s: float = math.nan  # its 99th percentile: the own batch's time until the config's batches are measured


UNKNOWN = StageEstimate(math.nan, math.nan)


TAIL_BATCHES, TAIL_ANSWERS, SLOWDOWN_BATCHES, TAIL_Q = 32, 64, 4, 0.9


def _tail(values: deque[float], q: float = TAIL_Q) -> float:
    """The q-th quantile, rounded up (of two values the 90th percentile is the larger)."""
    ordered = sorted(values)
    return ordered[math.ceil(q * (len(ordered) - 1))]


@dataclass
class _Stage:
    replicas: int
    batch: int
    wait_s: float
    batch_s: float
    per_request_s: float
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=TAIL_BATCHES))  # this config's batches
    tail_s: float = math.nan  # its own batch: max(batch_s, the recent batches' 90th percentile, batch_s x slowdown)

    planned_tail_s: float = math.nan  # the plan's 99th percentile of a batch

    def __post_init__(self) -> None:
        self.tail_s = self.batch_s
        self.planned = (self.batch_s, self.per_request_s)  # what the plan expected: where a lapse goes back to

    def replan(self) -> None:
        self.batch_s, self.per_request_s = self.planned
        self.recent.clear()

    def set_tail(self, slowdown: float) -> None:
        """The request's own batch: the measured tail of this config's batches, or the plan's before there are any."""
        own = _tail(self.recent) if self.recent else self.planned_tail_s
        self.tail_s = max(self.batch_s, own if own == own else self.batch_s, self.batch_s * slowdown)


@dataclass(frozen=True)
class Verdict:
    admit: bool
    estimate_s: float  # expected seconds from arrival to answer
    retry_after_s: int  # when refused: seconds until the queue ahead has drained enough


class Admission:
    def __init__(self, sla_s: float, overhead_s: float = 0.0, settings: AdmissionSettings | None = None):
        self.sla_s, self.profiled_overhead_s = sla_s, overhead_s
        self.overhead_s = overhead_s  # serving's own latency as admission counts it (profiled, or the recent tail)
        self.settings = settings or AdmissionSettings()
        self.stages: list[_Stage] = []
        self._rest: list[float] = [0.0]  # per stage, the tail batch times from it to the last (start-by offsets)
        self._outside: deque[float] = deque(maxlen=TAIL_ANSWERS)  # the last answers' time outside the models
        self._slowdowns: deque[float] = deque(maxlen=SLOWDOWN_BATCHES)  # the last batches' times over their stage's median
        self.slowdown = 1.0
        self._last_batch_at = -math.inf  # when a batch last ended (the caller's clock)
        self._lapsed = True  # nothing measured since the plan (or since the last lapse)

    def configure(self, i: int, replicas: int, batch: int, wait_s: float, expected: StageEstimate) -> None:
        """Stage i now runs this config: its times restart from the plan's expectation."""
        st = _Stage(replicas, batch, wait_s, expected.batch_s, expected.per_request_s,
                    planned_tail_s=expected.tail_s)
        st.set_tail(self.slowdown)
        if i < len(self.stages):
            self.stages[i] = st
        else:
            self.stages.append(st)
        self._sum_rest()

    def observe(self, i: int, seconds: float, size: int, now: float = 0.0) -> None:
        """A batch of `size` requests took `seconds` at stage i, ending at `now` (the caller's clock)."""
        if not (seconds > 0 and size > 0 and i < len(self.stages)):
            return
        self._last_batch_at, self._lapsed = now, False
        st, a = self.stages[i], self.settings.smoothing
        st.recent.append(seconds)
        if math.isnan(st.batch_s):
            st.batch_s, st.per_request_s = seconds, seconds / size
        else:
            self._slowdowns.append(seconds / st.batch_s)
            st.batch_s += a * (seconds - st.batch_s)
            st.per_request_s += a * (seconds / size - st.per_request_s)
        slowdown = max(1.0, _tail(self._slowdowns, 0.5)) if self._slowdowns else 1.0
        if abs(slowdown - self.slowdown) > 0.05 * self.slowdown:  # every stage's tail moves, and serving's own time
            self._set_slowdown(slowdown)
            return
        old = st.tail_s
        st.set_tail(self.slowdown)
        step = st.tail_s - (0.0 if math.isnan(old) else old)
        rest = self._rest
        for j in range(i + 1):  # the start-by offsets of stage i and those before it include stage i's time
            rest[j] += step

    def _set_slowdown(self, slowdown: float) -> None:
        self.slowdown = slowdown
        for st in self.stages:
            st.set_tail(slowdown)
        self._sum_rest()
        self._set_overhead()

    def settle(self, now: float) -> None:
        """No batch for two of the slowest stage's batch times: the slowdown lapses, the stages' times go back to
        the plan's (once, until the next batch)."""
        if self._lapsed:
            return
        slowest = max((st.batch_s for st in self.stages if st.batch_s == st.batch_s), default=0.0)
        if now - self._last_batch_at > max(1.0, 2 * slowest):
            self._lapsed = True
            self._slowdowns.clear()
            for st in self.stages:
                st.replan()
            self._set_slowdown(1.0)

    def observe_outside(self, seconds: float) -> None:
        """An answer spent `seconds` outside the models (HTTP, decoding, hops between stages, the answer)."""
        if seconds >= 0:
            self._outside.append(seconds)
            self._set_overhead()

    def _set_overhead(self) -> None:
        """Serving's own latency: the profiled, the recent answers' tail, or the profiled at the pipeline's slowdown
        (the proxy and the ingress share the machine too)."""
        recent = _tail(self._outside) if self._outside else 0.0
        self.overhead_s = max(self.profiled_overhead_s * self.slowdown, recent)

    def _sum_rest(self) -> None:
        rest = [0.0] * (len(self.stages) + 1)
        for i in range(len(self.stages) - 1, -1, -1):
            t = self.stages[i].tail_s
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
            leave += st.tail_s
            if b > 1:
                leave += _fill(st, queued, rate_rps)
        return self.overhead_s + leave

    def admits(self, at: Sequence[int], rate_rps: float, now: float = 0.0) -> bool:
        """decide(...).admit, without building the verdict (the simulator asks at every arrival)."""
        if not self.settings.enabled:
            return True
        self.settle(now)
        return self.estimate(at, rate_rps) <= self.settings.target * self.sla_s

    def decide(self, at: Sequence[int], rate_rps: float, now: float = 0.0) -> Verdict:
        self.settle(now)
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
        out[stage] = StageEstimate(row.p50, 1.0 / row.throughput_rps, row.latency_p99_s)
    return out
