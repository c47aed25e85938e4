"""Closed-loop clients against `ipa serve`: is what admission admits answered within the SLA?

    python bench/concurrency.py [--clients 30] [--seconds 30] [--policy ipa] [--repeats 1]

Starts `ipa serve` (the video pipeline, the shipped profiles) as a user would, waits until it serves, then runs
`--clients` threads on this same machine, each posting a photo and posting again as soon as it is answered, for
`--seconds`. Reports the answers by status, how many 200s the server itself answered later than the SLA (its
`latency_s`; the promise admission makes is about those), the client-side latencies, and what the server did
meanwhile (its decisions and reconfigurations, from its logs). Issue 21's case: 30 clients for 30 s.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

from ipa.models.samples import photo_jpegs
from ipa.runtime.ray.cluster import free_port


def start_server(port: int, out: Path, policy: str, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ipa.cli", "serve", "--port", str(port), "--policy", policy, "--out", str(out), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # type: ignore[union-attr]
        if "serving on" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return proc
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit(f"ipa serve did not start: {proc.wait()}")


def closed_loop(url: str, clients: int, seconds: float, body: bytes) -> list[dict]:
    """Each client posts, waits for the answer, posts again, until the time is up."""
    records: list[dict] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds
    start = time.perf_counter()

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                r = session.post(url, data=body, headers={"content-type": "image/jpeg"}, timeout=120)
                body_ = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                status, server = r.status_code, body_.get("latency_s")
                if status != 200:
                    status = f"{status} {body_.get('reason', '')}".strip()
            except requests.RequestException as e:
                status, server, body_ = f"error: {type(e).__name__}", None, {}
            with lock:
                records.append({"status": status, "client_s": time.perf_counter() - t, "server_s": server,
                                "sent": t - start, "service_s": body_.get("service_s"), "queued_s": body_.get("queued_s")})

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return records


def report(records: list[dict], sla_s: float, seconds: float, out: Path, started_s: float) -> dict:
    ok = [r for r in records if r["status"] == 200]
    late = [r for r in ok if r["server_s"] > sla_s]
    statuses: dict = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    client = np.array([r["client_s"] for r in ok]) if ok else np.zeros(1)
    reconfigs = list(csv.DictReader((out / "reconfigurations.csv").open())) if (out / "reconfigurations.csv").is_file() else []
    print(f"answers: {len(records)} ({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items(), key=str))}), "
          f"{len(ok) / seconds:.2f} 200s per second")
    print(f"200s the server answered past the {sla_s:g} s SLA: {len(late)} of {len(ok)} "
          f"({100 * len(late) / max(len(ok), 1):.1f}%)" + (f", server latency of those {min(r['server_s'] for r in late):.2f}"
                                                           f"-{max(r['server_s'] for r in late):.2f} s" if late else ""))
    for r in late:
        rest = r["server_s"] - r["service_s"] - r["queued_s"]
        print(f"  late, sent at {r['sent']:.1f} s: {r['server_s']:.2f} s = models {r['service_s']:.2f} + replica queues {r['queued_s']:.2f} "
              f"+ outside the models {rest:.2f}")
    if ok:
        outside = np.array([r["server_s"] - r["service_s"] - r["queued_s"] for r in ok])
        print(f"time outside the models, all 200s: p50 {np.percentile(outside, 50):.2f} s, p99 "
              f"{np.percentile(outside, 99):.2f} s, max {outside.max():.2f} s")
    print(f"client-side latency of 200s: p50 {np.percentile(client, 50):.2f} s, p99 {np.percentile(client, 99):.2f} s, "
          f"max {client.max():.2f} s")
    print(f"reconfigurations during the run (t from the server's start, {started_s:.1f} s before the clients'): "
          f"{len(reconfigs)}" + "".join(f"\n  t={float(r['t_s']):.0f} s {r['kinds']} {float(r['seconds']):.1f} s ok={r['ok']}" for r in reconfigs))
    return {"late": len(late), "ok": len(ok), "answers": len(records)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--policy", default="ipa")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sla", type=float, default=4.0, help="the video pipeline's SLA")
    ap.add_argument("serve_args", nargs="*", help="more `ipa serve` options, after --")
    args = ap.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {args.clients} clients "
          f"x {args.seconds:g} s against ipa serve --policy {args.policy} {' '.join(args.serve_args)}")
    body = photo_jpegs()[0]
    for i in range(args.repeats):
        out = Path(tempfile.mkdtemp(prefix="ipa-concurrency-"))
        port = free_port()
        proc = start_server(port, out, args.policy, args.serve_args)
        serving_since = time.perf_counter()
        try:
            url = f"http://127.0.0.1:{port}/"
            requests.post(url, data=body, headers={"content-type": "image/jpeg"}, timeout=120)  # a first batch
            started_s = time.perf_counter() - serving_since
            records = closed_loop(url, args.clients, args.seconds, body)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(f"\nrun {i + 1} (logs in {out})")
        report(records, args.sla, args.seconds, out, started_s)


if __name__ == "__main__":
    main()
