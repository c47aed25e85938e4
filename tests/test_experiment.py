import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from ipa.cli import cli
from ipa.experiment.config import ExperimentConfig, load_experiment
from ipa.experiment.frontier import frontier
from ipa.experiment.report import build_report
from ipa.experiment.runner import run_experiment
from ipa.errors import ConfigError
from tests.test_workload import _have_trace

WORKLOADS = ["sine:12:10:120:240", "step:2:30:240"]
POLICIES = ["ipa", "ipa-energy", "fa2-low", "oracle"]


@pytest.fixture
def small_cfg(tmp_path, tiny):
    spec, table = tiny
    pipeline = tmp_path / "tiny.yaml"
    import yaml

    pipeline.write_text(yaml.safe_dump(spec.model_dump()))
    table.save(tmp_path / "tiny.csv")
    return ExperimentConfig(pipeline=str(pipeline), profiles=str(tmp_path / "tiny.csv"), workloads=WORKLOADS,
                            policies=POLICIES, predictor="max")


def read_summary(out):
    with (out / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_experiment_writes_every_cell_and_the_report(tmp_path, small_cfg):
    out = tmp_path / "run"
    summaries = run_experiment(small_cfg, out)
    build_report(out, summaries)
    rows = read_summary(out)
    assert {(r["workload"], r["policy"]) for r in rows} == {(w, p) for w in WORKLOADS for p in POLICIES}
    assert all(r["energy_method"] == "estimate" for r in rows)
    for name in ("report.html", "comparison.png", "energy_vs_pas.png", "config.yaml"):
        assert (out / name).is_file()
    cell = out / "cells" / "sine_12_10_120_240__ipa"
    assert (cell / "timeseries.csv").is_file() and (cell / "decisions.csv").is_file()
    assert "estimate" in (out / "report.html").read_text()
    assert load_experiment(out / "config.yaml") == small_cfg  # the folder holds the exact config it ran


def test_interrupted_experiment_keeps_finished_cells(tmp_path, small_cfg):
    out = tmp_path / "run"
    run_experiment(small_cfg, out)
    (out / "cells" / "step_2_30_240__fa2-low" / "summary.json").unlink()  # as if killed during that cell
    messages = []
    run_experiment(small_cfg, out, lambda m, s: messages.append(m))
    kept = [m for m in messages if "kept" in m]
    assert len(kept) == len(WORKLOADS) * len(POLICIES) - 1
    assert not any("fa2-low" in m and "step" in m for m in kept)


def test_same_seed_same_summary(tmp_path, small_cfg):
    def measured(out):  # everything but the solver's wall-clock time
        return [{k: v for k, v in s.items() if k != "solve_ms_mean"} for s in run_experiment(small_cfg, out)]

    assert measured(tmp_path / "a") == measured(tmp_path / "b")


def test_bad_experiment_config_names_the_field(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("policies: [ipa, greedy]\n")
    with pytest.raises(ConfigError, match="policies.*greedy.*allowed: ipa, ipa-energy"):
        load_experiment(p)


def test_frontier_sweeps_delta_and_adds_baselines(tmp_path, small_cfg):
    points = frontier(small_cfg, "sine:12:10:120:240", [0, 0.5, 5], [1], tmp_path / "f")
    sweep = [p for p in points if p["policy"] == "ipa-energy"]
    assert [p["delta"] for p in sweep] == [0, 0.5, 5]
    assert sweep[-1]["energy_j"] <= sweep[0]["energy_j"]
    assert {p["policy"] for p in points} >= {"ipa", "fa2-low", "fa2-high", "rim-high"}
    assert (tmp_path / "f" / "frontier.png").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _have_trace(), reason="the shared Twitter trace is not beside this checkout")
def test_default_paper_comparison_holds_the_papers_claims(tmp_path):
    out = tmp_path / "paper"
    result = CliRunner().invoke(cli, ["experiment", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {(r["workload"], r["policy"]): r for r in read_summary(out)}
    assert len(rows) == 24 and (out / "report.html").is_file()
    for w in ("bursty", "steady-low", "steady-high", "fluctuating"):
        ipa, low, high, energy = (rows[(w, p)] for p in ("ipa", "fa2-low", "fa2-high", "ipa-energy"))
        assert float(ipa["pas"]) >= float(low["pas"]) - 1e-9
        assert float(ipa["cost_cores"]) <= float(high["cost_cores"])
        assert float(energy["energy_j"]) < float(ipa["energy_j"])
        oracle = {d["t"]: float(d["realized_objective"]) for d in _decisions(out, w, "oracle")}
        for p in ("ipa", "ipa-energy", "fa2-low", "fa2-high", "rim-high"):
            for d in _decisions(out, w, p):
                if d["realized_feasible"] == "True":
                    assert float(d["realized_objective"]) <= oracle[d["t"]] + 1e-9


def _decisions(out, workload, policy):
    with (out / "cells" / f"{workload}__{policy}" / "decisions.csv").open() as f:
        return list(csv.DictReader(f))


def test_cli_optimize_json_on_shipped_profiles():
    result = CliRunner().invoke(cli, ["optimize", "--load", "20", "--policy", "ipa-energy", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output[result.output.index("{"):])
    assert d["feasible"] and set(d["config"]) == {"detect", "classify"}
    assert {"objective", "accuracy", "cores", "power_w", "latency_s", "solve_ms"} <= set(d)


def test_short_workloads_still_get_their_report(tmp_path, small_cfg):
    """Two minutes of load give two points per energy chart, fewer than the smoothing window."""
    cfg = small_cfg.model_copy(update={"workloads": ["static:5:120"], "policies": ["ipa"]})
    out = tmp_path / "short"
    build_report(out, run_experiment(cfg, out))
    assert (out / "energy_static_5_120.png").is_file()


def test_smooth_keeps_length_and_skips_gaps():
    from ipa.experiment.plots import smooth

    nan = float("nan")
    assert len(smooth([1.0, 2.0], 3)) == 2 and len(smooth([], 3)) == 0
    assert smooth([1.0, nan, 3.0], 3).tolist() == [1.0, 2.0, 3.0]  # a missing second between two is bridged
    gap = smooth([1.0, nan, nan, nan, nan, 5.0], 3)  # a gap wider than the window stays one, and pulls nothing to 0
    assert gap[:2].tolist() == [1.0, 1.0] and np.isnan(gap[2:4]).all() and gap[4:].tolist() == [5.0, 5.0]


def test_a_resumed_cell_computed_with_other_settings_is_computed_again(tmp_path, small_cfg):
    """Kept only when everything that shapes it matches; otherwise recomputed, and the message says what differs."""
    out = tmp_path / "run"
    cfg = small_cfg.model_copy(update={"workloads": ["step:2:30:240"], "policies": ["ipa"]})
    first = run_experiment(cfg, out)[0]
    messages = []
    again = run_experiment(cfg.model_copy(update={"predictor": "reactive"}), out, lambda m, s: messages.append(m))[0]
    assert messages == ["step:2:30:240 / ipa (computed again: predictor 'max' -> 'reactive')"]
    assert again != first and read_summary(out)[0]["sla_violation_pct"] == str(again["sla_violation_pct"])
    messages.clear()
    run_experiment(cfg.model_copy(update={"predictor": "reactive"}), out, lambda m, s: messages.append(m))
    assert messages == ["step:2:30:240 / ipa: kept from the earlier run"]
    (tmp_path / "tiny.csv").write_text((tmp_path / "tiny.csv").read_text().replace("0.05,", "0.06,", 1))
    messages.clear()
    run_experiment(cfg.model_copy(update={"predictor": "reactive"}), out, lambda m, s: messages.append(m))
    assert messages == ["step:2:30:240 / ipa (computed again: profiles content; machine content)"]


def test_ipa_q_stands_beside_ipa_in_the_same_experiment(tmp_path, small_cfg):
    """IPA's problem solved by Q-learning, learning across the run's decisions: a row of its own."""
    cfg = small_cfg.model_copy(update={"workloads": ["sine:12:10:120:240"], "policies": ["ipa", "ipa-q"]})
    rows = {s["policy"]: s for s in run_experiment(cfg, tmp_path / "q")}
    assert set(rows) == {"ipa", "ipa-q"}
    assert rows["ipa-q"]["pas"] == pytest.approx(rows["ipa"]["pas"], abs=0.01)
    assert rows["ipa-q"]["cost_cores"] == pytest.approx(rows["ipa"]["cost_cores"], rel=0.1)
    with (tmp_path / "q" / "cells" / "sine_12_10_120_240__ipa-q" / "decisions.csv").open() as f:
        assert all(d["config"] for d in csv.DictReader(f))


def test_a_replayed_cell_serves_the_configs_of_the_run_it_replays_and_matches_it(small_cfg):
    """The fidelity twin: the decisions of a run, replayed on the same machine, give that run back."""
    from ipa.experiment.cells import Setup, shape
    from ipa.experiment.sim_cell import run_sim_cell
    from ipa.workload import load_workload

    setup = Setup.load(small_cfg)
    w = shape(load_workload("step:2:30:240", None), None, 1.0)
    run = run_sim_cell(setup, w, "ipa")
    assert len({json.dumps(d["config"], sort_keys=True) for d in run["decisions"]}) > 1  # it did reconfigure
    again = run_sim_cell(setup, w, "ipa", replay=run["decisions"])
    assert [d["config"] for d in again["decisions"]] == [d["config"] for d in run["decisions"]]
    for metric in ("completed", "throughput_rps", "p99_latency_s", "cost_cores", "reconfigurations"):
        assert again["summary"][metric] == pytest.approx(run["summary"][metric], rel=0.02), metric
    frozen = [{"t": d["t"], "config": run["decisions"][0]["config"]} for d in run["decisions"]]
    assert run_sim_cell(setup, w, "ipa", replay=frozen)["summary"]["reconfigurations"] == 0


def test_a_core_budget_tells_the_simulator_the_machine(small_cfg):
    """--max-cores without sim.cpus: replicas and serving share that many CPUs, and all of them idle."""
    from ipa.experiment.cells import Setup, shape
    from ipa.experiment.sim_cell import run_sim_cell
    from ipa.workload import load_workload

    w = shape(load_workload("static:5:30", None), None, 1.0)
    cfg = small_cfg.model_copy(update={"max_cores": 6})
    setup = Setup.load(cfg)
    series = run_sim_cell(setup, w, "fa2-low")["series"]
    assert series["energy_idle_j"] == pytest.approx(np.full(30, 6 * setup.profiles.idle_power_w_per_core))


def _carbon(tmp_path, values):
    path = tmp_path / "carbon.csv"
    path.write_text("hour,gco2_per_kwh\n" + "".join(f"{h},{g}\n" for h, g in enumerate(values)))
    return str(path)


def test_with_a_constant_intensity_co2_is_energy_times_intensity(tmp_path, small_cfg):
    """As a user runs it: --carbon on the command line, co2_g in summary.csv, the series and the report."""
    out = tmp_path / "c"
    got = CliRunner().invoke(cli, ["experiment", "--pipeline", small_cfg.pipeline, "--profiles", small_cfg.profiles,
                                   "--workload", "step:2:30:240", "--policy", "ipa", "--policy", "fa2-low",
                                   "--predictor", "max", "--carbon", _carbon(tmp_path, [250.0] * 3), "--out", str(out)])
    assert got.exit_code == 0, got.output
    assert "CO2 g" in got.output  # the printed summary shows grams of CO2
    for s in read_summary(out):
        assert float(s["co2_g"]) == pytest.approx(float(s["energy_j"]) * 250.0 / 3.6e6)
    with (out / "cells" / "step_2_30_240__ipa" / "timeseries.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {float(r["carbon_g_per_kwh"]) for r in rows} == {250.0}
    assert (out / "co2_step_2_30_240.png").is_file() and "co2_g" in (out / "report.html").read_text()


def test_ipa_carbon_weighs_energy_by_the_intensity_its_interval_will_see(tmp_path, small_cfg):
    """Hour 0 at 100 g, hour 1 at 300 g (mean 200), 360 hours per hour of workload: each 10 s interval is one hour."""
    from ipa.experiment.cells import Setup

    cfg = small_cfg.model_copy(update={"carbon": _carbon(tmp_path, [100.0, 300.0]), "carbon_speedup": 360.0,
                                       "policies": ["ipa-carbon"]})
    setup = Setup.load(cfg)
    problem = setup.problem("ipa-carbon")
    assert problem.weights.delta == cfg.energy_delta  # ipa-energy's problem ...
    at = setup.reweigh("ipa-carbon")
    assert at(problem, 0.0).weights.delta == pytest.approx(cfg.energy_delta * 100 / 200)  # ... cheaper when clean
    assert at(problem, 10.0).weights.delta == pytest.approx(cfg.energy_delta * 300 / 200)  # dearer when dirty
    assert setup.reweigh("ipa-energy") is None
    rows = {s["policy"]: s for s in run_experiment(cfg.model_copy(update={
        "workloads": ["static:20:60"], "policies": ["ipa", "ipa-energy", "ipa-carbon"]}), tmp_path / "k")}
    with (tmp_path / "k" / "cells" / "static_20_60__ipa-carbon" / "decisions.csv").open() as f:
        deltas = [float(d["delta"]) for d in csv.DictReader(f)]
    assert deltas[:2] == pytest.approx([cfg.energy_delta / 2, cfg.energy_delta * 1.5])
    assert rows["ipa-carbon"]["co2_g"] <= rows["ipa"]["co2_g"] + 1e-9


def test_ipa_carbon_and_a_speedup_need_a_carbon_series(small_cfg):
    for update, says in (({"policies": ["ipa-carbon"]}, "ipa-carbon"), ({"carbon_speedup": 72.0}, "--carbon FILE")):
        with pytest.raises(ValueError, match=says):
            ExperimentConfig.model_validate(small_cfg.model_dump() | update)


def test_a_real_cells_prediction_is_the_median_over_seeds_and_its_band_their_range_at_each_pace(small_cfg):
    """One simulated run is one draw of batch times and arrivals; the prediction is the figure to expect."""
    import statistics

    from ipa.experiment.cells import Setup, shape
    from ipa.experiment.prediction import predict
    from ipa.experiment.sim_cell import run_sim_cell
    from ipa.machine.speed import MachineSpeed
    from ipa.workload import load_workload

    w = shape(load_workload("step:2:30:120:60", None), None, 1.0)
    setup = Setup.load(small_cfg.model_copy(update={"prediction_seeds": 3, "max_cores": 4}))
    alone = [run_sim_cell(setup.updated(seed=s), w, "ipa", client=True)["summary"] for s in (0, 1, 2)]
    assert len({a["p99_latency_s"] for a in alone}) == 3  # the seeds differ
    got = predict(setup, w, "ipa")
    for m in ("p99_latency_s", "completed", "energy_j", "pas"):
        values = [a[m] for a in alone]
        assert got.summary[m] == pytest.approx(statistics.median(values)), m
        assert (got.low[m], got.high[m]) == (pytest.approx(min(values)), pytest.approx(max(values))), m
    assert got.summary["energy_method"] == alone[0]["energy_method"] and got.paces is None
    assert {d["seed"] for d in got.decisions} == {0, 1, 2} and all("config" in d for d in got.decisions)
    # with the range of paces the machine was seen at, the band also runs the simulated machine at both ends
    paced = setup.at_speed(MachineSpeed(pace=1.0, pace_range=(0.8, 1.6)))
    wide = predict(paced, w, "ipa")
    assert wide.paces == (0.8, 1.6)
    ends = {p: [run_sim_cell(s.updated(seed=seed), w, "ipa", client=True)["summary"]["completed"] for seed in (0, 1, 2)]
            for p, s in paced.paced()}
    assert wide.low["completed"] == min(ends[1.6]) < min(ends[0.8]) <= wide.high["completed"]


def test_a_prediction_given_the_speed_the_cell_ran_at_replays_it_for_every_seed(small_cfg):
    """Hindsight (bench/prediction.py --at-cell-pace): the cell's own speed instead of a stretch of earlier ones."""
    import numpy as np

    from ipa.experiment.cells import Setup, shape
    from ipa.experiment.prediction import predict
    from ipa.experiment.sim_cell import run_sim_cell
    from ipa.workload import load_workload

    w = shape(load_workload("static:20:30", None), None, 1.0)
    setup = Setup.load(small_cfg.model_copy(update={"prediction_seeds": 2, "max_cores": 4}))
    slow = (np.array([0.0, 10.0, 20.0]), np.array([1.0, 3.0, 3.0]))  # the last 20 s three times slower
    got = predict(setup, w, "fa2-low", known=slow)
    alone = [run_sim_cell(setup.updated(seed=s), w, "fa2-low", client=True, speed=slow)["summary"] for s in (0, 1)]
    assert got.summary["completed"] == pytest.approx(np.median([a["completed"] for a in alone]))
    assert got.summary["completed"] < predict(setup, w, "fa2-low").summary["completed"]


def test_same_config_pct_is_the_share_of_the_predictions_decisions_the_real_loop_also_made():
    from ipa.experiment.prediction import same_config_pct

    a, b = {"detect": {"variant": "small"}}, {"detect": {"variant": "big"}}
    real = [{"t": 0.0, "config": a}, {"t": 10.0, "config": b}]
    predicted = [{"seed": 0, "t": 0.0, "config": a}, {"seed": 0, "t": 10.0, "config": a},
                 {"seed": 1, "t": 0.0, "config": a}, {"seed": 1, "t": 10.0, "config": b}]
    assert same_config_pct(predicted, real) == 75.0
    assert same_config_pct(predicted, [{"t": 0.0, "error": "solver failed"}]) is None


def test_the_printed_summary_rounds_for_people_and_the_csv_stays_exact(tmp_path):
    """kJ with one decimal, percentages, no exponent form on screen; summary.csv keeps every figure as computed."""
    from ipa.display import plain

    done = CliRunner().invoke(cli, ["experiment", "--workload", "static:40:30", "--policy", "fa2-high",
                                    "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "energy kJ" in done.output and "%" in done.output
    assert not [w for w in done.output.split() if "e+" in w or "e-0" in w], done.output
    row = read_summary(tmp_path)[0]
    assert float(row["energy_j"]) > 1000 and f"{float(row['energy_j']) / 1000:,.1f}" in done.output
    assert [plain(v) for v in (12626.33, 0.156069, 2.4583, 1e-6)] == ["12,626", "0.156069", "2.458", "0.000001"]


def test_the_report_opens_with_what_ipa_bought_against_the_baselines(tmp_path, small_cfg):
    """Its first lines: one sentence per workload, ipa's PAS, cores, energy and SLA violations against each
    baseline that ran; then a short table in kJ with no exponent form, the rest of summary.csv folded below."""
    import re

    from ipa.experiment.report import headline

    out = tmp_path / "run"
    summaries = run_experiment(small_cfg, out)
    page = build_report(out, summaries).read_text()
    sentences = headline(summaries)
    assert len(sentences) == len(WORKLOADS)
    for w, s in zip(WORKLOADS, sentences):
        ipa = next(x for x in summaries if x["workload"] == w and x["policy"] == "ipa")
        assert s.startswith(f"<b>{w}</b>: ipa served at PAS {ipa['pas']:.4f}") and "fa2-low" in s
        assert f"{ipa['energy_j'] / 1000:,.1f} kJ (estimate)" in s and f"{ipa['sla_violation_pct']:.2f}%" in s
    assert page.index('class="headline"') < page.index("<table")  # the first thing a reader sees
    first = page[page.index("<table"):page.index("</table>")]
    assert first.count("<th>") <= 11 and "energy (kJ)" in first
    assert not re.search(r"\d\.?\d*e[+-]\d", first), "no exponent form"
    assert "<details>" in page  # summary.csv's other columns, folded
    assert headline([s for s in summaries if s["policy"] == "ipa"]) == []  # no baseline ran: nothing to say
