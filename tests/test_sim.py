import numpy as np
import pytest

from ipa.adapt import LoopSettings, adapt
from ipa.optimize import make_problem, solve
from ipa.predict.simple import Window, WindowMax
from ipa.runtime.admission import AdmissionSettings
from ipa.runtime.sim import SimSettings, Simulator
from ipa.spec import StageConfig


def config(detect=("small", 1, 1, 1), classify=("r18", 1, 1, 1)):
    return {"detect": StageConfig(*detect), "classify": StageConfig(*classify)}


def run(tiny, rps, cfg=None, seed=0, settings=None, until=None):
    spec, table = tiny
    sim = Simulator(spec, table, 3.0, np.asarray(rps, dtype=float), settings, seed)
    sim.start(cfg or config())
    sim.run_until(until or len(rps))
    return sim


def test_every_arrival_is_completed_dropped_or_in_flight(tiny):
    sim = run(tiny, [5, 40, 80, 3, 0, 12] * 10)
    r = sim.result()
    assert r.arrivals == int(np.sum([5, 40, 80, 3, 0, 12] * 10))
    assert r.completed + r.dropped + r.in_flight == r.arrivals
    assert r.series["arrivals"].sum() == r.arrivals and r.series["completions"].sum() == r.completed


def test_zero_load_costs_only_idle_energy(tiny):
    r = run(tiny, [0] * 30, cfg=config(("small", 1, 2, 1), ("r18", 1, 1, 2))).result()
    assert r.series["energy_dynamic_j"].sum() == 0
    # 2 replicas x 1 core + 1 replica x 2 cores = 4 cores at 3 W for 30 s
    assert r.series["energy_j"].sum() == pytest.approx(4 * 3.0 * 30)
    assert r.series["core_seconds"].sum() == pytest.approx(4 * 30)


def test_load_beyond_capacity_drops_and_violates_instead_of_hanging(tiny):
    r = run(tiny, [500] * 20).result()
    assert r.dropped > 0 and r.series["violations"].sum() >= r.dropped
    assert r.completed + r.dropped + r.in_flight == r.arrivals


def test_light_load_meets_the_sla(tiny):
    r = run(tiny, [2] * 60).result()
    assert r.dropped == 0 and r.series["violations"].sum() == 0
    assert np.all(r.latencies < tiny[0].sla_s)


def test_fixed_seed_gives_identical_results_and_other_seeds_differ(tiny):
    a, b, c = (run(tiny, [15] * 60, seed=s).result() for s in (1, 1, 2))
    assert np.array_equal(a.latencies, b.latencies) and a.series["energy_j"].sum() == b.series["energy_j"].sum()
    assert not np.array_equal(a.latencies, c.latencies)


def test_config_change_takes_effect_after_the_load_delay(tiny):
    spec, table = tiny
    sim = Simulator(spec, table, 3.0, np.full(20, 4.0), seed=0)
    sim.start(config())
    sim.run_until(5)
    sim.apply(config(("big", 1, 3, 1)))  # the big detector's profiled load time is 1.5 s
    # admission plans with the new config at once, as the real ingress does; the replicas serve it later
    assert sim.admission.stages[0].replicas == 3
    assert sim.admission.stages[0].batch_s == pytest.approx(table.lookup("detect", "big", 1, 1).p50)
    sim.run_until(6)
    assert sim.stages[0].cfg.variant == "small" and sim.stages[0].pending is not None
    sim.run_until(7)
    assert sim.stages[0].cfg.variant == "big" and sim.stages[0].pending is None


def test_old_and_new_config_are_both_reserved_during_the_switch(tiny):
    spec, table = tiny
    sim = Simulator(spec, table, 3.0, np.zeros(10), seed=0)
    sim.start(config())
    sim.run_until(2)
    sim.apply(config(("big", 1, 1, 1)))
    sim.run_until(10)
    cores = sim.result().series["core_seconds"]
    assert cores[1] == pytest.approx(2) and cores[2] == pytest.approx(3) and cores[4] == pytest.approx(2)


def test_batch_change_is_immediate(tiny):
    spec, table = tiny
    sim = Simulator(spec, table, 3.0, np.full(10, 4.0), seed=0)
    sim.start(config())
    sim.run_until(3)
    sim.apply(config(("small", 4, 1, 1)))
    assert sim.stages[0].cfg.batch == 4


def test_batch_timeout_sends_partial_batches(tiny):
    # one request per second, batch 8: without the timeout nothing would complete for 8 s
    r = run(tiny, [1] * 10, cfg=config(("small", 8, 1, 1)), settings=SimSettings(batch_timeout_s=0.2)).result()
    assert r.completed >= 8 and r.latencies.max() < 1.0


def test_pas_is_the_product_of_serving_variants(tiny):
    r = run(tiny, [3] * 10, cfg=config(("big", 1, 1, 1), ("r50", 1, 1, 1))).result()
    assert r.completed_pas == pytest.approx(np.full(r.completed, 0.40 * 0.76))


def test_adapt_loop_follows_the_load_and_records_decisions(tiny):
    spec, table = tiny
    rps = np.concatenate([np.full(60, 2.0), np.full(60, 60.0)])
    sim = Simulator(spec, table, 3.0, rps, seed=0)
    problem = make_problem("ipa", spec, table)
    records = adapt(sim, problem, WindowMax(30), len(rps), LoopSettings(interval_s=10), initial_rate=2)
    assert len(records) == 12 and all("config" in r for r in records)
    early = sum(c["replicas"] * c["cores"] for c in records[2]["config"].values())
    late = sum(c["replicas"] * c["cores"] for c in records[-1]["config"].values())
    assert late > early


def test_adapt_loop_keeps_config_when_the_predictor_fails(tiny):
    spec, table = tiny

    class Flaky(Window):
        calls = 0

        def __init__(self):
            super().__init__("max", np.max)

        def predict(self, history):
            Flaky.calls += 1
            if Flaky.calls == 3:
                raise RuntimeError("model server down")
            return super().predict(history)

    sim = Simulator(spec, table, 3.0, np.full(60, 5.0), seed=0)
    records = adapt(sim, make_problem("ipa", spec, table), Flaky(), 60, LoopSettings(interval_s=10), initial_rate=5)
    assert "error" in records[2] and len(records) == 6
    assert sim.result().completed > 0


def test_oracle_objective_bounds_feasible_policies(tiny):
    spec, table = tiny
    for load in (3, 17, 44):
        ipa = solve(make_problem("ipa", spec, table), load)
        assert ipa.feasible, load
        for policy in ("fa2-low", "fa2-high", "rim-high"):
            d = solve(make_problem(policy, spec, table), load)
            scored = make_problem("ipa", spec, table).assess_config(d.config, load)
            assert scored.feasible, (load, policy)  # every baseline holds these loads: the bound is checked each time
            assert scored.objective <= ipa.assessment.objective + 1e-9, (load, policy)


# -- shared CPUs (processor sharing) -----------------------------------------------------------------


def exact(table):
    """The same table with no spread: every batch takes its p50, so times can be checked by hand."""
    from dataclasses import replace

    from ipa.profiles.table import ProfileTable

    return ProfileTable([replace(p, latency_p99_s=p.p50) for p in table.rows], table.meta, table.source)


def one_request(tiny, settings, serving=None):
    spec, table = tiny
    sim = Simulator(spec, exact(table), 3.0, np.array([1.0] + [0.0] * 9), settings, seed=0, serving=serving)
    sim.start(config())
    sim.run_until(10)
    return sim.result()


def test_a_lone_request_with_cpus_to_spare_takes_what_it_takes_on_its_own_cores(tiny):
    alone = one_request(tiny, SimSettings()).latencies
    shared = one_request(tiny, SimSettings(cpus=1)).latencies  # its two batches run one after the other
    assert len(alone) == 1 and shared == pytest.approx(alone)
    assert alone[0] == pytest.approx(0.05 * 0.9 + 0.02 * 0.9)  # the two p50s


def test_serving_that_takes_cpu_slows_every_batch_by_the_share_left(tiny):
    from ipa.profiles.serving import ServingCost

    # one CPU, serving takes half a core: a 1-core batch gets 1 / 1.5 of its pace
    r = one_request(tiny, SimSettings(cpus=1), ServingCost(cpu_fixed_cores=0.5))
    assert r.latencies[0] == pytest.approx((0.05 * 0.9 + 0.02 * 0.9) * 1.5)
    # on two CPUs serving keeps each busy a quarter of the time: the batch finds both taken 1/16 of its time
    # and shares one then
    r = one_request(tiny, SimSettings(cpus=2), ServingCost(cpu_fixed_cores=0.5))
    assert r.latencies[0] == pytest.approx((0.05 * 0.9 + 0.02 * 0.9) / (1 - 0.5 / 16))


def test_the_shared_rate_slows_a_batch_below_saturation_and_shares_fairly_past_it():
    from ipa.machine.contention import shared_rate

    assert shared_rate(1.0, 1.0, 2) == 1.0  # alone on the machine
    # the 2-core VM's cells (2026-12-03): a detector at 0.8 busy cores beside 1.0 of the rest took 1.13-1.18x
    # its CPU, a classifier at 0.55 beside 1.25 took 1.16-1.25x
    assert 1 / shared_rate(1.8, 0.8, 2) == pytest.approx(1.14, abs=0.01)
    assert 1 / shared_rate(1.8, 0.55, 2) == pytest.approx(1.24, abs=0.01)
    assert shared_rate(4.0, 1.0, 2) == pytest.approx(0.5)  # past saturation: at most cpus / demand
    assert shared_rate(3.0, 1.0, 16) == pytest.approx(1.0, abs=1e-6)  # a large machine with room has no wait


def test_replicas_sharing_cpus_never_use_more_than_there_are(tiny):
    """Two 1-core replicas on one CPU: the pipeline holds 1 / (0.045 + 0.018) = 15.9 rps, not the detector's 22."""
    spec, table = tiny
    table = exact(table)
    rps = np.full(60, 20.0)
    off = AdmissionSettings(enabled=False)
    own = Simulator(spec, table, 3.0, rps, SimSettings(drop_limit_s=100), seed=0, admission=off)
    one = Simulator(spec, table, 3.0, rps, SimSettings(drop_limit_s=100, cpus=1), seed=0, admission=off)
    for sim in (own, one):
        sim.start(config())
        sim.run_until(60)
    done_own, done_one = (s.result().series["completions"][10:].mean() for s in (own, one))
    assert done_own == pytest.approx(20.0, rel=0.1)  # each replica has its core: the load is held
    assert done_one == pytest.approx(1 / (0.045 + 0.018), rel=0.05)  # work-conserving: the CPU is full
    assert sum(t.cpu_s for t in one.batch_timings()) <= 1.0 * 60 + 1e-6  # the CPU seconds burned fit in one CPU


def test_a_wall_time_measured_on_a_busy_machine_is_not_slowed_twice(tiny):
    """A calibrated row whose batches burned their core half the wall time (the rest waiting for it) runs at its
    CPU time on a machine with CPUs to spare."""
    from dataclasses import replace

    from ipa.profiles.table import ProfileTable

    spec, table = tiny
    busy = ProfileTable([replace(p, cpu_s_per_batch=p.cores * p.p50 / 2, cpu_share=1.0) for p in exact(table).rows],
                        table.meta, "calibrated on a busy machine")
    for cpus, expected in ((None, 0.05 * 0.9 + 0.02 * 0.9), (4, (0.05 * 0.9 + 0.02 * 0.9) / 2)):
        sim = Simulator(spec, busy, 3.0, np.array([1.0] + [0.0] * 9), SimSettings(cpus=cpus), seed=0)
        sim.start(config())
        sim.run_until(10)
        assert sim.result().latencies[0] == pytest.approx(expected)


def test_answers_draw_servings_latency_from_what_a_run_measured(tiny):
    spec, table = tiny
    cfg = config(("small", 1, 4, 1), ("r18", 1, 4, 1))  # replicas to spare: nothing waits
    models = 0.05 * 0.9 + 0.02 * 0.9
    sims = {}
    for name, settings in (("constant", SimSettings(serving_latency_s=0.05)),
                           ("measured", SimSettings(serving_latency_s=0.05, serving_latency_spread_s=(0.05, 0.2)))):
        sim = Simulator(spec, exact(table), 3.0, np.full(300, 2.0), settings, seed=0)
        sim.start(cfg)
        sim.run_until(300)
        sims[name] = sim.result().latencies - models
    assert np.allclose(sims["constant"], 0.05)
    p50, p99 = np.percentile(sims["measured"], [50, 99])
    assert p50 == pytest.approx(0.05, rel=0.1) and p99 == pytest.approx(0.2, rel=0.25)


def test_a_measured_pace_puts_a_slow_spell_where_the_run_had_it(tiny):
    """Batches take their row's p50 times the pace the run measured then: three times slower in [0, 10)."""
    spec, table = tiny
    arrivals = np.zeros(20)
    arrivals[[5, 15]] = 1.0
    slow = (np.array([10.0, 20.0]), np.array([3.0, 1.0]))  # batches that ended at 10 s and 20 s
    sim = Simulator(spec, exact(table), 3.0, arrivals, SimSettings(), seed=0, pace={"detect": slow, "classify": slow})
    sim.start(config())
    sim.run_until(20)
    first, second = sim.result().latencies
    assert first == pytest.approx(3 * (0.05 * 0.9 + 0.02 * 0.9)) and second == pytest.approx(0.05 * 0.9 + 0.02 * 0.9)


def test_simulated_batches_say_when_they_ended(tiny):
    sim = run(tiny, [5] * 10)
    ends = [t.t_s for t in sim.batch_timings()]
    assert ends and ends == sorted(ends) and 0 < ends[0] and ends[-1] <= 10


def test_a_replicas_own_overhead_per_batch_holds_the_replica_and_the_request_but_not_the_models_time(tiny):
    from ipa.profiles.serving import ServingCost

    overhead = ServingCost(batch_overhead_s={"detect": 0.004, "classify": 0.002})
    for settings in (SimSettings(serving_latency_s=0.01), SimSettings(serving_latency_s=0.01, cpus=2)):
        plain = one_request(tiny, settings)
        r = one_request(tiny, settings, overhead)
        # the replicas' overheads are served in them, and taken out of serving's latency, which measured them
        assert r.latencies[0] == pytest.approx(plain.latencies[0])
        assert r.latencies[0] == pytest.approx(0.05 * 0.9 + 0.02 * 0.9 + 0.01)
        alone = one_request(tiny, settings.model_copy(update={"serving_latency_s": 0.0}), overhead)
        assert alone.latencies[0] == pytest.approx(0.05 * 0.9 + 0.02 * 0.9 + 0.006)  # no serving latency to take from
    # saturated: a replica serves one batch per model time plus its overhead
    spec, table = tiny
    rps = np.full(30, 200.0)
    rates = []
    for serving in (ServingCost(), ServingCost(batch_overhead_s={"detect": 0.045})):
        sim = Simulator(spec, exact(table), 3.0, rps, SimSettings(), seed=0, serving=serving)
        sim.start(config())
        sim.run_until(30)
        timings = [t for t in sim.batch_timings() if t.stage == "detect"]
        rates.append(sum(t.size for t in timings))
        assert timings and all(t.seconds == pytest.approx(0.05 * 0.9) for t in timings)  # the model's time only
    assert rates[1] / rates[0] == pytest.approx(0.5, rel=0.05)  # 45 ms of model + 45 ms of overhead


def test_the_machines_speed_over_time_slows_every_batch_drawn_in_its_span(tiny):
    """A prediction's machine: three times slower in [0, 10), as fast as its rows from 10 s on."""
    spec, table = tiny
    arrivals = np.zeros(20)
    arrivals[[5, 15]] = 1.0
    speed = (np.array([0.0, 10.0]), np.array([3.0, 1.0]))
    sim = Simulator(spec, exact(table), 3.0, arrivals, SimSettings(), seed=0, speed=speed)
    sim.start(config())
    sim.run_until(20)
    first, second = sim.result().latencies
    assert first == pytest.approx(3 * (0.05 * 0.9 + 0.02 * 0.9)) and second == pytest.approx(0.05 * 0.9 + 0.02 * 0.9)



def test_a_batch_waits_on_the_others_mean_demand_as_the_contention_model_was_fitted(tiny, monkeypatch):
    """The model was fitted on each cell's mean busy cores. A simulated stage at a steady load is stretched about
    as much as the model says at the mean demand, plus the instants both batches and serving ask for more CPUs than
    there are (shared fairly then); not by the model's square at every instant two batches overlap."""
    import ipa.runtime.sim.core as sim_module
    from ipa.machine.contention import shared_rate
    from ipa.profiles.serving import ServingCost

    spec, table = tiny
    table = exact(table)
    serving = ServingCost(cpu_fixed_cores=0.3)
    off = AdmissionSettings(enabled=False)

    def stretch() -> tuple[dict[str, float], float]:
        sim = Simulator(spec, table, 3.0, np.full(60, 14.0), SimSettings(drop_limit_s=100, cpus=2), seed=0,
                        admission=off, serving=serving)
        sim.start(config())
        timings = []
        for t in range(10, 61, 10):
            sim.run_until(t)
            timings += sim.batch_timings()
        busy = sum(t.cpu_s for t in timings) / 60 + serving.cpu_fixed_cores
        return {stage: sum(t.seconds for t in timings if t.stage == stage) / sum(
            t.cpu_s for t in timings if t.stage == stage) for stage in ("detect", "classify")}, busy

    mean, busy = stretch()
    # the others' demand at each instant, as before
    monkeypatch.setattr(sim_module, "shared_rate", lambda demand, own, cpus, around=None: shared_rate(demand, own, cpus))
    instant, _ = stretch()
    for stage in mean:
        assert 1 / shared_rate(busy, 1.0, 2) < mean[stage] < instant[stage]
    assert instant["detect"] - mean["detect"] > 0.02  # 1.08 against 1.05 (the model at the mean: 1.01)


def test_a_partial_batch_costs_the_line_between_the_profiled_batches_either_side(tiny):
    """Three requests in a detector of batch 4 go as one batch of 3: its time and joules lie halfway between the
    rows of 2 and 4, not at the row of 4."""
    from ipa.profiles.table import row_at

    spec, table = tiny
    spec = spec.model_copy(update={"sla_s": 10.0})
    table = exact(table)
    sim = Simulator(spec, table, 3.0, np.array([3.0, 0, 0, 0, 0]), SimSettings(batch_timeout_s=1.0), seed=0)
    sim.start(config(detect=("small", 4, 1, 1)))
    sim.run_until(5)
    (three,) = [t for t in sim.batch_timings() if t.stage == "detect"]
    two, four = (table.lookup("detect", "small", b, 1) for b in (2, 4))
    assert three.size == 3 and three.seconds == pytest.approx((two.p50 + four.p50) / 2)
    assert three.seconds < four.p50
    classify = 3 * table.lookup("classify", "r18", 1, 1).energy_j_per_batch
    assert sim.result().series["energy_dynamic_j"].sum() == pytest.approx(
        (two.energy_j_per_batch + four.energy_j_per_batch) / 2 + classify)
    assert row_at(table.batches("detect", "small", 1), 3).energy_j_per_batch == pytest.approx(
        (two.energy_j_per_batch + four.energy_j_per_batch) / 2)
    assert row_at(table.batches("detect", "small", 1), 9) is None  # past the largest row: no cost known
    assert row_at(table.batches("detect", "small", 1), 4) is four
