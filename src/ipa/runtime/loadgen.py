"""Open-loop load: requests leave at the workload's arrival times whether or not earlier ones came back.

Closed-loop clients slow down when the server does and hide its queueing; open loop is how the
load monitor, the simulator and a real user population see the rate. Every request's send time,
latency, HTTP status and serving variants are recorded.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def arrival_counts(rps: np.ndarray) -> np.ndarray:
    """Requests in each second: the running total of the rates, floored. Integer rates arrive exactly;
    a fractional rate keeps its mean (0.3 rps is a request every 3-4 s, where rounding would send none),
    which is what a workload scaled down to a small machine, or to SAM on a CPU, needs."""
    total = np.floor(np.cumsum(np.maximum(0.0, np.asarray(rps, dtype=float))) + 1e-9)
    return np.diff(total, prepend=0.0).astype(np.int64)


def arrival_times(rps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """arrival_counts(rps)[s] arrivals spread uniformly at random inside each second s (the simulator's too)."""
    counts = arrival_counts(rps)
    base = np.repeat(np.arange(len(counts), dtype=float), counts)
    return np.sort(base + rng.random(len(base))) if len(base) else base


@dataclass
class RequestRecord:
    sent_s: float  # since the load started
    latency_s: float
    status: int  # HTTP status; 0 when no answer came (connection error, client timeout)
    variants: dict[str, str] | None = None
    error: str = ""
    reason: str = ""  # why a 503 shed it: admission (refused at arrival), expired (in a queue), timeout
    service_s: float | None = None  # of the latency, the time its batches took in the models
    queued_s: float | None = None  # and the time it waited for them in the replicas' batch queues

    @property
    def overhead_s(self) -> float | None:
        """What serving itself took of an answer: neither in a model nor queued for one (HTTP, decode, the hops
        between the ingress and the replicas)."""
        if self.service_s is None or self.queued_s is None:
            return None
        return self.latency_s - self.service_s - self.queued_s

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class LoadGenerator:
    """Replays arrival times against `url` from a background thread; `records` fills as answers come.
    `bodies` are sent in turn, all as `content_type` (photos, a WAV clip, texts)."""

    url: str
    arrivals_s: np.ndarray
    bodies: list[bytes]
    timeout_s: float
    content_type: str = "image/jpeg"
    records: list[RequestRecord] = field(default_factory=list)
    sent: int = 0
    thread_id: int | None = None  # the sending thread (its CPU is the client's, not serving's)
    cpu_s: float = 0.0  # CPU seconds the sending thread used, once it is done
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _start: float = 0.0

    def start(self, at: float | None = None) -> None:
        """Start sending; arrival 0 s is `at` (a time.monotonic() value, default now)."""
        self._start = at if at is not None else time.monotonic()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="ipa-loadgen", daemon=True)
        self._thread.start()

    def stop(self, wait_s: float = 0.0) -> None:
        """Stop sending new requests; give those in flight up to `wait_s` to come back."""
        self._stop.set()
        if self._thread:
            self._thread.join(wait_s + 1.0)

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread:
            self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def _run(self) -> None:
        self.thread_id = threading.get_native_id()
        try:
            await self._replay()
        finally:
            self.cpu_s = time.thread_time()

    async def _replay(self) -> None:
        import aiohttp

        conn = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            tasks = set()
            for i, t in enumerate(self.arrivals_s):
                while (delay := self._start + t - time.monotonic()) > 0 and not self._stop.is_set():
                    await asyncio.sleep(min(delay, 0.2))
                if self._stop.is_set():
                    break
                task = asyncio.create_task(self._send(session, self.bodies[i % len(self.bodies)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += 1
            if tasks:
                await asyncio.wait(tasks, timeout=self.timeout_s + 1)

    async def _send(self, session, body: bytes) -> None:
        import aiohttp

        t0 = time.monotonic()
        sent = t0 - self._start
        try:
            headers = {"content-type": self.content_type, "x-request-start": f"t={time.time():.6f}"}
            async with session.post(self.url, data=body, headers=headers) as r:
                text = await r.text()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            self.records.append(RequestRecord(sent, time.monotonic() - t0, 0, None, f"{type(e).__name__}: {e}"))
            return
        latency = time.monotonic() - t0
        payload = _answer(text, status)
        self.records.append(RequestRecord(sent, latency, status, payload.get("variants"), payload.get("error", ""),
                                          payload.get("reason", ""), payload.get("service_s"), payload.get("queued_s")))


def _answer(text: str, status: int) -> dict[str, Any]:
    """The pipeline answers JSON; Serve itself answers plain text when its own queues are full (backpressure)."""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        return payload
    return {"error": text[:200], "reason": "backpressure" if status == 503 else ""}
