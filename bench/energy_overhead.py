"""What the energy meter costs: a fixed inference workload with and without metering.

    python bench/energy_overhead.py [--meter auto] [--batches 200]

Three ways: no meter; a 1 s sampler thread (what `ipa energy watch` and the runtime do); a window
around every batch (what the profiler does). Median of 5 runs each, resnet18 at batch 1 on 1 thread.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time

import torch

from ipa.energy import open_meter
from ipa.models.builder import build
from ipa.models.zoo import photos_hwc, stage_of


def workload(model, x, batches: int, per_batch=None) -> float:
    t0 = time.perf_counter()
    for _ in range(batches):
        if per_batch:
            with per_batch():
                model(x)
        else:
            model(x)
    return time.perf_counter() - t0


def sampled(meter, fn) -> float:
    stop = threading.Event()

    def sample():
        while not stop.wait(1.0):
            meter.read()

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        return fn()
    finally:
        stop.set()
        th.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meter", default="auto")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = build(stage_of("resnet18"), "resnet18")
    x = [photos_hwc()[0]]  # one photo: the batch a replica serves, preprocessing included
    workload(model, x, 20)  # warm up
    detection = open_meter(args.meter, gpu=False)
    meter = detection.meter
    meter.start()
    t_read = time.perf_counter()
    for _ in range(1000):
        meter.read()
    read_us = (time.perf_counter() - t_read) * 1000  # 1000 reads: ms total = us each
    modes = {
        "none": lambda: workload(model, x, args.batches),
        "1 s sampler": lambda: sampled(meter, lambda: workload(model, x, args.batches)),
        "window per batch": lambda: workload(model, x, args.batches, meter.window),
    }
    times = {m: [] for m in modes}
    for _ in range(args.runs):  # interleaved so drift hits every mode alike
        for m, fn in modes.items():
            times[m].append(fn())
    meter.stop()
    base = statistics.median(times["none"])
    print(f"machine: {platform.machine()}, meter: {meter.description}")
    print(f"one meter read: {read_us:.1f} us")
    reads = {"none": 0, "1 s sampler": base, "window per batch": 2 * args.batches}
    spread = 100 * (max(times["none"]) - min(times["none"])) / base
    print(f"run-to-run spread without a meter: {spread:.2f}% (differences below it are noise)")
    print("| metering | median s | extra time (measured) | meter reads x read cost / run time |")
    print("|---|---|---|---|")
    for m, ts in times.items():
        med = statistics.median(ts)
        cost = 100 * reads[m] * read_us / 1e6 / base
        print(f"| {m} | {med:.3f} | {100 * (med - base) / base:+.2f}% | {cost:.3f}% |")


if __name__ == "__main__":
    main()
