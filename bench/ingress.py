"""Serving's own CPU per request, per process, and the rate at which the ingress (not a model) becomes the limit.

    python bench/ingress.py [--before REF] [--rates 2,5,8] [--seconds 20] [--ingresses 1,2] [--no-direct] [--out F.csv]

Deploys the cheapest video config (one 1-core replica per stage, batch 1) on a local Ray cluster, drives it
open-loop at each rate, and reads every process of the cluster from /proc: the stage replicas (the models),
and serving: HTTP proxy, ingress, HAProxy, raylet, GCS, controller... For each rate it reports served rps, the
models' cores, serving's cores and CPU per request beyond its idle draw, and the busiest single serving process
per request: a process runs one Python event loop, so `1 / (its CPU per request)` is the rate at which it
saturates one core and holds the pipeline back, whatever the models could take.

The code before the change runs side by side in one run: `--before REF` (default 0a20d55, the commit before
serving's fast path) is checked out in a temporary git worktree and each of its rates runs there, on a fresh
cluster, interleaved with the current code's: Serve's Python proxy in front of the ingress, handle calls through
Ray's object store, images decoded in the ingress. The current code: each ingress replica serves HTTP behind
HAProxy, gRPC between replicas, Serve's throughput settings, images decoded in the replica that needs the pixels
(that decoding is counted as serving's, from the ingress's tally). The current code runs once per count in
`--ingresses`: with k ingress replicas each sees a share of the requests (HAProxy's least-connections), so the
busiest process's CPU per request, and the rate at which the ingress side saturates, is taken per process (the
ledger every replica reports to is a serving process too). On a 2-core machine the models saturate near 8 rps;
the ingress's limit is therefore extrapolated from its measured CPU per request, not driven.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "0a20d55"  # the commit before serving's fast path


def one(rate: float, seconds: float, ingresses: int = 1) -> dict:
    """One cluster, one rate: what each process used (run in a child process, so each path starts fresh)."""
    from ipa.models.samples import photo_jpegs
    from ipa.runtime.loadgen import LoadGenerator
    from ipa.runtime.ray.cluster import APP, RaySettings, connect, shutdown
    from ipa.runtime.ray.overhead import ProcessCpu
    from ipa.runtime.ray.runtime import RayRuntime
    from ipa.spec import StageConfig, load_pipeline

    spec = load_pipeline("configs/pipelines/video.yaml")
    settings = RaySettings(port=free_port(), **({"ingress_replicas": ingresses} if ingresses > 1 else {}))
    config = {s.name: StageConfig(s.least_accurate.name, 1, 1, 1) for s in spec.stages}
    started = connect(settings, spec)
    runtime = RayRuntime(spec, settings)
    cpu = ProcessCpu(APP, spec.stage_names)
    replicas = cpu.replica_titles
    by_process = cpu.by_process  # (kind, CPU s) per pid

    try:
        runtime.start(config)
        bodies = photo_jpegs()
        warm = LoadGenerator(runtime.url, np.arange(5, dtype=float), bodies, timeout_s=60)
        warm.start()
        warm.join(120)
        time.sleep(1.0)
        a, t_a = by_process(), time.monotonic()
        time.sleep(8.0)
        b, t_b = by_process(), time.monotonic()
        n = int(rate * seconds)
        decoded = -decode_cpu_s(runtime.url)
        gen = LoadGenerator(runtime.url, np.arange(n) / rate, bodies, timeout_s=60)
        gen.start()
        gen.join(seconds + 90)
        time.sleep(0.5)
        c, t_c = by_process(), time.monotonic()
        decoded += decode_cpu_s(runtime.url)
    finally:
        runtime.stop()
        shutdown(started)
    ok = [r for r in gen.records if r.ok]
    idle_s, load_s = t_b - t_a, t_c - t_b
    used: dict[str, float] = {}  # CPU seconds under load, by kind of process
    idle: dict[str, float] = {}  # cores with no traffic, by kind
    for pid, (kind, cpu_c) in c.items():
        used[kind] = used.get(kind, 0.0) + cpu_c - b.get(pid, (kind, 0.0))[1]
        if pid in a and pid in b:
            idle[kind] = idle.get(kind, 0.0) + (b[pid][1] - a[pid][1]) / idle_s
    me = c[os.getpid()][0]
    used[me] = used.get(me, 0.0) - gen.cpu_s  # the load generator's thread is the client
    if decoded > 0:  # decoding in the replicas (current code) is serving's work, not the models'
        used["decode (in replicas)"] = decoded
        for kind in used:
            if kind.startswith(replicas + ("ray::ServeReplica:ipa:detect",)):
                used[kind] -= decoded
                break
    per: dict[str, float] = {}  # CPU seconds per answered request beyond the idle draw, by kind
    models = serving = idle_serving = 0.0
    for kind, u in used.items():
        if kind.startswith(replicas):
            models += u
            continue
        serving += u
        idle_serving += idle.get(kind, 0.0)
        per[kind] = max(0.0, u - idle.get(kind, 0.0) * load_s) / max(len(ok), 1)
    # the busiest single process: one event loop saturates one core (ingress replicas are one kind, several pids)
    pids: dict[str, float] = {}
    for pid, (kind, cpu_c) in c.items():
        if kind.startswith(replicas) or pid not in b or pid == os.getpid():
            continue
        idle_pid = (b[pid][1] - a[pid][1]) / idle_s if pid in a else 0.0
        pids[f"{kind} ({pid})"] = max(0.0, cpu_c - b[pid][1] - idle_pid * load_s) / max(len(ok), 1)
    busiest = max(pids, key=pids.get)
    return {"rate_rps": rate, "requests": n, "served_rps": len(ok) / seconds,
            "p50_latency_s": float(np.median([r.latency_s for r in ok])) if ok else float("nan"),
            "models_cores": models / load_s, "serving_cores": serving / load_s,
            "serving_cpu_per_request_ms": 1000 * max(0.0, serving - idle_serving * load_s) / max(len(ok), 1),
            "ingresses": ingresses, "busiest": busiest, "busiest_ms_per_request": 1000 * pids[busiest],
            "busiest_limit_rps": 1.0 / pids[busiest] if pids[busiest] > 0 else float("inf"),
            "per_process_ms": {k: round(1000 * v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}}


def decode_cpu_s(url: str) -> float:
    """The replicas' decoding CPU so far, as the ingress tallies it (0 for code that decodes in the ingress)."""
    import requests

    return float(requests.get(url, timeout=10).json().get("decode_cpu_s") or 0.0)


def free_port() -> int:
    """Outside the ephemeral range where the current code has the helper; the old commit lacks it."""
    try:
        from ipa.runtime.ray.cluster import free_port as pick
    except ImportError:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="2,5,10")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--before", default=BEFORE, help="git ref of the code to compare with (default: %(default)s)")
    ap.add_argument("--ingresses", default="1,2", help="ingress replicas of the current code's runs (default: %(default)s)")
    ap.add_argument("--no-direct", action="store_true",
                    help="also run the current code with IPA_DIRECT_CALLS=0 (stages called through Serve's handles)")
    ap.add_argument("--out", default=None, help="CSV of the rows (default: print only)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: rate of a child run
    args = ap.parse_args()
    if args.one:
        print("ROW " + json.dumps(one(float(args.one), args.seconds, int(args.ingresses))), flush=True)
        return
    before = tempfile.mkdtemp(prefix="ipa-before-")
    subprocess.run(["git", "worktree", "add", "--detach", before, args.before], cwd=ROOT, check=True,
                   capture_output=True)
    paths = {"before": (Path(before), 1, {})} | {
        "current" + ("" if k == "1" else f" x{k}"): (ROOT, int(k), {}) for k in args.ingresses.split(",")}
    if args.no_direct:  # the current code through Serve's handles alone: what the direct calls save
        paths["no direct"] = (ROOT, 1, {"IPA_DIRECT_CALLS": "0"})
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; cheapest video config, "
          f"{args.seconds:g} s per rate, nothing else running")
    rows = []
    for rate in [float(r) for r in args.rates.split(",")]:
        for path, (root, k, extra) in paths.items():  # interleaved: a drift of the machine hits all alike
            env = os.environ | {"PYTHONPATH": str(root / "src")} | extra
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", str(rate), "--seconds",
                                   str(args.seconds), "--ingresses", str(k)], env=env, cwd=root, capture_output=True,
                                  text=True, timeout=args.seconds + 400)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")), None)
            if line is None:
                print(f"{path} at {rate:g} rps failed:\n{proc.stderr[-2000:]}")
                continue
            row = {"path": path} | json.loads(line[4:])
            rows.append(row)
            print(f"{path:11s} {rate:5.1f} rps: served {row['served_rps']:5.2f} rps, p50 {row['p50_latency_s']:.3f} s, "
                  f"models {row['models_cores']:.2f} cores, serving {row['serving_cores']:.2f} cores "
                  f"({row['serving_cpu_per_request_ms']:.1f} ms/request beyond idle); busiest {row['busiest']} "
                  f"{row['busiest_ms_per_request']:.1f} ms/request -> saturates at {row['busiest_limit_rps']:.0f} rps",
                  flush=True)
            print(f"{'':11s} per process (ms/request): {row['per_process_ms']}", flush=True)
    for path in paths:
        limits = [r["busiest_limit_rps"] for r in rows if r["path"] == path and r["rate_rps"] >= 5]
        if limits:
            print(f"{path}: the ingress side saturates at about {np.median(limits):.0f} rps (median over rates >= 5)")
    subprocess.run(["git", "worktree", "remove", "--force", before], cwd=ROOT, capture_output=True)
    if args.out and rows:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "per_process_ms"] + ["per_process_ms"])
            w.writeheader()
            for r in rows:
                w.writerow(r | {"per_process_ms": json.dumps(r["per_process_ms"])})


if __name__ == "__main__":
    main()
