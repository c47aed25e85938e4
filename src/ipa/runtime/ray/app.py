"""The bound Serve application for one pipeline config: a deployment per stage, the ingress in front."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from ipa.runtime.admission import UNKNOWN, AdmissionSettings, StageEstimate
from ipa.runtime.ray.ingress import Ingress
from ipa.runtime.ray.replica import MAX_BATCH, StageReplica, StageSettings
from ipa.spec import PipelineConfig, PipelineSpec


def build_app(spec: PipelineSpec, config: PipelineConfig, expected: dict[str, StageEstimate] | None, *,
              batch_wait_s: float, drop_limit_s: float, admission: AdmissionSettings, overhead_s: float,
              max_in_flight: int = 256, weights: str | None = None, device: str = "cpu",
              gpus_per_replica: float = 0.0, ingresses: int = 1, trust_request_start: bool = False):
    """The bound application for one pipeline config (deploying it again with another config reconfigures).

    On `cuda` each replica asks Ray for `gpus_per_replica` of a GPU, so several replicas share one. The ingress
    runs `ingresses` replicas, each holding at most `max_in_flight` requests; `trust_request_start` counts each
    arrival in the second its `X-Request-Start` says (`ingress.request_start`).
    """
    from ray.serve.config import BackpressureConfig

    from ipa.models.builder import search_path
    from ipa.models.zoo import stage_kind

    search = search_path(spec)
    kinds = []
    handles = []
    plan = []
    for stage in spec.stages:
        c = config[stage.name]
        kind = stage_kind(stage)
        kinds.append((stage.name, kind))
        settings = StageSettings(c.variant, c.batch, c.cores, batch_wait_s, weights, device)
        resources = {"num_cpus": c.cores} | ({"num_gpus": gpus_per_replica} if device != "cpu" else {})
        stage_spec = stage.model_copy(update={"kind": kind}).model_dump()
        dep = StageReplica.options(name=stage.name, num_replicas=c.replicas, user_config=settings.user_config(),
                                   ray_actor_options=resources, max_ongoing_requests=MAX_BATCH * 2,
                                   **_stable(stage.name, (stage_spec, search)))
        handles.append(dep.bind(stage_spec, search))
        e = (expected or {}).get(stage.name, UNKNOWN)
        known = not math.isnan(e.batch_s)
        plan.append({"config": c.as_dict(), "wait_s": batch_wait_s, "batch_s": e.batch_s if known else None,
                     "per_request_s": e.per_request_s if known else None,
                     "tail_s": e.tail_s if known and not math.isnan(e.tail_s) else None})
    ingress_args = (kinds, spec.sla_s, drop_limit_s)
    ingress_config = {"stages": plan, "overhead_s": overhead_s, "admission": admission.model_dump(),
                      "ingresses": ingresses, "trust_request_start": trust_request_start}
    return Ingress.options(user_config=ingress_config, num_replicas=ingresses, max_ongoing_requests=max_in_flight,
                           max_queued_requests=max_in_flight,
                           backpressure_config=BackpressureConfig(retry_after_s=1),
                           **_stable("ingress", ingress_args)).bind(kinds, handles, *ingress_args[1:])


def _stable(name: str, init_args: Any = ()) -> dict[str, Any]:
    """A code version that changes only with the constructor's arguments, so redeploys update replicas in place.

    `serve.run` gives every deployment a random version, which makes each new config a rolling restart
    of every replica, ingress included. With this version Serve does what its config files do:
    `user_config` and `num_replicas` update live replicas; `num_cpus` or new constructor arguments restart them.
    """
    digest = hashlib.sha1(repr(init_args).encode()).hexdigest()[:12]
    return {"version": f"ipa-{name}-{digest}", "_internal": True}
