"""The Ray cluster a pipeline is served on: start a local one (or join one), its ports and environment, and stop it.

A local cluster runs Serve's fast path (HAProxy in front, the ingress serving HTTP itself); `shutdown` stops what
`connect` started.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Literal

from pydantic import Field

from ipa._signals import stop_on_sigterm
from ipa.errors import ConfigError, IpaError
from ipa.runtime.ray.guard import MARK, Guard, haproxy_env
from ipa.spec import PipelineSpec, Strict

log = logging.getLogger(__name__)
APP = "ipa"
_guard: Guard | None = None  # the local cluster this process started, while it runs
SERVE_STOP_S = 15.0  # how long Serve may take to drain and stop (a few seconds on a live cluster)


class RaySettings(Strict):
    address: str | None = Field(default=None, description="join this Ray cluster; default: start a local one")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cpus: int | None = Field(default=None, ge=1, description="logical CPUs of the local cluster (default: this machine's)")
    batch_wait_s: float | None = Field(default=None, ge=0, description="default: the simulator's batch timeout")
    drop_limit_s: float | None = Field(default=None, gt=0, description="default: 2 x SLA, as the simulator")
    max_in_flight: int = Field(default=256, ge=1, description="requests each ingress replica holds at once (Serve's "
                               "max_ongoing_requests); as many more wait at the proxy, beyond that Serve answers 503")
    deploy_timeout_s: float = Field(default=180.0, gt=0)
    weights: str | None = Field(default=None, description="folder of <variant>.pth checkpoints; default random weights")
    meter: str = "auto"
    device: Literal["cpu", "cuda"] = Field(default="cpu", description="where replicas run their models")
    gpus_per_replica: float = Field(default=0.125, gt=0, le=1, description="share of a GPU each replica reserves (cuda)")
    ingress_replicas: int | None = Field(default=None, ge=1, le=64, description="replicas of the ingress (default: "
                                         "planned from the load and serving's CPU per request, one below saturation)")
    trust_request_start: bool = Field(default=False, description="count each request in the second its "
                                      "X-Request-Start header says (set it only where a front proxy or ipa's own "
                                      "load generator sets that header and clients cannot)")


class ReconfigurationError(IpaError):
    pass


def connect(settings: RaySettings, spec: PipelineSpec) -> bool:
    """Start a local Ray cluster (or join `address`) and Serve's HTTP proxy; True if Ray was started here. A local
    cluster is guarded (`ipa.runtime.ray.guard`): nothing of it outlives this process."""
    global _guard
    import ray
    from ray import serve

    _check_models(spec)
    if settings.weights and not os.path.isdir(settings.weights):
        raise ConfigError(f"--weights {settings.weights}: no such folder (it holds <variant>.pth files or transformers "
                          "folders <variant>/)")
    if not settings.address and not ray.is_initialized():
        check_port_free(settings.host, settings.port)
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if settings.address:
            ray.init(address=settings.address, **kwargs)
        else:
            _guard = Guard()
            env = serve_env() | _guard.env()
            if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
                env |= haproxy_env(settings.host, _guard.folder, {settings.port})
            os.environ[MARK] = _guard.cluster  # what Ray starts from here (GCS, raylet) carries it too
            try:
                ray.init(num_cpus=local_cpus(settings, spec), runtime_env={"env_vars": env}, **kwargs)
            except BaseException:  # whatever Ray started before it failed is stopped, and the watchdog with it
                _guard.close()
                _guard = None
                raise
            finally:
                os.environ.pop(MARK, None)
            _guard.started()
        started = True
        stop_on_sigterm()  # Ray's own handler exits on the spot; ours stops like Ctrl-C, logs and all
    # One HTTP proxy, on the head node: the pipeline has one address however many nodes serve it.
    serve.start(proxy_location="HeadOnly", http_options={"host": settings.host, "port": settings.port})
    return started


# Serve's own fast path (Ray >= 2.60), for the cluster's processes: each ingress replica serves HTTP itself behind
# HAProxy (no Python proxy hop: one request is one uvicorn parse, in the replica that handles it), user code and
# the router on the replica's event loop (no thread hops), request-path logs buffered, handles over gRPC: about a
# quarter of the CPU per request of Serve's defaults (docs/benchmarks.md). The driver keeps
# Serve's defaults: its handles are called from plain threads. A value set in the environment wins. An ingress
# replica that stops stays open 2 s (Serve's default, 30 s, is for remote load balancers; the controller takes it
# out of HAProxy's list within 0.1 s): otherwise every stop of `ipa serve` took 30 s longer.
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
             "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
             "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",  # Serve's own metrics, batched per second (not 0.1 s)
             "IPA_DIRECT_CALLS": "1"}  # the ingress calls the stage replicas on its node over sockets (runtime.direct)


def serve_env() -> dict[str, str]:
    """What the local cluster's processes get: SERVE_ENV, under any of its keys the user set themselves
    (IPA_SERVE_FAST_PATH=0 turns the whole of it off, for side-by-side measurements)."""
    if os.environ.get("IPA_SERVE_FAST_PATH", "1") == "0":
        return {}
    return {k: os.environ.get(k, v) for k, v in SERVE_ENV.items()}


def local_cpus(settings: RaySettings, spec: PipelineSpec) -> int:
    """The local cluster's logical CPUs: as asked, else this machine's, and at least one per stage (a 3-stage
    pipeline cannot be placed on 2 CPUs; declared CPUs beyond the physical ones share them)."""
    if settings.cpus:
        return settings.cpus
    cpus = os.cpu_count() or 1
    if cpus < len(spec.stages):
        log.warning("%d stages need %d CPUs: the local Ray cluster declares %d logical CPUs on this %d-CPU machine "
                    "(they share the physical ones; --ray-cpus sets the count)", len(spec.stages), len(spec.stages),
                    len(spec.stages), cpus)
    return max(cpus, len(spec.stages))


def check_port_free(host: str, port: int) -> None:
    """Serve's proxy would fail deep inside Ray on a port in use: say so before starting anything. Bound as the
    servers bind (SO_REUSEADDR): a listener is refused, the TIME_WAIT a stopped `ipa serve` leaves for a minute not."""
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"port {port} on {host} is not free ({e.strerror}): pass another with --port") from None


def free_port(host: str = "127.0.0.1", avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A free port for Serve's proxy that nothing else will take before it binds: outside the kernel's ephemeral
    range (where port 0 lands, and where Ray's own processes and outgoing connections take ports while the cluster
    starts: a port picked there was taken before HAProxy bound it, on CI) and above Ray's worker ports (10002-19999).
    Not one of `avoid` (picked already, not bound yet)."""
    import random
    import socket

    low, high = _ephemeral_range()
    candidates = [p for p in range(20000, 32768) if not low <= p <= high and p not in avoid] or list(range(20000, 32768))
    for port in random.sample(candidates, min(len(candidates), 200)):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise ConfigError("no free port in 20000-32767 for Serve's proxy: pass one with --port")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def shutdown(started_ray: bool) -> None:
    """Delete the app and Serve; stop Ray if `connect` started it (a joined cluster keeps running), and then
    whatever of the local cluster still runs. Serve gets `SERVE_STOP_S` to stop: a signal to the whole process
    group (`kill -- -PGID`, `timeout`, a supervisor) reaches the local cluster's own processes too, and Serve's
    controller then never answers (Ray would wait 30 s for it, then 60 s for GCS, and end the process)."""
    global _guard
    import ray

    guard = _guard if started_ray else None
    if started_ray:
        _guard = None
    try:
        if ray.is_initialized() and (guard is None or guard.core_alive()) and not _stop_serve(SERVE_STOP_S):
            log.warning("Serve did not stop within %.0f s (the signal reached the cluster's processes too?): "
                        "stopping what is left of the cluster", SERVE_STOP_S)
    finally:
        if started_ray:
            try:
                ray.shutdown()
            finally:
                if guard is not None:
                    guard.close()


def _stop_serve(timeout_s: float) -> bool:
    """Serve's own shutdown (apps drained, its actors and HAProxy stopped) and the ledger's, waited for at most
    `timeout_s`: whether it finished."""
    import threading

    from ray import serve

    done = threading.Event()

    def stop() -> None:
        try:
            serve.shutdown()
            _kill_ledger()
        except Exception as e:  # a cluster that is going down anyway: what is left is stopped after
            log.warning("Serve's shutdown failed: %s", e)
        finally:
            done.set()

    threading.Thread(target=stop, name="ipa-serve-shutdown", daemon=True).start()
    return done.wait(timeout_s)


def _kill_ledger() -> None:
    import ray

    from ipa.runtime.ray.ledger import ledger

    found = ledger()
    if found is not None:
        ray.kill(found)


def _check_models(spec: PipelineSpec) -> None:
    """Every stage has one kind (the ingress chains stages by kind) and every variant's own factory imports: a
    mixed or unknown stage, or a module that is not there, is refused here, before Ray starts."""
    from ipa.models.builder import check_factories
    from ipa.models.zoo import pipeline_kinds

    pipeline_kinds(spec)
    check_factories(spec)


def wait_running(timeout_s: float) -> None:
    """Wait until the app is RUNNING (every replica on the new config). Serve's own wait, with a timeout."""
    from ray.serve.context import _get_global_client

    try:
        _get_global_client()._wait_for_application_running(APP, timeout_s=int(timeout_s))
    except TimeoutError:
        raise ReconfigurationError(f"the pipeline did not become ready within {timeout_s:.0f} s "
                                   "(not enough CPUs in the cluster for this config?)") from None
    except RuntimeError as e:
        raise ReconfigurationError(f"the pipeline could not be deployed: {deploy_failure(str(e))}") from None


def wait_routed(url: str, timeout_s: float) -> bool:
    """Wait until HTTP reaches the app: Serve reports it RUNNING before its route is in the proxy's table, and a
    request in between is answered 404 "Path '/' not found". False, and a warning, if it is still not routed after
    `timeout_s`."""
    import requests

    end = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(url, timeout=5).status_code != 404:
                return True
        except requests.RequestException:
            pass
        if time.monotonic() >= end:
            log.warning("the app is running but %s still does not route to it after %.0f s", url, timeout_s)
            return False
        time.sleep(0.2)


_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$")


def deploy_failure(message: str) -> str:
    """Why the app failed to deploy: each failed deployment's last error line (Serve keeps a replica's whole
    traceback there: a variant's factory that raised, a checkpoint that is not there), else Serve's message."""
    from ray import serve

    details = []
    try:
        status = serve.status().applications.get(APP)
        for name, d in (status.deployments.items() if status else ()):
            if "FAIL" in str(d.status).upper() and d.message:
                details.append(f"{name}: {last_error(d.message)}")
    except Exception as e:  # the reason is best effort; the failure itself is reported either way
        log.debug("no deployment status: %s", e)
    return "; ".join(details) or message


def last_error(text: str) -> str:
    found = [m for m in map(_ERROR_LINE.match, (line.strip() for line in text.splitlines())) if m]
    return f"{found[-1].group(1)}: {found[-1].group(2)}" if found else text.strip().splitlines()[-1]


def running_replicas() -> dict[str, int]:
    """Serving replicas per deployment."""
    from ray import serve

    status = serve.status().applications.get(APP)
    if status is None:
        return {}
    # A replica being reconfigured in place (UPDATING) is alive, not down; STARTING or RECOVERING ones are not up yet.
    return {name: d.replica_states.get("RUNNING", 0) + d.replica_states.get("UPDATING", 0)
            for name, d in status.deployments.items()}
