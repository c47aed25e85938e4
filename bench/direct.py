"""What the ingress's direct calls cost in CPU: one video request's two calls over `ipa.runtime.ray.direct`'s socket.

    python bench/direct.py [--requests 500] [--runs 5]

A replica process listens (`direct.Listener`) and answers like the video pipeline's stages: the first call carries a
photo's JPEG bytes (100 kB) and is answered with the photo as its crop (a random-weight detector finds no box: the
whole 427x640 photo, 820 kB); the second carries that crop to the classifier and is answered with a label. This
process is the ingress (`direct.Connection`). Prints, per run, the CPU per request of each side (the ingress's
process time, the replica's from /proc) and the wall time of the two calls; no Ray, no models: the framing alone.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ipa.runtime.ray import direct  # noqa: E402
from ipa.runtime.ray.overhead import _cpu_seconds  # noqa: E402

CROP = np.zeros((427, 640, 3), np.uint8)
JPEG = bytes(100_000)


def replica(paths: mp.Queue) -> None:
    async def handler(item, start_by):
        if isinstance(item, bytes):  # the detector: its crop
            return {"output": {"boxes": []}, "crops": [([0, 0, 640, 427], CROP)]}
        return {"output": {"label": 1, "score": 0.1}}

    async def main():
        listener = direct.Listener(handler)
        paths.put(await listener.start())
        await asyncio.sleep(3600)

    asyncio.run(main())


async def ingress(path: str, requests: int) -> tuple[float, float]:
    conn = direct.Connection(path)
    await conn.call(JPEG, 0.0)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        out = await conn.call(JPEG, 0.0)
        await conn.call(out["crops"][0][1], 0.0)
    return (time.process_time() - cpu) / requests, (time.perf_counter() - wall) / requests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}; two calls per request "
          f"(100 kB in, 820 kB crop back, the crop in, a label back), {args.requests} requests a run")
    for run in range(args.runs):
        paths: mp.Queue = mp.Queue()
        proc = mp.Process(target=replica, args=(paths,), daemon=True)
        proc.start()
        path = paths.get(timeout=30)
        before = _cpu_seconds(f"/proc/{proc.pid}/stat")
        cpu, wall = asyncio.run(ingress(path, args.requests))
        callee = (_cpu_seconds(f"/proc/{proc.pid}/stat") - before) / args.requests
        proc.kill()
        print(f"run {run + 1}: ingress {cpu * 1000:.2f} ms CPU/request, replica {callee * 1000:.2f} ms, "
              f"wall {wall * 1000:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
