"""Request-level discrete-event simulator of a pipeline, driven by profiles. Deterministic per seed.

Per stage: one FIFO queue and n replicas. A free replica takes up to `batch` requests, waiting at
most a batch timeout for a full batch; the batch's service time is drawn from the profile (lognormal
with the profile's p50 and p99). A new stage config takes effect after the profiled model load
time while the old one keeps serving (both reserved meanwhile). Requests older than the drop limit
are dropped when they reach the head of a queue.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import Field

from ipa.profiles.table import Profile, ProfileTable
from ipa.runtime.loadgen import arrival_times
from ipa.spec import PipelineConfig, PipelineSpec, StageConfig, Strict

Z99 = 2.326  # standard normal 99th percentile
DEFAULT_LOAD_S = 1.0  # reconfiguration delay when a profile has no load time


class SimSettings(Strict):
    drop_limit_s: float | None = Field(default=None, gt=0, description="default: 2 x SLA")
    batch_timeout_s: float | None = Field(default=None, ge=0, description="default: SLA / (2 x stages)")
    reconfig_s: dict[Literal["variant", "batch", "replicas", "cores"], float] | None = Field(
        default=None, description="measured delay per kind of change (ipa experiment --runtime ray writes them); "
                                  "default: the profiled model load time, batch changes instant")


@dataclass
class _Stage:
    idx: int
    name: str
    cfg: StageConfig
    rows: list[Profile]  # of cfg's (variant, cores), by batch ascending
    accuracy: float
    busy: int = 0
    queue: deque = field(default_factory=deque)  # (request id, time it joined this queue)
    timeout_at: float = -1.0
    pending: tuple[float, StageConfig] | None = None

    def reserved_cores(self) -> int:
        own = self.cfg.replicas * self.cfg.cores
        return own + (self.pending[1].replicas * self.pending[1].cores if self.pending else 0)


@dataclass
class SimResult:
    """Per-second series (index = second) and run totals."""

    seconds: int
    series: dict[str, np.ndarray]
    latencies: np.ndarray  # end-to-end latency of every completed request
    completed_pas: np.ndarray  # PAS of every completed request
    arrivals: int
    completed: int
    dropped: int
    in_flight: int
    reconfigurations: int


class Simulator:
    def __init__(self, spec: PipelineSpec, profiles: ProfileTable, idle_w_per_core: float,
                 rps: np.ndarray, settings: SimSettings | None = None, seed: int = 0):
        settings = settings or SimSettings()
        self.spec = spec
        self.profiles = profiles
        self.idle_w = idle_w_per_core
        self.sla = spec.sla_s
        self.drop_limit = settings.drop_limit_s or 2 * spec.sla_s
        self.batch_timeout = (settings.batch_timeout_s if settings.batch_timeout_s is not None
                              else spec.sla_s / (2 * len(spec.stages)))
        self.reconfig_s = settings.reconfig_s
        self.rng = np.random.default_rng(seed)
        self.duration = len(rps)
        self.arrival_t = arrival_times(rps, self.rng)
        self.multiply = spec.accuracy_method == "multiply"
        self.acc = np.full(len(self.arrival_t), 1.0 if self.multiply else 0.0)
        self.now = 0.0
        self._next_arrival = 0
        self._events: list = []
        self._seq = 0
        self._accrued_to = 0.0
        self.stages: list[_Stage] = []
        n = self.duration
        self.s = {k: np.zeros(n) for k in ("arrivals", "completions", "drops", "violations", "pas_sum",
                                           "core_seconds", "energy_idle_j", "energy_dynamic_j")}
        self._lat: list[float] = []
        self._lat_sec: list[int] = []
        self._pas: list[float] = []
        self.dropped = self.completed = self.reconfigurations = 0

    # -- setup -----------------------------------------------------------------------------
    def start(self, config: PipelineConfig) -> None:
        """The initial config, serving from t = 0 with no delay."""
        self.stages = [self._stage(i, s.name, config[s.name]) for i, s in enumerate(self.spec.stages)]

    def _stage(self, idx: int, name: str, cfg: StageConfig) -> _Stage:
        st = _Stage(idx, name, cfg, [], 0.0)
        self._configure(st, cfg)
        return st

    def _configure(self, st: _Stage, cfg: StageConfig) -> None:
        rows = sorted((p for p in self.profiles.for_stage(st.name) if p.variant == cfg.variant and p.cores == cfg.cores),
                      key=lambda p: p.batch)
        if not any(p.batch == cfg.batch for p in rows):
            raise ValueError(f"no profile for {st.name}/{cfg.variant} batch {cfg.batch} cores {cfg.cores}")
        st.cfg, st.rows = cfg, [p for p in rows if p.batch <= cfg.batch]
        st.accuracy = self.spec.stage(st.name).variant(cfg.variant).accuracy_fraction

    # -- control ---------------------------------------------------------------------------
    def apply(self, config: PipelineConfig) -> None:
        """Reconfigure at the current time; each changed stage switches after its load delay."""
        for st in self.stages:
            new = config[st.name]
            target = st.pending[1] if st.pending else st.cfg
            if new == target:
                continue
            self.reconfigurations += 1
            delay = self._delay(st, new)
            self._accrue(self.now)
            if delay == 0:
                st.pending = None
                self._configure(st, new)
                self._dispatch(st)
            else:
                st.pending = (self.now + delay, new)
                self._push(self.now + delay, 2, (st.idx, new))

    def _delay(self, st: _Stage, new: StageConfig) -> float:
        """Loading a model (other variant, other cores, new replicas) takes its load time; a batch change is instant.

        With measured delays (`reconfig_s`), the slowest of the changed knobs' delays.
        """
        old = st.cfg
        if self.reconfig_s:
            changed = [k for k in ("variant", "batch", "cores") if getattr(old, k) != getattr(new, k)]
            changed += ["replicas"] if new.replicas > old.replicas else []  # removing a replica is immediate
            return max((self.reconfig_s.get(k, 0.0) for k in changed), default=0.0)
        if (new.variant, new.cores) == (old.variant, old.cores) and new.replicas <= old.replicas:
            return 0.0
        rows = [p for p in self.profiles.for_stage(st.name) if p.variant == new.variant
                and p.cores == new.cores and p.load_s]
        return max((p.load_s for p in rows), default=DEFAULT_LOAD_S)

    def observed_rates(self) -> np.ndarray:
        """Arrivals per second seen so far (the load monitor's view)."""
        return self.s["arrivals"][: int(self.now)]

    # -- event loop ------------------------------------------------------------------------
    def _push(self, t: float, kind: int, payload) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, payload))

    def run_until(self, t_end: float) -> None:
        t_end = min(t_end, self.duration)
        arr = self.arrival_t
        while True:
            t_arr = arr[self._next_arrival] if self._next_arrival < len(arr) else math.inf
            t_evt = self._events[0][0] if self._events else math.inf
            t = min(t_arr, t_evt)
            if t >= t_end:
                break
            self.now = t
            if t_arr <= t_evt:
                self._arrive(self._next_arrival)
                self._next_arrival += 1
            else:
                _, kind, _, payload = heapq.heappop(self._events)
                (self._done, self._timeout, self._switch)[kind](payload)
        self.now = t_end
        self._accrue(t_end)

    def _arrive(self, req: int) -> None:
        self.s["arrivals"][int(self.now)] += 1
        self._enqueue(self.stages[0], req)

    def _enqueue(self, st: _Stage, req: int) -> None:
        st.queue.append((req, self.now))
        self._dispatch(st)

    def _dispatch(self, st: _Stage) -> None:
        q = st.queue
        while q and st.busy < st.cfg.replicas:
            while q and self.now - self.arrival_t[q[0][0]] > self.drop_limit:
                self._drop(q.popleft()[0])
            if not q:
                return
            waited = self.now - q[0][1]
            if len(q) < st.cfg.batch and waited < self.batch_timeout - 1e-12:
                due = q[0][1] + self.batch_timeout
                if st.timeout_at != due:
                    st.timeout_at = due
                    self._push(due, 1, st.idx)
                return
            batch = [q.popleft()[0] for _ in range(min(st.cfg.batch, len(q)))]
            row = next(p for p in st.rows if p.batch >= len(batch)) if len(batch) < st.cfg.batch else st.rows[-1]
            st.busy += 1
            self._push(self.now + self._service_time(row), 0, (st.idx, batch, st.accuracy, row.energy_j_per_batch))

    def _service_time(self, row: Profile) -> float:
        p50, p99 = row.p50, row.latency_p99_s
        if p99 <= p50:
            return p99
        return float(p50 * math.exp(math.log(p99 / p50) / Z99 * self.rng.standard_normal()))

    def _done(self, payload) -> None:
        idx, batch, accuracy, joules = payload
        st = self.stages[idx]
        st.busy -= 1
        sec = min(int(self.now), self.duration - 1)
        self.s["energy_dynamic_j"][sec] += joules
        last = idx == len(self.stages) - 1
        for req in batch:
            self.acc[req] = self.acc[req] * accuracy if self.multiply else self.acc[req] + accuracy
            if last:
                self._complete(req, sec)
            else:
                self.stages[idx + 1].queue.append((req, self.now))
        if not last:
            self._dispatch(self.stages[idx + 1])
        self._dispatch(st)

    def _complete(self, req: int, sec: int) -> None:
        latency = self.now - self.arrival_t[req]
        pas = self.acc[req] / len(self.stages) if self.spec.accuracy_method == "average" else self.acc[req]
        self.completed += 1
        self.s["completions"][sec] += 1
        self.s["pas_sum"][sec] += pas
        if latency > self.sla:
            self.s["violations"][sec] += 1
        self._lat.append(latency)
        self._lat_sec.append(sec)
        self._pas.append(pas)

    def _drop(self, req: int) -> None:
        sec = min(int(self.now), self.duration - 1)
        self.dropped += 1
        self.s["drops"][sec] += 1
        self.s["violations"][sec] += 1

    def _timeout(self, idx: int) -> None:
        st = self.stages[idx]
        st.timeout_at = -1.0
        self._dispatch(st)

    def _switch(self, payload) -> None:
        idx, cfg = payload
        st = self.stages[idx]
        if not st.pending or st.pending[1] != cfg or st.pending[0] > self.now + 1e-12:
            return  # superseded by a later apply
        self._accrue(self.now)
        st.pending = None
        self._configure(st, cfg)
        self._dispatch(st)

    def _accrue(self, t: float) -> None:
        """Add reserved core-seconds (and their idle energy) for [last accrual, t) into per-second buckets."""
        t0 = self._accrued_to
        if t <= t0:
            return
        cores = sum(st.reserved_cores() for st in self.stages)
        for sec in range(int(t0), min(math.ceil(t), self.duration)):
            overlap = min(t, sec + 1) - max(t0, sec)
            if overlap > 0:
                self.s["core_seconds"][sec] += cores * overlap
                self.s["energy_idle_j"][sec] += cores * overlap * self.idle_w
        self._accrued_to = t

    # -- results ---------------------------------------------------------------------------
    def result(self) -> SimResult:
        lat = np.array(self._lat)
        secs = np.array(self._lat_sec, dtype=np.int64)
        series = dict(self.s)
        series["p50_latency_s"], series["p99_latency_s"] = _per_second_percentiles(lat, secs, self.duration)
        done = series["completions"]
        series["pas"] = np.divide(series["pas_sum"], done, out=np.full(self.duration, np.nan), where=done > 0)
        series["energy_j"] = series["energy_idle_j"] + series["energy_dynamic_j"]
        in_flight = len(self.arrival_t) - self.completed - self.dropped
        return SimResult(self.duration, series, lat, np.array(self._pas), len(self.arrival_t), self.completed,
                         self.dropped, in_flight, self.reconfigurations)


def _per_second_percentiles(lat: np.ndarray, secs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    p50 = np.full(n, np.nan)
    p99 = np.full(n, np.nan)
    if len(lat):
        order = np.argsort(secs, kind="stable")
        lat, secs = lat[order], secs[order]
        bounds = np.searchsorted(secs, np.arange(n + 1))
        for s in range(n):
            chunk = lat[bounds[s] : bounds[s + 1]]
            if len(chunk):
                p50[s], p99[s] = np.percentile(chunk, [50, 99])
    return p50, p99
