"""What serving costs outside the models: the latency and CPU of the HTTP proxy, the ingress and Ray.

Profiles time a model's forward pass. A served request also pays the HTTP proxy, the ingress (decode,
resize, crop), serialisation and routing between stages, and Ray's own processes run beside the
replicas. `ipa profile --serving` measures these on the real runtime and keeps them in the profile's
meta file under `serving`; plans take the latency out of the SLA and the CPU out of the machine.
The machine's speed, measured by the same refresh and kept beside it, is `ipa.machine.speed`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ipa.errors import ProfileError

INGRESS_BUSY = 0.7  # the share of a core one ingress replica (one event loop) is planned to use: queues grow past it
FIELDS = ("latency_s", "cpu_fixed_cores", "cpu_per_request_s", "client_cpu_per_request_s")


@dataclass(frozen=True)
class ServingCost:
    latency_s: float = 0.0  # per request, outside the models: HTTP, decode, routing, crops (median)
    cpu_fixed_cores: float = 0.0  # Ray's and Serve's own processes with no traffic
    cpu_per_request_s: float = 0.0  # proxy + ingress CPU seconds per request
    client_cpu_per_request_s: float = 0.0  # a load generator on the same machine, per request
    client: bool = False  # whether the load generator runs on the serving machine (ipa experiment --runtime ray)
    source: str = ""
    # per stage: the wall time a replica spends on each batch outside the model (hand-off, decoding, thread hops)
    batch_overhead_s: dict[str, float] = field(default_factory=dict)

    def cores(self, load_rps: float) -> float:
        """CPU cores serving takes at `load_rps`, beside the replicas."""
        return self.cpu(max(0.0, load_rps), max(0.0, load_rps))

    def cpu(self, admitted, arrived):
        """CPU seconds per second with `admitted` requests a second of `arrived` (numbers or per-second arrays):
        fixed, the proxy's and ingress's per admitted request, the client's per arrival when it is local."""
        client = self.client_cpu_per_request_s * arrived if self.client else 0.0
        return self.cpu_fixed_cores + self.cpu_per_request_s * admitted + client

    def ingresses(self, load_rps: float) -> int:
        """Ingress replicas for `load_rps`: one event loop each, planned at INGRESS_BUSY of a core with all of
        serving's CPU per request (the decoding in the replicas and HAProxy's share included: it errs high)."""
        return max(1, math.ceil(max(0.0, load_rps) * self.cpu_per_request_s / INGRESS_BUSY - 1e-9))

    def with_client(self, client: bool) -> ServingCost:
        return replace(self, client=client)

    def describe(self, load_rps: float, cpus: float | None = None, ingresses: int | None = None) -> str:
        """One line for `ipa optimize` and `ipa serve`: what serving reserves at this load (`ingresses`: a count
        fixed by the user instead of the planned one)."""
        per = self.cpu_per_request_s * 1000
        client = f" + client {self.client_cpu_per_request_s * 1000:.1f} ms" if self.client else ""
        left = f", {cpus - self.cores(load_rps):.2f} of {cpus:g} CPUs left for replicas" if cpus else ""
        k = ingresses or self.ingresses(load_rps)
        return (f"serving reserves {self.cores(load_rps):.2f} cores at {load_rps:g} rps ({self.cpu_fixed_cores:.2f} "
                f"fixed + {per:.1f} ms{client} CPU per request){left} and {self.latency_s * 1000:.0f} ms of the SLA per "
                f"request; {k} ingress replica{'' if k == 1 else 's'}"
                + (" (--ingress-replicas)" if ingresses else
                   f" (one per {INGRESS_BUSY * 1000 / per:.0f} rps)" if per > 0 else ""))

    def to_meta(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("client")
        out.pop("source")
        return out


def from_meta(meta: dict[str, Any], source: str = "") -> ServingCost | None:
    """The `serving` section of a profile's meta file, or None when it was never measured."""
    raw = meta.get("serving")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProfileError(f"{source}: 'serving' in the meta file must be a mapping of {', '.join(FIELDS)}")
    values = {}
    for name in FIELDS:
        v = raw.get(name, 0.0)
        if not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ProfileError(f"{source}: serving.{name} must be a finite number >= 0, got {v!r}")
        values[name] = float(v)
    overheads = raw.get("batch_overhead_s", {})
    if not isinstance(overheads, dict) or not all(
            isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in overheads.values()):
        raise ProfileError(f"{source}: serving.batch_overhead_s must map each stage to seconds >= 0, got {overheads!r}")
    return ServingCost(**values, source=str(raw.get("measured", source)),
                       batch_overhead_s={str(k): float(v) for k, v in overheads.items()})
