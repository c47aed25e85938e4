"""Direct calls between an ingress and the stage replicas on its node: real Unix sockets, real asyncio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ipa.runtime.ray import direct


def run(coro):
    return asyncio.run(coro)


async def _listening(handler):
    listener = direct.Listener(handler)
    path = await listener.start()
    return listener, path


def test_calls_are_answered_in_any_order_on_one_connection():
    async def handler(item, start_by):
        await asyncio.sleep(item["wait"])
        return {"echo": item["n"], "start_by": start_by, "crop": np.full((2, 3), item["n"], np.uint8)}

    async def main():
        listener, path = await _listening(handler)
        conn = direct.Connection(path)
        outs = await asyncio.gather(*(conn.call({"n": n, "wait": 0.05 * (3 - n)}, float(n)) for n in range(4)))
        await listener.stop()
        return outs, listener.calls

    outs, calls = run(main())
    assert [o["echo"] for o in outs] == [0, 1, 2, 3] and [o["start_by"] for o in outs] == [0.0, 1.0, 2.0, 3.0]
    assert outs[2]["crop"].dtype == np.uint8 and (outs[2]["crop"] == 2).all()  # arrays travel as they are
    assert calls == 4


def test_a_failing_handler_or_a_vanished_replica_is_lost_not_hung():
    async def failing(item, start_by):
        raise RuntimeError("boom")

    async def slow(item, start_by):
        await asyncio.sleep(30)

    async def main():
        listener, path = await _listening(failing)
        with pytest.raises(direct.Lost, match="boom"):
            await direct.Connection(path).call(1, 0.0)
        await listener.stop()
        with pytest.raises(direct.Lost, match="cannot reach"):  # the socket is gone
            await direct.Connection(path).call(1, 0.0)
        # a replica that dies with a call in flight: the caller hears of it at once
        server = await asyncio.start_unix_server(lambda r, w: w.close(), path + "x")
        conn = direct.Connection(path + "x")
        with pytest.raises(direct.Lost, match="went away"):
            await asyncio.wait_for(conn.call(1, 0.0), 5)
        server.close()
        assert conn.broken

    run(main())


def test_a_stopping_replica_answers_the_calls_it_holds():
    async def handler(item, start_by):
        await asyncio.sleep(0.2)
        return item

    async def main():
        listener, path = await _listening(handler)
        conn = direct.Connection(path)
        calls = [asyncio.create_task(conn.call(n, 0.0)) for n in range(3)]
        await asyncio.sleep(0.05)
        await listener.stop()
        return await asyncio.gather(*calls)

    assert run(main()) == [0, 1, 2]


def test_routes_take_this_nodes_replicas_and_the_least_busy_one():
    routes = direct.Routes("node-a")
    routes.update({"r1": {"stage": "detect", "node": "node-a", "path": "/x/1.sock"},
                   "r2": {"stage": "detect", "node": "node-a", "path": "/x/2.sock"},
                   "r3": {"stage": "detect", "node": "node-b", "path": "/x/3.sock"}})
    assert sorted(c.path for c in routes.by_stage["detect"]) == ["/x/1.sock", "/x/2.sock"]
    first = routes.pick("detect")
    first.pending[0] = None  # one call in flight there
    assert routes.pick("detect").path != first.path
    kept = routes.by_stage["detect"]
    routes.update({"r1": {"stage": "detect", "node": "node-a", "path": "/x/1.sock"},
                   "r2": {"stage": "detect", "node": "node-a", "path": "/x/2.sock"}})
    assert routes.by_stage["detect"] == kept  # connections live across updates
    for c in kept:
        c.broken = True
    assert routes.pick("detect") is None and routes.pick("classify") is None  # -> through Serve's handle
    routes.update({"r1": {"stage": "detect", "node": "node-a", "path": "/x/1.sock"}})
    assert routes.by_stage == {}  # a broken route is not used again


def test_direct_calls_are_on_only_where_the_cluster_says(monkeypatch):
    monkeypatch.delenv("IPA_DIRECT_CALLS", raising=False)
    assert not direct.enabled()  # a replica outside our cluster's environment: Serve's path
    monkeypatch.setenv("IPA_DIRECT_CALLS", "1")
    assert direct.enabled()


def test_a_photos_crops_travel_out_of_band_and_come_back_writable_and_equal():
    photo = np.random.default_rng(0).integers(0, 255, (427, 640, 3), dtype=np.uint8)
    crop = photo[10:300, 20:500]  # a slice: not contiguous, pickled in band
    whole = np.asfortranarray(photo[:, :, 0])  # Fortran order: out of band too

    async def handler(item, start_by):
        return {"crops": [([0, 0, 640, 427], item[0]), ([20, 10, 500, 300], item[1])], "f": item[2]}

    async def main():
        listener, path = await _listening(handler)
        conn = direct.Connection(path)
        outs = await asyncio.gather(*(conn.call((photo, crop, whole), 0.0) for _ in range(3)))
        await listener.stop()
        return outs

    for out in run(main()):
        (_, a), (_, b) = out["crops"]
        assert np.array_equal(a, photo) and np.array_equal(b, crop) and np.array_equal(out["f"], whole)
        assert a.flags.writeable and b.flags.writeable and out["f"].flags.f_contiguous
        a[0, 0] = 1  # a model may write into its input
