"""The pipeline as a Ray Serve application: one deployment per stage, an HTTP ingress that chains them.

Knobs map onto Serve (DESIGN.md section 5): variant -> `user_config` + `reconfigure()` (the replica
loads the other model beside the serving one and swaps), batch -> `@serve.batch` resized with
`set_max_batch_size`, replicas -> `num_replicas`, cores -> `num_cpus` and torch's thread count.
The ingress decodes and validates the image (4xx on bad input), sheds load with 503 when too many
requests are in flight or one outlives the drop limit, and keeps the metrics the runtime reads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from ipa.spec import PipelineConfig, PipelineSpec

MAX_BATCH = 64  # the decorator's ceiling; each config sets the real size with set_max_batch_size
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_CROPS = 1  # crops classified per request: one per request, as the profiles and the simulator count it
SCORE_THRESHOLD = 0.05


class BadInput(ValueError):
    """The client's fault: answered with a 4xx and a message, never a crashed replica."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode_image(body: bytes, content_type: str) -> np.ndarray:
    """JPEG/PNG bytes, or JSON {"image": base64}, to an RGB uint8 HxWxC array."""
    from PIL import Image, UnidentifiedImageError

    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        raise BadInput(400, "empty body: send a JPEG or PNG image, or JSON {\"image\": \"<base64>\"}")
    if len(body) > MAX_IMAGE_BYTES:
        raise BadInput(413, f"image of {len(body)} bytes exceeds the limit of {MAX_IMAGE_BYTES}")
    if ctype == "application/json":
        try:
            payload = json.loads(body)
            body = base64.b64decode(payload["image"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise BadInput(400, "JSON body must be {\"image\": \"<base64 of a JPEG or PNG>\"}") from None
    elif ctype not in ("image/jpeg", "image/png", "application/octet-stream"):
        raise BadInput(415, f"content type {ctype or '(none)'!r} not supported "
                            "(allowed: image/jpeg, image/png, application/json)")
    try:
        img = Image.open(io.BytesIO(body))
        if img.format not in ("JPEG", "PNG"):
            raise BadInput(415, f"image format {img.format} not supported (allowed: JPEG, PNG)")
        return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadInput(400, f"not a decodable JPEG or PNG image ({e})") from None


@dataclass(frozen=True)
class StageSettings:
    """What a stage replica is told through `user_config` (plain values: Serve compares and ships them)."""

    variant: str
    batch: int
    cores: int
    batch_wait_s: float
    weights: str | None = None
    device: str = "cpu"

    def user_config(self) -> dict[str, Any]:
        return {"variant": self.variant, "batch": self.batch, "cores": self.cores,
                "batch_wait_s": self.batch_wait_s, "weights": self.weights, "device": self.device}


@serve.deployment(max_ongoing_requests=MAX_BATCH * 2)
class StageReplica:
    """Runs one stage's current variant on batches of requests."""

    def __init__(self, stage: str):
        self.stage = stage
        self.model = None
        self.variant = ""
        self.loads: list[dict[str, Any]] = []  # (variant, seconds) of every model load, for reconfiguration timing

    async def reconfigure(self, cfg: dict[str, Any]) -> None:
        """Load a new variant next to the serving one, then swap; batch and threads change in place."""
        import torch

        torch.set_num_threads(int(cfg["cores"]))
        if cfg["variant"] != self.variant:
            t0 = time.perf_counter()
            model = await asyncio.to_thread(_load, cfg["variant"], cfg.get("weights"), cfg.get("device", "cpu"))
            self.model, self.variant = model, cfg["variant"]
            self.loads.append({"variant": self.variant, "seconds": time.perf_counter() - t0})
        self.infer.set_max_batch_size(int(cfg["batch"]))
        self.infer.set_batch_wait_timeout_s(float(cfg["batch_wait_s"]))

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.0)
    async def infer(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        model = self.model  # a swap during this batch changes the next one, not this one
        outputs = await asyncio.to_thread(_run, model, images)
        for o in outputs:
            o["variant"] = model.name
            o["batch"] = len(images)
        return outputs

    def state(self) -> dict[str, Any]:
        """What this replica runs, and where (the node), for tests and `ipa serve` diagnostics."""
        import ray
        import torch

        return {"stage": self.stage, "variant": self.variant, "batch": self.infer._get_max_batch_size(),
                "threads": torch.get_num_threads(), "loads": self.loads,
                "node": ray.get_runtime_context().get_node_id()}


def _load(variant: str, weights: str | None, device: str = "cpu"):
    from ipa.profiles.zoo import build

    model = build(variant, weights, device)
    blank = np.zeros((64, 64, 3), np.uint8)
    _run(model, [(blank, None) if model.kind == "segmentation" else blank])  # first call allocates: before serving
    return model


def _run(model, images: list) -> list[dict[str, Any]]:
    """A batch through one model: photos for detection and classification, (photo, box) for segmentation."""
    import torch

    from ipa.profiles import sam
    from ipa.profiles.zoo import to_classifier_input

    device = model.device
    if model.kind == "segmentation":
        return model([sam.request(im, box, device) for im, box in images])
    if model.kind == "detection":
        x = [torch.from_numpy(np.array(im)).permute(2, 0, 1).float().div(255).to(device) for im in images]
        out = []
        for d in model(x):
            d = {k: v.cpu() for k, v in d.items()}
            keep = d["scores"] >= SCORE_THRESHOLD
            out.append({"boxes": d["boxes"][keep].round().int().tolist(), "labels": d["labels"][keep].tolist(),
                        "scores": [round(float(s), 4) for s in d["scores"][keep]]})
        return out
    probs = model(torch.stack([to_classifier_input(im) for im in images]).to(device)).softmax(-1).cpu()
    score, label = probs.max(-1)
    return [{"label": int(c), "score": round(float(s), 4)} for c, s in zip(label, score)]


def crops(image: np.ndarray, detection: dict[str, Any], limit: int = MAX_CROPS) -> list[tuple[list[int], np.ndarray]]:
    """The best-scoring boxes with a real area; the whole image when the detector found none."""
    h, w = image.shape[:2]
    out = []
    for box in detection["boxes"]:
        x1, y1, x2, y2 = max(0, box[0]), max(0, box[1]), min(w, box[2]), min(h, box[3])
        if x2 - x1 >= 2 and y2 - y1 >= 2:
            out.append(([x1, y1, x2, y2], image[y1:y2, x1:x2]))
        if len(out) == limit:
            break
    return out or [([0, 0, w, h], image)]


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
class Ingress:
    """HTTP in, the stages in order through their handles (detect -> classify or segment), JSON out;
    counts arrivals per second."""

    def __init__(self, stages: list[tuple[str, str]], handles: list, sla_s: float, drop_limit_s: float,
                 max_in_flight: int):
        from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram

        self.stages = stages  # (name, kind) in pipeline order
        self.handles = [h.options(method_name="infer") for h in handles]
        self.sla_s, self.drop_limit_s, self.max_in_flight = sla_s, drop_limit_s, max_in_flight
        self.in_flight = 0
        self.arrivals: Counter[int] = Counter()  # epoch second -> requests that arrived
        reg = self.registry = CollectorRegistry()
        self.m_requests = PCounter("ipa_requests", "Requests by outcome", ["code"], registry=reg)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, sla_s / 2, sla_s, 2 * sla_s, float("inf"))
        self.m_latency = Histogram("ipa_request_latency_seconds", "End-to-end latency at the ingress",
                                   buckets=sorted(set(buckets)), registry=reg)
        self.m_in_flight = Gauge("ipa_in_flight_requests", "Requests in the pipeline", registry=reg)
        self.m_stage = Gauge("ipa_stage_config", "Active config per stage (value: the knob)",
                             ["stage", "variant", "knob"], registry=reg)
        self.m_energy = Gauge("ipa_energy_joules", "Energy since the run started, by domain",
                              ["domain", "method"], registry=reg)
        self.m_power = Gauge("ipa_power_watts", "Power over the last sample", ["method"], registry=reg)

    async def __call__(self, request) -> Any:
        from starlette.responses import JSONResponse, Response

        if request.method == "GET" and request.url.path.rstrip("/").endswith("/metrics"):
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)
        if request.method == "GET":
            return JSONResponse({"stages": [s for s, _ in self.stages], "in_flight": self.in_flight})
        t0 = time.time()
        self.arrivals[int(t0)] += 1
        if request.method != "POST":
            return self._answer(JSONResponse({"error": "POST an image"}, 405), t0)
        if self.in_flight >= self.max_in_flight:
            return self._answer(JSONResponse({"error": f"overloaded: {self.in_flight} requests in flight"}, 503), t0)
        self.in_flight += 1
        self.m_in_flight.set(self.in_flight)
        try:
            image = decode_image(await request.body(), request.headers.get("content-type", ""))
            result = await asyncio.wait_for(self.pipeline(image), self.drop_limit_s)
        except BadInput as e:
            return self._answer(JSONResponse({"error": str(e)}, e.status), t0)
        except TimeoutError:
            return self._answer(JSONResponse({"error": f"dropped: not served within {self.drop_limit_s} s"}, 503), t0)
        finally:
            self.in_flight -= 1
            self.m_in_flight.set(self.in_flight)
        result["latency_s"] = time.time() - t0
        return self._answer(JSONResponse(result), t0)

    def _answer(self, response, t0: float):
        self.m_requests.labels(str(response.status_code)).inc()
        if response.status_code == 200:
            self.m_latency.observe(time.time() - t0)
        return response

    async def pipeline(self, image: np.ndarray) -> dict[str, Any]:
        """A detection stage turns the items into crops; a classification stage labels each crop; a
        segmentation stage draws the mask of each box on the whole photo (SAM is prompted, not cropped)."""
        items = [([0, 0, image.shape[1], image.shape[0]], image)]
        variants: dict[str, str] = {}
        detections: list[dict[str, Any]] = [{"box": box} for box, _ in items]
        for (name, kind), handle in zip(self.stages, self.handles):
            inputs = [(image, box) if kind == "segmentation" else img for box, img in items]
            outs = await asyncio.gather(*(handle.remote(x) for x in inputs))
            variants[name] = outs[0]["variant"]
            if kind == "detection":
                items = [c for (_, img), o in zip(items, outs) for c in crops(img, o)]
                detections = [{"box": box, "detections": len(outs[0]["boxes"])} for box, _ in items]
            elif kind == "segmentation":
                for d, o in zip(detections, outs):
                    d |= {"mask_area": o["mask_area"], "mask_score": o["mask_score"]}
            else:
                for d, o in zip(detections, outs):
                    d |= {"label": o["label"], "score": o["score"]}
        return {"detections": detections, "variants": variants}

    def arrivals_since(self, epoch_s: int) -> dict[int, int]:
        return {s: n for s, n in self.arrivals.items() if s >= epoch_s}

    def observe(self, config: dict[str, dict[str, Any]] | None = None, energy: dict[str, Any] | None = None) -> None:
        """The runtime reports the active config and the latest energy reading for /metrics."""
        if config is not None:
            self.m_stage.clear()
            for stage, c in config.items():
                for knob in ("batch", "replicas", "cores"):
                    self.m_stage.labels(stage, c["variant"], knob).set(c[knob])
        if energy is not None:
            for domain, j in energy["joules"].items():
                self.m_energy.labels(domain, energy["method"]).set(j)
            self.m_power.labels(energy["method"]).set(energy["watts"])


def build_app(spec: PipelineSpec, config: PipelineConfig, *, batch_wait_s: float, drop_limit_s: float,
              max_in_flight: int = 256, weights: str | None = None, device: str = "cpu", gpus_per_replica: float = 0.0):
    """The bound application for one pipeline config (deploying it again with another config reconfigures).

    On `cuda` each replica asks Ray for `gpus_per_replica` of a GPU, so several replicas share one.
    """
    from ipa.profiles.zoo import kind_of

    kinds = []
    handles = []
    for stage in spec.stages:
        c = config[stage.name]
        kinds.append((stage.name, kind_of(c.variant)))
        settings = StageSettings(c.variant, c.batch, c.cores, batch_wait_s, weights, device)
        resources = {"num_cpus": c.cores} | ({"num_gpus": gpus_per_replica} if device != "cpu" else {})
        dep = StageReplica.options(name=stage.name, num_replicas=c.replicas, user_config=settings.user_config(),
                                   ray_actor_options=resources, **_stable(stage.name))
        handles.append(dep.bind(stage.name))
    ingress_args = (kinds, spec.sla_s, drop_limit_s, max_in_flight)
    return Ingress.options(**_stable("ingress", ingress_args)).bind(kinds, handles, *ingress_args[1:])


def _stable(name: str, init_args: Any = ()) -> dict[str, Any]:
    """A code version that changes only with the constructor's arguments, so redeploys update replicas in place.

    `serve.run` gives every deployment a random version, which makes each new config a rolling restart
    of every replica, ingress included. With this version Serve does what its config files do:
    `user_config` and `num_replicas` update live replicas; `num_cpus` or new constructor arguments restart them.
    """
    digest = hashlib.sha1(repr(init_args).encode()).hexdigest()[:12]
    return {"version": f"ipa-{name}-{digest}", "_internal": True}
