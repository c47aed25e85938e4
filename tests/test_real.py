"""The real runtime's pieces that need no cluster: input decoding, crops, the per-second series, measured delays."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest

from ipa.experiment.ray_cell import collect, measured_delays, request_pas
from ipa.models.samples import photo_jpegs
from ipa.runtime.loadgen import RequestRecord, arrival_times
from ipa.runtime.ray.media import BadInput, decode_image
from ipa.runtime.ray.replica import crops
from ipa.runtime.ray.runtime import Reconfiguration, Sample
from ipa.runtime.sim import SimSettings, Simulator
from ipa.spec import StageConfig


def test_decode_accepts_jpeg_png_and_base64_json():
    from PIL import Image

    jpeg = photo_jpegs(width=64)[0]
    a = decode_image(jpeg, "image/jpeg")
    assert a.shape[2] == 3 and a.shape[1] == 64 and a.dtype == np.uint8
    buf = io.BytesIO()
    Image.fromarray(a).convert("RGBA").save(buf, "PNG")  # alpha is dropped
    assert decode_image(buf.getvalue(), "image/png").shape == a.shape
    body = json.dumps({"image": base64.b64encode(jpeg).decode()}).encode()
    assert decode_image(body, "application/json; charset=utf-8").shape == a.shape


@pytest.mark.parametrize("save", [{}, {"progressive": True}, {"subsampling": 0}, {"quality": 40}], ids=str)
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_every_jpeg_decodes_to_the_pixels_pillow_gives(mode, save):
    from PIL import Image

    from ipa.runtime.ray.media import decode

    photo = Image.open(io.BytesIO(photo_jpegs()[0])).convert(mode)
    buf = io.BytesIO()
    photo.save(buf, "JPEG", **save)
    got = decode(buf.getvalue())
    want = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert got.shape == want.shape == (427, 640, 3) and got.flags.c_contiguous
    assert np.array_equal(got, want)


@pytest.mark.parametrize("body,ctype,status,words", [
    (b"", "image/jpeg", 400, "empty"),
    (b"\xff\xd8 truncated", "image/jpeg", 400, "decodable"),
    (b"hello", "text/plain", 415, "allowed"),
    (b"{\"img\": 1}", "application/json", 400, "base64"),
    (b"{\"image\": \"@@@\"}", "application/json", 400, "base64"),
])
def test_bad_input_names_the_problem(body, ctype, status, words):
    with pytest.raises(BadInput) as e:
        decode_image(body, ctype)
    assert e.value.status == status and words in str(e.value)


def test_gif_is_refused_by_format_not_by_crash():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "GIF")
    with pytest.raises(BadInput) as e:
        decode_image(buf.getvalue(), "application/octet-stream")
    assert e.value.status == 415


def test_crops_clip_boxes_and_fall_back_to_the_whole_image():
    img = np.zeros((100, 200, 3), np.uint8)
    got = crops(img, {"boxes": [[-5, 10, 50, 300], [0, 0, 1, 1]]}, limit=2)
    assert [b for b, _ in got] == [[0, 10, 50, 100]]  # clipped; the 1-pixel box is skipped
    assert got[0][1].shape == (90, 50, 3)
    whole = crops(img, {"boxes": []})
    assert whole[0][0] == [0, 0, 200, 100] and whole[0][1].shape == img.shape


def spec_and_config(tiny):
    spec, _ = tiny
    return spec, {"detect": "small", "classify": "r50"}


def test_collect_builds_the_simulators_series(tiny):
    spec, variants = spec_and_config(tiny)
    records = [
        RequestRecord(0.2, 0.3, 200, variants),  # ok, in time
        RequestRecord(0.5, 1.7, 200, variants),  # late (SLA 1 s): a violation, completes in second 2
        RequestRecord(1.1, 0.1, 503, None, "overloaded"),  # shed: a drop
        RequestRecord(2.5, 60.0, 0, None, "TimeoutError"),  # no answer: a drop, clipped to the last second
    ]
    samples = [Sample(1.0, {"package": 5.0}, "estimate", 2.0, {}), Sample(2.02, {"package": 6.0}, "estimate", 3.0, {})]
    r = collect(spec, 3, records, sent=5, samples=samples, reconfigurations=[
        Reconfiguration(1.0, 2.0, ["variant"], True), Reconfiguration(5.0, 1.0, ["cores"], False, "no CPUs")])
    s = r.series
    assert list(s["arrivals"]) == [2, 1, 1]
    assert list(s["completions"]) == [1, 0, 1]
    assert list(s["drops"]) == [0, 1, 1]
    assert list(s["violations"]) == [0, 1, 2]
    assert r.arrivals == 5 and r.completed == 2 and r.dropped == 2 and r.in_flight == 1
    assert r.reconfigurations == 1
    assert s["energy_j"][0] == 5.0 and s["energy_j"][1] == 6.0 and np.isnan(s["energy_j"][2])
    assert list(s["core_seconds"]) == [2.0, 3.0, 0.0]
    assert s["pas"][0] == pytest.approx(request_pas(spec, variants)) == pytest.approx(0.20 * 0.76)


def test_measured_delays_prefer_changes_of_one_kind():
    rs = [Reconfiguration(0, 1.0, ["variant"], True), Reconfiguration(0, 3.0, ["variant"], True),
          Reconfiguration(0, 9.0, ["variant", "cores"], True), Reconfiguration(0, 50.0, ["replicas"], False)]
    assert measured_delays(rs) == {"variant": 2.0, "cores": 9.0}


def test_simulator_uses_measured_delays(tiny):
    spec, table = tiny
    start = {"detect": StageConfig("small", 1, 1, 1), "classify": StageConfig("r18", 1, 1, 1)}
    bigger_batch = start | {"classify": StageConfig("r18", 4, 1, 1)}

    def switch_time(settings):
        sim = Simulator(spec, table, 3.0, np.full(20, 2.0), settings)
        sim.start(start)
        sim.run_until(5)
        sim.apply(bigger_batch)
        st = sim.stages[1]
        return st.pending[0] - 5 if st.pending else 0.0

    assert switch_time(SimSettings()) == 0.0  # profiles: a batch change is instant
    assert switch_time(SimSettings(reconfig_s={"batch": 1.5})) == pytest.approx(1.5)


def test_arrival_times_are_the_simulators():
    rps = np.array([3.0, 0.0, 2.4])
    t = arrival_times(rps, np.random.default_rng(1))
    assert len(t) == 5 and np.all(np.diff(t) >= 0)
    assert ((t >= 0) & (t < 1)).sum() == 3 and ((t >= 2) & (t < 3)).sum() == 2


def test_fractional_rates_keep_their_mean_and_integer_rates_arrive_exactly():
    from ipa.runtime.loadgen import arrival_counts

    slow = arrival_counts(np.full(100, 0.3))
    assert slow.sum() == 30 and slow.max() == 1  # a request every 3-4 s, not none (rounding) nor bunched
    assert arrival_counts(np.full(10, 1.2) * 0.5).sum() == 6
    ints = np.random.default_rng(0).integers(0, 30, 500).astype(float)
    np.testing.assert_array_equal(arrival_counts(ints), ints)


def test_replicas_run_where_the_profiles_were_measured_unless_told():
    from ipa.runtime.ray.cluster import RaySettings
    from ipa.runtime.ray.runtime import for_profiles

    assert for_profiles(RaySettings(), {"device": "cuda"}).device == "cuda"
    assert for_profiles(RaySettings(), {"device": "cpu"}).device == "cpu"
    assert for_profiles(RaySettings(), {}).device == "cpu"
    assert for_profiles(RaySettings(device="cpu"), {"device": "cuda"}).device == "cpu"  # explicit wins


def test_servings_own_latency_is_what_an_answer_spent_neither_in_a_model_nor_queued_for_one():
    from ipa.experiment.fidelity import serving_latency

    r = RequestRecord(0.0, 0.5, 200, service_s=0.3, queued_s=0.15)
    assert r.overhead_s == pytest.approx(0.05)
    assert RequestRecord(0.0, 0.5, 200, service_s=0.3).overhead_s is None  # an older ingress: not said
    records = [RequestRecord(0.0, 0.3 + 0.01 * i, 200, service_s=0.2, queued_s=0.05) for i in range(100)]
    records += [RequestRecord(0.0, 0.01, 503, reason="admission")] * 50  # refusals say nothing of it
    p50, p99 = serving_latency(records)
    assert p50 == pytest.approx(0.05 + 0.495) and p99 == pytest.approx(0.05 + 0.9801)
    assert serving_latency(records[:19]) is None


def test_the_twins_pace_is_each_measured_batch_over_its_row_in_time_order(tiny):
    from ipa.machine.replay import batch_paces as pace
    from ipa.profiles.calibration import BatchTiming
    from ipa.profiles.table import row_at

    _, table = tiny
    p50 = {b: row_at(table.batches("detect", "small", 1), b).p50 for b in (1, 3)}
    batches = [BatchTiming("detect", "small", 1, 3, 2 * p50[3], None, 7.0),  # a batch of 3: between its neighbours
               BatchTiming("detect", "small", 1, 1, 1.5 * p50[1], None, 2.0),
               BatchTiming("detect", "small", 1, 1, p50[1], None, None)]  # an older ingress: no time, left out
    ends, ratios = pace(batches, table)["detect"]
    assert list(ends) == [2.0, 7.0] and list(ratios) == pytest.approx([1.5, 2.0])
    assert "classify" not in pace(batches, table)


def test_an_image_is_checked_by_its_header_at_the_ingress_and_decoded_where_its_pixels_are_needed():
    from ipa.runtime.ray.media import EncodedImage, check_image, pixels

    jpeg = photo_jpegs()[0]
    enc = check_image(jpeg, "image/jpeg")
    assert isinstance(enc, EncodedImage) and (enc.width, enc.height) == (640, 427)
    assert (pixels(enc) == decode_image(jpeg, "image/jpeg")).all()  # the same pixels as decoding at once
    image, box = pixels((enc, [1, 2, 3, 4]))  # a segmentation prompt: the photo and its box
    assert image.shape == (427, 640, 3) and box == [1, 2, 3, 4]
    with pytest.raises(BadInput) as e:  # the header passes; the rest is found broken where it is decoded
        pixels(check_image(jpeg[: len(jpeg) // 2], "image/jpeg"))
    assert e.value.status == 400
    with pytest.raises(BadInput):
        check_image(b"not an image", "image/jpeg")


def test_start_waits_until_http_reaches_the_app_not_just_until_serve_says_running():
    """Serve says RUNNING before its route is in the proxy's table; a request then gets 404 "Path '/' not found"
    (a CI rehearsal's first POST did). A real HTTP server answering 404 three times, then 200."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ipa.runtime.ray.cluster import wait_routed

    seen = []

    class Routing(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.path)
            self.send_response(404 if len(seen) <= 3 else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Routing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        assert wait_routed(url, 10.0) and len(seen) == 4
        seen.clear()
        assert not wait_routed(url, 0.0)  # still 404 when the time is up: False (and a warning), not a hang
    finally:
        server.shutdown()


def test_servings_port_is_free_and_outside_the_range_ray_and_the_kernel_hand_out(monkeypatch, tmp_path):
    # CI: a port from bind(0) (the ephemeral range) was taken by Ray's own connections before HAProxy bound it.
    import socket

    from ipa.runtime.ray import cluster as ray_cluster

    low, high = ray_cluster._ephemeral_range()
    ports = {ray_cluster.free_port() for _ in range(20)}
    assert all(20000 <= p < 32768 and not low <= p <= high for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # still free


def test_a_replicas_overhead_counts_from_when_its_batch_could_have_started():
    from ipa.runtime.ray.replica import _ready_at

    # a full batch could start at its last item's arrival, or when the batch before it ended if that was later
    assert _ready_at(10.0, [9.2, 9.5], 9.0, full=True) == 9.5
    assert _ready_at(10.0, [9.2, 9.5], 9.8, full=True) == 9.8
    assert _ready_at(10.0, [9.2], 11.0, full=True) == 10.0  # never after it started
    # one that is not full may have waited for the batch timeout: from its start
    assert _ready_at(10.0, [9.2], 9.0, full=False) == 10.0


def test_the_overhead_per_batch_is_each_stages_mean_of_what_its_replicas_reported():
    from ipa.profiles.calibration import BatchTiming
    from ipa.runtime.ray.overhead import batch_overheads

    batches = [BatchTiming("detect", "small", 1, 1, 0.05, None, 1.0, o) for o in (0.002, 0.003, 0.010)]
    batches += [BatchTiming("classify", "r18", 1, 1, 0.02, None, 1.0, 0.001),
                BatchTiming("classify", "r18", 1, 1, 0.02, None, 1.0, None)]  # an older replica: not measured
    assert batch_overheads(batches) == {"detect": pytest.approx(0.005), "classify": pytest.approx(0.001)}
    assert batch_overheads([BatchTiming("detect", "small", 1, 1, 0.05)]) == {}


def test_serving_cpu_per_request_charges_each_burst_the_idle_draw_on_either_side():
    from ipa.runtime.ray.overhead import Window, split_serving_cpu

    # the idle draw climbs 0.20 -> 0.32 cores over the run; 100 requests at 5 ms each in two bursts of 20 s
    drift = lambda t: 0.20 + 0.12 * t / 80  # noqa: E731
    edges = [0, 10, 30, 40, 60, 70]  # idle, load, idle, load, idle
    windows = []
    for a, b in zip(edges, edges[1:]):
        load = len(windows) % 2 == 1
        cpu = sum(drift(t + 0.5) for t in np.arange(a, b))  # the draw, second by second
        windows.append(Window(b - a, cpu + (50 * 0.005 if load else 0.0), load))
    fixed, per = split_serving_cpu(windows, 100)
    assert per == pytest.approx(0.005, rel=0.02)
    assert 0.2 < fixed < 0.32
    # the draw measured once, before the load, would have put the drift on the requests: 24 ms, not 5
    once = sum(w.cpu_s for w in windows if w.load) - windows[0].cpu_s / windows[0].seconds * 40
    assert once / 100 > 4 * per
    with pytest.raises(ValueError, match="idle first and last"):
        split_serving_cpu(windows[:-1], 100)


def test_the_serving_measurement_alternates_idle_windows_and_bursts_that_hold_every_request():
    from ipa.runtime.ray.overhead import _schedule

    arrivals, ends = _schedule(10, 5.0, 8.0, 3, tail_s=1.0)
    assert len(arrivals) == 10 and [load for _, load in ends] == [False, True, False, True, False, True, False]
    starts = [0.0] + [t for t, _ in ends]
    for (a, b), (_, load) in zip(zip(starts, starts[1:]), ends):
        inside = ((arrivals >= a) & (arrivals < b)).sum()
        assert (inside > 0) == load
        if load:
            assert arrivals[(arrivals >= a) & (arrivals < b)].max() <= b - 1.0  # answers have a second to come


def test_a_process_kind_leaves_out_the_path_and_the_actors_method():
    from ipa.runtime.ray.overhead import ProcessCpu, _kind

    kinds = [_kind(t) for t in ("/usr/sbin/haproxy -f /tmp/x.cfg", "ray::ProxyActor.ready", "/opt/ray/raylet --x",
                                "ray::ServeReplica:ipa:Ingress", "ray::ServeController.listen_for_change")]
    assert kinds == ["haproxy", "ray::ProxyActor", "raylet", "ray::ServeReplica:ipa:Ingress", "ray::ServeController"]
    path = ProcessCpu("ipa", ["detect"]).path_kinds  # what counts per request: not the controller, not raylet
    assert {"haproxy", "ray::ProxyActor", "ray::ServeReplica:ipa:Ingress"} <= path
    assert not {"raylet", "ray::ServeController", "ray::ServeReplica:ipa:detect"} & path


def test_a_port_is_busy_while_something_listens_not_while_a_closed_connection_waits():
    import socket

    from ipa.errors import ConfigError
    from ipa.runtime.ray.cluster import check_port_free

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is not free"):
        check_port_free("127.0.0.1", port)
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server's side closes first: its port stays in TIME_WAIT, as after `ipa serve` stops
    client.close()
    server.close()
    check_port_free("127.0.0.1", port)  # what a new server (SO_REUSEADDR) can bind is free
