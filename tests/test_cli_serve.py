"""`ipa serve` as a user runs it: a real process, a real HTTP request, logs on disk when it stops."""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import pytest
import requests

from ipa.models.samples import photo_jpegs
from ipa.runtime.ray.cluster import free_port
from ipa.runtime.ray.guard import alive, descendants

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_ipa_serve_answers_adapts_and_writes_its_logs(tmp_path):
    port = free_port()
    out = tmp_path / "serve"
    carbon = tmp_path / "carbon.csv"
    carbon.write_text("hour,gco2_per_kwh\n0,100\n1,300\n")  # 360 hours per hour: 300 g from t = 10 s
    proc = subprocess.Popen([sys.executable, "-m", "ipa.cli", "serve", "--port", str(port), "--duration", "20",
                             "--interval", "5", "--predictor", "reactive", "--policy", "ipa-carbon", "--carbon", str(carbon),
                             "--carbon-speedup", "360", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    answered, metrics = None, ""
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = requests.post(url, data=photo_jpegs(width=320)[0], headers={"content-type": "image/jpeg"}, timeout=30)
                if r.status_code == 200:
                    answered = r.json()
                    metrics = requests.get(url + "metrics", timeout=30).text
                    break
            except requests.ConnectionError:
                pass
            time.sleep(1)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-3000:]
    assert answered and set(answered["variants"]) == {"detect", "classify"}, output[-3000:]
    assert "serving on" in output and "logs in" in output
    with (out / "decisions.csv").open() as f:
        decisions = list(csv.DictReader(f))
    assert len(decisions) >= 3 and all(d["config"] for d in decisions)
    assert [float(d["delta"]) for d in decisions[:3]] == pytest.approx([0.05, 0.05, 0.15])  # 0.1 x 100|300 / 200
    with (out / "energy.csv").open() as f:
        energy = list(csv.DictReader(f))
    assert len(energy) >= 10 and all(float(e["joules"]) >= 0 for e in energy)
    for e in (e for e in energy if abs(float(e["t_s"]) - 10) > 0.5):  # grams at the intensity of that second
        g = 100.0 if float(e["t_s"]) < 10 else 300.0
        assert float(e["gco2_per_kwh"]) == g and float(e["co2_g"]) == pytest.approx(float(e["joules"]) * g / 3.6e6)
    assert "ipa_carbon_intensity_g_per_kwh" in metrics and "g of CO2 in all" in output


def test_sigterm_stops_ipa_serve_like_ctrl_c(tmp_path):
    """kill, systemd and Kubernetes send SIGTERM: the logs are written, Ray is shut down, the exit is clean."""
    import signal

    port = free_port()
    out = tmp_path / "serve"
    proc = subprocess.Popen([sys.executable, "-m", "ipa.cli", "serve", "--port", str(port), "--duration", "600",
                             "--interval", "5", "--predictor", "reactive", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None and not (out / "decisions.csv").is_file():
            time.sleep(1)  # serving, its first decision on disk
        time.sleep(3)  # a few sampled seconds
        started = set(descendants(proc.pid))
        assert started, "ipa serve started no processes"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 143), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "terminated" in output and "logs in" in output
    for name in ("decisions.csv", "energy.csv", "reconfigurations.csv", "events.csv"):
        assert (out / name).is_file(), name
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(p) for p in started):
        time.sleep(1)
    assert not [p for p in started if alive(p)], "Ray processes left behind"


def test_profile_serving_refreshes_serving_cost_and_the_machines_pace(tmp_path):
    """The one refresh command: a copy of the shipped profiles gets this machine's serving cost and pace, and plans
    made with them run every row at that pace."""
    import json
    import shutil

    from ipa.experiment.cells import Setup
    from ipa.experiment.config import load_experiment
    from ipa.paths import REPO

    shipped = REPO / "profiles/video-cpu-2core.csv"
    profiles = tmp_path / "p.csv"
    shutil.copy(shipped, profiles)
    meta = json.loads(shipped.with_name(shipped.name + ".meta.json").read_text())
    meta.pop("serving")
    profiles.with_name("p.csv.meta.json").write_text(json.dumps(meta))
    done = subprocess.run([sys.executable, "-m", "ipa.cli", "profile", "--serving", "--requests", "20",
                           "--out", str(profiles)], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    serving = json.loads(profiles.with_name("p.csv.meta.json").read_text())["serving"]
    assert serving["pace"] > 0 and serving["pace_batches"] >= 20  # every request ran a batch in each stage
    assert serving["cpu_per_request_s"] > 0 and serving["latency_s"] > 0
    assert f"ran at {serving['pace']:.2f}x their profiled CPU" in done.stdout
    lo, hi = serving["pace_range"]  # the fastest and slowest 10 s of the bursts: the prediction's band
    assert 0 < lo <= hi and f"({lo:.2f}-{hi:.2f} over 10 s)" in done.stdout
    assert set(serving["batch_overhead_s"]) == {"detect", "classify"}  # each replica's own time per batch
    assert 0 < serving["batch_overhead_s"]["detect"] < 0.5
    setup = Setup.load(load_experiment(None, profiles=str(profiles)))
    assert setup.machine is setup.profiles  # plans and the simulated machine run the same paced table
    ssd = "detect/ssdlite320_mobilenet_v3_large"
    assert {ssd, "classify/resnet18"} <= set(serving["variant_pace"])  # each served variant's own pace over the pooled
    row = setup.profiles.lookup("detect", "ssdlite320_mobilenet_v3_large", 1, 1)
    assert row.p50 == pytest.approx(0.0651868 * serving["pace"] * serving["variant_pace"][ssd], rel=1e-6)
