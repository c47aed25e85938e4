"""Direct calls from an ingress replica to the stage replicas on its node: a Unix socket instead of a Serve handle.

A Serve handle call costs milliseconds of CPU in the caller and the callee, several times the HTTP side of the
ingress; length-prefixed pickles over a Unix socket cost a fraction of a millisecond (`docs/benchmarks.md`). Serve still
deploys, scales, reconfigures and restarts the replicas; each stage replica also listens on a socket of its own and
registers it with the cluster's ledger (`ipa.runtime.ray.ledger`), and each ingress learns the registry with every push
(a quarter second) and calls the replica with the fewest of its calls in flight. What is not reachable this way (no
ledger, another node, a replica that went away mid-call) goes through the Serve handle as before: the answer is
the same, only its cost differs. IPA_DIRECT_CALLS=0 in the cluster's environment turns the path off.

Calls are multiplexed on one connection per (ingress, replica): a frame is a header, a pickle of (call id, payload)
and the payload's arrays out of band (`_write`), each part read straight into the buffer it stays in (`_Frames`): a
photo's crop is copied once on its way, by the kernel. The socket lives in a folder only this user can enter; both ends
are processes of the cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pickle
import struct
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)
HEADER = struct.Struct("!II")  # the pickle's size, how many out-of-band buffers follow it
SOCKET_BUFFER = 4 << 20  # bytes: a photo's crop (820 kB) goes out in one send
DRAIN_S = 10.0  # a replica that stops finishes the direct calls it holds for at most this long


def enabled() -> bool:
    return os.environ.get("IPA_DIRECT_CALLS", "0") == "1"


class Lost(ConnectionError):
    """A direct call that got no answer (the replica went away): the caller sends it through Serve instead."""


def _write(transport: asyncio.WriteTransport, obj: Any) -> None:
    """A frame: a header (the pickle's size, the number of arrays' buffers and their sizes), the pickle, the buffers.
    Arrays (a photo's crop, 820 kB) go out of band, from their own memory: neither pickled nor joined into one copy."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    transport.write(HEADER.pack(len(data), len(raws)) + struct.pack(f"!{len(raws)}Q", *(r.nbytes for r in raws)))
    transport.write(data)
    for r in raws:
        transport.write(r)


class _Frames(asyncio.BufferedProtocol):
    """One end of a connection: the kernel writes each part of a frame straight into the buffer it ends up in (a
    stream reader copies a crop three times on its way: into its buffer, out of it, into a writable array). Each
    whole frame goes to `on_frame`; `on_lost` hears why the connection ended."""

    def __init__(self, on_frame: Callable[[Any], None], on_lost: Callable[[BaseException], None]):
        self.on_frame, self.on_lost = on_frame, on_lost
        self.transport: asyncio.Transport | None = None
        self._start()

    def _start(self) -> None:
        self._todo: list[tuple[str, int]] = [("header", HEADER.size)]  # the parts still to come, in order
        self._data = bytearray(0)
        self._buffers: list[bytearray] = []
        self._take()

    def _take(self) -> None:
        self._kind, size = self._todo.pop(0)
        self._part, self._filled = bytearray(size), 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        _roomy(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._part)[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        while self._filled == len(self._part):  # the part is whole (an empty array's buffer is at once)
            self._whole()

    def _whole(self) -> None:
        kind, part = self._kind, self._part
        if kind == "header":
            size, n = HEADER.unpack(part)
            self._todo = ([("sizes", 8 * n)] if n else []) + [("data", size)]
        elif kind == "sizes":
            self._todo += [("buffer", m) for m in struct.unpack(f"!{len(part) // 8}Q", part)]
        elif kind == "data":
            self._data = part
        else:
            self._buffers.append(part)
        if self._todo:
            self._take()
            return
        obj = pickle.loads(self._data, buffers=self._buffers)  # arrays come back writable, in these buffers
        self._start()
        self.on_frame(obj)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.on_lost(exc or ConnectionResetError("the connection was closed"))


def _roomy(transport: asyncio.BaseTransport) -> None:
    """Socket buffers a crop fits in, so a frame goes out in one send instead of waiting for the reader (the kernel
    caps them at net.core.[rw]mem_max)."""
    import socket

    sock = transport.get_extra_info("socket")
    if sock is not None:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:
                pass


def _socket_dir() -> str:
    path = os.path.join(tempfile.gettempdir(), f"ipa-direct-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


class Listener:
    """A stage replica's socket: each call runs `handler(*args)` as its own task (so the replica's batching sees
    it like a handle call) and its answer goes back on the connection it came on."""

    def __init__(self, handler: Callable[..., Awaitable[Any]]):
        self.handler = handler
        self.path = os.path.join(_socket_dir(), f"{uuid.uuid4().hex[:12]}.sock")
        self.in_flight = 0
        self.calls = 0  # taken so far (`state()` shows it)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(self._connection, self.path)
        return self.path

    def _connection(self) -> _Frames:
        """A new ingress: each frame is a call, run as its own task; when the ingress goes away the calls it made
        still run (their answers go nowhere)."""
        tasks: set[asyncio.Task] = set()

        def on_frame(frame: Any) -> None:
            call_id, args = frame
            task = asyncio.get_running_loop().create_task(self._answer(end, call_id, args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        end = _Frames(on_frame, lambda e: None)
        return end

    async def _answer(self, end: _Frames, call_id: int, args: tuple) -> None:
        self.in_flight += 1
        self.calls += 1
        try:
            out = ("ok", await self.handler(*args))
        except Exception as e:  # the handler's own failures; the caller retries through Serve
            log.warning("direct call failed in the replica: %s", e)
            out = ("error", repr(e))
        finally:
            self.in_flight -= 1
        if end.transport is not None and not end.transport.is_closing():
            _write(end.transport, (call_id, out))

    async def stop(self) -> None:
        """Stop taking connections, finish the calls held (the ingresses learn within a push that it is gone)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Connection:
    """One ingress's connection to one replica's socket, with its calls in flight."""

    def __init__(self, path: str):
        self.path = path
        self.pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count()
        self._end: _Frames | None = None
        self._opening: asyncio.Task | None = None
        self.broken = False

    async def call(self, *args: Any) -> Any:
        if self._end is None:
            if self._opening is None:
                self._opening = asyncio.create_task(self._open())
            await self._opening
        if self.broken or self._end.transport is None or self._end.transport.is_closing():
            self.broken = True  # every call in flight has failed or will; a new one would wait for ever
            raise Lost(f"the replica at {self.path} went away")
        call_id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[call_id] = fut
        try:
            _write(self._end.transport, (call_id, args))
        except (ConnectionError, RuntimeError) as e:
            self._fail(e)
        status, value = await fut
        if status != "ok":
            raise Lost(f"the replica answered an error: {value}")
        return value

    async def _open(self) -> None:
        try:
            _, self._end = await asyncio.get_running_loop().create_unix_connection(
                lambda: _Frames(self._answered, self._fail), self.path)
        except OSError as e:
            self.broken = True
            raise Lost(f"cannot reach {self.path}: {e}") from None

    def _answered(self, frame: Any) -> None:
        call_id, out = frame
        fut = self.pending.pop(call_id, None)
        if fut is not None and not fut.done():
            fut.set_result(out)

    def _fail(self, e: BaseException) -> None:
        self.broken = True
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(Lost(f"the replica at {self.path} went away: {e}"))
        self.pending.clear()


class Routes:
    """An ingress's direct routes: per stage, the sockets of its replicas on this node (from the ledger's registry).
    A call goes to the one with the fewest of this ingress's calls in flight; a route that broke is not used again."""

    def __init__(self, node: str):
        self.node = node
        self.by_stage: dict[str, list[Connection]] = {}
        self._dead: set[str] = set()

    def update(self, registry: dict[str, dict[str, str]]) -> None:
        """The ledger's registry (replica id -> stage, node, path): keep the live connections, open new ones lazily."""
        have = {c.path: c for cs in self.by_stage.values() for c in cs}
        by_stage: dict[str, list[Connection]] = {}
        for entry in registry.values():
            if entry["node"] != self.node or entry["path"] in self._dead:
                continue
            by_stage.setdefault(entry["stage"], []).append(have.get(entry["path"]) or Connection(entry["path"]))
        self.by_stage = by_stage

    def pick(self, stage: str) -> Connection | None:
        live = [c for c in self.by_stage.get(stage, ()) if not c.broken]
        for c in self.by_stage.get(stage, ()):
            if c.broken:
                self._dead.add(c.path)
        return min(live, key=lambda c: len(c.pending)) if live else None
