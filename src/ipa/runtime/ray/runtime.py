"""The real runtime: the pipeline on Ray Serve behind `adapt.Runtime`, so the simulator's loop drives it unchanged.

Wall-clock time: `run_until(t)` sleeps until t seconds after `start`. Each second a sampler thread
reads the energy meter, the CPUs Ray has reserved and the deployments' health; `observed_rates`
is what the ingress counted. Every reconfiguration is timed per kind of change (variant, batch,
replicas, cores) so the simulator can use the measured delays.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ipa._io import write_csv
from ipa.energy.carbon import J_PER_KWH
from ipa.energy.common import EnergyMeter
from ipa.profiles.calibration import BatchTiming
from ipa.profiles.serving import ServingCost
from ipa.runtime.admission import AdmissionSettings, StageEstimate
from ipa.runtime.ray.cluster import (
    APP,
    RaySettings,
    ReconfigurationError,
    running_replicas,
    wait_routed,
    wait_running,
)
from ipa.spec import PipelineConfig, PipelineSpec, config_as_dict

log = logging.getLogger(__name__)
CHANGE_KINDS = ("variant", "batch", "replicas", "cores")
ROUTE_WAIT_S = 30.0  # after Serve says RUNNING, how long HTTP may take to reach the app
BATCHES_KEPT = 200_000  # batch timings a runtime keeps (hours of a busy pipeline; an experiment cell holds fewer)


@dataclass
class Reconfiguration:
    t_s: float  # when it was asked for, since start
    seconds: float  # until every stage served the new config
    kinds: list[str]  # which knobs changed, over all stages
    ok: bool
    error: str = ""


@dataclass
class Sample:
    """One second of the run, from the sampler thread."""

    t_s: float
    joules: dict[str, float]  # per domain, over the last interval
    method: str
    reserved_cpus: float
    replicas: dict[str, int]  # running replicas per deployment
    serving_cpus: float = float("nan")  # cores the cluster's serving processes used over the second (local cluster)
    replica_cpus: float = float("nan")  # cores the stage replicas used over the second
    g_per_kwh: float = float("nan")  # the grid's carbon intensity at that second (with a carbon series)


def change_kinds(old: PipelineConfig, new: PipelineConfig) -> list[str]:
    return [k for k in CHANGE_KINDS if any(getattr(old[s], k) != getattr(new[s], k) for s in new)]


@dataclass
class RayRuntime:
    spec: PipelineSpec
    settings: RaySettings = field(default_factory=RaySettings)
    meter: EnergyMeter | None = None
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    serving_latency_s: float = 0.0  # what admission adds for serving outside the models (the profiles' measure)
    reconfigurations: list[Reconfiguration] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # the batches the replicas reported, oldest first: all of an experiment cell's, the latest of a long `ipa serve`
    batches: deque[BatchTiming] = field(default_factory=lambda: deque(maxlen=BATCHES_KEPT))
    config: PipelineConfig | None = None
    _t0: float = 0.0  # monotonic
    _epoch0: int = 0
    _wall0: float = 0.0  # time.time() at t = 0
    _started: bool = False  # start() ran: the ledger has this run
    _sampler: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _reconfiguring: bool = False
    _cursor: int = 0  # batch timings collected so far
    client_threads: list[int] = field(default_factory=list)  # this process's threads that are load, not serving
    _expected: dict[str, StageEstimate] | None = None  # what the serving config's plan expected
    on_start: Callable[[float], None] = lambda t0: None  # called with the monotonic time of t = 0
    carbon: Callable[[float], float] | None = None  # grid intensity (gCO2/kWh) at a second of the run
    co2_g: float = 0.0  # grams of CO2 of the joules metered so far, at the intensity of each second
    serving: ServingCost | None = None  # what serving costs per request: sizes the ingress (auto)
    ingresses: int = 1  # replicas of the ingress now
    _ledger: Any = None  # what every ingress replica saw (ipa.runtime.ray.ledger)

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}/"

    @property
    def drop_limit_s(self) -> float:
        return self.settings.drop_limit_s or 2 * self.spec.sla_s

    def stop(self) -> None:
        """Stop sampling and metering; the app keeps running until the next deploy or `shutdown`."""
        self._stop.set()
        if self._sampler:
            self._sampler.join(5)
        if self.meter:
            self.meter.stop()

    # -- adapt.Runtime ---------------------------------------------------------------------
    def ingresses_for(self, load_rps: float | None) -> int:
        """Ingress replicas for `load_rps`: as set, else planned from serving's CPU per request (one without a
        load or a measured cost); None keeps the current count."""
        if self.settings.ingress_replicas:
            return self.settings.ingress_replicas
        if load_rps is None:
            return self.ingresses
        return self.serving.ingresses(load_rps) if self.serving else 1

    def resizes(self, load_rps: float) -> bool:
        """Whether the ingress would get another number of replicas for `load_rps` (a redeploy of the same config)."""
        return self.ingresses_for(load_rps) != self.ingresses

    def start(self, config: PipelineConfig, expected: dict[str, StageEstimate] | None = None,
              load_rps: float | None = None) -> None:
        import ray

        from ipa.runtime.ray.ledger import ledger

        t = time.monotonic()
        self._ledger = ledger(create=True)
        self._deploy(config, expected, self.ingresses_for(load_rps))
        wait_routed(self.url, ROUTE_WAIT_S)
        log.info("pipeline deployed in %.1f s: %s, %d ingress replica%s", time.monotonic() - t,
                 config_as_dict(config), self.ingresses, "" if self.ingresses == 1 else "s")
        self.config = config
        time.sleep(math.ceil(time.time()) - time.time())  # t = 0 on a whole second: the ledger counts by epoch second
        self._t0 = time.monotonic()
        self._wall0 = time.time()
        self._epoch0 = int(self._wall0)
        self._started = True
        # the ledger kept from an earlier run (the cells of one experiment share the cluster) still holds that run's
        # batches: this run's calibration starts after them
        _, self._cursor = ray.get(self._ledger.timings_since.remote(1 << 62), timeout=10)
        self._report(config=config)
        if self.meter:
            self.meter.start()
        self._sampler = threading.Thread(target=self._sample_loop, name="ipa-sampler", daemon=True)
        self._sampler.start()
        self.on_start(self._t0)

    def apply(self, config: PipelineConfig, expected: dict[str, StageEstimate] | None = None,
              load_rps: float | None = None) -> None:
        """Deploy the new config (and the ingress replicas for `load_rps`) and time it; if it fails, the old config
        is deployed again and keeps serving."""
        old, old_ingresses = self.config, self.ingresses
        assert old is not None, "start() first"
        ingresses = self.ingresses_for(load_rps)
        kinds = change_kinds(old, config) + (["ingress"] if ingresses != old_ingresses else [])
        t_s, t = self.now(), time.monotonic()
        self._reconfiguring = True  # replicas come and go on purpose now: not a fault
        try:
            self._deploy(config, expected, ingresses)
        except Exception as e:  # keep serving: a failed placement or model load must not stop the pipeline
            log.warning("reconfiguration %s failed (%s); the old config keeps serving", kinds, e)
            self.reconfigurations.append(Reconfiguration(t_s, time.monotonic() - t, kinds, False, str(e)))
            self.events.append({"t_s": t_s, "event": "reconfiguration failed", "detail": str(e)})
            try:
                self._deploy(old, self._expected, old_ingresses)
            except Exception as again:
                log.error("redeploying the old config failed too (%s)", again)
            return
        finally:
            self._reconfiguring = False
        self.reconfigurations.append(Reconfiguration(t_s, time.monotonic() - t, kinds, True))
        self.config = config
        self._report(config=config)

    def batch_timings(self) -> list[BatchTiming]:
        """The batches the replicas ran since the last call, as the ingress collected them."""
        if not self._started:
            return []
        import ray

        try:
            rows, self._cursor = ray.get(self._ledger.timings_since.remote(self._cursor), timeout=10)
        except Exception as e:  # calibration is best effort; serving goes on
            log.warning("could not read the batch timings: %s", e)
            return []
        timings = [BatchTiming(**{k: v for k, v in r.items() if k not in ("ended_at", "id")},
                               t_s=r["ended_at"] - self._wall0 if r.get("ended_at") else None) for r in rows]
        self.batches.extend(timings)
        return timings

    def observed_rates(self) -> np.ndarray:
        """Requests per second that the pipeline could serve (bad input is refused apart, `Ingress._refuse`), for
        every whole second since start that every ingress replica has reported, each counted when it reached the
        ingress (or, with `trust_request_start`, in the second its `X-Request-Start` says): a request still on its
        way is counted when it arrives, so the last second may be a request or two short."""
        if not self._started:
            return np.zeros(0)
        import ray

        counts, through = ray.get(self._ledger.arrivals_since.remote(self._epoch0), timeout=10)
        n = max(0, min(int(time.time()), int(through)) - self._epoch0)
        out = np.zeros(n)
        for sec, c in counts.items():
            if 0 <= int(sec) - self._epoch0 < n:
                out[int(sec) - self._epoch0] = c
        return out

    def run_until(self, t: float) -> None:
        delay = self._t0 + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def now(self) -> float:
        return time.monotonic() - self._t0 if self._t0 else 0.0

    # -- internals -------------------------------------------------------------------------
    def _deploy(self, config: PipelineConfig, expected: dict[str, StageEstimate] | None, ingresses: int) -> None:
        import ray
        from ray import serve

        from ipa.runtime.ray.app import build_app

        need = sum(c.replicas * c.cores for c in config.values())
        have = ray.cluster_resources().get("CPU", 0.0)
        if need > have:
            raise ReconfigurationError(f"the config needs {need} CPUs and the Ray cluster has {have:.0f} "
                                       "(join a bigger cluster with --address, or lower --load-scale)")
        if self.settings.device != "cpu":
            gpus = sum(c.replicas for c in config.values()) * self.settings.gpus_per_replica
            if gpus > ray.cluster_resources().get("GPU", 0.0) + 1e-9:
                raise ReconfigurationError(f"the config needs {gpus:g} GPUs at {self.settings.gpus_per_replica:g} "
                                           f"per replica and the Ray cluster has {ray.cluster_resources().get('GPU', 0):g}")

        app = build_app(self.spec, config, expected, batch_wait_s=self.batch_wait_s, drop_limit_s=self.drop_limit_s,
                        admission=self.admission, overhead_s=self.serving_latency_s,
                        max_in_flight=self.settings.max_in_flight, weights=self.settings.weights,
                        device=self.settings.device, gpus_per_replica=self.settings.gpus_per_replica,
                        ingresses=ingresses, trust_request_start=self.settings.trust_request_start)
        serve._run(app, name=APP, route_prefix="/", _blocking=False)
        wait_running(self.settings.deploy_timeout_s)
        self._expected, self.ingresses = expected, ingresses

    @property
    def batch_wait_s(self) -> float:
        s = self.settings.batch_wait_s
        return s if s is not None else self.spec.sla_s / (2 * len(self.spec.stages))

    def _report(self, **kw) -> None:
        if not self._started:
            return
        if "config" in kw:
            kw["config"] = config_as_dict(kw["config"])
        import ray

        try:
            ray.get(self._ledger.observe.remote(**kw), timeout=10)
        except Exception as e:  # metrics are best effort; serving goes on
            log.warning("could not update the ingress metrics: %s", e)

    def _sample_loop(self) -> None:
        """Once a second: energy, reserved CPUs, replica health. A failing meter is logged once and dropped."""
        import ray

        from ipa.runtime.ray.overhead import ProcessCpu

        last = self.meter.read() if self.meter else None
        total = ray.cluster_resources().get("CPU", 0.0)
        down: set[str] = set()
        procs = ProcessCpu(APP, self.spec.stage_names) if not self.settings.address else None
        cpu_last = procs.read(self.client_threads) if procs and procs.available else None
        next_t = t_last = time.monotonic() + 1.0
        t_last -= 1.0
        while not self._stop.wait(max(0.0, next_t - time.monotonic())):
            next_t += 1.0
            serving = replica = float("nan")
            if cpu_last is not None:
                cur, now = procs.read(self.client_threads), time.monotonic()
                serving = (cur.serving - cpu_last.serving) / (now - t_last)
                replica = (cur.replicas - cpu_last.replicas) / (now - t_last)
                cpu_last, t_last = cur, now
            joules: dict[str, float] = {}
            method = "none"
            g = self.carbon(self.now()) if self.carbon else math.nan
            if self.meter and last:
                try:
                    cur = self.meter.read()
                    joules, method, last = cur.minus(last), cur.method, cur
                    self.co2_g += sum(joules.values()) * g / J_PER_KWH if self.carbon else 0.0
                    self._report(energy={"joules": cur.joules, "method": cur.method, "watts": sum(joules.values())}
                                 | ({"co2_g": self.co2_g, "g_per_kwh": g} if self.carbon else {}))
                except Exception as e:
                    log.warning("energy meter failed (%s); the run goes on without energy", e)
                    self.events.append({"t_s": self.now(), "event": "meter failed", "detail": str(e)})
                    self.meter = None
            try:
                reserved = total - ray.available_resources().get("CPU", 0.0)
                replicas = running_replicas()
            except Exception as e:
                log.warning("could not read the cluster state: %s", e)
                continue
            self._note_health(replicas, down)
            self.samples.append(Sample(self.now(), joules, method, reserved, replicas, serving, replica, g))

    def _note_health(self, replicas: dict[str, int], down: set[str]) -> None:
        """Log a stage whose running replicas fell below its target, and when Ray has it back."""
        if self.config is None or self._reconfiguring:
            return
        for stage, c in self.config.items():
            n = replicas.get(stage, 0)
            if n < c.replicas and stage not in down:
                down.add(stage)
                log.warning("stage %s: %d of %d replicas running; Ray is restarting the rest", stage, n, c.replicas)
                self.events.append({"t_s": self.now(), "event": "replica down", "detail": f"{stage}: {n}/{c.replicas}"})
            elif n >= c.replicas and stage in down:
                down.discard(stage)
                self.events.append({"t_s": self.now(), "event": "replica back", "detail": f"{stage}: {n}/{c.replicas}"})


def for_profiles(settings: RaySettings, profiles_meta: dict[str, Any]) -> RaySettings:
    """Replicas run where the profiles were measured (`device` in their meta), unless told otherwise."""
    device = str(profiles_meta.get("device", "cpu"))
    if "device" in settings.model_fields_set or not device.startswith("cuda"):
        return settings
    return settings.model_copy(update={"device": "cuda"})


def write_runtime_logs(folder: Path, samples: list[Sample], reconfigurations: list[Reconfiguration],
                       events: list[dict[str, Any]]) -> None:
    """The runtime's own logs (also what `ipa serve --out` keeps): energy per second, reconfigurations, faults."""
    carbon = any(not np.isnan(s.g_per_kwh) for s in samples)
    write_csv(folder / "energy.csv",
              ({"t_s": round(s.t_s, 3), "domain": d, "joules": j, "method": s.method, "reserved_cpus": s.reserved_cpus,
                "serving_cpus": s.serving_cpus, "replica_cpus": s.replica_cpus, "gco2_per_kwh": s.g_per_kwh,
                "co2_g": j * s.g_per_kwh / J_PER_KWH}
               for s in samples for d, j in s.joules.items()),
              ["t_s", "domain", "joules", "method", "reserved_cpus", "serving_cpus", "replica_cpus"]
              + (["gco2_per_kwh", "co2_g"] if carbon else []))
    write_csv(folder / "reconfigurations.csv",
              ({**asdict(r), "kinds": "+".join(r.kinds)} for r in reconfigurations),
              ["t_s", "seconds", "kinds", "ok", "error"])
    write_csv(folder / "events.csv", events, ["t_s", "event", "detail"])
