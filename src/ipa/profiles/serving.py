"""What serving costs outside the models: the latency and CPU of the HTTP proxy, the ingress and Ray.

Profiles time a model's forward pass. A served request also pays the HTTP proxy, the ingress (decode,
resize, crop), serialisation and routing between stages, and Ray's own processes run beside the
replicas. `ipa profile --serving` measures these on the real runtime and keeps them in the profile's
meta file under `serving`; plans take the latency out of the SLA and the CPU out of the machine.

It also measures the machine's pace: the CPU the models' batches burned while served, against their
profiled rows. Profiles from another day or another VM of the same name can be far off (on 2026-12-03
this 2-core VM ran the video models 1.9x slower than the day they were profiled); with the pace in the
meta, every plan and prediction runs the profiles at this machine's speed (`ServingCost.machine`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ipa.errors import ProfileError
from ipa.profiles.table import ProfileTable

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
    pace: float = 1.0  # the models' CPU per batch served on this machine / profiled (the day's or the VM's speed)
    spread: float = 1.0  # served batches' p99 over their p50 (a row's own, if wider, stays)
    # per stage: the wall time a replica spends on each batch outside the model (hand-off, decoding, thread hops)
    batch_overhead_s: dict[str, float] = field(default_factory=dict)
    # per 'stage/variant': its pace over `pace`. A served variant's is its own batches' pace over all of them;
    # another's, its pace alone on a core over its stage's served variant's, times that one's (the machine's speed
    # is not one number: on the 2-core VM fasterrcnn ran 1.2-1.3x slower against its profile than ssdlite did,
    # served and alone, and ssdlite 0.98-1.25x resnet18's pace served, 1.04x or more in 44 cells of 47)
    variant_pace: dict[str, float] = field(default_factory=dict)
    # the lowest and highest `pace` of any 10 s the measurement served (`window_paces`): the machine at its fastest
    # and slowest; () when not measured
    pace_range: tuple[float, ...] = ()
    # every 10 s's `pace` in the order served: how the machine's speed moves over time (`ipa.experiment.prediction`)
    pace_windows: tuple[float, ...] = ()
    # served batches' p99 over their p50 within each 10 s: `spread` less the speed's moves (None: not measured)
    window_spread: float | None = None

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

    def variant_range(self) -> str:
        """The variants' own paces as one figure or a range ('1.01', '1.00-1.33')."""
        lo, hi = min(self.variant_pace.values(), default=1.0), max(self.variant_pace.values(), default=1.0)
        return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"

    def to_meta(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("client")
        out.pop("source")
        return out

    def machine(self, profiles: ProfileTable) -> ProfileTable:
        """The profiles as this machine runs them when serving: every row's work at the measured pace (each
        variant's own, where measured)."""
        if self.pace == 1.0 and self.spread == 1.0 and not self.variant_pace:
            return profiles
        own = f", per variant x{self.variant_range()} of it" if self.variant_pace else ""
        return profiles.at_pace(lambda p: self.pace * self.variant_pace.get(f"{p.stage}/{p.variant}", 1.0),
                                f"{profiles.source} (as served here: x{self.pace:.2f} CPU{own}, p99 >= "
                                f"{self.spread:.2f} x p50, from ipa profile --serving"
                                f"{' ' + self.source if self.source else ''})", self.spread)


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
    variants = raw.get("variant_pace", {})
    if not isinstance(variants, dict) or not all(
            isinstance(v, int | float) and 0 < v < math.inf for v in variants.values()):
        raise ProfileError(f"{source}: serving.variant_pace must map each 'stage/variant' to a factor > 0, "
                           f"got {variants!r}")
    span = raw.get("pace_range", [])
    if not isinstance(span, list | tuple) or len(span) not in (0, 2) or not all(
            isinstance(v, int | float) and 0 < v < math.inf for v in span) or (span and span[0] > span[1]):
        raise ProfileError(f"{source}: serving.pace_range must be [lowest, highest]: two paces > 0 (the "
                           "fastest and the slowest the models ran), "
                           f"got {span!r}")
    windows = raw.get("pace_windows", [])
    if not isinstance(windows, list | tuple) or not all(
            isinstance(v, int | float) and 0 < v < math.inf for v in windows):
        raise ProfileError(f"{source}: serving.pace_windows must be a list of paces > 0 (each 10 s served, in "
                           f"order), got {windows!r}")
    factors = {}
    for name in ("pace", "spread"):
        v = raw.get(name, 1.0)
        if not isinstance(v, int | float) or not 0 < v < math.inf:
            raise ProfileError(f"{source}: serving.{name} must be a finite number > 0, got {v!r}")
        factors[name] = float(v)
    within = raw.get("window_spread")
    if within is not None and (not isinstance(within, int | float) or not 1 <= within < math.inf):
        raise ProfileError(f"{source}: serving.window_spread must be a finite number >= 1 (p99 over p50), got "
                           f"{within!r}")
    return ServingCost(**values, source=str(raw.get("measured", source)), **factors,
                       window_spread=float(within) if within is not None else None,
                       batch_overhead_s={str(k): float(v) for k, v in overheads.items()},
                       variant_pace={str(k): float(v) for k, v in variants.items()},
                       pace_range=tuple(float(v) for v in span), pace_windows=tuple(float(v) for v in windows))
