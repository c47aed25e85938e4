"""Ray Serve's own overhead: the same pipeline through HTTP + Serve vs the same code called in-process.

    python bench/serving.py [--requests 60] [--clients 4] [--seconds 20] [--config ipa|smallest] [--repeats 3]

Per request: one client, one request at a time, p50/p99 end-to-end (JPEG bytes in, JSON-able result out).
At saturation: `--clients` closed-loop clients for `--seconds`; in-process, as many threads each running
the whole pipeline. Same models, same decode/crop/classify functions, one torch thread per stage replica.
The default config is what `ipa` picks for the video pipeline at 1 rps on the shipped 2-core profiles.
Last, the time each kind of reconfiguration takes (the figures `--runtime ray` feeds to the simulator).
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import requests

from ipa.models.samples import photo_jpegs
from ipa.optimize import make_problem, solve
from ipa.profiles import load_profiles
from ipa.runtime.ray.cluster import RaySettings, connect, free_port, shutdown
from ipa.runtime.ray.media import decode_image
from ipa.runtime.ray.replica import _load, crops
from ipa.runtime.ray.runtime import RayRuntime
from ipa.spec import StageConfig, config_as_dict, load_pipeline

ROOT = Path(__file__).resolve().parents[1]


def in_process(models, jpeg: bytes) -> dict:
    image = decode_image(jpeg, "image/jpeg")
    det = models[0]([image])[0]
    box, crop = crops(image, det)[0]
    return {"box": box, **models[1]([crop])[0]}


def closed_loop(call, clients: int, seconds: float) -> tuple[int, list[float]]:
    lat: list[float] = []
    end = time.monotonic() + seconds

    def worker():
        while time.monotonic() < end:
            t = time.perf_counter()
            call()
            lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(lat), lat


def sequential(call, n: int) -> np.ndarray:
    call()  # warm
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append(time.perf_counter() - t)
    return np.array(out)


def row(name: str, lat: np.ndarray, extra: str = "") -> None:
    print(f"{name:<34} p50 {np.percentile(lat, 50) * 1000:8.1f} ms   p99 {np.percentile(lat, 99) * 1000:8.1f} ms {extra}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--config", choices=["ipa", "smallest"], default="ipa")
    ap.add_argument("--repeats", type=int, default=3, help="reconfigurations per kind of change")
    args = ap.parse_args()

    spec = load_pipeline(ROOT / "configs/pipelines/video.yaml")
    if args.config == "ipa":
        config = solve(make_problem("ipa", spec, load_profiles(ROOT / "profiles/video-cpu-2core.csv", spec)), 1.0).config
    else:
        config = {s.name: StageConfig(s.least_accurate.name, 1, 1, 1) for s in spec.stages}
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; config {config_as_dict(config)}")
    jpeg = photo_jpegs()[0]

    import torch

    torch.set_num_threads(1)  # as each 1-core stage replica
    models = [_load(s.model_dump(), config[s.name].variant, None) for s in spec.stages]
    local = sequential(lambda: in_process(models, jpeg), args.requests)
    n_local, lat_local = closed_loop(lambda: in_process(models, jpeg), args.clients, args.seconds)

    settings = RaySettings(port=free_port(), cpus=(os.cpu_count() or 1) + 1)  # room for one more replica
    started = connect(settings, spec)
    rt = RayRuntime(spec, settings)
    try:
        rt.start(config)
        session = requests.Session()

        def http():
            r = session.post(rt.url, data=jpeg, headers={"content-type": "image/jpeg"}, timeout=60)
            r.raise_for_status()

        served = sequential(http, args.requests)
        sessions = threading.local()

        def http_many():
            if not hasattr(sessions, "s"):
                sessions.s = requests.Session()
            sessions.s.post(rt.url, data=jpeg, headers={"content-type": "image/jpeg"}, timeout=60).raise_for_status()

        n_served, lat_served = closed_loop(http_many, args.clients, args.seconds)
        timings = reconfigure_each_knob(rt, config, args.repeats)
    finally:
        rt.stop()
        shutdown(started)

    print(f"\nper request ({args.requests} sequential requests)")
    row("in-process", local)
    row("Ray Serve over HTTP", served)
    extra = (np.median(served) - np.median(local)) / np.median(local) * 100
    print(f"{'Ray Serve overhead at p50':<34} {extra:+.1f}%  ({(np.median(served) - np.median(local)) * 1000:+.1f} ms)")
    print(f"\nsaturation ({args.clients} closed-loop clients, {args.seconds:g} s)")
    row("in-process threads", np.array(lat_local), f"  {n_local / args.seconds:6.2f} req/s")
    row("Ray Serve over HTTP", np.array(lat_served), f"  {n_served / args.seconds:6.2f} req/s")
    print(f"\nreconfiguration, seconds until every replica serves the new config ({args.repeats} each, no load)")
    for kind, secs in timings.items():
        print(f"{kind:<34} median {np.median(secs):6.2f} s   max {max(secs):6.2f} s")


def reconfigure_each_knob(rt: RayRuntime, base: dict, repeats: int) -> dict[str, list[float]]:
    """Change one knob of the last stage and back, `repeats` times each; the runtime times every apply."""
    last = list(base)[-1]
    b = base[last]
    other = next(v.name for v in rt.spec.stage(last).variants if v.name != b.variant)
    changed = {
        "variant": StageConfig(other, b.batch, b.replicas, b.cores),
        "batch": StageConfig(b.variant, 4 if b.batch != 4 else 2, b.replicas, b.cores),
        "replicas (+1)": StageConfig(b.variant, b.batch, b.replicas + 1, b.cores),
        "cores (num_cpus)": StageConfig(b.variant, b.batch, b.replicas, b.cores + 1),
    }
    out: dict[str, list[float]] = {}
    for kind, cfg in changed.items():
        if sum(c.replicas * c.cores for c in (base | {last: cfg}).values()) > (os.cpu_count() or 1) + 1:
            print(f"{kind}: skipped, needs more CPUs than this machine has")
            continue
        for _ in range(repeats):
            rt.apply(base | {last: cfg})
            out.setdefault(kind, []).append(rt.reconfigurations[-1].seconds)
            rt.apply(base)
    return out


if __name__ == "__main__":
    main()
