"""Measure every variant x batch x cores: latency p50/p99, throughput, energy above idle, load time, memory."""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ipa.energy.common import EnergyMeter
from ipa.errors import ConfigError
from ipa.models import builder
from ipa.models.samples import stage_items
from ipa.models.zoo import photos_hwc
from ipa.profiles.table import Profile, ProfileTable, load_profiles, meta_path
from ipa.spec import PipelineSpec


@dataclass
class Plan:
    stage: str
    variant: str
    batches: Sequence[int]
    cores: Sequence[int]


@dataclass
class ProfilerSettings:
    repeats: int = 10
    warmup: int = 2
    min_window_s: float = 1.0  # energy counters tick every 1-100 ms: measure at least this long
    idle_s: float = 2.0
    device: str = "cpu"
    weights: str | None = None
    meta_extra: dict = field(default_factory=dict)


def plans(spec: PipelineSpec, stage: str | None, variants: Sequence[str] | None, batches: Sequence[int],
          cores: Sequence[int]) -> list[Plan]:
    stages = [spec.stage(stage)] if stage else spec.stages
    out = []
    for s in stages:
        names = [s.variant(v).name for v in variants] if variants else [v.name for v in s.variants]
        out += [Plan(s.name, n, batches, cores) for n in names]
    return out


@contextmanager
def pinned(cores: int, device: str) -> Iterator[None]:
    """Run on `cores` CPUs only: torch's thread pool and the process affinity both."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_aff = os.sched_getaffinity(0)
    allowed = sorted(prev_aff)[:cores]
    torch.set_num_threads(cores)
    os.sched_setaffinity(0, allowed)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        os.sched_setaffinity(0, prev_aff)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def idle_power_w(meter: EnergyMeter, seconds: float) -> float:
    with meter.window() as m:
        time.sleep(seconds)
    return m.watts


def measure(runner: builder.Runner, items: list, settings: ProfilerSettings, meter: EnergyMeter,
            idle_w: float) -> dict:
    """Latency of each batch; energy of the timed runs minus the idle baseline, per batch. A batch is the call a
    replica makes: the variant's own preprocessing, model and postprocessing."""
    sync = _sync(settings.device)
    batch = len(items)
    for _ in range(settings.warmup):
        runner(items)
    sync()
    times: list[float] = []
    with meter.window() as w:
        start = time.perf_counter()
        while len(times) < settings.repeats or time.perf_counter() - start < settings.min_window_s:
            t0 = time.perf_counter()
            runner(items)
            sync()
            times.append(time.perf_counter() - t0)
    dynamic = max(0.0, w.total - idle_w * w.seconds)
    mean = float(np.mean(times))
    return {
        "latency_p50_s": float(np.percentile(times, 50)),
        "latency_p99_s": float(np.percentile(times, 99)),
        "throughput_rps": batch / mean,
        "energy_j_per_batch": dynamic / len(times),
        "energy_method": meter.method,
    }


def variant_pace(spec: PipelineSpec, table: ProfileTable, reference: dict[str, str], device: str = "cpu",
                 min_s: float = 0.5, calls: int = 3, progress: Callable[[str], None] = lambda s: None
                 ) -> dict[str, float]:
    """Each profiled variant alone on one core at batch 1, against its row, over the same for its stage's
    `reference` variant (the one served while the machine's pace was measured), timed just before and just after
    the others: 'stage/variant' -> how much slower than the reference's pace it runs here. A machine's speed is
    not one number across models, and a plan that picks a variant the serving measurement did not run should know
    it. CPU time of this process, so a busy moment of the machine is not read as a slow model."""
    from ipa.models.zoo import pipeline_kinds

    kinds = pipeline_kinds(spec)
    search = builder.search_path(spec)
    out: dict[str, float] = {}
    with pinned(1, device):
        for stage in spec.stages:
            rows = {p.variant: p for p in table.for_stage(stage.name) if p.batch == 1 and p.cores == 1}
            ref = reference.get(stage.name)
            if ref not in rows or len(rows) == 1:  # nothing to time against the served variant
                continue
            items = stage_items(spec, kinds, stage.name, 1)
            runners = {}
            for v in [ref] + [v for v in rows if v != ref]:
                try:
                    runners[v] = builder.build(stage, v, device=device, search=search)
                    runners[v](items)  # the first call allocates
                except Exception as e:  # one variant that does not build here must not lose the measurement
                    progress(f"{stage.name}/{v}: not timed ({e}); it keeps the machine's pace")
                    runners.pop(v, None)
            if ref not in runners or len(runners) == 1:
                continue
            before = cpu_per_call(runners[ref], items, min_s, calls) / rows[ref].cpu_s
            own = {v: cpu_per_call(r, items, min_s, calls) / rows[v].cpu_s for v, r in runners.items() if v != ref}
            after = cpu_per_call(runners[ref], items, min_s, calls) / rows[ref].cpu_s
            base = 0.5 * (before + after)
            for v, ratio in own.items():
                out[f"{stage.name}/{v}"] = ratio / base
            progress(f"{stage.name}: " + ", ".join(f"{v} x{ratio / base:.2f}" for v, ratio in own.items())
                     + f" of {ref}'s pace")
            del runners
    return out


def cpu_per_call(runner: builder.Runner, items: list, min_s: float, calls: int) -> float:
    """The median CPU seconds of one call, over at least `calls` calls and `min_s` seconds: CPU time, so a busy
    moment of the machine is not read as a slow model (`variant_pace`, bench/drift.py)."""
    cpu: list[float] = []
    start = time.perf_counter()
    while len(cpu) < calls or time.perf_counter() - start < min_s:
        c0 = time.process_time()
        runner(items)
        cpu.append(time.process_time() - c0)
    return float(np.median(cpu))


def _sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def run(
    spec: PipelineSpec,
    plan_list: list[Plan],
    out: Path,
    meter: EnergyMeter,
    meter_description: str,
    settings: ProfilerSettings,
    progress: Callable[[str], None] = lambda s: None,
) -> ProfileTable:
    """Profile every plan, writing the CSV after each row so an interrupted run resumes where it stopped.

    Each variant is built by its factory (`ipa.models.builder`: the zoo's, or the one its spec names) and runs
    on what its stage receives in the pipeline (`ipa.models.samples`), made before the timed window; the
    variant's own pre- and post-processing (resizing, tokens, features, decoding) is inside it, as in serving."""
    import torch

    from ipa.models.zoo import pipeline_kinds

    kinds = pipeline_kinds(spec)
    search = builder.search_path(spec)
    earlier = load_profiles(out) if out.is_file() else None
    done = earlier.rows if earlier else []
    have = {(p.stage, p.variant, p.batch, p.cores) for p in done}
    rows = list(done)
    photos_hwc()  # read the photos once, outside every timed window
    meter.start()
    idle_w = idle_power_w(meter, settings.idle_s)
    meta = _meta(meter, meter_description, idle_w, settings) | {"inputs": describe_inputs(spec),
                                                                 "timed": "the batch call a replica makes: the "
                                                                 "variant's preprocessing, model and postprocessing"}
    own = {v.name: v.model for st in spec.stages for v in st.variants if v.model}
    if own:
        meta["models"] = own
    if earlier is not None:
        meta = resumed(earlier.meta, meta, out)
    try:
        for plan in plan_list:
            for c in plan.cores:
                todo = [b for b in plan.batches if (plan.stage, plan.variant, b, c) not in have]
                if not todo:
                    progress(f"{plan.variant} {c} cores: done before")
                    continue
                with pinned(c, settings.device):
                    rss0 = rss_mb()
                    t0 = time.perf_counter()
                    runner = builder.build(spec.stage(plan.stage), plan.variant, weights_dir=settings.weights,
                                           device=settings.device, search=search)
                    runner(stage_items(spec, kinds, plan.stage, 1))
                    _sync(settings.device)()
                    load_s = time.perf_counter() - t0
                    for b in todo:
                        if settings.device.startswith("cuda"):
                            torch.cuda.reset_peak_memory_stats()
                        m = measure(runner, stage_items(spec, kinds, plan.stage, b), settings, meter, idle_w)
                        mem = (torch.cuda.max_memory_allocated() / 2**20 if settings.device.startswith("cuda")
                               else rss_mb() - rss0)
                        rows.append(Profile(plan.stage, plan.variant, b, c, load_s=load_s, memory_mb=mem, **m))
                        ProfileTable(rows, meta, str(out)).save(out)
                        progress(f"{plan.variant} b={b} c={c}: p99 {m['latency_p99_s']:.3f} s, "
                                 f"{m['energy_j_per_batch']:.2f} J/batch" + _resolution_note(m, settings))
                    del runner
    finally:
        meter.stop()
    table = ProfileTable(rows, meta, str(out))
    table.save(out)
    return table


# How rows were measured: a resumed profile's new rows must be measured the same way as its old ones
SAME_WAY = ("repeats", "warmup", "min_window_s", "device", "energy_method", "cpu_model", "torch", "weights")


def resumed(old: dict, new: dict, out: Path) -> dict:
    """The meta of a resumed profile: what the first run measured beside its rows is kept (its idle power, what
    serving costs, its date), and every resume is dated. Rows measured another way are refused, not mixed."""
    def same(key: str, value):
        return "random" if key == "weights" and str(value).startswith("random") else value

    diff = [f"{k} {old[k]!r} (this run: {new[k]!r})" for k in SAME_WAY
            if k in old and k in new and same(k, old[k]) != same(k, new[k])]
    if diff:
        raise ConfigError(f"{out} holds rows measured with {'; '.join(diff)}: resume it with the same settings, or "
                          "write to another --out")
    return new | old | {"models": old.get("models", {}) | new.get("models", {}),
                        "resumed": [*old.get("resumed", []), new["date"]]}


def _resolution_note(m: dict, settings: ProfilerSettings) -> str:
    if m["energy_j_per_batch"] > 0:
        return ""
    return (f"  [warning: no energy above idle in a {settings.min_window_s:g} s window: below the meter's resolution; "
            "raise --min-window]")


def _meta(meter: EnergyMeter, description: str, idle_w: float, settings: ProfilerSettings) -> dict:
    import torch

    cpus = len(os.sched_getaffinity(0))
    meta = {
        "machine": platform.node(),
        "cpu_model": _cpu_model(),
        "cpus": cpus,
        "device": settings.device,
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "meter": description,
        "energy_method": meter.method,
        "idle_power_w": idle_w,
        "idle_power_w_per_core": _idle_per_core(meter, idle_w, cpus),
        "repeats": settings.repeats,
        "min_window_s": settings.min_window_s,
        "warmup": settings.warmup,
        "weights": settings.weights or "random (torchvision weights=None, SAM checkpoint=None; a variant's own "
                                        "weights: where the spec gives them): latency and "
                                        "energy are real, accuracy is the published figure",
    }
    if settings.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(0)
    return meta | settings.meta_extra


def describe_inputs(spec: PipelineSpec) -> str:
    """What the variants were fed, for the meta file."""
    from ipa.models.samples import sample_set
    from ipa.models.zoo import pipeline_kinds

    kinds = pipeline_kinds(spec)
    source = sample_set(spec, kinds)
    caps = ", ".join(f"{s.name} generates {s.max_new_tokens} tokens" for s in spec.stages if s.max_new_tokens)
    text = {
        "photos": "scikit-learn sample photos (china.jpg, flower.jpg), 427x640, as RGB arrays; zoo classifiers "
                  "resize to 256 and centre-crop 224; SAM: the photo resized to 1024 on its long side, its middle "
                  "half as the box prompt",
        "speech": "the LibriSpeech clip 1272-128104-0000 (5.86 s, 16 kHz, float32 samples)",
        "english": "ipa.models.corpus.ENGLISH paragraphs (about 230 words)",
        "french": "ipa.models.corpus.FRENCH passages (45-55 words)",
    }[source]
    if caps:
        text += f"; {caps}, and the next stage reads as many words"
    if "question-answering" in kinds:
        text += "; question answering: that text as the question, ipa.models.corpus.QA_CONTEXT as the context"
    if any(k not in ("detection", "classification", "segmentation") for k in kinds):
        text += ("; zoo variants with random weights: words hashed into each variant's vocabulary, speech as "
                 "80-bin log-mel features in numpy; with a checkpoint folder: its own tokenizer and feature "
                 "extractor (ipa.models.hf)")
    return text


def _idle_per_core(meter: EnergyMeter, idle_w: float, cpus: int) -> float:
    """Idle watts per core: measured for a CPU meter; the estimate's constant when the meter is a GPU's."""
    from ipa.energy.estimate import IDLE_W_PER_CORE, EstimateMeter

    if isinstance(meter, EstimateMeter):
        return meter.idle_w
    if meter.method == "nvml":
        return IDLE_W_PER_CORE
    return idle_w / max(1, os.cpu_count() or cpus)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


__all__ = ["Plan", "ProfilerSettings", "meta_path", "plans", "run"]
