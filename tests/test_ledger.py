"""The ledger merges what several ingress replicas saw into the pipeline's view (no cluster needed: its state)."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from ipa.runtime.ray.ledger import GONE_S, Tally
from ipa.runtime.ray.metrics import Merged


def registry(ok: int, in_flight: int) -> list:
    reg = CollectorRegistry()
    c = Counter("ipa_requests", "Requests by outcome", ["code"], registry=reg)
    c.labels("200").inc(ok)
    Gauge("ipa_in_flight_requests", "Requests in the pipeline", registry=reg).set(in_flight)
    Gauge("ipa_power_watts", "Power", ["method"], registry=reg).labels("estimate").set(7.5)
    return list(reg.collect())


def timing(batch_id: str, size: int = 1) -> dict:
    return {"id": batch_id, "stage": "detect", "variant": "v", "cores": 1, "size": size, "seconds": 0.1,
            "cpu_s": 0.1, "ended_at": time.time()}


def test_two_replicas_add_up_and_a_shared_batch_counts_once():
    t = Tally()
    now = time.time()
    t.push("a", {100: 3, 101: 1}, [timing("r1:1", 2)], 0.01, [1, 0], registry(5, 1), now)
    t.push("b", {101: 2}, [timing("r1:1", 2), timing("r1:2")], 0.02, [0, 2], registry(4, 2), now - 0.5)
    arrivals, through = t.arrivals_since(101)
    assert arrivals == {101: 3} and through == now - 0.5  # complete up to the replica that pushed last
    rows, cursor = t.timings_since(0)
    assert [r["id"] for r in rows] == ["r1:1", "r1:2"] and cursor == 2  # a batch with both replicas' requests once
    assert t.timings_since(cursor) == ([], 2)
    totals = t.totals()
    assert totals["ingress_replicas"] == 2 and totals["at_stage"] == [1, 2]
    assert abs(totals["decode_cpu_s"] - 0.03) < 1e-12
    text = generate_latest(Merged(t.metric_families())).decode()
    assert 'ipa_requests_total{code="200"} 9.0' in text
    assert "ipa_in_flight_requests 3.0" in text
    assert 'ipa_power_watts{method="estimate"} 7.5' in text  # the runtime's gauge, the same in each: once


def test_a_replica_that_stopped_keeps_its_counts_but_not_its_in_flight():
    t = Tally()
    t.push("a", {}, [], 0.0, [0], registry(5, 0), time.time())
    t.push("gone", {}, [], 0.0, [4], registry(7, 4), time.time() - GONE_S - 1)
    assert t.totals()["ingress_replicas"] == 1 and t.totals()["at_stage"] == [0]
    text = generate_latest(Merged(t.metric_families())).decode()
    assert 'ipa_requests_total{code="200"} 12.0' in text  # a counter never goes back
    assert "ipa_in_flight_requests 0.0" in text


def test_merging_twice_gives_the_same_figures_and_the_runtime_report_has_a_version():
    t = Tally()
    t.push("a", {}, [], 0.0, [0], registry(5, 0), time.time())
    first = generate_latest(Merged(t.metric_families()))
    assert generate_latest(Merged(t.metric_families())) == first  # merging does not touch what was pushed
    version, observed, _ = t.push("a", {}, [], 0.0, [0], None, time.time())
    t.observe(config={"detect": {"variant": "v"}})
    again, observed, _ = t.push("a", {}, [], 0.0, [0], None, time.time())
    assert again == version + 1 and observed["config"] == {"detect": {"variant": "v"}}
    assert 'ipa_requests_total{code="200"} 5.0' in generate_latest(Merged(t.metric_families())).decode()


def test_a_request_counts_in_the_second_a_trusted_proxy_stamped_and_otherwise_when_it_arrived():
    from ipa.runtime.ray.ingress import request_start

    now = 1_750_000_000.4
    stamps = ["t=1749999999.9", "1749999999900", "t=1749999999900000"]  # seconds, milliseconds, NGINX's microseconds
    for stamp in stamps:  # sent in the second before it reached the ingress
        assert request_start(stamp, now, trusted=True) == pytest.approx(1749999999.9)
        assert request_start(stamp, now) == now  # any client can send the header: not trusted unless told
    for other in (None, "", "soon", "t=12", f"t={now + 60}", f"t={now - 3600}"):  # absent, garbled, another clock
        assert request_start(other, now, trusted=True) == now
