"""How steady is this machine's speed? The served variants alone on one core, against their profile rows, over time.

    python bench/drift.py [--minutes 15] [--every 30] [--variants detect/ssdlite320_mobilenet_v3_large,...]
                          [--profiles profiles/video-cpu-2core.csv] [--out drift.csv]

No Ray, no serving, no load generator: every `--every` seconds each variant runs at batch 1 on one pinned core
for about a second and its median CPU per call is set against its row (the pace, as `ipa profile --serving`
measures it served; 1 = as profiled). It prints each sample, then how far the pace moved from one sample to the
one a minute later, the gap a prediction made a minute before a cell has to cross, and writes every sample to
`--out` (CSV) as it is taken: Ctrl-C or kill keeps them and prints their summary. A machine whose pace a minute ahead is often more than 5% off cannot have its served figures
predicted within the prediction's targets by any model (`bench/prediction.py`'s tally splits its figures the same
way). Run it with nothing else on the machine: it is the floor under that bench, measured with none of ipa's
serving running.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVED = "detect/ssdlite320_mobilenet_v3_large,classify/resnet18"  # fa2-low's video config, what the bench serves


def main() -> None:
    from ipa._io import write_csv
    from ipa._signals import stop_on_sigterm
    from ipa.errors import IpaError
    from ipa.profiles.profiler import pinned

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pipeline", default=str(ROOT / "configs/pipelines/video.yaml"))
    ap.add_argument("--profiles", default=str(ROOT / "profiles/video-cpu-2core.csv"))
    ap.add_argument("--variants", default=SERVED, help="comma-separated stage/variant (default: %(default)s)")
    ap.add_argument("--minutes", type=positive, default=15.0)
    ap.add_argument("--every", type=positive, default=30.0, help="seconds from one sample's start to the next's")
    ap.add_argument("--out", default="drift.csv")
    args = ap.parse_args()
    if not Path(args.out).resolve().parent.is_dir():
        raise SystemExit(f"error: --out {args.out}: its folder does not exist")
    stop_on_sigterm()  # kill stops it as Ctrl-C does: the samples so far kept, their summary printed
    samples: list[dict] = []
    with pinned(1, "cpu"):  # every model on the same one core, as the profile rows were
        try:
            timed = models(args.pipeline, args.profiles, args.variants.split(","))
        except IpaError as e:
            raise SystemExit(f"error: {e}") from None
        start = time.monotonic()
        try:
            while time.monotonic() - start < args.minutes * 60:
                t0 = time.monotonic()
                samples.append(sample(timed, t0 - start))
                print(" ".join(f"{k} {v}" for k, v in samples[-1].items()), flush=True)
                write_csv(args.out, samples)  # every sample, atomically: an interrupted run keeps what it measured
                time.sleep(max(0.0, args.every - (time.monotonic() - t0)))
        except KeyboardInterrupt:
            print(f"interrupted: {len(samples)} samples kept in {args.out}")
    if samples:
        print(summary(samples, args.every))


def positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a number > 0")
    return value


def models(pipeline: str, profiles: str, names: list[str]) -> list[tuple]:
    """Each named variant built and called once, with its inputs and its row's CPU per batch."""
    from ipa.models import builder
    from ipa.models.samples import stage_items
    from ipa.models.zoo import pipeline_kinds
    from ipa.profiles import load_profiles
    from ipa.spec import load_pipeline

    spec = load_pipeline(pipeline)
    table = load_profiles(profiles, spec)
    kinds = pipeline_kinds(spec)
    known = [f"{s.name}/{v.name}" for s in spec.stages for v in s.variants]
    timed = []
    for name in names:
        if name not in known:
            raise SystemExit(f"--variants: {name} is not one of the pipeline's (allowed: {', '.join(known)})")
        stage, variant = name.split("/", 1)
        row = table.get(stage, variant, 1, 1)
        if row is None:
            raise SystemExit(f"--variants: {name} has no batch-1, 1-core row in {profiles}")
        runner = builder.build(spec.stage(stage), variant, search=builder.search_path(spec))
        items = stage_items(spec, kinds, stage, 1)
        runner(items)  # the first call allocates
        timed.append((name, runner, items, row.cpu_s))
    return timed


def sample(timed: list[tuple], t_s: float) -> dict:
    """Each model's pace now (its CPU per call over its row's, about a second of calls each) and their mean."""
    from ipa.profiles.profiler import cpu_per_call

    paces = {name: cpu_per_call(runner, items, 1.0, 5) / cpu_s for name, runner, items, cpu_s in timed}
    return {"t_s": round(t_s, 1), "clock": time.strftime("%H:%M:%S"), **{k: round(v, 3) for k, v in paces.items()},
            "pace": round(statistics.fmean(paces.values()), 3)}


def summary(samples: list[dict], every: float) -> str:
    """The pace's range, and its move over a minute: the share of samples within 5% of the one a minute before."""
    paces = [s["pace"] for s in samples]
    lag = max(1, round(60 / every))
    moves = [abs(b / a - 1) * 100 for a, b in zip(paces, paces[lag:])]
    lines = [f"{len(paces)} samples: pace mean {statistics.fmean(paces):.2f}, min {min(paces):.2f}, "
             f"max {max(paces):.2f} (max/min {max(paces) / min(paces):.2f})"]
    if moves:
        within = sum(m <= 5 for m in moves)
        lines.append(f"a minute later: moved {statistics.fmean(moves):.1f}% on average, {max(moves):.1f}% at most; "
                     f"within 5% in {within} of {len(moves)} ({within / len(moves):.0%})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
