"""Request-level discrete-event simulator of a pipeline, driven by profiles. Deterministic per seed.

Per stage: one FIFO queue and n replicas. A free replica takes up to `batch` requests, waiting at
most a batch timeout for a full batch; the batch's service time is drawn from the profile (lognormal
with the profile's p50 and p99). A new stage config takes effect after the profiled model load
time while the old one keeps serving (both reserved meanwhile); admission plans with it at once, as
the real ingress does.

The profiles it runs on are the machine's truth; the plans it is given may have been made with
others (`true_profiles`, `true_scale`), which is how calibration is tested without Ray. It sheds
load as the real ingress does (`ipa.runtime.admission`): a request that cannot finish within the SLA
is refused at arrival, one that waited past its start-by time leaves the queue before any model
runs on it, and none outlives the drop limit. Every executed batch is reported for calibration.

With `cpus` set, the replicas and serving share that many CPUs, as on one real machine. Each running
batch needs its row's CPU share (cores x `cpu_share`, CPU seconds per second with the machine to
itself) and serving needs `ServingCost.cores` at the last second's load; while the sum passes `cpus`,
every running batch progresses at cpus / demand of its uncontended pace (processor sharing, which is
what Linux's scheduler approximates), and below that it still loses the moments when every CPU is taken
by the rest (`ipa.machine.contention.shared_rate`; plans on a known machine use it too). A row calibrated on
a busy machine has a wall time that already holds that machine's contention: the batch's work is its CPU
over its share (`Profile.alone_s`), and the simulator adds back the contention its own load makes. Without `cpus` each replica owns its cores.

Energy is what a meter on the machine would read. Each batch costs its row's joules; serving costs its
CPU (`ServingCost`: fixed, per admitted request, and the load generator's per request when it shares the
machine) at the profiles' joules per CPU-second; idle power is the reserved cores' or, with `cpus` (the
machine is known), the whole machine's: a meter reads every core's idle draw, reserved or not.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ipa.machine.contention import shared_rate
from ipa.machine.replay import Pace, Speed
from ipa.profiles.calibration import BatchTiming
from ipa.profiles.serving import ServingCost
from ipa.profiles.table import Profile, ProfileTable, row_at
from ipa.runtime.admission import Admission, AdmissionSettings, StageEstimate, stage_estimates
from ipa.runtime.loadgen import arrival_times
from ipa.runtime.series import SimResult
from ipa.runtime.sim.accounting import Accounts
from ipa.spec import PipelineConfig, PipelineSpec, StageConfig, Strict

Z99 = 2.326  # standard normal 99th percentile
DEFAULT_LOAD_S = 1.0  # reconfiguration delay when a profile has no load time
TIMINGS_KEPT = 2000  # batch timings kept between two reads


class Event(IntEnum):
    """What a scheduled event does; at the same instant, the lower value goes first."""

    DONE = 0  # a batch's answers are out (payload: the batch)
    TIMEOUT = 1  # a stage's batch timeout ran out (payload: the stage's index)
    SWITCH = 2  # a stage's new config is loaded (payload: (stage index, config))
    TICK = 3  # a second ended: serving's CPU follows its load (payload: the second)

# The others' demand a batch waits on is their mean over the last CONTENTION_S (past saturation, the instant's share):
# the contention model was fitted on mean busy cores, and at each instant it counts every overlap at full weight.
CONTENTION_S = 1.0


class SimSettings(Strict):
    drop_limit_s: float | None = Field(default=None, gt=0, description="default: 2 x SLA")
    batch_timeout_s: float | None = Field(default=None, ge=0, description="default: SLA / (2 x stages)")
    reconfig_s: dict[Literal["variant", "batch", "replicas", "cores"], float] | None = Field(
        default=None, description="measured delay per kind of change (ipa experiment --runtime ray writes them); "
                                  "default: the profiled model load time, batch changes instant")
    true_profiles: str | None = Field(default=None, description="profile CSV of the machine the simulator runs "
                                      "(default: the experiment's profiles, the ones plans are made with)")
    true_scale: float = Field(default=1.0, gt=0, description="the simulated machine is this many times slower "
                              "than its profiles say (2: every batch takes twice as long)")
    serving_latency_s: float | None = Field(default=None, ge=0, description="added to every answer (default: the "
                                            "profiles' measured serving latency, 0 when not measured)")
    serving_latency_spread_s: tuple[float, float] | None = Field(
        default=None, description="(p50, p99) of serving's own latency per answer as a real run measured it: each "
        "answer draws from a lognormal through them (default: every answer adds serving_latency_s)")
    cpus: float | None = Field(default=None, gt=0, description="CPUs the replicas and serving share (processor "
                               "sharing once their demand passes them); default: each replica owns its cores")

    @field_validator("reconfig_s")
    @classmethod
    def _delays_are_durations(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        bad = {k: d for k, d in (v or {}).items() if not 0 <= d < math.inf}
        if bad:
            raise ValueError(f"delays must be finite seconds >= 0, got {bad}")
        return v


@dataclass
class _Stage:
    idx: int
    name: str
    cfg: StageConfig
    rows: list[Profile]  # what a batch of 1, 2, ... cfg.batch requests costs on cfg's (variant, cores) (`row_at`)
    accuracy: float
    busy: int = 0
    in_service: int = 0  # requests in the batches being served
    queue: deque = field(default_factory=deque)  # (request id, time it joined this queue, latest start)
    timeout_at: float = -1.0
    pending: tuple[float, StageConfig] | None = None  # (when it switches, the config it switches to)
    overhead_s: float = 0.0  # a replica's wall time per batch outside the model (serving's `batch_overhead_s`)

    def reserved_cores(self) -> int:
        own = self.cfg.replicas * self.cfg.cores
        return own + (self.pending[1].replicas * self.pending[1].cores if self.pending else 0)


class Simulator:
    def __init__(self, spec: PipelineSpec, profiles: ProfileTable, idle_w_per_core: float,
                 rps: np.ndarray, settings: SimSettings | None = None, seed: int = 0,
                 admission: AdmissionSettings | None = None, serving: ServingCost | None = None,
                 pace: Pace | None = None, speed: Speed | None = None):
        """`profiles` are the simulated machine's (scaled by `settings.true_scale`); plans may differ.
        `serving`: the CPU serving takes beside the replicas (only with `settings.cpus`). `pace`: per stage,
        how much slower than its row's p50 a real run's batches were, over time (`Pace`); a batch then takes
        its row's p50 times the pace of the batch the run had running at that moment, instead of a draw. `speed`:
        the machine's slowness over time, the same for every stage (`ipa.experiment.prediction`); each batch's draw
        takes that many times as long."""
        settings = settings or SimSettings()
        self.spec = spec
        self.profiles = scaled(profiles, settings.true_scale)
        self.idle_w = idle_w_per_core
        self.sla = spec.sla_s
        self.drop_limit = settings.drop_limit_s or 2 * spec.sla_s
        self.batch_timeout = (settings.batch_timeout_s if settings.batch_timeout_s is not None
                              else spec.sla_s / (2 * len(spec.stages)))
        self.reconfig_s = settings.reconfig_s
        self.serving_latency = settings.serving_latency_s or 0.0
        self._answer_latency = settings.serving_latency_spread_s  # None: every answer adds serving_latency
        # admit what can finish within the SLA, or within the drop limit where that is shorter (IPA's sum-qa)
        self.admission = Admission(min(spec.sla_s, self.drop_limit), self.serving_latency, admission)
        # (stage, row, size, seconds, CPU seconds, end) of the latest batches: calibration keeps at most 200 per variant
        self._timings: deque[tuple[int, Profile, int, float, float, float]] = deque(maxlen=TIMINGS_KEPT)
        self.pace = pace or {}
        self.speed = speed
        self.rng = np.random.default_rng(seed)
        self.duration = len(rps)
        self.arrival_t = arrival_times(rps, self.rng)
        self._arrived = self.arrival_t.tolist()  # the same times as floats: indexing a list is what the hot loop does
        self.multiply = spec.accuracy_method == "multiply"
        self.acc = np.full(len(self.arrival_t), 1.0 if self.multiply else 0.0)
        self.now = 0.0
        self._next_arrival = 0
        self._events: list = []
        self._seq = 0
        self.stages: list[_Stage] = []
        n = self.duration
        self.books = Accounts(n, spec.sla_s, self.idle_w)  # the per-second series, beside the event loop
        self.s = self.books.s
        self.dropped = self.completed = self.reconfigurations = self.rejected = 0
        # processor sharing (settings.cpus): every running batch advances on one virtual clock at `_rate`
        self._handlers = (self._done, self._timeout, self._switch, self._tick)  # by `Event`, in its order
        self.cpus = settings.cpus
        self.serving = serving or ServingCost()
        self.j_per_cpu_s = self.profiles.joules_per_cpu_second
        self._running: list = []  # (virtual finish, seq, payload, CPU demand) of the batches running
        self._virtual = self._virtual_at = 0.0  # the virtual clock's reading, and when it was taken
        self._rate = 1.0
        self._batch_demand = 0.0  # CPUs the running batches would use with the machine to themselves
        self._mean_demand = 0.0  # the same over the last CONTENTION_S, as the contention model was fitted
        self._serving_demand = self.serving.cores(0.0)
        self._in_replicas_s = sum(self.serving.batch_overhead_s.get(s.name, 0.0) for s in spec.stages)
        if self.cpus is not None:
            for sec in range(1, n):
                self._push(float(sec), Event.TICK, sec)

    # -- setup -----------------------------------------------------------------------------
    def start(self, config: PipelineConfig, expected: dict[str, StageEstimate] | None = None,
              load_rps: float | None = None) -> None:
        """The initial config, serving from t = 0 with no delay. `expected`: the plan's service times
        (admission starts from them); default: this machine's own profiles. Serving's CPU is one demand on the
        machine's cores however many ingress replicas spread it (`load_rps` sizes them on Ray, not here)."""
        expected = expected or stage_estimates(self.profiles, config)
        self.stages = []
        self._at = [0] * len(self.spec.stages)
        overheads = self.serving.batch_overhead_s
        for i, s in enumerate(self.spec.stages):
            st = _Stage(i, s.name, config[s.name], [], 0.0, overhead_s=overheads.get(s.name, 0.0))
            self.stages.append(st)
            self._configure(st, config[s.name])
            self._admit(st, config[s.name], expected[s.name])

    def _configure(self, st: _Stage, cfg: StageConfig) -> None:
        rows = self.profiles.batches(st.name, cfg.variant, cfg.cores)
        if not any(p.batch == cfg.batch for p in rows):
            raise ValueError(f"no profile for {st.name}/{cfg.variant} batch {cfg.batch} cores {cfg.cores}")
        st.cfg, st.rows = cfg, [row_at(rows, size) for size in range(1, cfg.batch + 1)]
        st.accuracy = self.spec.accuracy_score(st.name, cfg.variant)

    def _admit(self, st: _Stage, cfg: StageConfig, expected: StageEstimate) -> None:
        """Admission plans with a new config from the moment it is applied, as the real ingress does (its plan
        is updated within half a second of a deploy starting, while the replicas load for seconds)."""
        self.admission.configure(st.idx, cfg.replicas, cfg.batch, self.batch_timeout, expected)

    # -- control ---------------------------------------------------------------------------
    def resizes(self, load_rps: float) -> bool:
        return False

    def apply(self, config: PipelineConfig, expected: dict[str, StageEstimate] | None = None,
              load_rps: float | None = None) -> None:
        """Reconfigure at the current time; each changed stage switches after its load delay (admission at once)."""
        expected = expected or stage_estimates(self.profiles, config)
        for st in self.stages:
            new = config[st.name]
            target = st.pending[1] if st.pending else st.cfg
            if new == target:
                continue
            self.reconfigurations += 1
            delay = self._delay(st, new)
            self._accrue(self.now)
            self._admit(st, new, expected[st.name])
            if delay == 0:
                st.pending = None
                self._configure(st, new)
                self._dispatch(st)
            else:
                st.pending = (self.now + delay, new)
                self._push(self.now + delay, Event.SWITCH, (st.idx, new))

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

    def batch_timings(self) -> list[BatchTiming]:
        """The batches executed since the last call, the latest TIMINGS_KEPT of them (what replicas report
        for calibration)."""
        raw, self._timings = self._timings, deque(maxlen=TIMINGS_KEPT)
        return [BatchTiming(self.stages[i].name, row.variant, row.cores, size, took, cpu, t)
                for i, row, size, took, cpu, t in raw]

    # -- event loop ------------------------------------------------------------------------
    def _push(self, t: float, kind: Event, payload) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, payload))

    def run_until(self, t_end: float) -> None:
        t_end = min(t_end, self.duration)
        arr = self.arrival_t
        while True:
            t_arr = arr[self._next_arrival] if self._next_arrival < len(arr) else math.inf
            t_evt = self._events[0][0] if self._events else math.inf  # _next_event, inlined: the hot loop
            if self._running:
                t_evt = min(t_evt, self._next_finish())
            t = min(t_arr, t_evt)
            if t >= t_end:
                break
            self.now = t
            if t_arr <= t_evt:
                self._arrive(self._next_arrival)
                self._next_arrival += 1
            else:
                self._fire()
        self.now = t_end
        self._accrue(t_end)

    def drain(self) -> None:
        """Serve what is still admitted after the last arrival, as a real run waits for its answers: until the
        queues are empty or the drop limit has passed. Late answers count in the last second."""
        self.run_until(self.duration)
        end = self.duration + self.drop_limit
        while (t := self._next_event()) <= end:
            self.now = t
            self._fire()
        for st in self.stages:  # what waited past the drop limit was never served
            while st.queue:
                self._drop(st.queue.popleft()[0])
        self.now = max(self.now, float(self.duration))

    def _next_event(self) -> float:
        """When the next event other than an arrival happens: a batch ending on the shared CPUs, or the heap's next."""
        t_evt = self._events[0][0] if self._events else math.inf
        return min(t_evt, self._next_finish()) if self._running else t_evt

    def _fire(self) -> None:
        """Handle the event `_next_event` named (a shared-CPU batch wins a tie)."""
        if self._running and self._next_finish() <= (self._events[0][0] if self._events else math.inf):
            self._finish()
            return
        _, kind, _, payload = heapq.heappop(self._events)
        self._handlers[kind](payload)

    def _arrive(self, req: int) -> None:
        sec = int(self.now)
        arrivals = self.s["arrivals"]
        arrivals[sec] += 1
        at = self._at
        for i, st in enumerate(self.stages):
            at[i] = len(st.queue) + st.in_service
        if not self.admission.admits(at, float(arrivals[sec - 1] if sec > 0 else arrivals[sec]), self.now):
            self.rejected += 1
            self._drop(req, rejected=True)
            return
        self._enqueue(self.stages[0], req)

    def _enqueue(self, st: _Stage, req: int) -> None:
        st.queue.append((req, self.now, self._start_by(st.idx, req)))
        self._dispatch(st)

    def _start_by(self, idx: int, req: int) -> float:
        """When the request must start at stage idx, fixed as it joins the stage's queue (as the ingress stamps
        each stage call): a later reconfiguration does not move it. Never past the drop limit."""
        return self._arrived[req] + min(self.admission.start_by(0.0, idx), self.drop_limit)

    def _dispatch(self, st: _Stage) -> None:
        q = st.queue
        if not q or st.busy >= st.cfg.replicas:
            return
        now = self.now
        while q and st.busy < st.cfg.replicas:
            while q and q[0][2] < now:  # it can no longer start here in time (or outlived the drop limit)
                self._drop(q.popleft()[0])
            if not q:
                return
            waited = self.now - q[0][1]
            if len(q) < st.cfg.batch and waited < self.batch_timeout - 1e-12:
                due = q[0][1] + self.batch_timeout
                if st.timeout_at != due:
                    st.timeout_at = due
                    self._push(due, Event.TIMEOUT, st.idx)
                return
            batch = [q.popleft()[0] for _ in range(min(st.cfg.batch, len(q)))]
            row = st.rows[len(batch) - 1]
            st.busy += 1
            st.in_service += len(batch)
            took = self._service_time(row)
            payload = (st.idx, batch, st.accuracy, row, took, self.now)
            if self.cpus is None:
                self._push(self.now + took + st.overhead_s, Event.DONE, payload)
            else:
                self._share(payload, took * row.alone_s / row.p50, row.cpu_s / row.alone_s)

    def _service_time(self, row: Profile) -> float:
        trace = self.pace.get(row.stage)
        if trace is not None:
            ends, ratios = trace
            return row.p50 * float(ratios[min(int(np.searchsorted(ends, self.now)), len(ends) - 1)])
        took = self._draw(row.p50, row.latency_p99_s)
        if self.speed is not None:
            starts, slowness = self.speed
            took *= float(slowness[max(int(np.searchsorted(starts, self.now, side="right")) - 1, 0)])
        return took

    def _draw(self, p50: float, p99: float) -> float:
        """Lognormal through p50 and p99 (p99 itself when it is not above p50)."""
        if p99 <= p50:
            return p99
        return float(p50 * math.exp(math.log(p99 / p50) / Z99 * self.rng.standard_normal()))

    # -- processor sharing -----------------------------------------------------------------
    def _share(self, payload, work_s: float, demand: float) -> None:
        """Start a batch that needs `work_s` seconds with the machine to itself, using `demand` CPUs meanwhile."""
        self._advance()
        self._seq += 1
        heapq.heappush(self._running, (self._virtual + work_s, self._seq, payload, demand))
        self._batch_demand += demand
        self._set_rate()

    def _advance(self) -> None:
        self._mean_demand += (1.0 - math.exp(-(self.now - self._virtual_at) / CONTENTION_S)) * (
            self._batch_demand - self._mean_demand)
        self._virtual += (self.now - self._virtual_at) * self._rate
        self._virtual_at = self.now

    def _set_rate(self) -> None:
        demand = self._batch_demand + self._serving_demand
        own = self._batch_demand / len(self._running) if self._running else 0.0
        # the others' mean, unless fewer run now (a batch alone keeps the CPUs it finds free: work-conserving)
        around = min(demand, max(self._mean_demand, own) + self._serving_demand)
        self._rate = shared_rate(demand, own, self.cpus, around=around)

    def _next_finish(self) -> float:
        return self._virtual_at + (self._running[0][0] - self._virtual) / self._rate

    def _finish(self) -> None:
        """A batch's model work is done; its replica answers after its own overhead (off the shared CPUs: the
        decoding in it is serving's CPU)."""
        self._advance()
        _, _, payload, demand = heapq.heappop(self._running)
        self._batch_demand = max(0.0, self._batch_demand - demand) if self._running else 0.0
        self._set_rate()
        overhead = self.stages[payload[0]].overhead_s
        if overhead > 0:
            self._push(self.now + overhead, Event.DONE, payload)
        else:
            self._done(payload)

    def _tick(self, sec: int) -> None:
        """Serving's CPU follows the load of the second that just ended: its arrivals (the load generator's,
        when it shares the machine) and the requests it admitted (the proxy's and the ingress's)."""
        self._advance()
        arrived = self.s["arrivals"][sec - 1]
        self._serving_demand = self.serving.cpu(arrived - self.s["rejected"][sec - 1], arrived)
        self._set_rate()

    def _done(self, payload) -> None:
        idx, batch, accuracy, row, sampled, started = payload
        st = self.stages[idx]
        # what the replica would measure: with shared CPUs, the wall time includes the wait for them; its own
        # overhead is not the model's time
        took = sampled if self.cpus is None else self.now - started - st.overhead_s
        st.busy -= 1
        st.in_service -= len(batch)
        self.admission.observe(idx, took, len(batch), self.now)
        self._timings.append((idx, row, len(batch), took, row.cpu_s * sampled / row.p50, self.now))
        sec = min(int(self.now), self.duration - 1)
        self.books.batch(sec, row.energy_j_per_batch)
        last = idx == len(self.stages) - 1
        for req in batch:
            self.acc[req] = self.acc[req] * accuracy if self.multiply else self.acc[req] + accuracy
            if last:
                self._complete(req, sec)
            else:
                self.stages[idx + 1].queue.append((req, self.now, self._start_by(idx + 1, req)))
        if not last:
            self._dispatch(self.stages[idx + 1])
        self._dispatch(st)

    def _complete(self, req: int, sec: int) -> None:
        if self._answer_latency:  # drawn per answer: admission follows its tail, as the ingress does
            overhead = self._draw(*self._answer_latency)
            self.admission.observe_outside(overhead)
        else:
            overhead = self.serving_latency
        # the replicas' own overheads were measured in serving's latency, and were served here already
        latency = self.now - self._arrived[req] + max(0.0, overhead - self._in_replicas_s)
        pas = self.acc[req] / len(self.stages) if self.spec.accuracy_method == "average" else self.acc[req]
        self.completed += 1
        self.books.requests.completed(sec, latency, pas)

    def _drop(self, req: int, rejected: bool = False) -> None:
        self.dropped += 1
        self.books.requests.dropped(min(int(self.now), self.duration - 1), rejected)

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
        """Reserved core-seconds (and their idle energy) up to t."""
        self.books.accrue(t, sum(st.reserved_cores() for st in self.stages))

    # -- results ---------------------------------------------------------------------------
    def result(self) -> SimResult:
        in_flight = len(self.arrival_t) - self.completed - self.dropped
        return self.books.result(self.cpus, self.serving, self.j_per_cpu_s, len(self.arrival_t), self.completed,
                                 self.dropped, in_flight, self.reconfigurations, self.rejected)


def scaled(profiles: ProfileTable, factor: float) -> ProfileTable:
    """The same machine `factor` times slower: every batch takes `factor` times as long."""
    return profiles if factor == 1.0 else profiles.slower(lambda p: factor, f"{profiles.source} (x{factor:g} slower)")
