"""Online calibration: measured batch times correct the profile values plans are made with."""

from __future__ import annotations

import numpy as np
import pytest

from ipa.adapt import LoopSettings, adapt
from ipa.optimize import make_problem
from ipa.predict.simple import WindowMax
from ipa.profiles.calibration import BatchTiming, CalibrationSettings, Calibrator
from ipa.runtime.sim import SimSettings, Simulator


def timings(stage, variant, ratio, table, n=5, size=1, cores=1):
    p50 = table.lookup(stage, variant, size, cores).p50
    return [BatchTiming(stage, variant, cores, size, p50 * ratio) for _ in range(n)]


def test_a_variant_measured_slower_is_planned_slower(tiny):
    _, table = tiny
    c = Calibrator(table)
    c.observe(timings("classify", "r50", 1.8, table))
    row = c.table.lookup("classify", "r50", 4, 2)
    raw = table.lookup("classify", "r50", 4, 2)
    assert row.latency_p99_s == pytest.approx(raw.latency_p99_s * 1.8)
    assert row.throughput_rps == pytest.approx(raw.throughput_rps / 1.8)
    assert row.energy_j_per_batch == raw.energy_j_per_batch
    assert c.ratios()["classify/r50"] == pytest.approx(1.8)


def test_unmeasured_variants_borrow_their_stages_ratio_then_the_pipelines(tiny):
    _, table = tiny
    c = Calibrator(table)
    c.observe(timings("classify", "r50", 2.0, table))
    assert c.ratios()["classify/r18"] == pytest.approx(2.0)  # same stage
    assert c.ratios()["detect/big"] == pytest.approx(2.0)  # the pipeline's, no detector measured yet
    c.observe(timings("detect", "small", 1.2, table))
    assert c.ratios()["detect/big"] == pytest.approx(1.2)  # now its own stage's


def test_the_ratio_is_robust_bounded_and_ignores_noise(tiny):
    _, table = tiny
    c = Calibrator(table, CalibrationSettings(bounds=(0.5, 3.0), tolerance=0.05))
    c.observe(timings("detect", "small", 1.5, table, n=9) + timings("detect", "small", 40.0, table, n=2))
    assert c.ratios()["detect/small"] == pytest.approx(1.5)  # the median ignores two stalled batches
    c.observe(timings("detect", "small", 1.52, table, n=20))
    assert c.ratios()["detect/small"] == pytest.approx(1.5)  # within the tolerance: no move
    c.observe(timings("detect", "small", 10.0, table, n=40))
    assert c.ratios()["detect/small"] == 3.0  # bounded
    few = Calibrator(table)
    few.observe(timings("detect", "small", 2.0, table, n=2))  # below min_batches
    assert few.ratios() == {}


def test_a_partial_batch_is_judged_against_the_line_between_its_neighbouring_rows(tiny):
    _, table = tiny
    c = Calibrator(table)
    two, four = (table.lookup("classify", "r18", b, 2).p50 for b in (2, 4))
    assert two < four
    c.observe([BatchTiming("classify", "r18", 2, 3, (two + four) / 2 * 1.3)] * 4)  # a batch of 3: halfway
    assert c.ratios()["classify/r18"] == pytest.approx(1.3)


def test_disabled_calibration_learns_but_plans_with_the_profiles(tiny):
    _, table = tiny
    c = Calibrator(table, CalibrationSettings(enabled=False))
    c.observe(timings("detect", "small", 2.0, table))
    assert c.table is table
    assert c.learned.lookup("detect", "small", 1, 1).latency_p99_s == pytest.approx(
        2.0 * table.lookup("detect", "small", 1, 1).latency_p99_s)


def violations_per_interval(tiny, enabled: bool, load=40.0, seconds=120):
    """ipa plans with the tiny profiles while the simulated machine is twice as slow."""
    spec, table = tiny
    sim = Simulator(spec, table, 3.0, np.full(seconds, load), SimSettings(true_scale=2.0), seed=3)
    calibrator = Calibrator(table, CalibrationSettings(enabled=enabled))
    records = adapt(sim, make_problem("ipa", spec, table), WindowMax(10), seconds, LoopSettings(interval_s=10),
                    initial_rate=load, calibrator=calibrator)
    s = sim.result().series
    per = s["violations"].reshape(-1, 10).sum(1) / s["arrivals"].reshape(-1, 10).sum(1) * 100
    return per, records


def test_profiles_twice_too_fast_are_corrected_within_three_intervals(tiny):
    calibrated, records = violations_per_interval(tiny, enabled=True)
    stale, _ = violations_per_interval(tiny, enabled=False)
    assert calibrated[0] > 5  # the first interval runs on the wrong profiles
    assert np.all(calibrated[3:] <= 5), calibrated
    assert np.all(stale[3:] > 5), stale  # without calibration it never recovers
    assert records[-1]["calibration"]["detect/small"] == pytest.approx(2.0, rel=0.1)
    assert records[0]["capacity_rps"] >= 40 > records[0]["capacity_rps"] / 2  # planned on the wrong profiles


def test_cpu_is_calibrated_apart_from_time(tiny):
    """Under contention a batch waits for a core: slower than profiled, without burning more CPU."""
    _, table = tiny
    raw = table.lookup("detect", "small", 1, 1)
    c = Calibrator(table)
    c.observe([BatchTiming("detect", "small", 1, 1, raw.p50 * 2.0, raw.cpu_s * 1.2)] * 5)
    row = c.table.lookup("detect", "small", 1, 1)
    assert row.p50 == pytest.approx(raw.p50 * 2.0)
    assert row.cpu_s == pytest.approx(raw.cpu_s * 1.2)
    assert c.cpu_ratios()["detect/small"] == pytest.approx(1.2)
    assert row.energy_j_per_batch == pytest.approx(raw.energy_j_per_batch * 1.2)  # joules follow CPU, not the wait


def test_the_measured_spread_sets_the_p99(tiny):
    _, table = tiny
    raw = table.lookup("classify", "r18", 1, 1)
    c = Calibrator(table, CalibrationSettings(spread_batches=10, window=100))
    ratios = np.concatenate([np.full(90, 1.0), np.full(10, 3.0)])  # one batch in ten takes three times as long
    c.observe([BatchTiming("classify", "r18", 1, 1, raw.p50 * r) for r in ratios])
    row = c.table.lookup("classify", "r18", 1, 1)
    assert row.p50 == pytest.approx(raw.p50)
    assert row.latency_p99_s == pytest.approx(raw.p50 * 3.0)


def test_it_learns_the_cpu_share_a_batch_keeps_when_it_has_its_cores(tiny):
    """Batches timed on a busy machine: most waited for a core; the few that did not show the share."""
    _, table = tiny
    p50 = table.lookup("detect", "small", 1, 1).p50
    c = Calibrator(table)
    busy = [BatchTiming("detect", "small", 1, 1, 2 * p50, p50) for _ in range(16)]  # half the wall on the CPU
    free = [BatchTiming("detect", "small", 1, 1, p50, 0.95 * p50) for _ in range(4)]  # nearly all of it
    c.observe(busy + free)
    row = c.table.lookup("detect", "small", 1, 1)
    assert row.p50 == pytest.approx(2 * p50)  # the wall time as served: the median
    assert row.cpu_share == pytest.approx(0.95)  # the 90th percentile of CPU / wall
    assert row.alone_s == pytest.approx(p50 / 0.95)  # its CPU time at that share: the wait for a core left out
    assert table.lookup("detect", "small", 1, 1).alone_s == table.lookup("detect", "small", 1, 1).p50


def test_a_whole_run_is_measured_from_all_its_batches_not_the_last_window(tiny):
    from ipa.profiles.calibration import measured

    _, table = tiny
    run = timings("detect", "small", 1.0, table, n=60) + timings("detect", "small", 2.0, table, n=40)
    online = Calibrator(table)
    online.observe(run)
    assert online.ratios()["detect/small"] == pytest.approx(2.0)  # the last 32 batches: what plans need now
    whole = measured(table, run).lookup("detect", "small", 1, 1)
    assert whole.p50 == pytest.approx(table.lookup("detect", "small", 1, 1).p50)  # the median of all 100


@pytest.mark.filterwarnings("ignore:coroutine 'StageReplica.__del__' was never awaited")  # Serve awaits it
def test_a_batch_run_while_its_replica_loads_another_model_does_not_claim_that_models_cpu():
    """The replica's batches are timed with its process's CPU; a load beside them burns in the same process."""
    import asyncio
    import time
    from pathlib import Path

    from ipa.runtime.ray.replica import StageReplica
    from ipa.spec import load_pipeline

    spec = load_pipeline(Path(__file__).resolve().parents[1] / "configs" / "pipelines" / "video.yaml")
    stage = next(s for s in spec.stages if s.name == "classify").model_dump()
    item = np.full((64, 64, 3), 127, np.uint8)

    replica = StageReplica.func_or_class(stage)
    run = StageReplica.func_or_class.infer.__wrapped__  # one batch, without Serve's batch queue around it

    async def batch() -> dict:
        return (await run(replica, [item], [time.time() + 60], [time.time()]))[0]

    async def serve() -> tuple[dict, list[dict], dict]:
        await replica.reconfigure({"variant": "resnet18", "batch": 1, "cores": 1, "batch_wait_s": 0.0})
        before = await batch()
        load = asyncio.create_task(replica.reconfigure({"variant": "resnet50", "batch": 1, "cores": 1,
                                                        "batch_wait_s": 0.0}))
        during = []
        while not load.done():
            during.append(await batch())
        await load
        return before, during, await batch()

    before, during, after = asyncio.run(serve())
    assert before["timing"]["cpu_s"] > 0 and after["timing"]["cpu_s"] > 0 and after["variant"] == "resnet50"
    assert during and all(d["timing"]["cpu_s"] is None and d["timing"]["seconds"] > 0 for d in during)
