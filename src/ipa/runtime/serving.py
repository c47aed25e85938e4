"""The pipeline as a Ray Serve application: one deployment per stage, an HTTP ingress that chains them.

Knobs map onto Serve (DESIGN.md section 5): variant -> `user_config` + `reconfigure()` (the replica
loads the other model beside the serving one and swaps), batch -> `@serve.batch` resized with
`set_max_batch_size`, replicas -> `num_replicas`, cores -> `num_cpus` and torch's thread count.

Behind HAProxy the ingress takes HTTP as soon as it is up: until every stage has answered once it says so (`GET /`
503 with `"ready": false`; a POST waits a second, then 503 `starting` with Retry-After). The ingress checks what
the headers say (4xx on bad input, even under overload), admits a request only
when it can be answered within the SLA (`ipa.runtime.admission`; otherwise a 503 with Retry-After at
once, before the body is even read), then reads it (an image only as far as its header: the replica that
needs its pixels decodes it, and the detector's replica cuts the crops the next stage takes). Each stage call carries the request's start-by
time; a replica drops items past it before its model runs. Serve's own knobs bound the HTTP side: the
ingress holds at most `max_in_flight` requests (`max_ongoing_requests`, then Serve's own 503; on Serve's
defaults, behind its Python proxy, that proxy queues as many more: `max_queued_requests`). A stage replica takes up to 128 requests into its batch
queue: capped at two batches, the ingress's router handed them over one round trip at a time and on a
2-core machine the detector idled half the time at 6.5 rps (2.8-3.8 rps of goodput against 6.3).
Replicas report each batch's time and CPU; the ingress keeps them for calibration. The ingress calls the stage
replicas on its node over their own sockets (`ipa.runtime.direct`; a Serve handle call cost 5.5 ms of CPU on the
2-core machine, the socket well under one), and through Serve's handles where there is no such route.

A replica builds its variant through the builder protocol (`ipa.profiles.builder`: the zoo's factory or the
user's own) and answers each item in an envelope: the model's `output` (any JSON value), the variant, the batch
and its timing. The answer to a request holds every stage's output under `outputs.<stage>`; a model that raises
answers 500 naming the variant and its import path, and the pipeline keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import json
import logging
import math
import time
from collections import Counter
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from ipa.runtime import direct
from ipa.runtime.admission import UNKNOWN, Admission, AdmissionSettings, StageEstimate
from ipa.runtime.ledger import PUSH_S
from ipa.spec import PipelineConfig, PipelineSpec

log = logging.getLogger(__name__)
MAX_BATCH = 64  # the decorator's ceiling; each config sets the real size with set_max_batch_size
EXPIRED = {"expired": True}  # what a replica answers for an item past its start-by time (no model ran)
STARTING_WAIT_S = 1.0  # a request that comes while the stages load waits this long for them, then gets a 503
MAX_CROPS = 1  # crops classified per request: one per request, as the profiles and the simulator count it


def grpc_handles() -> bool:
    """Whether this replica's Serve calls other replicas over gRPC (its fast path, set in the cluster's environment
    by `ray_runtime.serve_env`): an argument goes in one message instead of through Ray's object store."""
    from ray.serve._private import constants

    return bool(getattr(constants, "RAY_SERVE_USE_GRPC_BY_DEFAULT", False))


class BadInput(ValueError):
    """The client's fault: answered with a 4xx and a message, never a crashed replica."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# What a pipeline takes, by what its first stage reads: content types, size limit, and the words a 4xx uses
ACCEPTS: dict[str, tuple[tuple[str, ...], int, str]] = {
    "image": (("image/jpeg", "image/png", "application/octet-stream", "application/json"), 20 * 1024 * 1024,
              "a JPEG or PNG image, or JSON {\"image\": \"<base64>\"}"),
    "audio": (("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "application/octet-stream"),
              8 * 1024 * 1024, "a WAV file (PCM), or raw 16 kHz mono float32 samples as application/octet-stream"),
    "text": (("text/plain", "application/json"), 64 * 1024, "UTF-8 text as text/plain, or JSON {\"text\": \"...\"}"),
}


def decode_image(body: bytes, content_type: str) -> np.ndarray:
    """JPEG/PNG bytes, or JSON {"image": base64}, to an RGB uint8 HxWxC array."""
    return decode(image_bytes(body, content_type))


def _ctype(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def check_headers(content_type: str, content_length: str | None, media: str = "image") -> None:
    """What the headers alone say is wrong (type, size): a 4xx before admission, so even under overload."""
    types, limit, expected = ACCEPTS[media]
    ctype = _ctype(content_type)
    if ctype not in types:
        raise BadInput(415, f"content type {ctype or '(none)'!r} not supported: this pipeline takes {expected} "
                            f"(allowed: {', '.join(types)})")
    charset = content_type.lower().partition("charset=")[2].split(";")[0].strip().strip('"')
    if media == "text" and charset and charset not in ("utf-8", "utf8"):
        raise BadInput(415, f"charset {charset!r} not supported: send UTF-8 text")
    if content_length is not None and content_length.strip().isdigit():
        size = int(content_length)
        if size == 0:
            raise BadInput(400, f"empty body: send {expected}")
        if size > limit:
            raise BadInput(413, f"body of {size} bytes exceeds the limit of {limit}")


def _checked_body(body: bytes, content_type: str, media: str) -> None:
    check_headers(content_type, None, media)
    _, limit, expected = ACCEPTS[media]
    if not body:
        raise BadInput(400, f"empty body: send {expected}")
    if len(body) > limit:
        raise BadInput(413, f"body of {len(body)} bytes exceeds the limit of {limit}")


def image_bytes(body: bytes, content_type: str) -> bytes:
    """The image's bytes, after the checks that need the body but not its decoding (size, JSON shape)."""
    _checked_body(body, content_type, "image")
    if _ctype(content_type) == "application/json":
        shape = "JSON body must be {\"image\": \"<base64 of a JPEG or PNG>\"}"
        try:
            payload = json.loads(body)
        except ValueError as e:
            raise BadInput(400, f"body is not valid JSON ({e}); {shape}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
            raise BadInput(400, shape)
        try:
            return base64.b64decode(payload["image"], validate=True)
        except (ValueError, binascii.Error) as e:
            raise BadInput(400, f"field 'image' is not valid base64 ({e}); {shape}") from None
    return body


@dataclass(frozen=True)
class EncodedImage:
    """A request's image as it came (JPEG or PNG bytes), its header checked at the ingress. It is decoded in the
    replica that needs its pixels: the ingress, one process for every request, does no per-pixel work, and the
    bytes (50-100 kB) travel between processes instead of the decoded array (820 kB for a 640x427 photo)."""

    data: bytes
    width: int
    height: int


def check_image(body: bytes, content_type: str) -> EncodedImage:
    """The body's image, checked as far as its header goes (format, size): a 4xx at the ingress for what is not
    a JPEG or PNG. A file that is broken further in is found where it is decoded, and answered 400 as well."""
    from PIL import Image, UnidentifiedImageError

    data = image_bytes(body, content_type)
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadInput(400, f"not a decodable JPEG or PNG image ({e})") from None
    if img.format not in ("JPEG", "PNG"):
        raise BadInput(415, f"image format {img.format} not supported (allowed: JPEG, PNG)")
    return EncodedImage(data, *img.size)


def pixels(item: Any) -> Any:
    """What a model takes for an item: an EncodedImage (or a segmentation prompt (EncodedImage, box)) decoded."""
    if isinstance(item, EncodedImage):
        return decode(item.data)
    if isinstance(item, tuple) and item and isinstance(item[0], EncodedImage):
        return (decode(item[0].data), *item[1:])
    return item


def decode(data: bytes) -> np.ndarray:
    """JPEG or PNG bytes to RGB (the costly part: after admission)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ("JPEG", "PNG"):
            raise BadInput(415, f"image format {img.format} not supported (allowed: JPEG, PNG)")
        if img.format == "JPEG" and img.mode == "RGB":
            fast = _decode_rgb_jpeg(data)
            if fast is not None:
                return fast
        return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise BadInput(400, f"not a decodable JPEG or PNG image ({e})") from None


def _decode_rgb_jpeg(data: bytes) -> np.ndarray | None:
    """A colour JPEG through torchvision's libjpeg-turbo: the pixels Pillow gives (the same library, the same
    settings), for a third less CPU on the shipped photos (1.9 -> 1.3 and 1.4 -> 0.8 ms on the 2-core VM). None
    where torchvision is missing or refuses the file (torchvision 0.29 deprecates its decoders for TorchCodec; a release without them
    falls back here too): Pillow decodes it, or says why it cannot."""
    try:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    try:
        t = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError:
        return None
    return t.permute(1, 2, 0).contiguous().numpy()  # HWC, as Pillow's


def decode_audio(body: bytes, content_type: str) -> np.ndarray:
    """A WAV file, or raw float32 PCM at 16 kHz, to 16 kHz float32 samples."""
    from ipa.profiles.audio import AudioError, read_pcm, read_wav

    _checked_body(body, content_type, "audio")
    try:
        if _ctype(content_type) == "application/octet-stream" and not body.startswith(b"RIFF"):
            return read_pcm(body)
        return read_wav(body)
    except AudioError as e:
        raise BadInput(400, f"{e}; this pipeline takes {ACCEPTS['audio'][2]}") from None


def decode_text(body: bytes, content_type: str) -> str:
    """UTF-8 text, or JSON {"text": "..."}, with something in it."""
    _checked_body(body, content_type, "text")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(400, f"body is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if _ctype(content_type) == "application/json":
        try:
            text = json.loads(text)["text"]
        except (ValueError, KeyError, TypeError):
            raise BadInput(400, "JSON body must be {\"text\": \"...\"}") from None
        if not isinstance(text, str):
            raise BadInput(400, "JSON field 'text' must be a string")
    if not text.strip():
        raise BadInput(400, f"no text in the body: send {ACCEPTS['text'][2]}")
    return text


def decode_body(body: bytes, content_type: str, media: str) -> Any:
    """The request body as the first stage takes it (after admission): audio as samples, text as a string, an
    image as its checked bytes (`EncodedImage`, decoded in the replica)."""
    if media == "audio":
        return decode_audio(body, content_type)
    if media == "text":
        return decode_text(body, content_type)
    return check_image(body, content_type)


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
    """Runs one stage's current variant on batches of requests. `spec` is the stage's spec as a dict (its kind,
    variants and generation cap: what building a variant needs); `search` the folders a variant's own module is
    looked for in after the environment (the pipeline YAML's, the driver's working directory)."""

    def __init__(self, spec: dict[str, Any], search: list[str] | None = None):
        self.spec = spec
        self.search = list(search or [])
        self.stage = spec["name"]
        self.model = None
        self.variant = ""
        self.cores = 1
        self.loads: list[dict[str, Any]] = []  # (variant, seconds) of every model load, for reconfiguration timing
        self.replica = uuid.uuid4().hex[:8]
        self.batches = 0
        self._ended = 0.0  # when this replica's last batch ended (the next could start no earlier)
        self._loading = 0  # model loads under way beside the serving one
        self._loaded = 0  # model loads finished: with `_loading`, whether one overlapped a batch
        self._direct: Any = None  # its socket for the ingresses on this node (`ipa.runtime.direct`), once loaded
        self._ledger: Any = None  # where that socket is registered

    async def reconfigure(self, cfg: dict[str, Any]) -> None:
        """Load a new variant next to the serving one, then swap; batch and threads change in place."""
        import torch

        self.cores = int(cfg["cores"])
        torch.set_num_threads(self.cores)
        if cfg["variant"] != self.variant:
            t0 = time.perf_counter()
            self._loading += 1
            try:
                model = await asyncio.to_thread(_load, self.spec, cfg["variant"], cfg.get("weights"),
                                                cfg.get("device", "cpu"), self.search)
            finally:
                self._loading -= 1
                self._loaded += 1
            self.model, self.variant = model, cfg["variant"]
            self.loads.append({"variant": self.variant, "seconds": time.perf_counter() - t0})
        self.infer.set_max_batch_size(int(cfg["batch"]))
        self.infer.set_batch_wait_timeout_s(float(cfg["batch_wait_s"]))
        if self._direct is None and direct.enabled():
            await self._listen()

    async def _listen(self) -> None:
        """Take direct calls on a socket of its own, registered with the cluster's ledger (none: Serve's path only)."""
        from ipa.runtime.ledger import ledger

        listener = direct.Listener(self.call)
        try:
            found = await asyncio.to_thread(ledger)
            if found is None:
                return
            path = await listener.start()
            await found.route.remote(self.replica, {"stage": self.stage, "path": path, "node": _node_id()})
        except Exception as e:  # a shortcut, never a reason to fail the replica: Serve's handles still reach it
            log.warning("stage %s: no direct calls (%s); served through Serve's handles", self.stage, e)
            await listener.stop()
            return
        self._direct, self._ledger = listener, found

    async def __del__(self) -> None:
        """Serve stops this replica: out of the registry first, then the direct calls it holds are answered."""
        if self._direct is None:
            return
        try:
            await self._ledger.route.remote(self.replica, None)
        except Exception as e:  # the cluster is going down: the ingresses find the socket closed
            log.debug("stage %s: leaving the ledger's registry: %s", self.stage, e)
        await asyncio.sleep(2 * PUSH_S)  # the ingresses stop routing here within a push
        await self._direct.stop()

    async def call(self, item: Any, start_by: float) -> dict[str, Any]:
        """One item, as the ingress calls a stage: into the batch queue, stamped with when it got here."""
        return await self.infer(item, start_by, time.time())

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.0)
    async def infer(self, items: list[Any], start_by: list[float], arrived: list[float]) -> list[dict[str, Any]]:
        """Run the model on the items still in time; the others answer EXPIRED without costing a model call.
        Each answer carries the model's output and says how long its item waited in this replica for its batch
        (`queued_s`); a model that raises answers `failed` with the reason for each item of the batch."""
        now = time.time()
        ready = _ready_at(now, arrived, self._ended, len(items) >= self.infer._get_max_batch_size())
        live = [i for i, t in enumerate(start_by) if now <= t]
        out: list[dict[str, Any]] = [EXPIRED] * len(items)
        if not live:
            return out
        model = self.model  # a swap during this batch changes the next one, not this one
        inputs, decode_s = await asyncio.to_thread(_decoded, [items[i] for i in live])
        for i, x in zip(list(live), inputs):
            if isinstance(x, BadInput):
                out[i] = {"bad_input": str(x), "status": x.status}
        live = [i for i, x in zip(live, inputs) if not isinstance(x, BadInput)]
        inputs = [x for x in inputs if not isinstance(x, BadInput)]
        if not live:
            return out
        loads = (self._loading, self._loaded)
        try:
            outputs, seconds, cpu_s = await asyncio.to_thread(_timed_run, model, inputs)
        except Exception as e:  # the replica survives a model that fails on some input
            log.warning("stage %s: %s", self.stage, e)
            for i in live:
                out[i] = {"failed": str(e)}
            return out
        self.batches += 1
        if loads[0] or (self._loading, self._loaded) != loads:
            # the process's CPU meanwhile was the other model's build too (resnet18's batches burned 1.6-2x their
            # CPU while resnet50 loaded beside them, 2026-12-06): the batch says only how long it took
            cpu_s = None
        ended = time.time()
        last, self._ended = self._ended, ended
        timing = {"id": f"{self.replica}:{self.batches}", "seconds": seconds, "cpu_s": cpu_s, "size": len(live),
                  "variant": model.variant, "cores": self.cores, "ended_at": ended,
                  "decode_s": decode_s, "overhead_s": max(0.0, ended - ready - seconds),
                  "idle_s": max(0.0, now - last) if last else None}
        detection = self.spec.get("kind") == "detection"
        for i, x, o in zip(live, inputs, outputs):
            out[i] = {"output": o, "variant": model.variant, "batch": len(live), "timing": timing,
                      "queued_s": now - arrived[i]}
            if detection and isinstance(items[i], EncodedImage):  # the crops, cut where the pixels are
                out[i]["crops"] = crops(x, o)
        return out

    def state(self) -> dict[str, Any]:
        """What this replica runs, and where (the node), for tests and `ipa serve` diagnostics."""
        import torch

        return {"stage": self.stage, "variant": self.variant, "batch": self.infer._get_max_batch_size(),
                "threads": torch.get_num_threads(), "loads": self.loads,
                "direct_calls": self._direct.calls if self._direct is not None else None,
                "node": _node_id()}


def _ready_at(started: float, arrived: list[float], last_ended: float, full: bool) -> float:
    """When a batch could have started: its last item's arrival, or the replica's previous batch's end if later (the
    time from there to its answers, less the model's, is the replica's own overhead: the hand-off from the batch
    queue, decoding, the hops to and from the model's thread). A batch that is not full may have waited for the
    batch timeout: it counts from its start."""
    if not full:
        return started
    return min(started, max(last_ended, max(arrived)))


def _load(stage: dict[str, Any], variant: str, weights: str | None, device: str = "cpu", search: tuple | list = ()):
    from ipa.profiles.builder import build
    from ipa.spec import StageSpec

    runner = build(StageSpec.model_validate(stage), variant, weights_dir=weights, device=device, search=search)
    runner([runner.warmup_item()])  # the first call allocates, and shows a misbehaving model, before serving
    return runner


def _decoded(items: list) -> tuple[list[Any], float]:
    """The items as the model takes them (images decoded; one that does not decode is its BadInput), and the CPU
    seconds decoding took: serving's work, reported apart from the model's batch time."""
    c0 = time.thread_time()
    out: list[Any] = []
    for item in items:
        try:
            out.append(pixels(item))
        except BadInput as e:
            out.append(e)
    return out, time.thread_time() - c0


def _timed_run(model, items: list) -> tuple[list[Any], float, float]:
    """The batch, how long it took (timed where it runs, not counting the wait for a thread) and the CPU the
    replica's process burned meanwhile (the model's threads, and the little else a replica does; the caller drops
    it when another model was loading beside the batch)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = model(items)
    return out, time.perf_counter() - t0, time.process_time() - c0


def crops(image: np.ndarray, detection: dict[str, Any], limit: int = MAX_CROPS) -> list[tuple[list[int], np.ndarray]]:
    """The first (best-scoring) boxes with a real area, in whole pixels; the whole image when the detector found none."""
    h, w = image.shape[:2]
    out = []
    for box in detection["boxes"]:
        x1, y1, x2, y2 = max(0, int(box[0])), max(0, int(box[1])), min(w, int(box[2])), min(h, int(box[3]))
        if x2 - x1 >= 2 and y2 - y1 >= 2:
            out.append(([x1, y1, x2, y2], image[y1:y2, x1:x2]))
        if len(out) == limit:
            break
    return out or [([0, 0, w, h], image)]


DRAIN_LIMIT = 256 * 1024 * 1024  # bytes of an oversized body read (and dropped) so that its 413 can be read


async def _drain(request, limit: int) -> None:
    """Read and drop an oversized body, up to `limit` bytes: a client that sends the whole body before it reads the
    answer (Python's urllib) would otherwise see its connection reset instead of the 413."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return
    except Exception as e:  # the client went away: nothing to answer
        log.debug("draining an oversized body: %s", e)


@dataclass
class News:
    """What an ingress replica saw since its last push to the ledger."""

    arrivals: Counter = field(default_factory=Counter)
    timings: list[dict[str, Any]] = field(default_factory=list)
    decode_cpu_s: float = 0.0

    def merge(self, older: News) -> None:
        """Keep what could not be pushed (the newest 10,000 batch times when nobody takes them)."""
        self.arrivals.update(older.arrivals)
        self.timings[:0] = older.timings
        del self.timings[:-10_000]
        self.decode_cpu_s += older.decode_cpu_s


class Expired(Exception):
    """A stage answered EXPIRED: the request could no longer be answered within the SLA."""


REQUEST_START = "x-request-start"  # when the request left the client or a front proxy (NGINX's t=${msec})
START_SKEW_S = (10.0, 1.0)  # a stamp older or further ahead than this is another clock's: the ingress's own time


def request_start(stamp: str | None, now: float) -> float:
    """The second a request joined the load: its `X-Request-Start` (`t=` epoch seconds, or milli- or microseconds)
    where a client or proxy stamped it, else `now`. Counted at the ingress, arrivals moved by the wait in
    HAProxy and the event loop into the next second; the load the plan is for is what was offered, when."""
    if not stamp:
        return now
    try:
        t = float(stamp.strip().removeprefix("t="))
    except ValueError:
        return now
    for scale in (1.0, 1e3, 1e6):
        if now - START_SKEW_S[0] <= t / scale <= now + START_SKEW_S[1]:
            return t / scale
    return now


class StageFailed(Exception):
    """A stage's model raised or answered what the pipeline cannot use; the message names the variant."""


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Ingress:
    """HTTP in, admission, the stages in order through their handles, JSON out. Images go detect -> classify
    or segment; speech and text go from stage to stage as the text each one gives on (a transcript, a
    translation, a summary; a text classifier passes its input on).

    It counts arrivals per second, the requests admitted and not yet through each stage (the work
    ahead of a new one), and the batch times the replicas report. Its `user_config` carries what the
    plan expects of each stage, so admission follows every reconfiguration without a restart.

    The ingress may have replicas of its own (one event loop saturates one core). Each sees a share of the
    requests, so admission counts its own work ahead and arrivals times the number of ingress replicas (HAProxy
    gives a new connection to the least busy one), and each pushes what it counted to the cluster's ledger
    (`ipa.runtime.ledger`) every quarter second: the runtime, `/metrics` and `GET /` read the whole pipeline there.
    """

    def __init__(self, stages: list[tuple[str, str]], handles: list, sla_s: float, drop_limit_s: float):
        from prometheus_client import CollectorRegistry, Counter as PCounter, Gauge, Histogram

        from ipa.spec import MEDIA

        self.stages = stages  # (name, kind) in pipeline order
        self.media = MEDIA[stages[0][1]][0]  # what the pipeline takes: image, audio or text
        self.handles = [h.options(method_name="call", _by_reference=not grpc_handles()) for h in handles]
        self.sla_s, self.drop_limit_s = sla_s, drop_limit_s
        self.deadline_s = min(sla_s, drop_limit_s)  # admission's: the SLA, or a shorter drop limit
        self.admission = Admission(self.deadline_s)
        self.plan: list[dict[str, Any]] = []
        self.at = [0] * len(stages)  # admitted requests now at each stage (decode counts as the first)
        self.ingresses = 1  # replicas of the ingress (each sees about this share of the requests)
        self.arrivals: Counter[int] = Counter()  # epoch second -> requests that arrived (the last few seconds)
        self._news = News()  # what this replica saw since its last push to the ledger
        self._seen: dict[str, None] = {}  # batch ids already counted (a batch answers several requests)
        self._ledger: Any = None
        self._pusher: asyncio.Task | None = None
        self._warming: asyncio.Task | None = None
        self.ready = asyncio.Event()  # every stage has answered once
        self._observed = -1  # the version of the runtime's report the gauges show
        self.id = uuid.uuid4().hex[:8]
        self.routes = direct.Routes(_node_id()) if direct.enabled() else None  # stage replicas' sockets, this node
        reg = self.registry = CollectorRegistry()
        self.m_requests = PCounter("ipa_requests", "Requests by outcome", ["code"], registry=reg)
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, sla_s / 2, sla_s, 2 * sla_s, float("inf"))
        self.m_latency = Histogram("ipa_request_latency_seconds", "End-to-end latency at the ingress",
                                   buckets=sorted(set(buckets)), registry=reg)
        self.m_in_flight = Gauge("ipa_in_flight_requests", "Requests in the pipeline", registry=reg)
        self.m_rejected = PCounter("ipa_shed", "Requests shed, by reason", ["reason"], registry=reg)
        self.m_stage = Gauge("ipa_stage_config", "Active config per stage (value: the knob)",
                             ["stage", "variant", "knob"], registry=reg)
        self.m_energy = Gauge("ipa_energy_joules", "Energy since the run started, by domain",
                              ["domain", "method"], registry=reg)
        self.m_power = Gauge("ipa_power_watts", "Power over the last sample", ["method"], registry=reg)
        self.m_co2 = Gauge("ipa_co2_grams", "Grams of CO2 of the energy since the run started, at the grid's "
                           "intensity of each second (with ipa serve --carbon)", ["method"], registry=reg)
        self.m_intensity = Gauge("ipa_carbon_intensity_g_per_kwh", "The grid's carbon intensity now", registry=reg)

    async def reconfigure(self, cfg: dict[str, Any]) -> None:
        """The plan's expectations per stage; a stage whose config did not change keeps its measured times."""
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_forever())
            self._warming = asyncio.get_running_loop().create_task(self._warm())
        self.ingresses = max(1, int(cfg.get("ingresses", 1)))
        settings = AdmissionSettings(**cfg["admission"])
        if (settings, cfg["overhead_s"]) != (self.admission.settings, self.admission.overhead_s):
            self.admission = Admission(self.deadline_s, cfg["overhead_s"], settings)
            self.plan = []
        for i, st in enumerate(cfg["stages"]):
            if i < len(self.plan) and self.plan[i]["config"] == st["config"] and i < len(self.admission.stages):
                continue
            c = st["config"]
            known = st["batch_s"] is not None
            self.admission.configure(i, c["replicas"], c["batch"], st["wait_s"],
                                     StageEstimate(st["batch_s"], st["per_request_s"], st.get("tail_s") or math.nan)
                                     if known else UNKNOWN)
        self.plan = list(cfg["stages"])

    async def __call__(self, request) -> Any:
        from starlette.responses import JSONResponse, Response

        path = request.url.path.rstrip("/") or "/"
        if request.method == "GET" and path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return Response(generate_latest(await self._merged_metrics()), media_type=CONTENT_TYPE_LATEST)
        if path != "/":
            return JSONResponse({"error": f"no such path {request.url.path!r}: POST {ACCEPTS[self.media][2]} to /; "
                                          "GET / for the pipeline's state, GET /metrics for Prometheus"}, 404)
        if request.method == "GET":
            status = await self.status()
            return JSONResponse(status, 200 if self.ready.is_set() else 503)
        t0 = time.time()
        second = int(request_start(request.headers.get(REQUEST_START), t0))
        self.arrivals[second] += 1
        self._news.arrivals[second] += 1
        if request.method != "POST":
            return self._answer(JSONResponse({"error": f"POST {ACCEPTS[self.media][2]}"}, 405), t0)
        ctype = request.headers.get("content-type", "")
        try:
            check_headers(ctype, request.headers.get("content-length"), self.media)
        except BadInput as e:
            if e.status == 413:
                await _drain(request, DRAIN_LIMIT)
            return self._answer(JSONResponse({"error": str(e)}, e.status), t0)
        if not self.ready.is_set() and not await self._ready_within(STARTING_WAIT_S):
            self.m_rejected.labels("starting").inc()
            return self._answer(JSONResponse({"error": "starting: the pipeline's stages are still loading their models; "
                                              "retry in 2 s", "reason": "starting"}, 503, headers={"Retry-After": "2"}),
                                t0)
        verdict = self.admission.decide(*self._whole(int(t0) - 1), t0)
        if not verdict.admit:
            self.m_rejected.labels("admission").inc()
            return self._answer(JSONResponse(
                {"error": f"overloaded: an answer would take about {verdict.estimate_s:.1f} s, "
                          f"{self._deadline_words()}; retry in {verdict.retry_after_s} s", "reason": "admission"},
                503, headers={"Retry-After": str(verdict.retry_after_s)}), t0)
        where = [0]  # the stage this request is at, for the work-ahead counts
        self.at[0] += 1
        self.m_in_flight.set(sum(self.at))
        try:  # the body is read only now: Serve's proxy streams it on demand, a refused request never moves it
            payload = decode_body(await request.body(), ctype, self.media)
            chain = self.pipeline if self.media == "image" else self.chain
            result = await asyncio.wait_for(chain(payload, t0, where), self.drop_limit_s)
        except BadInput as e:
            return self._answer(JSONResponse({"error": str(e)}, e.status), t0)
        except Expired:
            self.m_rejected.labels("expired").inc()
            return self._answer(JSONResponse({"error": f"dropped: could no longer be answered within the SLA "
                                              f"({self.sla_s:g} s)", "reason": "expired"}, 503), t0)
        except TimeoutError:
            self.m_rejected.labels("timeout").inc()
            return self._answer(JSONResponse({"error": f"dropped: not served within {self.drop_limit_s} s",
                                              "reason": "timeout"}, 503), t0)
        except StageFailed as e:
            return self._answer(JSONResponse({"error": str(e), "reason": "model error"}, 500), t0)
        finally:
            if where[0] < len(self.at):
                self.at[where[0]] -= 1
            self.m_in_flight.set(sum(self.at))
        result["latency_s"] = time.time() - t0
        self.admission.observe_outside(result["latency_s"] - result["service_s"] - result["queued_s"])
        return self._answer(JSONResponse(result), t0)

    def _deadline_words(self) -> str:
        if self.deadline_s >= self.sla_s:
            return f"the SLA is {self.sla_s:g} s"
        return f"the drop limit is {self.drop_limit_s:g} s (shorter than the SLA, {self.sla_s:g} s)"

    async def _ready_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.ready.wait(), seconds)
            return True
        except TimeoutError:
            return False

    def _whole(self, second: int) -> tuple[list[int], float]:
        """The pipeline's work ahead at each stage and its arrival rate, as this replica's own times the number of
        ingress replicas (each sees about that share; exact with one)."""
        k = self.ingresses
        return [a * k for a in self.at], float(self.arrivals.get(second, 0) * k)

    async def status(self) -> dict[str, Any]:
        """What `GET /` answers: the stages, the requests at each (over every ingress replica), and what admission
        expects now (null where it knows nothing yet: JSON has no NaN)."""
        from ipa.profiles.builder import jsonable

        now = time.time()
        totals = await self._totals()
        return jsonable({"stages": [s for s, _ in self.stages], "ready": self.ready.is_set(),
                         "in_flight": sum(totals["at_stage"]),
                         "at_stage": totals["at_stage"], "ingress_replicas": totals["ingress_replicas"],
                         "estimate_s": self.admission.estimate(*self._whole(int(now) - 1)),
                         "sla_s": self.sla_s, "decode_cpu_s": totals["decode_cpu_s"],
                         "batch_s": [st.batch_s for st in self.admission.stages],
                         "per_request_s": [st.per_request_s for st in self.admission.stages]})

    def _answer(self, response, t0: float):
        self.m_requests.labels(str(response.status_code)).inc()
        if response.status_code == 200:
            self.m_latency.observe(time.time() - t0)
        return response

    async def pipeline(self, image: EncodedImage, t0: float, where: list[int]) -> dict[str, Any]:
        """A detection stage turns the items into crops; a classification stage labels each crop; a
        segmentation stage draws the mask of each box on the whole photo (SAM is prompted, not cropped).
        `detections` sums up each crop: its box, and what the later stages said of it."""
        items = [([0, 0, image.width, image.height], image)]
        outputs: dict[str, Any] = {}
        variants: dict[str, str] = {}
        service = queued = 0.0  # seconds this request's batches took in the models, and it waited for them there
        detections: list[dict[str, Any]] = [{"box": box} for box, _ in items]
        for i, (name, kind) in enumerate(self.stages):
            inputs = [(image, box) if kind == "segmentation" else img for box, img in items]
            outs, took, waited = await self._stage(i, inputs, t0, where)
            service += took
            queued += waited
            variants[name] = outs[0]["variant"]
            results = [o["output"] for o in outs]
            outputs[name] = results[0] if len(results) == 1 else results
            if kind == "detection":  # the replica cut the crops where the pixels were; an array is cut here
                items = [c for (_, img), o in zip(items, outs) for c in (o.get("crops") or crops(pixels(img), o["output"]))]
                detections = [{"box": box, "detections": len(results[0]["boxes"])} for box, _ in items]
                continue
            for d, r in zip(detections, results):
                if isinstance(r, dict):
                    d |= {k: v for k, v in r.items() if k not in d}
        return {"outputs": outputs, "detections": detections, "variants": variants, "service_s": service,
                "queued_s": queued}

    async def chain(self, item: Any, t0: float, where: list[int]) -> dict[str, Any]:
        """Speech or text: each stage gets what the one before gave on (its text, or its own input when it gives
        none); the answer holds every stage's output."""
        from ipa.profiles.builder import gives_on

        outputs: dict[str, Any] = {}
        variants: dict[str, str] = {}
        service = queued = 0.0
        for i, (name, _) in enumerate(self.stages):
            (o,), took, waited = await self._stage(i, [item], t0, where)
            service += took
            queued += waited
            variants[name] = o["variant"]
            outputs[name] = o["output"]
            item = gives_on(o["output"], item)
        return {"outputs": outputs, "variants": variants, "service_s": service, "queued_s": queued}

    async def _stage(self, i: int, inputs: list[Any], t0: float, where: list[int]
                     ) -> tuple[list[dict[str, Any]], float, float]:
        """Stage i on each input (one call each, batched in the replica), stamped with the request's start-by
        there: the answers, and the slowest one's seconds in the model and in the replica's queue."""
        start_by = self.admission.start_by(t0, i)
        outs = await asyncio.gather(*(self._call(i, x, start_by) for x in inputs))
        self._move(where, i + 1)
        if any(o.get("expired") for o in outs):
            raise Expired()
        bad = next((o for o in outs if "bad_input" in o), None)
        if bad:
            raise BadInput(bad["status"], bad["bad_input"])
        failed = next((o["failed"] for o in outs if "failed" in o), None)
        if failed:
            raise StageFailed(f"stage '{self.stages[i][0]}' failed: {failed}")
        self._record(i, outs)
        slowest = max(outs, key=lambda o: o["queued_s"] + o["timing"]["seconds"])
        return outs, slowest["timing"]["seconds"], slowest["queued_s"]

    async def _call(self, i: int, item: Any, start_by: float) -> dict[str, Any]:
        """One item to stage i: straight to a replica's socket on this node when there is one, else (or when that
        replica went away mid-call) through Serve's handle."""
        conn = self.routes.pick(self.stages[i][0]) if self.routes is not None else None
        if conn is not None:
            try:
                return await conn.call(item, start_by)
            except direct.Lost as e:
                log.info("ingress %s: %s; through Serve instead", self.id, e)
        return await self.handles[i].remote(item, start_by)

    def _move(self, where: list[int], to: int) -> None:
        self.at[where[0]] -= 1
        where[0] = to
        if to < len(self.at):
            self.at[to] += 1

    def _record(self, i: int, outs: list[dict[str, Any]]) -> None:
        """Each batch once: into the admission estimate and the timings the runtime collects; each item's share of
        its batch's decoding (a batch may hold requests of several ingress replicas)."""
        for o in outs:
            t = o.get("timing")
            if not t:
                continue
            self._news.decode_cpu_s += (t.get("decode_s") or 0.0) / max(t["size"], 1)
            if t["id"] in self._seen:
                continue
            self._seen[t["id"]] = None
            if len(self._seen) > 4096:
                del self._seen[next(iter(self._seen))]
            self.admission.observe(i, t["seconds"], t["size"], t.get("ended_at") or time.time())
            self._news.timings.append({"id": t["id"], "stage": self.stages[i][0], "variant": t["variant"],
                                       "cores": t["cores"], "size": t["size"], "seconds": t["seconds"],
                                       "cpu_s": t.get("cpu_s"), "ended_at": t.get("ended_at"),
                                       "overhead_s": t.get("overhead_s"), "idle_s": t.get("idle_s")})

    async def _warm(self) -> None:
        """Ready once every stage has answered: behind HAProxy the ingress takes HTTP as soon as it is up, while the
        stages may still be loading their models for seconds (on a fresh `ipa serve`, the first request the README's
        `until curl` let through waited 6 s for them and expired)."""
        t0 = time.perf_counter()
        for name, h in zip(self.stages, self.handles):
            while True:
                try:
                    await h.options(method_name="state").remote()  # waits for a replica of the stage
                    break
                except Exception as e:
                    log.debug("ingress %s: stage %s not reached yet: %s", self.id, name[0], e)
                    await asyncio.sleep(0.5)
        self.ready.set()
        log.info("ingress %s: every stage reached in %.1f s", self.id, time.perf_counter() - t0)

    async def _push_forever(self) -> None:
        while True:
            await asyncio.sleep(PUSH_S)
            await self._push()

    async def _push(self) -> None:
        """What this replica saw since its last push, to the ledger; the runtime's report back into the gauges. A
        ledger that is not there (an app deployed without the runtime) or fails is looked up again next time."""
        from ipa.runtime.ledger import ledger

        if self._ledger is None:
            self._ledger = await asyncio.to_thread(ledger)
        news, self._news = self._news, News()
        now = time.time()
        for sec in [s for s in self.arrivals if s < now - 5]:  # admission reads the last second's
            del self.arrivals[sec]
        if self._ledger is None:
            self._news.merge(news)
            return
        try:
            version, observed, routes = await self._ledger.push.remote(
                self.id, dict(news.arrivals), news.timings, news.decode_cpu_s, list(self.at),
                list(self.registry.collect()), now)
        except Exception as e:  # the ledger restarts with the runtime; keep the news for the next push
            log.debug("ingress %s: push to the ledger failed: %s", self.id, e)
            self._news.merge(news)
            self._ledger = None
            return
        if self.routes is not None:
            self.routes.update(routes)
        if version != self._observed:
            self._observed = version
            self.observe(**observed)

    async def _totals(self) -> dict[str, Any]:
        """The pipeline's state over every ingress replica (this replica's news pushed first), or this one's alone."""
        await self._push()
        if self._ledger is not None:
            try:
                return await self._ledger.totals.remote()
            except Exception as e:
                log.debug("ingress %s: ledger totals failed: %s", self.id, e)
        return {"ingress_replicas": 1, "at_stage": list(self.at), "decode_cpu_s": self._news.decode_cpu_s}

    async def _merged_metrics(self):
        """/metrics over every ingress replica (this replica's counts pushed first), or this one's alone."""
        from ipa.runtime.ledger import Merged

        await self._push()
        if self._ledger is not None:
            try:
                return Merged(await self._ledger.metric_families.remote())
            except Exception as e:
                log.debug("ingress %s: ledger metrics failed: %s", self.id, e)
        return self.registry

    def observe(self, config: dict[str, dict[str, Any]] | None = None, energy: dict[str, Any] | None = None) -> None:
        """The runtime's report (through the ledger): the active config and the latest energy reading for /metrics."""
        if config is not None:
            self.m_stage.clear()
            for stage, c in config.items():
                for knob in ("batch", "replicas", "cores"):
                    self.m_stage.labels(stage, c["variant"], knob).set(c[knob])
        if energy is not None:
            for domain, j in energy["joules"].items():
                self.m_energy.labels(domain, energy["method"]).set(j)
            self.m_power.labels(energy["method"]).set(energy["watts"])
            if "co2_g" in energy:
                self.m_co2.labels(energy["method"]).set(energy["co2_g"])
                self.m_intensity.set(energy["g_per_kwh"])


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def build_app(spec: PipelineSpec, config: PipelineConfig, expected: dict[str, StageEstimate] | None, *,
              batch_wait_s: float, drop_limit_s: float, admission: AdmissionSettings, overhead_s: float,
              max_in_flight: int = 256, weights: str | None = None, device: str = "cpu",
              gpus_per_replica: float = 0.0, ingresses: int = 1):
    """The bound application for one pipeline config (deploying it again with another config reconfigures).

    On `cuda` each replica asks Ray for `gpus_per_replica` of a GPU, so several replicas share one. The ingress
    runs `ingresses` replicas, each holding at most `max_in_flight` requests.
    """
    from ray.serve.config import BackpressureConfig

    from ipa.profiles.builder import search_path
    from ipa.profiles.zoo import stage_kind

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
                      "ingresses": ingresses}
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
