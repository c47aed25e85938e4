"""The real pipeline on a local Ray cluster: real torchvision models, real HTTP, live reconfiguration under load."""

from __future__ import annotations

import base64
import json
import math
import os
import time

import numpy as np
import pytest
import requests

from ipa.models.samples import photo_jpegs
from ipa.runtime.loadgen import LoadGenerator, arrival_times
from ipa.runtime.ray.cluster import RaySettings, connect, free_port, shutdown
from ipa.runtime.ray.runtime import RayRuntime, change_kinds
from ipa.spec import PipelineSpec, StageConfig

pytestmark = [pytest.mark.slow, pytest.mark.ray]

DET, DET2 = "ssdlite320_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn"
CLS, CLS2 = "resnet18", "mobilenet_v3_small"


def small_spec() -> PipelineSpec:
    return PipelineSpec.model_validate({
        "name": "small", "sla_s": 4.0,
        "stages": [
            {"name": "detect", "variants": [{"name": DET, "accuracy": 21.3}, {"name": DET2, "accuracy": 22.8}]},
            {"name": "classify", "variants": [{"name": CLS2, "accuracy": 67.668}, {"name": CLS, "accuracy": 69.758}]},
        ],
    })


def config(det=DET, det_batch=1, cls=CLS, cls_batch=1, cls_replicas=1) -> dict[str, StageConfig]:
    return {"detect": StageConfig(det, det_batch, 1, 1), "classify": StageConfig(cls, cls_batch, cls_replicas, 1)}


@pytest.fixture(scope="module")
def cluster():
    # 4 logical CPUs on a 2-core CI machine: enough to place 2 classifier replicas next to the detector.
    settings = RaySettings(port=free_port(), cpus=4, deploy_timeout_s=240)
    spec = small_spec()
    started = connect(settings, spec)
    yield spec, settings
    shutdown(started)


def post(url: str, body: bytes, ctype: str) -> requests.Response:
    return requests.post(url, data=body, headers={"content-type": ctype}, timeout=60)


def wait_for(cond, timeout_s: float = 60.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.5)
    return False


def test_reconfigures_under_load_without_losing_a_request(cluster):
    spec, settings = cluster
    rt = RayRuntime(spec, settings)
    rt.start(config())
    jpeg = photo_jpegs()[0]
    first = post(rt.url, jpeg, "image/jpeg").json()
    assert first["variants"] == {"detect": DET, "classify": CLS}
    assert first["detections"] and "label" in first["detections"][0]
    assert first["service_s"] > 0 and 0 <= first["queued_s"] < first["latency_s"] - first["service_s"]

    # 2.5 rps: on the slow instance of 2026-12-03 (models 1.9x their profiled time) 3 rps left so little room
    # that a replica loading beside the others pushed admission's estimate to the SLA and one request was refused
    gen = LoadGenerator(rt.url, arrival_times(np.full(60, 2.5), np.random.default_rng(0)), photo_jpegs(),
                        timeout_s=60)
    gen.start()
    steps = [config(cls=CLS2), config(cls=CLS2, det_batch=2), config(cls=CLS2, det_batch=2, cls_replicas=2)]
    for new in steps:
        time.sleep(4)
        rt.apply(new)
    time.sleep(4)
    gen.stop(wait_s=60)
    rt.stop()

    assert gen.sent >= 30
    assert len(gen.records) == gen.sent, "every request sent got an answer"
    # Nothing admitted is lost: every admitted request is answered 200. A replica loading beside the others on 2 cores
    # can slow the running batches enough that admission refuses one or two at the door (503 with Retry-After, at
    # once): a legitimate refusal, seen on CI's slowest runs, not a request lost during the reconfiguration.
    bad = [r for r in gen.records if not r.ok]
    refused = [r for r in bad if r.status == 503 and r.reason == "admission"]
    assert len(refused) <= 2 and len(bad) == len(refused), f"requests failed during reconfiguration: {bad[:3]}"
    last = max((r for r in gen.records if r.ok), key=lambda r: r.sent_s)
    assert last.variants == {"detect": DET, "classify": CLS2}
    assert [r.kinds for r in rt.reconfigurations] == [["variant"], ["batch"], ["replicas"]]
    assert all(r.ok for r in rt.reconfigurations)
    assert wait_for(lambda: rt_replicas() == {"detect": 1, "classify": 2, "Ingress": 1})
    assert rt.samples and all(s.reserved_cpus >= 2 for s in rt.samples[-2:])
    time.sleep(1.5)  # observed_rates covers whole seconds only: let the last one close
    assert rt.observed_rates().sum() >= gen.sent


def rt_replicas() -> dict[str, int]:
    from ipa.runtime.ray.cluster import running_replicas

    return running_replicas()


def test_bad_input_gets_4xx_and_the_pipeline_keeps_serving(cluster):
    spec, settings = cluster
    rt = RayRuntime(spec, settings)
    rt.start(config())
    try:
        assert rt.batch_timings() == []  # the ingress kept the earlier test's batches: not this run's
        jpeg = photo_jpegs(width=320)[0]
        refused = [metric(rt.url, f'ipa_refused_total{{code="{c}"}}') for c in (400, 415)]  # earlier tests' stay
        assert post(rt.url, b"not an image", "image/jpeg").status_code == 400
        r = post(rt.url, b"hello", "text/plain")
        assert r.status_code == 415 and "allowed" in r.json()["error"]
        assert post(rt.url, b"{not json", "application/json").status_code == 400
        assert post(rt.url, json.dumps({"image": "%%%"}).encode(), "application/json").status_code == 400
        assert post(rt.url, b"", "image/png").status_code == 400
        broken = post(rt.url, jpeg[: len(jpeg) // 2], "image/jpeg")  # a good header: found where it is decoded
        assert broken.status_code == 400 and "not a decodable" in broken.json()["error"], broken.text
        ok = post(rt.url, json.dumps({"image": base64.b64encode(jpeg).decode()}).encode(), "application/json")
        assert ok.status_code == 200 and ok.json()["variants"]["classify"] == CLS
        got = []  # the ingress pushes what it saw to the ledger every quarter second
        assert wait_for(lambda: got.extend(rt.batch_timings()) or len(got) >= 2, 10)
        assert sorted(t.stage for t in got) == ["classify", "detect"]  # this run's only request
        metrics = requests.get(rt.url + "metrics", timeout=30).text
        assert 'ipa_requests_total{code="400"}' in metrics and 'ipa_requests_total{code="415"}' in metrics
        assert metric(rt.url, 'ipa_refused_total{code="400"}') - refused[0] == 5  # not load: counted apart
        assert metric(rt.url, 'ipa_refused_total{code="415"}') - refused[1] == 1
        assert 'ipa_stage_config{knob="replicas",stage="classify",variant="resnet18"} 1.0' in metrics
        assert "ipa_request_latency_seconds_bucket" in metrics
        time.sleep(1.5)  # observed_rates covers whole seconds every replica has reported
        assert rt.observed_rates().sum() == 1  # bad input is refused apart: the one good request is the load
    finally:
        rt.stop()


def test_refused_requests_and_a_clients_stamp_move_neither_the_load_nor_the_plan(cluster):
    """A client that sends what no config can serve, or stamps X-Request-Start to pile its requests into one
    second, must not steer the plan: the load is the requests that could be served, when they reached the ingress."""
    from concurrent.futures import ThreadPoolExecutor

    from ipa.paths import REPO
    from ipa.optimize import Weights, make_problem, solve
    from ipa.profiles import load_profiles
    from ipa.spec import load_pipeline

    spec, settings = cluster
    rt = RayRuntime(spec, settings)
    rt.start(config())
    jpeg = photo_jpegs(width=320)[0]
    forged = {"content-type": "image/jpeg", "x-request-start": f"t={rt._wall0 + 0.5:.3f}"}  # all in one second
    first = math.ceil(time.time()) + 1
    sent: list[float] = []

    def good(at: float) -> int:
        time.sleep(max(0.0, at - time.time()))
        sent.append(time.time())
        return requests.post(rt.url, data=jpeg, headers=forged, timeout=60).status_code

    def hostile(at: float) -> list[int]:
        time.sleep(max(0.0, at - time.time()))
        codes = [requests.post(rt.url, data=b"x", headers={"content-type": "text/html"}, timeout=30).status_code
                 for _ in range(80)]  # refused on their headers
        codes += [requests.post(rt.url, data=jpeg[:len(jpeg) // 2], headers=forged, timeout=30).status_code
                  for _ in range(5)]  # refused where the image is decoded, in the detector's replica
        return codes

    try:
        with ThreadPoolExecutor(24) as pool:
            # two requests a second, away from the seconds' edges, for ten seconds; the burst in the middle
            answers = [pool.submit(good, first + k + off) for k in range(10) for off in (0.35, 0.65)]
            burst = pool.submit(hostile, first + 4.1)
            assert all(a.result() in (200, 503) for a in answers), [a.result() for a in answers]
            assert burst.result() == [415] * 80 + [400] * 5
        time.sleep(1.5)
        rates = rt.observed_rates()
        window = rates[first - rt._epoch0:][:10]
        expected = [sum(int(s) == first + k for s in sent) for k in range(10)]
        assert list(window) == expected and max(expected) == 2, (list(window), expected)  # nothing else counted
        assert rates.sum() == 20
        video = load_pipeline(REPO / "configs/pipelines/video.yaml")  # what ipa plans for the video pipeline
        problem = make_problem("ipa", video, load_profiles(REPO / "profiles/video-cpu-2core.csv", video), Weights())
        planned = solve(problem, float(max(window))).config
        assert planned == solve(problem, float(max(expected))).config
        # what the old count would have planned for (every request in the forged second, the refused ones too)
        assert solve(problem, 20.0 + 85).config != planned
    finally:
        rt.stop()


def test_two_ingress_replicas_share_the_requests_and_report_as_one(cluster):
    """Each ingress replica sees a share; what the runtime, GET / and /metrics read is the whole pipeline's."""
    spec, settings = cluster
    # a front proxy stamps X-Request-Start here, and the operator says so
    rt = RayRuntime(spec, settings.model_copy(update={"ingress_replicas": 2, "trust_request_start": True}))
    rt.start(config())
    try:
        assert wait_for(lambda: rt_replicas().get("Ingress") == 2)
        assert rt.ingresses == 2
        before = answered_200(rt.url)  # the cluster's earlier tests' counts stay (counters never go back)
        photo = photo_jpegs(width=320)
        time.sleep(max(0.0, rt._wall0 + 1.6 - time.time()))
        stamped = time.time() - 1.5  # three requests a front proxy stamped 1.5 s before they reached the ingress
        for _ in range(3):
            r = requests.post(rt.url, data=photo[0], timeout=60,
                              headers={"content-type": "image/jpeg", "x-request-start": f"t={stamped:.3f}"})
            assert r.status_code == 200, r.text
        gen = LoadGenerator(rt.url, np.arange(16) / 2.0, photo, timeout_s=60)
        whole = math.ceil(time.time()) + 1.0  # two requests in each of 8 whole seconds, as the client sends them
        gen.start(time.monotonic() + whole - time.time())
        gen.join(120)
        assert len(gen.records) == 16 and all(r.ok for r in gen.records), [r for r in gen.records if not r.ok][:3]
        state = {}
        assert wait_for(lambda: state.update(requests.get(rt.url, timeout=30).json())
                        or (state["ingress_replicas"] == 2 and state["in_flight"] == 0), 10), state
        assert state["decode_cpu_s"] > 0  # the detector's decoding, each request's share counted once
        time.sleep(1.5)  # observed_rates covers whole seconds every replica has reported
        rates = rt.observed_rates()
        # each in the second its client or proxy stamped (X-Request-Start), not when it reached an ingress replica
        assert rates.sum() == 19 and rates[int(stamped) - rt._epoch0] == 3, rates
        assert list(rates[int(whole) - rt._epoch0:][:8]) == [2] * 8, rates
        timings = rt.batch_timings()
        assert sum(t.size for t in timings if t.stage == "detect") == 19
        # each replica's own time on a batch outside the model: decoding and hops, milliseconds, not the model's
        assert all(t.overhead_s is not None and 0 <= t.overhead_s < t.seconds + 1.0 for t in timings)
        assert any(t.overhead_s > 0 for t in timings if t.stage == "detect")
        # how long each replica sat idle before a batch: it waited a second for the load generator to start
        idle = [t.idle_s for t in timings if t.stage == "detect" and t.idle_s is not None]
        assert idle and all(i >= 0 for i in idle) and max(idle) > 0.5
        assert answered_200(rt.url) - before == 19  # both replicas' counts, from whichever answered the scrape
        rt.apply(config(), load_rps=1.0)  # the same config for one replica's load: the ingress shrinks alone
        assert rt.reconfigurations[-1].kinds == [] and rt.ingresses == 2  # fixed by the setting
    finally:
        rt.stop()


def answered_200(url: str) -> float:
    return metric(url, 'ipa_requests_total{code="200"}')


def metric(url: str, sample: str) -> float:
    """A sample's value on /metrics (0 before it was first counted)."""
    metrics = requests.get(url + "metrics", timeout=30).text
    return sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(sample))


def test_the_ingress_is_sized_from_serving_cost_and_load():
    from ipa.profiles.serving import ServingCost

    cost = ServingCost(cpu_per_request_s=0.01)
    assert [cost.ingresses(r) for r in (0, 10, 70, 71, 300)] == [1, 1, 1, 2, 5]
    rt = RayRuntime(small_spec(), RaySettings(), serving=cost)
    assert rt.ingresses_for(300) == 5 and rt.resizes(300) and not rt.resizes(5)
    assert rt.ingresses_for(None) == 1  # no load: keep what runs
    fixed = RayRuntime(small_spec(), RaySettings(ingress_replicas=3), serving=cost)
    assert fixed.ingresses_for(300) == 3 and fixed.ingresses_for(0) == 3


def test_a_reconfiguration_that_cannot_be_placed_keeps_the_old_config(cluster):
    spec, settings = cluster
    rt = RayRuntime(spec, settings)
    rt.start(config())
    try:
        rt.apply(config(cls=CLS2, cls_replicas=8))  # 9 CPUs on a 4-CPU cluster
        assert not rt.reconfigurations[-1].ok and "CPUs" in rt.reconfigurations[-1].error
        assert rt.config == config()
        r = post(rt.url, photo_jpegs(width=320)[0], "image/jpeg")
        assert r.status_code == 200 and r.json()["variants"]["classify"] == CLS
    finally:
        rt.stop()


def test_a_killed_replica_is_restarted_and_reported(cluster):
    import ray

    spec, settings = cluster
    rt = RayRuntime(spec, settings)
    rt.start(config(cls_replicas=2))
    try:
        assert wait_for(lambda: rt_replicas().get("classify") == 2)
        actor = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                     if "classify" in a["name"] and "REPLICA" in a["name"])
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)
        # the pipeline keeps answering (the other replica) while Ray replaces the killed one
        assert wait_for(lambda: post(rt.url, photo_jpegs(width=320)[0], "image/jpeg").status_code == 200, 60)
        assert wait_for(lambda: any(e["event"] == "replica back" for e in rt.events), 120), rt.events
        assert any(e["event"] == "replica down" for e in rt.events)
    finally:
        rt.stop()


def test_overload_is_shed_with_503_not_queued(cluster):
    spec, _ = cluster
    settings = cluster[1].model_copy(update={"max_in_flight": 2})
    rt = RayRuntime(spec, settings)
    rt.start(config())
    try:
        gen = LoadGenerator(rt.url, np.zeros(20), photo_jpegs(), timeout_s=60)  # 20 requests at once
        gen.start()
        gen.join(90)
        codes = sorted(r.status for r in gen.records)
        assert len(codes) == 20 and set(codes) <= {200, 503}
        assert codes.count(503) >= 10 and codes.count(200) >= 2
    finally:
        rt.stop()


def test_change_kinds_names_each_knob():
    a, b = config(), config(cls=CLS2, det_batch=4, cls_replicas=3)
    assert change_kinds(a, b) == ["variant", "batch", "replicas"]
    assert change_kinds(a, a) == []


def test_a_failed_model_load_keeps_the_old_config_serving(cluster, tmp_path):
    """Checkpoints for the serving variants only: switching to a variant without one fails in the replica."""
    import torch

    from ipa.models.builder import build
    from ipa.models.zoo import stage_of

    for name in (DET, CLS):
        torch.save(build(stage_of(name), name).serve_batch.module.state_dict(), tmp_path / f"{name}.pth")
    spec, settings = cluster
    rt = RayRuntime(spec, settings.model_copy(update={"weights": str(tmp_path), "deploy_timeout_s": 120}))
    rt.start(config())
    try:
        rt.apply(config(cls=CLS2))
        failed = rt.reconfigurations[-1]
        assert not failed.ok and failed.error
        assert rt.config == config()
        assert any(e["event"] == "reconfiguration failed" for e in rt.events)
        assert wait_for(lambda: post(rt.url, photo_jpegs(width=320)[0], "image/jpeg").status_code == 200, 120)
        r = post(rt.url, photo_jpegs(width=320)[0], "image/jpeg")
        assert r.json()["variants"]["classify"] == CLS
    finally:
        rt.stop()


def test_gpu_replicas_are_refused_where_the_cluster_has_no_gpu(cluster):
    from ipa.runtime.ray.cluster import ReconfigurationError

    spec, settings = cluster
    rt = RayRuntime(spec, settings.model_copy(update={"device": "cuda"}))
    with pytest.raises(ReconfigurationError, match="GPUs"):
        rt.start(config())


def test_detect_then_segment_anything_serves_a_mask(cluster):
    """The segment pipeline's shape: the detector's box prompts SAM on the whole photo."""
    _, settings = cluster
    spec = PipelineSpec.model_validate({
        "name": "seg", "sla_s": 120.0,
        "stages": [{"name": "detect", "variants": [{"name": DET, "accuracy": 21.3}]},
                   {"name": "segment", "variants": [{"name": "sam_vit_b", "accuracy": 62.91}]}],
    })
    rt = RayRuntime(spec, settings)
    rt.start({"detect": StageConfig(DET, 1, 1, 1), "segment": StageConfig("sam_vit_b", 1, 1, 2)})
    try:
        # SAM's encoder runs a ViT-B over 1024x1024: tens of seconds on a 2-core machine
        r = requests.post(rt.url, data=photo_jpegs(width=320)[0], headers={"content-type": "image/jpeg"}, timeout=300)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["variants"] == {"detect": DET, "segment": "sam_vit_b"}
        d = body["detections"][0]
        x1, y1, x2, y2 = d["box"]
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2
        assert 0 <= d["mask_area"] <= 320 * 214 and "mask_score" in d
    finally:
        rt.stop()


def test_overload_sheds_at_admission_and_keeps_serving_within_the_sla(cluster):
    """About three times what the config holds, for 20 s: refused at once, never a collapse."""
    spec, settings = cluster
    tight = spec.model_copy(update={"sla_s": 2.0})
    rt = RayRuntime(tight, settings)
    rt.start(config(det=DET2))  # one 1-core replica of a 0.1-0.2 s detector: a few rps at most
    try:
        post(rt.url, photo_jpegs(width=320)[0], "image/jpeg")  # the first batch teaches admission its time
        seconds, rate = 20, 15.0
        gen = LoadGenerator(rt.url, arrival_times(np.full(seconds, rate), np.random.default_rng(1)),
                            photo_jpegs(width=320), timeout_s=30)
        t0 = time.monotonic()
        gen.start(t0)
        gen.join(seconds + 60)
        after = post(rt.url, photo_jpegs(width=320)[0], "image/jpeg")
        elapsed = time.monotonic() - t0
    finally:
        rt.stop()
    ok = [r for r in gen.records if r.ok]
    refused = [r for r in gen.records if r.status == 503 and r.reason == "admission"]
    assert len(gen.records) == gen.sent >= 250
    assert refused and max(r.latency_s for r in refused) < 1.0  # refused at once, not after queueing
    late = [r.latency_s for r in ok if r.latency_s > tight.sla_s + rt.drop_limit_s]
    assert not late, f"answered past the SLA by more than the drop limit: {late[:5]}"
    last = [r for r in ok if r.sent_s >= seconds - 5 and r.latency_s <= tight.sla_s]
    assert last, "goodput fell to zero in the last window"
    assert after.status_code == 200 and after.json()["latency_s"] <= tight.sla_s, after.text
    assert elapsed < seconds + 30


def test_a_refusal_says_when_to_retry(cluster):
    spec, settings = cluster
    from ipa.runtime.admission import StageEstimate

    tight = spec.model_copy(update={"sla_s": 0.05})  # no request can be answered that fast
    rt = RayRuntime(tight, settings)
    plan = {"detect": StageEstimate(0.06, 0.06), "classify": StageEstimate(0.03, 0.03)}  # what the plan expects
    rt.start(config(), plan)
    try:
        r = post(rt.url, photo_jpegs(width=320)[0], "image/jpeg")
        assert r.status_code == 503 and r.json()["reason"] == "admission"
        assert int(r.headers["Retry-After"]) >= 1 and "SLA" in r.json()["error"]
        assert post(rt.url, b"hello", "text/plain").status_code == 415  # bad input: a 4xx even when overloaded
        assert post(rt.url, b"", "image/jpeg").status_code == 400
    finally:
        rt.stop()


def test_unknown_paths_get_404_and_an_oversized_body_gets_its_413_even_through_urllib(cluster):
    """Issue 21, cases 9 and 14: any path used to run the pipeline; a 60 MB body reset urllib's connection."""
    import urllib.error
    import urllib.request

    spec, settings = cluster
    rt = RayRuntime(spec, settings)
    rt.start(config())
    try:
        jpeg = photo_jpegs(width=320)[0]
        nope = post(rt.url + "nope", jpeg, "image/jpeg")
        assert nope.status_code == 404 and "POST" in nope.json()["error"]
        assert requests.get(rt.url + "nope", timeout=30).status_code == 404
        assert requests.get(rt.url, timeout=30).status_code == 200
        assert requests.get(rt.url + "metrics", timeout=30).status_code == 200
        assert post(rt.url, jpeg, "image/jpeg").status_code == 200
        bad = post(rt.url, json.dumps({"image": "not base64!"}).encode(), "application/json")
        assert bad.status_code == 400 and "not valid base64" in bad.json()["error"]
        big = urllib.request.Request(rt.url, data=b"\0" * (60 * 1024 * 1024), headers={"content-type": "image/jpeg"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(big, timeout=60)
        assert e.value.code == 413 and "exceeds the limit" in e.value.read().decode()
        assert post(rt.url, jpeg, "image/jpeg").status_code == 200
    finally:
        rt.stop()


def test_requests_go_through_haproxy_to_the_ingress_and_straight_to_the_replicas(cluster):
    """The local cluster runs Serve's fast path (cluster.SERVE_ENV): HAProxy in front, the ingress serving HTTP
    itself, gRPC handles between replicas, and the ingress calling the stage replicas on its node over their own
    sockets (`runtime.direct`). Answers are the same as on Serve's defaults."""
    import ray

    from ipa.runtime.ray.cluster import APP
    from ipa.runtime.ray.overhead import ProcessCpu

    spec, settings = cluster
    rt = RayRuntime(spec, settings)
    rt.start(config())
    try:
        r = post(rt.url, photo_jpegs()[0], "image/jpeg")
        assert r.status_code == 200 and r.json()["variants"] == {"detect": DET, "classify": CLS}
        procs = ProcessCpu(APP, spec.stage_names).by_process()
        kinds = {kind for kind, _ in procs.values()}
        assert "haproxy" in kinds, sorted(kinds)  # the HTTP front is HAProxy, not Serve's Python proxy

        @ray.remote(num_cpus=0)
        def grpc_default() -> bool:
            from ipa.runtime.ray.replica import grpc_handles

            return grpc_handles()

        assert ray.get(grpc_default.remote())  # the cluster's processes call replicas over gRPC
        # once the ingress has learnt the replicas' sockets (a push, a quarter second), the stages are called there
        time.sleep(1.0)
        for _ in range(3):
            assert post(rt.url, photo_jpegs()[0], "image/jpeg").json()["variants"] == {"detect": DET, "classify": CLS}
        from ray import serve

        for stage in spec.stage_names:
            state = serve.get_deployment_handle(stage, "ipa").options(method_name="state").remote().result()
            assert state["direct_calls"] >= 3, (stage, state)
    finally:
        rt.stop()


def test_the_local_cluster_gets_serve_fast_path_unless_told_otherwise(monkeypatch):
    from ipa.runtime.ray.cluster import SERVE_ENV, serve_env

    monkeypatch.delenv("IPA_SERVE_FAST_PATH", raising=False)
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    assert serve_env() == SERVE_ENV and SERVE_ENV["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # a value the user set wins
    assert serve_env()["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    monkeypatch.setenv("IPA_SERVE_FAST_PATH", "0")  # Serve's defaults, for side-by-side measurements
    assert serve_env() == {}


def test_process_cpu_splits_the_tree_by_process_title():
    import time

    from ipa.runtime.ray.overhead import ProcessCpu

    t = time.process_time()
    while time.process_time() - t < 0.05:  # burn a few ticks of CPU in this process
        pass
    procs = ProcessCpu("ipa", ["detect"]).by_process()
    assert os.getpid() in procs and procs[os.getpid()][1] > 0
