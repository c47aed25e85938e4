"""A stage's replica on Ray Serve: one variant of the stage's model, run on batches of requests.

Knobs map onto Serve (DESIGN.md section 5): variant -> `user_config` + `reconfigure()` (the replica loads the other
model beside the serving one and swaps), batch -> `@serve.batch` resized with `set_max_batch_size`, cores ->
`num_cpus` and torch's thread count. A replica builds its variant through the builder protocol
(`ipa.models.builder`: the zoo's factory or the user's own) and answers each item in an envelope: the model's
`output` (any JSON value), the variant, the batch and its timing. Each item carries a start-by time; an item past it
is dropped before the model runs. Each batch's time and CPU go back with the answers, for calibration.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve

from ipa.runtime.ray import direct
from ipa.runtime.ray.ledger import PUSH_S
from ipa.runtime.ray.media import BadInput, EncodedImage, pixels

log = logging.getLogger(__name__)
MAX_BATCH = 64  # the decorator's ceiling; each config sets the real size with set_max_batch_size
EXPIRED = {"expired": True}  # what a replica answers for an item past its start-by time (no model ran)
MAX_CROPS = 1  # crops classified per request: one per request, as the profiles and the simulator count it


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
        self._direct: Any = None  # its socket for the ingresses on this node (`ipa.runtime.ray.direct`), once loaded
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
        from ipa.runtime.ray.ledger import ledger

        listener = direct.Listener(self.call)
        try:
            found = await asyncio.to_thread(ledger)
            if found is None:
                return
            path = await listener.start()
            await found.route.remote(self.replica, {"stage": self.stage, "path": path, "node": node_id()})
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
            # the process's CPU meanwhile was the other model's build too: the batch says only how long it took
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
                "node": node_id()}


def _ready_at(started: float, arrived: list[float], last_ended: float, full: bool) -> float:
    """When a batch could have started: its last item's arrival, or the replica's previous batch's end if later (the
    time from there to its answers, less the model's, is the replica's own overhead: the hand-off from the batch
    queue, decoding, the hops to and from the model's thread). A batch that is not full may have waited for the
    batch timeout: it counts from its start."""
    if not full:
        return started
    return min(started, max(last_ended, max(arrived)))


def _load(stage: dict[str, Any], variant: str, weights: str | None, device: str = "cpu", search: tuple | list = ()):
    from ipa.models.builder import build
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


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def grpc_handles() -> bool:
    """Whether this replica's Serve calls other replicas over gRPC (its fast path, set in the cluster's environment
    by `cluster.serve_env`): an argument goes in one message instead of through Ray's object store."""
    from ray.serve._private import constants

    return bool(getattr(constants, "RAY_SERVE_USE_GRPC_BY_DEFAULT", False))
