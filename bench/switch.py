"""A variant switch under load on the real pipeline: does the stage keep serving while the new model loads, and does
the same run give the same figures twice?

    python bench/switch.py [--rate 13] [--repeats 3] [--out bench-switch] [--second resnet50:1]

Serves the video pipeline on a local Ray cluster (ssdlite + resnet18, batch 1, one core each) at a fixed rate for
34 s, switches the classifier to resnet50 at batch 4 at 10 s and to resnet34 at batch 8 at 22 s (`--second`
and `--third` change them), and prints per phase the answers by outcome, the classifier's batches (how many, their
mean size, its longest idle stretch) and each stage's CPU pace over the shipped profiles. Each repeat starts a
fresh cluster. OUT/switch.csv has a row per repeat and phase. Needs the machine to itself.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "profiles" / "video-cpu-2core.csv"
PHASES = ((0, 10), (10, 22), (22, 34))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=13.0, help="requests per second, all along")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--second", default="resnet50:4", help="classifier VARIANT:BATCH from 10 s")
    ap.add_argument("--third", default="resnet34:8", help="classifier VARIANT:BATCH from 22 s")
    ap.add_argument("--out", default="bench-switch")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = [("resnet18", 1)] + [(v, int(b)) for v, b in (s.split(":") for s in (args.second, args.third))]
    rows = []
    for k in range(args.repeats):
        rows += once(k, args.rate, steps)
    with (out / "switch.csv").open("w") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for lo, hi in PHASES:
        answered = [r["answered"] for r in rows if r["from_s"] == lo]
        spread = 100 * (max(answered) - min(answered)) / max(1, statistics.median(answered))
        print(f"{lo}-{hi} s: answered {answered} over the repeats (spread {spread:.0f}% of the median)")
    print(f"rows in {out / 'switch.csv'}")


def once(k: int, rate: float, steps: list[tuple[str, int]]) -> list[dict]:
    from ipa.machine.measure import machine_pace
    from ipa.models.samples import photo_jpegs
    from ipa.profiles import load_profiles
    from ipa.runtime.loadgen import LoadGenerator, arrival_times
    from ipa.runtime.ray.cluster import RaySettings, connect, free_port, shutdown
    from ipa.runtime.ray.runtime import RayRuntime
    from ipa.spec import StageConfig, load_pipeline

    spec = load_pipeline(ROOT / "configs" / "pipelines" / "video.yaml")
    profiles = load_profiles(SHIPPED, spec)
    settings = RaySettings(port=free_port(), cpus=2, deploy_timeout_s=240)
    started = connect(settings, spec)
    try:
        rt = RayRuntime(spec, settings)

        def config(variant: str, batch: int) -> dict[str, StageConfig]:
            return {"detect": StageConfig("ssdlite320_mobilenet_v3_large", 1, 1, 1),
                    "classify": StageConfig(variant, batch, 1, 1)}

        rt.start(config(*steps[0]))
        gen = LoadGenerator(rt.url, arrival_times(np.full(PHASES[-1][1], rate), np.random.default_rng(k)),
                            photo_jpegs(), timeout_s=60)
        gen.start()
        for (lo, _), step in zip(PHASES[1:], steps[1:]):
            rt.run_until(lo)
            rt.apply(config(*step))
        rt.run_until(PHASES[-1][1])
        gen.stop(wait_s=60)
        time.sleep(1.5)  # the ingress pushes what it saw every quarter second
        batches = sorted((b for b in rt.batch_timings() if b.t_s is not None), key=lambda b: b.t_s)
        rt.stop()
    finally:
        shutdown(started)
    rows = []
    for (lo, hi), (variant, batch) in zip(PHASES, steps):
        sent = [r for r in gen.records if lo <= r.sent_s < hi]
        outcome = Counter("answered" if r.ok else r.reason or str(r.status) for r in sent)
        cls = [b for b in batches if b.stage == "classify" and lo <= b.t_s < hi]
        idle = max((b.t_s - b.seconds - a.t_s for a, b in zip(cls, cls[1:])), default=float("nan"))
        paces = {s: machine_pace(profiles, [b for b in batches if b.stage == s and lo <= b.t_s < hi])
                 for s in ("detect", "classify")}
        row = {"repeat": k, "from_s": lo, "to_s": hi, "classifier": f"{variant}:{batch}", "sent": len(sent),
               "answered": outcome["answered"], "refused": outcome["admission"], "expired": outcome["expired"],
               "classify_batches": len(cls), "mean_batch": round(sum(b.size for b in cls) / max(1, len(cls)), 2),
               "longest_idle_s": round(idle, 2),
               **{f"{s}_pace": round(p[0], 3) if p else "" for s, p in paces.items()}}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
