"""The pipeline's HTTP front on Ray Serve: checks, admission, the stages in order, JSON out.

Behind HAProxy the ingress takes HTTP as soon as it is up: until every stage has answered once it says so (`GET /`
503 with `"ready": false`; a POST waits a second, then 503 `starting` with Retry-After). The ingress checks what
the headers say (4xx on bad input, even under overload), admits a request only when it can be answered within the
SLA (`ipa.runtime.admission`; otherwise a 503 with Retry-After at once, before the body is even read), then reads it
(an image only as far as its header: the replica that needs its pixels decodes it, and the detector's replica cuts
the crops the next stage takes). Serve's own knobs bound the HTTP side: the ingress holds at most `max_in_flight`
requests (`max_ongoing_requests`, then Serve's own 503). The ingress calls the stage replicas on its node over their
own sockets (`ipa.runtime.ray.direct`: a Serve handle call costs several ms of CPU, the socket well under one), and
through Serve's handles where there is no such route. A model that raises answers 500 naming the variant, and the
pipeline keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from ipa.runtime.admission import UNKNOWN, Admission, AdmissionSettings, StageEstimate
from ipa.runtime.ray import direct
from ipa.runtime.ray.ledger import PUSH_S
from ipa.runtime.ray.media import (
    ACCEPTS,
    BadInput,
    EncodedImage,
    check_headers,
    decode_body,
)
from ipa.runtime.ray.metrics import IngressMetrics, Merged
from ipa.runtime.ray.replica import crops, grpc_handles, node_id, pixels

log = logging.getLogger(__name__)
STARTING_WAIT_S = 1.0  # a request that comes while the stages load waits this long for them, then gets a 503
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


def request_start(stamp: str | None, now: float, trusted: bool = False) -> float:
    """The second a request joined the load: its `X-Request-Start` (`t=` epoch seconds, or milli- or microseconds)
    where the header is `trusted`, else `now`. Counted at the ingress, arrivals move by the wait in HAProxy and the
    event loop into the next second; a stamp moves them back. Behind HAProxy the ingress cannot tell a front
    proxy's stamp from a client's, and any client could pile a minute's requests into one second: so the header
    counts only where the operator says it comes from a hop they trust (`ipa serve --trust-request-start`, or the
    experiment's own load generator)."""
    if not stamp or not trusted:
        return now
    try:
        t = float(stamp.strip().removeprefix("t="))
    except ValueError:
        return now
    for scale in (1.0, 1e3, 1e6):
        if now - START_SKEW_S[0] <= t / scale <= now + START_SKEW_S[1]:
            return t / scale
    return now


@dataclass
class At:
    """Where one request is in the pipeline: the index of its stage (the decode counts as the first)."""

    stage: int = 0


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
    (`ipa.runtime.ray.ledger`) every quarter second: the runtime, `/metrics` and `GET /` read the whole pipeline there.
    """

    def __init__(self, stages: list[tuple[str, str]], handles: list, sla_s: float, drop_limit_s: float):

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
        self.trust_start = False  # whether X-Request-Start comes from a trusted hop (`request_start`)
        self.arrivals: Counter[int] = Counter()  # epoch second -> requests that arrived (the last few seconds)
        self._news = News()  # what this replica saw since its last push to the ledger
        self._seen: dict[str, None] = {}  # batch ids already counted (a batch answers several requests)
        self._ledger: Any = None
        self._pusher: asyncio.Task | None = None
        self._warming: asyncio.Task | None = None
        self.ready = asyncio.Event()  # every stage has answered once
        self._observed = -1  # the version of the runtime's report the gauges show
        self.id = uuid.uuid4().hex[:8]
        self.routes = direct.Routes(node_id()) if direct.enabled() else None  # stage replicas' sockets, this node
        self.metrics = IngressMetrics(sla_s)

    async def reconfigure(self, cfg: dict[str, Any]) -> None:
        """The plan's expectations per stage; a stage whose config did not change keeps its measured times."""
        if self._pusher is None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_forever())
            self._warming = asyncio.get_running_loop().create_task(self._warm())
        self.ingresses = max(1, int(cfg.get("ingresses", 1)))
        self.trust_start = bool(cfg.get("trust_request_start", False))
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
        second = int(request_start(request.headers.get(REQUEST_START), t0, self.trust_start))
        if request.method != "POST":
            return self._refuse(JSONResponse({"error": f"POST {ACCEPTS[self.media][2]}"}, 405), t0)
        ctype = request.headers.get("content-type", "")
        try:
            check_headers(ctype, request.headers.get("content-length"), self.media)
        except BadInput as e:
            if e.status == 413:
                await _drain(request, DRAIN_LIMIT)
            return self._refuse(JSONResponse({"error": str(e)}, e.status), t0)
        if not self.ready.is_set() and not await self._ready_within(STARTING_WAIT_S):
            self._arrived(second)
            self.metrics.rejected.labels("starting").inc()
            return self._answer(JSONResponse({"error": "starting: the pipeline's stages are still loading their models; "
                                              "retry in 2 s", "reason": "starting"}, 503, headers={"Retry-After": "2"}),
                                t0)
        verdict = self.admission.decide(*self._whole(int(t0) - 1), t0)
        if not verdict.admit:
            self._arrived(second)
            self.metrics.rejected.labels("admission").inc()
            return self._answer(JSONResponse(
                {"error": f"overloaded: an answer would take about {verdict.estimate_s:.1f} s, "
                          f"{self._deadline_words()}; retry in {verdict.retry_after_s} s", "reason": "admission"},
                503, headers={"Retry-After": str(verdict.retry_after_s)}), t0)
        where = At()  # the stage this request is at, for the work-ahead counts
        self.at[0] += 1
        self.metrics.in_flight.set(sum(self.at))
        try:  # the body is read only now: Serve's proxy streams it on demand, a refused request never moves it
            try:
                payload = decode_body(await request.body(), ctype, self.media)
            except BadInput as e:
                return self._refuse(JSONResponse({"error": str(e)}, e.status), t0)
            self._arrived(second)
            chain = self.pipeline if self.media == "image" else self.chain
            result = await asyncio.wait_for(chain(payload, t0, where), self.drop_limit_s)
        except BadInput as e:  # a stage found the input broken further in (an image that does not decode)
            self._arrived(second, -1)
            return self._refuse(JSONResponse({"error": str(e)}, e.status), t0)
        except Expired:
            self.metrics.rejected.labels("expired").inc()
            return self._answer(JSONResponse({"error": f"dropped: could no longer be answered within the SLA "
                                              f"({self.sla_s:g} s)", "reason": "expired"}, 503), t0)
        except TimeoutError:
            self.metrics.rejected.labels("timeout").inc()
            return self._answer(JSONResponse({"error": f"dropped: not served within {self.drop_limit_s} s",
                                              "reason": "timeout"}, 503), t0)
        except StageFailed as e:
            return self._answer(JSONResponse({"error": str(e), "reason": "model error"}, 500), t0)
        finally:
            if where.stage < len(self.at):
                self.at[where.stage] -= 1
            self.metrics.in_flight.set(sum(self.at))
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
        from ipa.models.builder import jsonable

        now = time.time()
        totals = await self._totals()
        return jsonable({"stages": [s for s, _ in self.stages], "ready": self.ready.is_set(),
                         "in_flight": sum(totals["at_stage"]),
                         "at_stage": totals["at_stage"], "ingress_replicas": totals["ingress_replicas"],
                         "estimate_s": self.admission.estimate(*self._whole(int(now) - 1)),
                         "sla_s": self.sla_s, "decode_cpu_s": totals["decode_cpu_s"],
                         "batch_s": [st.batch_s for st in self.admission.stages],
                         "per_request_s": [st.per_request_s for st in self.admission.stages]})

    def _arrived(self, second: int, n: int = 1) -> None:
        """A request the pipeline could serve joins the load, in the second it started: what the predictor learns
        from and admission reads. Served, shed or expired, it was offered; a refused one (`_refuse`) was not, and
        one found broken only in a stage leaves it again (n = -1; the ledger adds what each replica pushes)."""
        self.arrivals[second] += n
        self._news.arrivals[second] += n

    def _refuse(self, response, t0: float):
        """A request no config could serve (wrong method, type, size or body): answered, counted apart by its
        status, and never load: a client sending such requests must not move the plan."""
        self.metrics.refused.labels(str(response.status_code)).inc()
        return self._answer(response, t0)

    def _answer(self, response, t0: float):
        self.metrics.requests.labels(str(response.status_code)).inc()
        if response.status_code == 200:
            self.metrics.latency.observe(time.time() - t0)
        return response

    async def pipeline(self, image: EncodedImage, t0: float, where: At) -> dict[str, Any]:
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

    async def chain(self, item: Any, t0: float, where: At) -> dict[str, Any]:
        """Speech or text: each stage gets what the one before gave on (its text, or its own input when it gives
        none); the answer holds every stage's output."""
        from ipa.models.builder import gives_on

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

    async def _stage(self, i: int, inputs: list[Any], t0: float, where: At
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

    def _move(self, where: At, to: int) -> None:
        self.at[where.stage] -= 1
        where.stage = to
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
        from ipa.runtime.ray.ledger import ledger

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
                list(self.metrics.registry.collect()), now)
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
        await self._push()
        if self._ledger is not None:
            try:
                return Merged(await self._ledger.metric_families.remote())
            except Exception as e:
                log.debug("ingress %s: ledger metrics failed: %s", self.id, e)
        return self.metrics.registry

    def observe(self, config: dict[str, dict[str, Any]] | None = None, energy: dict[str, Any] | None = None) -> None:
        """The runtime's report (through the ledger): the active config and the latest energy reading for /metrics."""
        self.metrics.observe(config, energy)