"""What serving costs beside the models, read from the processes that serve (Linux /proc).

A local Ray cluster is a tree of processes under the driver: the GCS, the raylet, its monitors and
agents, Serve's controller and HTTP proxy, the ingress replica and the stage replicas. Everything
but the stage replicas is the cost of serving; `ProcessCpu` splits the tree's CPU time that way, and
`measure_serving` turns a short real run into the `ServingCost` plans use (`ipa profile --serving`).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ipa.machine.measure import WINDOW_S, machine_pace, served_paces, served_spread, window_paces
from ipa.machine.speed import MachineSpeed
from ipa.profiles.calibration import BatchTiming
from ipa.profiles.profiler import variant_pace
from ipa.profiles.serving import ServingCost
from ipa.profiles.table import ProfileTable
from ipa.spec import PipelineSpec, StageConfig

log = logging.getLogger(__name__)
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSplit:
    serving: float  # CPU seconds of every process of the cluster but the stage replicas (driver included)
    replicas: float  # CPU seconds of the stage replicas
    path: float = 0.0  # of `serving`, the processes that work per request: HAProxy, Serve's proxy, the ingress, the
    # ledger (what each ingress counted, every quarter second)


class ProcessCpu:
    """CPU seconds used so far by the local cluster's processes, split into serving and stage replicas.

    Only processes started from this one are seen (a local cluster); with `--address` the cluster's
    processes live elsewhere and `available` is False. `exclude_threads` are this process's threads
    that are not serving (the load generator's).
    """

    def __init__(self, app: str, stages: Iterable[str]):
        self.replica_titles = tuple(f"ray::ServeReplica:{app}:{s}" for s in stages)
        self.path_kinds = {f"ray::ServeReplica:{app}:Ingress", "ray::ProxyActor", "ray::Tally", "haproxy"}
        self.root = os.getpid()
        self.available = os.path.isdir(f"/proc/{self.root}/task")

    def read(self, exclude_threads: Iterable[int] = ()) -> CpuSplit:
        if not self.available:
            return CpuSplit(0.0, 0.0)
        serving = replicas = path = 0.0
        for pid in self._tree():
            cpu = _cpu_seconds(f"/proc/{pid}/stat")
            title = _title(pid)
            if title.startswith(self.replica_titles):
                replicas += cpu
                continue
            serving += cpu
            if _kind(title) in self.path_kinds:
                path += cpu
        for tid in exclude_threads:
            serving -= _cpu_seconds(f"/proc/{self.root}/task/{tid}/stat")
        return CpuSplit(serving, replicas, path)

    def by_process(self) -> dict[int, tuple[str, float]]:
        """Per process of the tree: its kind (`ray::ProxyActor`, `ray::ServeReplica:ipa:Ingress`, `raylet`,
        `haproxy`, ...) and its CPU seconds so far. Keyed by pid: an actor's title names the method it runs
        (`ray::ServeController.listen_for_change`), which changes; the kind leaves the method out."""
        return {pid: (_kind(_title(pid)), _cpu_seconds(f"/proc/{pid}/stat"))
                for pid in (self._tree() if self.available else ())}

    def _tree(self) -> list[int]:
        """This process and its descendants."""
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                ppid = _ppid(int(name))
                if ppid is not None:
                    children.setdefault(ppid, []).append(int(name))
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out


def batch_overheads(batches: Iterable[BatchTiming]) -> dict[str, float]:
    """Per stage, the mean wall time its replicas spent on a batch outside the model (the stages that reported it):
    a replica busy back to back serves one batch per model time plus this, so the mean, tail included, is what its
    capacity loses (the detector's at 5 rps: median 2.6 ms; back to back at twice capacity 4.0 ms)."""
    by_stage: dict[str, list[float]] = {}
    for t in batches:
        if t.overhead_s is not None and math.isfinite(t.overhead_s):
            by_stage.setdefault(t.stage, []).append(t.overhead_s)
    return {stage: float(np.mean(v)) for stage, v in by_stage.items()}


def _cpu_ticks() -> tuple[int, int]:
    """The machine's (stolen, all) CPU ticks so far (/proc/stat): a VM's host taking its CPUs makes every
    process's CPU time per unit of work grow, which a measurement should show beside its figures."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


def _steal_share(a: tuple[int, int], b: tuple[int, int]) -> float:
    return round((b[0] - a[0]) / (b[1] - a[1]), 4) if b[1] > a[1] else 0.0


def _fields(path: str) -> list[str] | None:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:  # the process or thread is gone
        return None
    return text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces


def _ppid(pid: int) -> int | None:
    f = _fields(f"/proc/{pid}/stat")
    return int(f[1]) if f else None


def _cpu_seconds(path: str) -> float:
    f = _fields(path)
    return (int(f[11]) + int(f[12])) / TICK if f else 0.0  # utime + stime


def _kind(title: str) -> str:
    """A process's kind from its title: `haproxy`, `raylet`, `ray::ProxyActor`, `ray::ServeReplica:ipa:Ingress`
    (an actor's title names the method it runs, which changes; the kind leaves it out)."""
    kind = title.split(" ")[0]
    if kind.startswith("/"):
        return os.path.basename(kind)
    return kind.split(".")[0] if kind.startswith("ray::") else kind


def _title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0", 1)[0].decode(errors="replace").strip()
    except OSError:
        return ""


def _decode_cpu_s(url: str) -> float:
    """CPU seconds the replicas have spent decoding requests' images, as the ingress tallies them (GET /)."""
    import requests

    try:
        return float(requests.get(url, timeout=10).json().get("decode_cpu_s") or 0.0)
    except (requests.RequestException, ValueError) as e:
        log.warning("could not read the decode time from the ingress: %s", e)
        return 0.0


@dataclass(frozen=True)
class Window:
    """Serving's CPU over one stretch of a measurement: with no traffic (`load` False) or while requests arrived."""

    seconds: float
    cpu_s: float
    load: bool


def split_serving_cpu(windows: list[Window], requests: int, signed: bool = False) -> tuple[float, float]:
    """(cores with no traffic, CPU seconds per request) from alternating idle and load windows, idle first and last.

    The cluster's idle draw drifts within a minute with no traffic, every process at once, and at a few rps a
    request costs a few hundredths of a core: an idle draw measured once, before or after, moves the per-request
    figure by more than it is. Each load window is charged the mean draw of the idle
    windows on either side of it, so a drift that is linear over a cycle cancels. The per-request figure is never
    below 0 unless `signed` (to see the noise of processes that do no per-request work).
    """
    if not windows or windows[0].load or windows[-1].load:
        raise ValueError("the windows must alternate, idle first and last")
    rate = [w.cpu_s / w.seconds if not w.load else math.nan for w in windows]
    extra = 0.0
    for i, w in enumerate(windows):
        if w.load:
            extra += w.cpu_s - 0.5 * (rate[i - 1] + rate[i + 1]) * w.seconds
    idle = [r for r in rate if not math.isnan(r)]
    return float(np.mean(idle)), (extra if signed else max(0.0, extra)) / max(requests, 1)


def _schedule(requests: int, rate_rps: float, idle_s: float, cycles: int, tail_s: float
              ) -> tuple[np.ndarray, list[tuple[float, bool]]]:
    """Arrival times (from the start) and the window ends [(seconds from the start, was it a load window)]: idle,
    load, idle, ..., idle; a load window ends `tail_s` after its last arrival, so its answers fall inside it."""
    arrivals, ends, t = [], [], 0.0
    counts = [requests // cycles + (1 if j < requests % cycles else 0) for j in range(cycles)]
    for n in counts:
        t += idle_s
        ends.append((t, False))
        arrivals.extend(t + np.arange(n) / rate_rps)
        t += n / rate_rps + tail_s
        ends.append((t, True))
    ends.append((t + idle_s, False))
    return np.asarray(arrivals), ends


def measure_serving(spec: PipelineSpec, settings, requests: int = 150, rate_rps: float = 5.0,
                    idle_s: float = 8.0, profiles: ProfileTable | None = None,
                    cycles: int = 3) -> tuple[ServingCost, MachineSpeed, dict[str, Any]]:
    """Serve the cheapest config of `spec` on a local Ray cluster at a low open-loop rate and measure:

    - `cpu_fixed_cores`: the cluster's serving processes with no traffic, and
    - `cpu_per_request_s`: the CPU of the processes that work per request (HAProxy, Serve's proxy, the ingress,
      the ledger) beyond that, per request, and the images' decoding, which runs in the replicas that need the
      pixels; the load comes in `cycles` bursts with idle windows between them, and each burst is charged the idle
      draw measured on either side of it (`split_serving_cpu`),
    - `client_cpu_per_request_s`: the load generator's thread, per request,
    - `latency_s`: the median of each answer's latency less the time its batches took in the models and it
      waited for them at the replicas,
    - `batch_overhead_s`: per stage, what its replica spent on a batch outside the model;

    and, with `profiles`, the machine's speed (`MachineSpeed`): the CPU the models' batches burned against their
    profiled rows (`pace`; `pace_range`: the lowest and highest of it over 10 s), the p99 over the p50 of their times
    (`spread`), each served variant's own pace over that and, the cluster stopped, each other variant's pace against
    its stage's served one, each alone on a core, times that one's (`variant_pace`).

    Returns the cost, the speed and what they were measured on (for the profile's meta).
    """
    from ipa.models.samples import request_bodies
    from ipa.models.zoo import pipeline_kinds
    from ipa.runtime.loadgen import LoadGenerator
    from ipa.runtime.ray.cluster import APP, connect, shutdown
    from ipa.runtime.ray.runtime import RayRuntime

    if settings.address:
        raise ValueError("measure the serving cost on a local cluster (without --address): "
                         "the processes of a joined cluster are not visible from here")
    config = {s.name: StageConfig(s.least_accurate.name, 1, 1, 1) for s in spec.stages}
    started = connect(settings, spec)
    runtime = RayRuntime(spec, settings)
    cpu = ProcessCpu(APP, spec.stage_names)
    if not cpu.available:
        raise ValueError("measuring the serving cost needs Linux's /proc")
    cycles = max(1, min(cycles, requests // 2))
    try:
        runtime.start(config)
        bodies, ctype = request_bodies(spec, pipeline_kinds(spec))
        warm = LoadGenerator(runtime.url, np.arange(3, dtype=float), bodies, timeout_s=120, content_type=ctype)
        warm.start()
        warm.join(180)
        time.sleep(1.0)
        decoded = -_decode_cpu_s(runtime.url)
        arrivals, ends = _schedule(requests, rate_rps, idle_s, cycles, tail_s=1.0)
        gen = LoadGenerator(runtime.url, arrivals, bodies, timeout_s=120, content_type=ctype)
        t0 = time.monotonic()
        gen.start(at=t0)
        while gen.thread_id is None and gen.running:
            time.sleep(0.01)
        mine = [gen.thread_id] if gen.thread_id else []
        before, t_before = cpu.read(mine), time.monotonic()
        ticks = _cpu_ticks()
        windows, path = [], []  # the whole cluster's serving processes; those that work per request
        for end, load in ends:
            time.sleep(max(0.0, t0 + end - time.monotonic()))
            now, t_now = cpu.read(mine), time.monotonic()
            windows.append(Window(t_now - t_before, now.serving - before.serving, load))
            path.append(Window(t_now - t_before, now.path - before.path, load))
            before, t_before = now, t_now
        steal = _steal_share(ticks, _cpu_ticks())
        gen.join(180)
        decoded += _decode_cpu_s(runtime.url)
        batches = runtime.batch_timings()
    finally:
        runtime.stop()
        shutdown(started)
    ok = [r for r in gen.records if r.ok and r.overhead_s is not None]
    if len(ok) < requests // 2:
        raise RuntimeError(f"only {len(ok)} of {requests} requests were answered while measuring the serving cost")
    # per request: the processes that work per request (the rest of the cluster, GCS, raylet, controller, agents,
    # has no per-request work on this path; its drifting idle draw would only add noise, and its own estimate is
    # kept in the meta), and the images' decoding, which runs in the replicas that need the pixels but is serving's
    fixed, _ = split_serving_cpu(windows, len(ok))
    _, per_request = split_serving_cpu(path, len(ok))
    off_path = split_serving_cpu([Window(w.seconds, w.cpu_s - p.cpu_s, w.load) for w, p in zip(windows, path)],
                                 len(ok), signed=True)[1]
    per_request += decoded / len(ok)
    cost = ServingCost(
        latency_s=float(np.median([r.overhead_s for r in ok])),
        cpu_fixed_cores=fixed,
        cpu_per_request_s=per_request,
        client_cpu_per_request_s=gen.cpu_s / max(len(gen.records), 1),
    )
    speed = MachineSpeed()
    pace = machine_pace(profiles, batches) if profiles is not None else None
    if pace is not None:
        served = served_paces(profiles, batches)
        spans = window_paces(profiles, batches)
        speed = MachineSpeed(pace=pace[0], spread=served_spread(profiles, batches) or 1.0, variant_pace=served,
                             pace_range=(min(spans), max(spans)) if len(spans) >= 2 else (), pace_windows=tuple(spans),
                             window_spread=served_spread(profiles, batches, window_s=WINDOW_S))
        if settings.device == "cpu":  # a GPU model's CPU per call says little of its pace
            alone = variant_pace(spec, profiles, {s: c.variant for s, c in config.items()}, progress=log.info)
            stage = {s: served.get(f"{s}/{c.variant}", 1.0) for s, c in config.items()}  # the served one's, per stage
            speed = replace(speed, variant_pace=served | {name: f * stage[name.split("/")[0]]
                                                          for name, f in alone.items()})
    cost = replace(cost, batch_overhead_s=batch_overheads(batches))
    meta = {"measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.node() or "unknown", "cpus": len(os.sched_getaffinity(0)),
            "config": {s: c.as_dict() for s, c in config.items()}, "requests": len(ok), "rate_rps": rate_rps,
            "pace_batches": pace[1] if pace else 0,
            "windows": [[round(w.seconds, 2), round(w.cpu_s, 3), round(p.cpu_s, 3), w.load]
                        for w, p in zip(windows, path)],  # seconds, serving's CPU s, of it the request path's, load?
            "off_path_cpu_per_request_s": round(off_path, 5),  # the rest of the cluster's, not charged (noise)
            "decode_cpu_per_request_s": round(decoded / len(ok), 5),
            "steal": steal,  # the share of the machine's CPU time its host took while serving was measured
            "method": "CPU time from /proc: idle, the local Ray cluster's processes but the stage replicas; per "
                      "request, those that work per request (HAProxy, proxy, ingress, ledger) and the images' "
                      f"decoding in the replicas (as the ingress tallies it), in {cycles} bursts each charged the "
                      "idle draw on either side of it; latency = answer time - time in the models' batches and "
                      "queued for them"}
    return cost, speed, meta
