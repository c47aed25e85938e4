"""The simulator as a prediction of real serving: serving's energy, the machine's idle draw and pace, and the
predicted column beside the twin and the real run."""

import csv

import numpy as np
import pytest

from ipa.errors import ConfigError, ProfileError
from ipa.experiment import fidelity
from ipa.machine.measure import machine_pace, served_spread
from ipa.machine.speed import MachineSpeed
from ipa.machine.speed import from_meta as speed_from_meta
from ipa.optimize import make_problem
from ipa.profiles.calibration import BatchTiming
from ipa.profiles.serving import ServingCost, from_meta
from ipa.runtime.sim import SimSettings, Simulator
from ipa.spec import StageConfig

CONFIG = {"detect": StageConfig("small", 1, 1, 1), "classify": StageConfig("r18", 1, 1, 1)}
SERVING = ServingCost(latency_s=0.01, cpu_fixed_cores=0.2, cpu_per_request_s=0.01, client_cpu_per_request_s=0.002)


def simulate(tiny, rps, settings=None, serving=None):
    spec, table = tiny
    sim = Simulator(spec, table, 3.0, np.asarray(rps, dtype=float), settings, seed=0, serving=serving)
    sim.start(CONFIG)
    sim.run_until(len(rps))
    return sim.result()


def test_joules_per_cpu_second_is_the_rows_median(tiny):
    _, table = tiny
    ratios = sorted(p.energy_j_per_batch / p.cpu_s for p in table.rows)
    assert table.joules_per_cpu_second == pytest.approx(ratios[len(ratios) // 2])


def test_serving_costs_its_cpu_at_the_profiles_joules_per_cpu_second(tiny):
    rps = [4] * 20
    alone = simulate(tiny, rps).series
    served = simulate(tiny, rps, serving=SERVING).series
    j = tiny[1].joules_per_cpu_second
    admitted = served["arrivals"] - served["rejected"]
    assert served["energy_serving_j"] == pytest.approx((0.2 + 0.01 * admitted) * j)  # no client: not on the machine
    assert served["energy_j"] == pytest.approx(served["energy_idle_j"] + served["energy_dynamic_j"]
                                               + served["energy_serving_j"])
    assert served["energy_j"].sum() > alone["energy_j"].sum()
    client = simulate(tiny, rps, serving=SERVING.with_client(True)).series
    assert client["serving_cpu_s"] - served["serving_cpu_s"] == pytest.approx(0.002 * client["arrivals"])


def test_a_known_machine_draws_every_cores_idle_power_whatever_is_reserved(tiny):
    reserved = simulate(tiny, [0] * 10).series  # 2 one-core replicas at 3 W
    assert reserved["energy_idle_j"] == pytest.approx(np.full(10, 2 * 3.0))
    machine = simulate(tiny, [0] * 10, SimSettings(cpus=8)).series
    assert machine["energy_idle_j"] == pytest.approx(np.full(10, 8 * 3.0))
    assert machine["core_seconds"] == pytest.approx(reserved["core_seconds"])  # the cost is still what is reserved


def test_the_plan_counts_serving_power_and_ipa_energy_weighs_it(tiny):
    spec, table = tiny
    j = table.joules_per_cpu_second
    plain = make_problem("ipa", spec, table).assess_config(CONFIG, 10)
    served = make_problem("ipa", spec, table, serving=SERVING).assess_config(CONFIG, 10)
    assert served.power_w - plain.power_w == pytest.approx(SERVING.cores(10) * j)
    assert served.objective == pytest.approx(plain.objective)  # delta 0: power does not count
    energy = make_problem("ipa-energy", spec, table, serving=SERVING)
    bare = make_problem("ipa-energy", spec, table)
    assert (bare.assess_config(CONFIG, 10).objective - energy.assess_config(CONFIG, 10).objective
            == pytest.approx(energy.weights.delta * SERVING.cores(10) * j))


def test_machine_pace_is_the_median_cpu_ratio_and_falls_back_to_wall_time(tiny):
    _, table = tiny
    row = table.lookup("detect", "small", 1, 1)
    batches = [BatchTiming("detect", "small", 1, 1, row.p50 * 3, row.cpu_s * r) for r in (1.5, 2.0, 9.0)]
    assert machine_pace(table, batches) == (pytest.approx(2.0), 3)  # CPU, not the wall time's wait
    assert machine_pace(table, [BatchTiming("detect", "small", 1, 1, row.p50 * 1.7)])[0] == pytest.approx(1.7)
    assert machine_pace(table, [BatchTiming("detect", "unknown", 1, 1, 0.1)]) is None


def test_a_paced_table_does_every_rows_work_slower_and_pays_for_it(tiny):
    _, table = tiny
    paced = MachineSpeed(pace=2.0, source="today").table(table)
    for old, new in zip(table.rows, paced.rows):
        assert new.p50 == pytest.approx(2 * old.p50) and new.latency_p99_s == pytest.approx(2 * old.latency_p99_s)
        assert new.throughput_rps == pytest.approx(old.throughput_rps / 2)
        assert new.cpu_s == pytest.approx(2 * old.cpu_s)  # not 4x: a row without measured CPU counts once
        assert new.energy_j_per_batch == pytest.approx(2 * old.energy_j_per_batch)
    assert "x2.00" in paced.source and MachineSpeed().table(table) is table


def test_each_served_variants_pace_is_its_own_batches_over_all_of_theirs(tiny):
    from ipa.machine.measure import served_paces

    _, table = tiny
    det, cls = table.lookup("detect", "small", 1, 1), table.lookup("classify", "r18", 1, 1)
    batches = ([BatchTiming("detect", "small", 1, 1, det.p50, det.cpu_s * 1.2)] * 11
               + [BatchTiming("classify", "r18", 1, 1, cls.p50, cls.cpu_s * 1.0)] * 10)
    pooled = machine_pace(table, batches)[0]
    assert pooled == pytest.approx(1.2)  # the median of 21 batches, 11 of them the detector's
    assert served_paces(table, batches) == {"detect/small": pytest.approx(1.0), "classify/r18": pytest.approx(1 / 1.2)}
    assert served_paces(table, batches[:11] + batches[-3:]) == {"detect/small": pytest.approx(1.0)}  # 3 say nothing
    assert served_paces(table, []) == {}


def test_served_spread_is_each_stages_tail_over_its_own_median(tiny):
    _, table = tiny
    det, cls = table.lookup("detect", "small", 1, 1), table.lookup("classify", "r18", 1, 1)
    # each stage at its own pace; three batches in 100 twice their stage's median
    batches = [BatchTiming("detect", "small", 1, 1, det.p50 * 2 * (2 if i < 3 else 1)) for i in range(100)]
    batches += [BatchTiming("classify", "r18", 1, 1, cls.p50 * 3 * (2 if i < 3 else 1)) for i in range(100)]
    assert served_spread(table, batches) == pytest.approx(2.0)
    assert served_spread(table, [BatchTiming("detect", "small", 1, 1, det.p50)] * 5) == 1.0  # never below 1
    assert served_spread(table, [BatchTiming("detect", "unknown", 1, 1, 0.1)]) is None


def test_a_served_table_has_at_least_the_served_tail(tiny):
    _, table = tiny
    served = MachineSpeed(pace=2.0, spread=1.8).table(table)
    for old, new in zip(table.rows, served.rows):
        assert new.p50 == pytest.approx(2 * old.p50) and new.cpu_s == pytest.approx(2 * old.cpu_s)
        assert new.latency_p99_s == pytest.approx(max(2 * old.latency_p99_s, 1.8 * new.p50))
    assert "p99 >= 1.80 x p50" in served.source


@pytest.mark.parametrize("name", ["pace", "spread"])
def test_the_machine_factors_are_read_from_the_meta_and_a_bad_one_is_refused_by_name(name):
    assert getattr(speed_from_meta({"serving": {name: 1.9}}), name) == 1.9
    assert getattr(speed_from_meta({"serving": {}}), name) == 1.0
    for bad in (0, -1, "fast", float("inf")):
        with pytest.raises(ProfileError, match=f"serving.{name}"):
            speed_from_meta({"serving": {name: bad}}, "p.csv")


def test_the_replicas_overheads_are_read_from_the_meta_and_a_bad_one_is_refused_by_name():
    assert from_meta({"serving": {"batch_overhead_s": {"detect": 0.003}}}).batch_overhead_s == {"detect": 0.003}
    assert from_meta({"serving": {}}).batch_overhead_s == {}
    for bad in ({"detect": -1}, {"detect": "slow"}, [0.003], {"detect": float("nan")}):
        with pytest.raises(ProfileError, match="serving.batch_overhead_s"):
            from_meta({"serving": {"batch_overhead_s": bad}}, "p.csv")
    cost = ServingCost(batch_overhead_s={"detect": 0.003})
    assert from_meta({"serving": cost.to_meta()}).batch_overhead_s == {"detect": 0.003}  # what the refresh writes


def test_fidelity_rows_hold_predicted_twin_and_real(tmp_path):
    predicted = {"throughput_rps": 10.0, "p99_latency_s": 0.5, "energy_method": "estimate"}
    twin = {"throughput_rps": 9.0, "p99_latency_s": 0.8, "energy_method": "estimate"}
    real = {"throughput_rps": 9.0, "p99_latency_s": 1.0, "energy_method": "estimate"}
    rows = {r["metric"]: r for r in fidelity.compare("w", "ipa", _prediction(predicted), twin, real)}
    assert rows["throughput_rps"]["real_vs_predicted_pct"] == pytest.approx(-10)
    assert rows["throughput_rps"]["real_vs_twin_pct"] == pytest.approx(0)
    assert rows["p99_latency_s"]["real_vs_predicted_pct"] == pytest.approx(100)
    old = tmp_path / "fidelity.csv"  # written before the prediction column: its rows are kept, renamed
    old.write_text("workload,policy,metric,sim,real,real_vs_sim_pct,note\nv,fa2-low,completed,5,4,-20,\n")
    fidelity.merge(old, list(rows.values()))
    with old.open() as f:
        got = list(csv.DictReader(f))
    assert got[0]["twin"] == "5" and got[0]["real_vs_twin_pct"] == "-20" and got[0]["predicted"] == ""
    assert {r["workload"] for r in got} == {"v", "w"}



def test_a_cells_pace_is_the_refreshed_pace_times_how_its_batches_ran_against_it(tiny):
    from types import SimpleNamespace

    from ipa.machine.tracker import cell_pace

    _, table = tiny
    speed = MachineSpeed(pace=2.0)
    setup = SimpleNamespace(speed=speed, profiles=speed.table(table))
    row = table.lookup("detect", "small", 1, 1)
    batches = [BatchTiming("detect", "small", 1, 1, row.p50 * 2.2, row.cpu_s * 2.2)] * 3  # 10% slower than refreshed
    assert cell_pace(setup.speed, setup.profiles, batches) == (2.0, pytest.approx(2.2))
    assert cell_pace(setup.speed, setup.profiles, []) == (2.0, None)
    rows = fidelity.compare("w", "ipa", _prediction({"energy_method": "estimate"}), {}, {"energy_method": "estimate"},
                            (2.0, 2.2))
    pace = next(r for r in rows if r["metric"] == "machine_pace")
    assert pace["predicted"] == 2.0 and pace["real_vs_predicted_pct"] == pytest.approx(10)


def test_a_known_machines_plan_holds_the_contention_its_own_choice_makes(tiny):
    from dataclasses import replace

    from ipa.machine.contention import shared_rate
    from ipa.optimize.solvers import exact, solve

    spec, table = tiny
    assert make_problem("ipa", spec, table).contention(exact(make_problem("ipa", spec, table), 10), 10) == {}
    p = make_problem("ipa", spec, table, max_cores=4, serving=SERVING, cpus=2.0)
    d = solve(p, 10)
    chosen = [p.option(table.lookup(s, c.variant, c.batch, c.cores), 10, replicas=c.replicas)
              for s, c in d.config.items()]
    demand = sum(o.cpu_demand for o in chosen) + SERVING.cores(10)
    for o in chosen:  # a fixed point: the rows planned on are stretched by what this very config makes
        stretch = 1 / shared_rate(demand, o.cpu_demand / o.replicas, 2.0)
        assert stretch > 1.01 and d.assessment.contention[o.stage] == pytest.approx(stretch)
        assert d.profiles.lookup(o.stage, o.variant, o.batch, o.cores).p50 == pytest.approx(
            table.lookup(o.stage, o.variant, o.batch, o.cores).p50 * stretch)
    assert p.assess_config(d.config, 10).capacity_rps > d.assessment.capacity_rps  # contention costs capacity
    busy = replace(table.lookup("detect", "small", 1, 1), latency_p50_s=0.06, cpu_s_per_batch=0.045, cpu_share=1.0)
    held = p.with_profiles(type(table)([busy if r.stage == "detect" and r.batch == 1 and r.cores == 1 and
                                        r.variant == "small" else r for r in table.rows], table.meta, "calibrated"))
    again = held.contended(chosen, 10).profiles.lookup("detect", "small", 1, 1)
    assert again.p50 == pytest.approx(0.045 * d.assessment.contention["detect"])  # its p50 held some already


def test_the_loop_admits_with_the_rows_the_plan_stretched(tiny):
    from ipa.adapt import LoopSettings, adapt
    from ipa.predict.simple import WindowMax
    from ipa.runtime.admission import stage_estimates

    spec, table = tiny
    sim = Simulator(spec, table, 3.0, np.full(30, 8.0), SimSettings(cpus=2.0), seed=0, serving=SERVING)
    problem = make_problem("ipa", spec, table, max_cores=4, serving=SERVING, cpus=2.0)
    records = adapt(sim, problem, WindowMax(10), 30, LoopSettings(interval_s=10), initial_rate=8)
    first = records[0]
    config = {s: StageConfig(**c) for s, c in first["config"].items()}
    chosen = [problem.option(table.lookup(s, c.variant, c.batch, c.cores), 8, replicas=c.replicas)
              for s, c in config.items()]
    planned = problem.contended(chosen, 8)
    assert first["contention"] == pytest.approx(planned.stretch) and min(planned.stretch.values()) > 1
    for stage, e in stage_estimates(planned.profiles, config).items():  # what admission starts from
        assert first["expected"][stage] == pytest.approx([e.batch_s, e.per_request_s, e.tail_s])
        assert e.batch_s > stage_estimates(table, config)[stage].batch_s


def test_a_variants_own_pace_multiplies_the_machines_and_a_bad_one_is_refused_by_name(tiny):
    _, table = tiny
    served = MachineSpeed(pace=2.0, variant_pace={"detect/small": 1.5}).table(table)
    for old, new in zip(table.rows, served.rows):
        f = 3.0 if (old.stage, old.variant) == ("detect", "small") else 2.0
        assert new.p50 == pytest.approx(f * old.p50) and new.cpu_s == pytest.approx(f * old.cpu_s)
    assert speed_from_meta({"serving": {"variant_pace": {"detect/small": 1.3}}}).variant_pace == {"detect/small": 1.3}
    for bad in ({"detect/small": 0}, {"detect/small": "x"}, [1.3], {"detect/small": float("nan")}):
        with pytest.raises(ProfileError, match="serving.variant_pace"):
            speed_from_meta({"serving": {"variant_pace": bad}}, "p.csv")


def test_the_variants_paces_read_as_one_figure_or_a_range():
    assert MachineSpeed(variant_pace={"a/x": 1.011, "a/y": 1.012}).variant_range() == "1.01"
    assert MachineSpeed(variant_pace={"a/x": 1.0, "a/y": 1.33}).variant_range() == "1.00-1.33"


def test_a_setup_at_another_serving_cost_paces_the_profiles_as_measured_not_the_paced_ones(tiny):
    from dataclasses import replace

    from ipa.experiment.cells import Setup
    from ipa.experiment.config import ExperimentConfig

    spec, table = tiny
    first = Setup(ExperimentConfig(), spec, table, table, None, profiled=table).at_speed(MachineSpeed(pace=2.0))
    again = first.at_speed(replace(first.speed, pace=3.0))
    for old, new in zip(table.rows, again.profiles.rows):
        assert new.p50 == pytest.approx(3.0 * old.p50) and new.cpu_s == pytest.approx(3.0 * old.cpu_s)
    assert again.machine is again.profiles and again.speed.pace == 3.0 and again.profiled is table


def test_the_next_real_cell_starts_from_the_median_pace_of_the_last_ones_served(tiny):
    """What `ipa experiment --runtime ray` does after each cell: the next cell's prediction and its real loop start
    from the pace the machine was lately served at, not the one the refresh measured minutes before."""
    from ipa.experiment.cells import Setup
    from ipa.experiment.config import ExperimentConfig
    from ipa.experiment.ray_cell import RayCluster

    spec, table = tiny
    cluster = RayCluster(Setup(ExperimentConfig(), spec, table, table, None, profiled=table).at_speed(
        MachineSpeed(pace=2.0, variant_pace={"detect/small": 1.5})))

    def served_at(ratio):  # a cell whose batches burned `ratio` times what the cell started from
        row = cluster.setup.profiles.lookup("detect", "small", 1, 1)
        cluster._follow([BatchTiming("detect", "small", 1, 1, row.p50 * ratio, row.cpu_s * ratio)] * 3)
        return cluster.setup.speed.pace

    assert served_at(0.9) == pytest.approx(1.9)  # the median of the refresh's 2.0 and this cell's 1.8
    assert cluster.setup.speed.variant_pace == {"detect/small": 1.5}  # a variant's own pace stays
    now = cluster.setup.profiles.lookup("detect", "small", 1, 1)
    assert now.cpu_s == pytest.approx(table.lookup("detect", "small", 1, 1).cpu_s * 1.9 * 1.5)
    assert served_at(1.0) == pytest.approx(1.9)  # 2.0, 1.8, 1.9: the median of three
    assert served_at(1.5) == pytest.approx(1.9)  # one slow minute (2.85) does not move it: 1.8, 1.9, 2.85
    cluster._follow([])  # a cell with no batch timed leaves the pace as it was
    assert cluster.setup.speed.pace == pytest.approx(1.9)


def _bench(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench_prediction():
    return _bench("prediction")


def test_at_cell_pace_a_served_variant_runs_at_its_own_pace_and_its_stages_others_move_with_it():
    from ipa.machine.tracker import own_paces

    own = own_paces({"detect/small": 1.2, "detect/big": 1.5, "classify/r18": 0.8},
                    {"detect/small": 1.0, "classify/r50": 0.9})
    # big moves with small (1.0 / 1.2); r18's stage served only a variant the refresh had not timed: it stays
    assert own == pytest.approx({"detect/small": 1.0, "detect/big": 1.25, "classify/r18": 0.8, "classify/r50": 0.9})


def test_at_cell_pace_replays_the_cells_own_speed_10_s_by_10_s_over_its_whole_pace(tiny):
    from ipa.machine.replay import own_speed

    _, table = tiny
    # 20 s at the cell's pace, then 10 s at 1.5x it, then 10 s too thin to say, over a 45-s cell
    batches = _timed(table, 1.0, 0.0, 20) + _timed(table, 1.0, 10.0, 20) + _timed(table, 1.5, 20.0, 10)
    batches += _timed(table, 3.0, 31.0, 2)
    at, slowness = own_speed(table, batches, 45)
    assert list(at) == [0.0, 10.0, 20.0, 30.0, 40.0]  # every 10 s of the cell, in order
    assert list(slowness) == pytest.approx([1.0, 1.0, 1.5, 1.0, 1.0])  # thin or empty: the cell's pace


def test_the_second_real_run_is_set_against_the_first_with_the_predictions_targets(tmp_path):
    from ipa.experiment.fidelity.score import repeat

    def rows(throughput, p99, pace):
        cell = {"workload": "static:8:60", "policy": "ipa", "predicted": 0.0}
        return [cell | {"metric": "throughput_rps", "real": throughput},
                cell | {"metric": "p99_latency_s", "real": p99},
                cell | {"metric": "machine_pace", "real": pace}, cell | {"metric": "solve_ms", "real": 3.0}]

    first = rows(8.0, 2.0, 1.5) + [{"workload": "static:4:60", "policy": "ipa", "metric": "pas", "real": 0.16}]
    met, _ = repeat(first, rows(8.5, 3.0, 1.6), tmp_path / "repeat")
    assert met == 1  # throughput +6.25% (within 10), p99 +50% (not within 25); a cell run once is not compared
    with (tmp_path / "repeat.csv").open() as f:
        got = {r["metric"]: r for r in csv.DictReader(f)}
    assert set(got) == {"throughput_rps", "p99_latency_s"}  # the targets' metrics only
    assert float(got["p99_latency_s"]["error"]) == pytest.approx(50.0) and got["p99_latency_s"]["met"] == "False"
    # the first run's pace stands beside each figure as a prediction's would, the second's as the real one
    assert (float(got["p99_latency_s"]["pace_predicted"]), float(got["p99_latency_s"]["pace_real"])) == (1.5, 1.6)
    text = (tmp_path / "repeat.md").read_text()
    assert "1 of 2 figures" in text and "static:8:60 ipa 1.50 -> 1.60" in text
    with pytest.raises(ConfigError, match="share no cell"):
        repeat(first[-1:], rows(8.5, 3.0, 1.6), tmp_path / "none")


def test_runs_are_tallied_by_cell_kind_and_a_lean_every_run_shares_is_marked(tmp_path):
    from ipa.experiment.fidelity.score import tally

    def run(name, rates, errors):
        """One run's scored table: its static loads `rates`, fa2-low's throughput error in each, and the step."""
        cells = [f"static:{r}:60" for r in rates] + [f"step:{rates[0]}:{rates[1] + 1}:90:30"]
        path = tmp_path / f"{name}.csv"
        with path.open("w") as f:
            w = csv.DictWriter(f, fieldnames=["workload", "policy", "metric", "error", "met"])
            w.writeheader()
            for cell, e in zip(cells, errors):
                w.writerow({"workload": cell, "policy": "fa2-low", "metric": "throughput_rps", "error": e,
                            "met": abs(e) <= 10})
        return path

    # the loads differ from run to run (each run sizes them from its own capacity); 20 < 9 as text, not as rates
    runs = [run("a", (4, 9, 20), (0, 6, 12, -3)), run("b", (5, 10, 20), (0, 7, 4, 5)),
            run("c", (6, 12, 24), (0, 5, -9, 1))]
    text = tally(runs)
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in text.splitlines()
            if line.startswith("| ") and "fa2-low" in line}
    assert "| 2/3 | +12 +4 -9 % |  |" in rows[("two", "fa2-low", "throughput_rps")]  # both ways: noise
    assert "| 3/3 | +6 +7 +5 % | all + |" in rows[("one", "fa2-low", "throughput_rps")]  # every run the same way
    assert "| 3/3 | +0 +0 +0 % |  |" in rows[("half", "fa2-low", "throughput_rps")]
    assert "| 3/3 | -3 +5 +1 % |  |" in rows[("step", "fa2-low", "throughput_rps")]
    assert "within target: 3/4, 4/4, 4/4" in text
    with pytest.raises(ConfigError, match="not found"):
        tally([tmp_path / "missing.csv"])
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a table of scored figures"):
        tally([tmp_path / "x.csv"])


def test_the_tally_splits_the_figures_by_whether_their_cells_pace_was_predicted_within_5_percent(tmp_path):
    from ipa.experiment.fidelity.score import report, tally

    def cell(workload, pace_predicted, pace_real, throughput, p99):
        c = {"workload": workload, "policy": "fa2-low", "twin": "nan"}
        return [c | {"metric": "throughput_rps", "predicted": 8.0, "real": throughput},
                c | {"metric": "p99_latency_s", "predicted": 1.0, "real": p99},
                c | {"metric": "machine_pace", "predicted": pace_predicted, "real": pace_real}]

    # paced within 4%: both figures met; 10% slower than predicted: throughput and p99 both missed
    rows = cell("static:4:60", 1.50, 1.56, 8.0, 1.1) + cell("static:8:60", 1.50, 1.65, 7.0, 2.0)
    report(rows, tmp_path / "prediction", "test")
    with (tmp_path / "prediction.csv").open() as f:
        scored = list(csv.DictReader(f))
    assert {(r["workload"], r["pace_predicted"], r["pace_real"]) for r in scored} == {
        ("static:4:60", "1.5", "1.56"), ("static:8:60", "1.5", "1.65")}
    assert "predicted within 5%: 2/2 (100%); where it was off by more: 0/2 (0%)" in (
        tmp_path / "prediction.md").read_text()  # one run's own table says it too
    text = tally([tmp_path / "prediction.csv"])
    assert "predicted within 5%: 2/2 (100%); where it was off by more: 0/2 (0%)" in text
    # a table without the pace (an older run's) has no such line
    old = tmp_path / "old.csv"
    with old.open("w") as f:
        w = csv.DictWriter(f, fieldnames=["workload", "policy", "metric", "error", "met"])
        w.writeheader()
        w.writerow({"workload": "static:4:60", "policy": "ipa", "metric": "pas", "error": 0.0, "met": True})
    assert "predicted within" not in tally([old])


def test_a_served_runs_own_folder_is_repredicted_beside_it(tmp_path):
    bench = _bench_prediction()
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "fidelity.csv").write_text("")
    assert bench.served(tmp_path / "again") == (tmp_path / "again", tmp_path, "again-")
    assert bench.served(tmp_path) == (tmp_path / "run", tmp_path, "")


def test_a_figure_is_marked_when_3_percent_of_pace_moves_it_across_its_whole_target_band():
    from ipa.experiment.fidelity.score import sensitive
    knee = {"metric": "p99_latency_s", "predicted": 2.0, "at_x0.97": 1.4, "at_x1.03": 3.9}  # 125% > 2 x 25%
    calm = {"metric": "p99_latency_s", "predicted": 0.4, "at_x0.97": 0.38, "at_x1.03": 0.42}
    points = {"metric": "sla_violation_pct", "predicted": 1.0, "at_x0.97": 0.0, "at_x1.03": 11.0}  # 11 > 2 x 5 points
    apart = ["at_x0.97", "at_x1.03"]
    assert sensitive(knee, apart) and sensitive(points, apart) and not sensitive(calm, apart)
    assert not sensitive(knee, apart[:1])  # one pace says nothing of a spread


def _timed(table, ratio, t_s, n):
    row = table.lookup("detect", "small", 1, 1)
    return [BatchTiming("detect", "small", 1, 1, row.p50 * ratio, row.cpu_s * ratio, t_s + i * 0.01) for i in range(n)]


def test_the_pace_of_each_10_s_is_the_median_of_its_own_batches_and_a_thin_window_says_nothing(tiny):
    from ipa.machine.measure import window_paces

    _, table = tiny
    batches = _timed(table, 1.0, 1.0, 10) + _timed(table, 1.3, 12.0, 10) + _timed(table, 2.0, 25.0, 3)
    batches.append(BatchTiming("detect", "small", 1, 1, 1.0, 1.0))  # no end time: in no window
    assert window_paces(table, batches) == pytest.approx([1.0, 1.3])
    assert window_paces(table, batches, least=3) == pytest.approx([1.0, 1.3, 2.0])


def test_the_pace_range_is_read_from_the_meta_and_a_bad_one_is_refused_by_name():
    assert speed_from_meta({"serving": {"pace_range": [0.8, 1.3]}}).pace_range == (0.8, 1.3)
    assert speed_from_meta({"serving": MachineSpeed(pace_range=(0.9, 1.1)).to_meta()}).pace_range == (0.9, 1.1)
    assert speed_from_meta({"serving": {}}).pace_range == ()  # a meta from before the range: no band
    for bad in ([1.3, 0.8], [1.0], [0, 1.0], "0.8-1.3"):
        with pytest.raises(ProfileError, match="serving.pace_range"):
            speed_from_meta({"serving": {"pace_range": bad}}, "p.csv")


def test_the_band_runs_the_simulated_machine_at_the_fastest_and_slowest_pace_seen_and_the_plans_as_they_are(tiny):
    from ipa.experiment.cells import Setup
    from ipa.experiment.config import ExperimentConfig
    from ipa.experiment.ray_cell import RayCluster

    spec, table = tiny
    base = Setup(ExperimentConfig(), spec, table, table, None, profiled=table)
    assert base.at_speed(MachineSpeed(pace=2.0)).paced() == []  # no range measured: no band
    setup = base.at_speed(MachineSpeed(pace=2.0, pace_range=(1.6, 2.6)))
    row = table.lookup("detect", "small", 1, 1)
    band = setup.paced()
    assert [p for p, _ in band] == [1.6, 2.6]
    for pace, s in band:
        assert s.machine.lookup("detect", "small", 1, 1).p50 == pytest.approx(row.p50 * pace)
        assert s.profiles is setup.profiles  # the loop plans as the prediction does
    cluster = RayCluster(setup)
    # a cell with a fast and a very slow 10 s against the pace it started from (2.0): 1.5 and 3.0
    cluster._follow(_timed(cluster.setup.profiles, 0.75, 0.0, 10) + _timed(cluster.setup.profiles, 1.5, 10.0, 10))
    assert cluster.setup.speed.pace_range == pytest.approx((1.5, 3.0))  # widened both ways


def test_the_spread_within_10_s_follows_the_cells_served_as_the_pace_does(tiny):
    """The next prediction draws batches at the spread the last cells' batches had within their 10 s (the median
    of the last three, the refresh's counting as one before the first), not the refresh's alone: one refresh on the
    2-core VM measured 1.27 where the cells after it served 1.6-1.9."""
    from ipa.experiment.cells import Setup
    from ipa.experiment.config import ExperimentConfig
    from ipa.experiment.prediction import within_windows
    from ipa.experiment.ray_cell import RayCluster

    spec, table = tiny
    setup = Setup(ExperimentConfig(), spec, table, table, None, profiled=table).at_speed(
        MachineSpeed(pace=2.0, spread=3.0, pace_windows=(2.0, 2.0), window_spread=1.2))
    cluster = RayCluster(setup)

    def served_spread_of(tail):  # one 10 s at the cell's pace: 80 batches at it, 20 `tail` times slower
        batches = _timed(cluster.setup.profiles, 1.0, 0.0, 80) + _timed(cluster.setup.profiles, tail, 5.0, 20)
        cluster._follow(batches)
        return cluster.setup.speed.window_spread

    assert served_spread_of(2.0) == pytest.approx(1.6)  # the median of the refresh's 1.2 and this cell's 2.0
    assert served_spread_of(2.0) == pytest.approx(2.0)  # 1.2, 2.0, 2.0
    assert within_windows(cluster.setup).machine.lookup("detect", "small", 1, 1).latency_p99_s == pytest.approx(
        cluster.setup.speed.window_spread * cluster.setup.machine.lookup("detect", "small", 1, 1).p50, rel=0.05)
    before = cluster.setup.speed.window_spread
    cluster._follow([])  # a cell with no batch timed leaves it as it was
    assert cluster.setup.speed.window_spread == before


def test_each_variants_pace_follows_the_cells_served_and_the_ones_not_served_move_with_their_stage(tiny):
    """Run 32 (2026-12-07): the refresh put ssdlite at x1.17 of the pooled pace, every cell after it ran ssdlite at
    x1.01-1.06, and a prediction that kept the refresh's for the whole run simulated a detector 10-15% too slow."""
    from ipa.experiment.cells import Setup
    from ipa.experiment.config import ExperimentConfig
    from ipa.experiment.ray_cell import RayCluster

    spec, table = tiny
    refresh = {"detect/small": 1.2, "detect/big": 1.5, "classify/r18": 0.8}
    cluster = RayCluster(Setup(ExperimentConfig(), spec, table, table, None, profiled=table).at_speed(
        MachineSpeed(pace=2.0, variant_pace=refresh)))

    def serve(detect, classify):  # a cell whose detector and classifier burned these times their profiled CPU
        rows = [table.lookup("detect", "small", 1, 1), table.lookup("classify", "r18", 1, 1)]
        cluster._follow([BatchTiming(row.stage, row.variant, 1, 1, row.p50 * f, row.cpu_s * f, 0.1 * i)
                         for i in range(20) for row, f in zip(rows, (detect, classify))])
        return cluster.setup.speed.variant_pace

    # both at 2.0x: each at 1.0x the pooled pace, where the refresh said small 1.2x and r18 0.8x
    assert serve(2.0, 2.0) == pytest.approx({"detect/small": 1.1, "detect/big": 1.375, "classify/r18": 0.9})
    # big, never served, keeps its ratio to small (the refresh timed it against small alone on a core)
    assert serve(2.0, 2.0) == pytest.approx({"detect/small": 1.0, "detect/big": 1.25, "classify/r18": 1.0})
    assert cluster.setup.profiles.lookup("detect", "small", 1, 1).cpu_s == pytest.approx(
        table.lookup("detect", "small", 1, 1).cpu_s * 2.0, rel=0.03)  # the detector as served: 2.0x, not 2.0 x 1.2


def test_fidelity_rows_hold_the_band_beside_the_prediction_and_the_real_figure_is_checked_against_it(tmp_path):
    summary = {"throughput_rps": 10.0, "energy_method": "estimate"}
    predicted = _prediction(summary, {"throughput_rps": 8.0}, {"throughput_rps": 12.0}, (0.8, 1.2))
    rows = {r["metric"]: r for r in fidelity.compare("w", "ipa", predicted, {}, summary | {"throughput_rps": 13.0},
                                                    (1.0, 0.8), same_config=75.0)}
    assert (rows["throughput_rps"]["predicted_low"], rows["throughput_rps"]["predicted_high"]) == (8.0, 12.0)
    assert (rows["machine_pace"]["predicted_low"], rows["machine_pace"]["predicted_high"]) == (0.8, 1.2)
    assert rows["same_config_pct"]["real"] == 75.0 and rows["same_config_pct"]["twin"] == 100.0
    assert np.isnan(fidelity.compare("w", "ipa", _prediction(summary), {}, summary)[0]["predicted_low"])  # no band
    from ipa.experiment.fidelity.score import in_band

    row = {"metric": "throughput_rps", "predicted": 10.0, "predicted_low": 8.0, "predicted_high": 12.0}
    assert in_band(row | {"real": 13.0})  # above the band's top, within 10% of it
    assert not in_band(row | {"real": 13.5}) and not in_band(row | {"real": 7.0})
    assert in_band({"metric": "sla_violation_pct", "predicted": 0.0, "predicted_low": 0.0,
                    "predicted_high": 20.0, "real": 24.0})  # points: the band's top + 5
    assert in_band(row | {"predicted_low": "nan", "real": 13.0}) is None  # a run without a band
    old = tmp_path / "fidelity.csv"  # written when the band was one seed at the fastest and slowest pace
    old.write_text("workload,policy,metric,predicted,predicted_fast,predicted_slow,twin,real\n"
                   "v,ipa,throughput_rps,10,12,8,10,11\nv,ipa,pas,0.15,,,0.15,0.15\n")
    got = {r["metric"]: r for r in fidelity.read(old)}
    assert (got["throughput_rps"]["predicted_low"], got["throughput_rps"]["predicted_high"]) == (8.0, 12.0)
    assert got["pas"]["predicted_low"] == "" and "predicted_fast" not in got["pas"]


def _prediction(summary, low=None, high=None, paces=None):
    from ipa.experiment.prediction import Prediction

    return Prediction(summary, low or {}, high or {}, paces)


def test_the_spread_within_10_s_leaves_out_the_machines_moves_from_one_10_s_to_the_next(tiny):
    _, table = tiny
    # 10 s at the row's pace, then 10 s twice as slow, each even within itself
    batches = _timed(table, 1.0, 0.0, 30) + _timed(table, 2.0, 10.0, 10)
    assert served_spread(table, batches) == pytest.approx(2.0)  # pooled: the slow 10 s are the tail
    assert served_spread(table, batches, window_s=10.0) == 1.0
    # a thin 10 s says nothing; without end times no batch is in a window
    assert served_spread(table, _timed(table, 1.0, 0.0, 3), window_s=10.0) is None
    assert served_spread(table, [b._replace(t_s=None) for b in batches], window_s=10.0) is None


def test_the_speed_over_time_is_read_from_the_meta_and_a_bad_one_is_refused_by_name():
    cost = MachineSpeed(pace_windows=(1.0, 1.2, 0.9), window_spread=1.3)
    assert speed_from_meta({"serving": cost.to_meta()}).pace_windows == (1.0, 1.2, 0.9)
    assert speed_from_meta({"serving": cost.to_meta()}).window_spread == 1.3
    older = speed_from_meta({"serving": {}})  # a meta from before them: nothing to replay
    assert older.pace_windows == () and older.window_spread is None
    for bad in ([0, 1.0], "1.0 1.2", [1.0, "slow"]):
        with pytest.raises(ProfileError, match="serving.pace_windows"):
            speed_from_meta({"serving": {"pace_windows": bad}}, "p.csv")
    for bad in (0.5, "wide", float("inf")):
        with pytest.raises(ProfileError, match="serving.window_spread"):
            speed_from_meta({"serving": {"window_spread": bad}}, "p.csv")


def test_each_seed_replays_a_stretch_of_the_speed_as_served_around_the_pace_it_starts_from(tiny):
    from ipa.experiment.cells import Setup
    from ipa.experiment.config import ExperimentConfig
    from ipa.experiment.prediction import speed, within_windows

    spec, table = tiny
    base = Setup(ExperimentConfig(), spec, table, table, None, profiled=table)
    assert speed(base.at_speed(MachineSpeed(pace=2.0, pace_windows=(1.0,))), 60, 0) is None  # one 10 s: no moves
    windows = (1.0, 1.0, 2.0, 2.0, 1.0)  # a slow spell of 20 s
    setup = base.at_speed(MachineSpeed(pace=2.0, spread=3.0, pace_windows=windows, window_spread=1.2))
    starts = set()
    for seed in range(8):
        at, slowness = speed(setup, 35, seed)
        assert list(at) == [0.0, 10.0, 20.0, 30.0]
        start = [list(np.roll(windows, -k)[:4]) for k in range(5)].index(list(slowness))  # a stretch, in order
        starts.add(start)
        assert speed(setup, 35, seed)[1] == pytest.approx(slowness)  # the seed decides it
    assert len(starts) > 1  # the seeds start from different points
    moving = within_windows(setup)
    row = table.lookup("detect", "small", 1, 1)
    # the simulated machine draws within 10 s at its own spread; the plans keep the served tail
    assert moving.machine.lookup("detect", "small", 1, 1).latency_p99_s == pytest.approx(
        max(2 * row.latency_p99_s, 1.2 * 2 * row.p50))
    assert moving.profiles.lookup("detect", "small", 1, 1).latency_p99_s == pytest.approx(
        max(2 * row.latency_p99_s, 3.0 * 2 * row.p50))
    plain = base.at_speed(MachineSpeed(pace=2.0))
    assert within_windows(plain) is plain and speed(plain, 60, 0) is None  # nothing measured: draws as before


def test_a_served_cells_10_s_join_the_speed_the_next_prediction_replays(tiny):
    from ipa.experiment.cells import Setup
    from ipa.experiment.config import ExperimentConfig
    from ipa.experiment.ray_cell import RayCluster

    spec, table = tiny
    cluster = RayCluster(Setup(ExperimentConfig(), spec, table, table, None, profiled=table).at_speed(
        MachineSpeed(pace=2.0, pace_windows=(2.0, 2.2))))
    profiles = cluster.setup.profiles
    cluster._follow(_timed(profiles, 0.75, 0.0, 10) + _timed(profiles, 1.5, 10.0, 10))
    assert cluster.setup.speed.pace_windows == pytest.approx((2.0, 2.2, 1.5, 3.0))  # in the order served
    assert cluster.setup.speed.window_spread == 1.0  # measured from the cell where the refresh had not


def test_the_drift_summary_counts_how_often_the_pace_a_minute_later_is_within_5_percent():
    drift = _bench("drift")
    paces = [1.0, 1.0, 1.2, 1.02, 1.2]  # every 30 s: a minute later is two samples on
    text = drift.summary([{"pace": p} for p in paces], every=30)
    assert "pace mean 1.08, min 1.00, max 1.20 (max/min 1.20)" in text
    assert "moved 7.3% on average, 20.0% at most; within 5% in 2 of 3 (67%)" in text  # 1.0->1.2, 1.0->1.02, 1.2->1.2
    assert "a minute later" not in drift.summary([{"pace": 1.0}], every=30)  # too short to say


@pytest.mark.slow
def test_the_drift_bench_times_the_served_variants_alone_against_their_rows(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    profiles = tmp_path / "hist.csv"
    header = "stage,variant,batch,cores,latency_p99_s,throughput_rps,energy_j_per_batch,latency_p50_s,energy_method"
    rows = [f"{s},{v},1,1,0.002,1000,0.01,0.001,estimate" for s, v in
            (("detect", "quadrant"), ("classify", "hist-s"), ("classify", "hist-l"))]
    profiles.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "drift.csv"
    run = [sys.executable, str(root / "bench/drift.py"), "--pipeline", str(root / "tests/custom_models/pipeline.yaml"),
           "--profiles", str(profiles), "--minutes", "0.05", "--every", "1", "--out", str(out)]
    r = subprocess.run([*run, "--variants", "detect/quadrant,classify/hist-l"], capture_output=True, text=True,
                       cwd=root / "tests/custom_models")
    assert r.returncode == 0, r.stderr
    with out.open() as f:
        samples = list(csv.DictReader(f))
    assert len(samples) >= 2 and set(samples[0]) == {"t_s", "clock", "detect/quadrant", "classify/hist-l", "pace"}
    for s in samples:  # each pace its variant's CPU per call over the row's 1 ms, their mean the machine's
        assert float(s["pace"]) == pytest.approx((float(s["detect/quadrant"]) + float(s["classify/hist-l"])) / 2,
                                                 abs=0.002)
    assert f"{len(samples)} samples: pace mean" in r.stdout
    r = subprocess.run([*run, "--variants", "classify/hist-xl"], capture_output=True, text=True,
                       cwd=root / "tests/custom_models")
    assert r.returncode != 0 and "classify/hist-xl is not one of the pipeline's" in r.stderr
    assert "detect/quadrant, classify/hist-s, classify/hist-l" in r.stderr  # the allowed values
    profiles.write_text("\n".join([header, *rows[:2]]) + "\n")  # hist-l unprofiled
    r = subprocess.run([*run, "--variants", "classify/hist-l"], capture_output=True, text=True,
                       cwd=root / "tests/custom_models")
    assert r.returncode != 0 and "classify/hist-l has no batch-1, 1-core row" in r.stderr
    out.unlink()
    proc = subprocess.Popen([*run[:-6], "--minutes", "5", "--every", "1", "--out", str(out), "--variants",
                             "classify/hist-s"], stdout=subprocess.PIPE, text=True, cwd=root / "tests/custom_models")
    for _ in range(600):  # until the first sample is on disk
        if out.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.terminate()  # a killed run keeps what it measured and says so
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "interrupted: " in stdout and "samples: pace mean" in stdout
    with out.open() as f:
        assert len(list(csv.DictReader(f))) >= 1
    for bad, says in ((["--minutes", "0"], "--minutes: 0: must be a number > 0"),
                      (["--profiles", str(tmp_path / "none.csv")], "none.csv"),
                      (["--out", str(tmp_path / "no/drift.csv")], "its folder does not exist")):
        r = subprocess.run([*run, *bad], capture_output=True, text=True, cwd=root / "tests/custom_models")
        assert r.returncode != 0 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_serving_refresh_warns_when_the_machines_speed_moved_more_than_10_percent_within_it():
    def unsteady(span):
        return MachineSpeed(pace_range=span).unsteady()

    assert unsteady((1.0, 1.08)) == "" and unsteady(()) == ""  # steady enough, or no range measured
    text = unsteady((1.42, 2.0))
    assert "moved 41% between the fastest and the slowest 10 s" in text and "bench/drift.py" in text


def test_ipa_fidelity_scores_a_run_and_tallies_scored_tables(tmp_path):
    """The scoring as a user runs it: ipa fidelity RUN writes RUN/prediction.{csv,md}; --tally reads them back."""
    from click.testing import CliRunner

    from ipa.cli import cli

    run = tmp_path / "run"
    run.mkdir()
    summary = {"throughput_rps": 10.0, "p99_latency_s": 1.0, "energy_method": "estimate"}
    predicted = _prediction(summary, {"throughput_rps": 8.0, "p99_latency_s": 0.8},
                            {"throughput_rps": 12.0, "p99_latency_s": 1.2}, (0.9, 1.1))
    rows = fidelity.compare("static:5:60", "ipa", predicted, summary, summary | {"throughput_rps": 10.5,
                                                                                "p99_latency_s": 2.0}, (1.0, 1.02))
    fidelity.merge(run / "fidelity.csv", rows)
    done = CliRunner().invoke(cli, ["fidelity", str(run)])
    assert done.exit_code == 0, done.output
    assert "1 of 2 within target" in done.output  # throughput +5% met, p99 +100% missed
    assert "predicted within 5%: 1/2 (50%)" in done.output and (run / "prediction.md").is_file()
    tallied = CliRunner().invoke(cli, ["fidelity", "--tally", str(run / "prediction.csv")])
    assert tallied.exit_code == 0 and "within target: 1/2" in tallied.output
    missing = CliRunner().invoke(cli, ["fidelity", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "fidelity.csv not found" in str(missing.exception or missing.output)
