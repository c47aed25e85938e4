"""What bad input gets, as a user types it: a one-line error that names the value, exit code 2, no traceback.

The list is the specification: every case found that printed a traceback or accepted nonsense is here.
"""

from __future__ import annotations

import socket
import sys

import pytest

from ipa.cli import main

ROOT_PROFILE = "profiles/video-cpu-2core.csv"


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield str(s.getsockname()[1])


@pytest.fixture
def files(tmp_path):
    dup = tmp_path / "dup.csv"
    lines = open(ROOT_PROFILE).read().splitlines()
    dup.write_text("\n".join([lines[0], lines[1], lines[1].replace("0.0737326", "0.5"), *lines[2:]]) + "\n")
    solver = tmp_path / "solver.yaml"
    solver.write_text("solver: greedy\n")
    delays = tmp_path / "delays.yaml"
    delays.write_text("sim:\n  reconfig_s: {variant: -1}\n")
    made = {"dup": str(dup), "solver": str(solver), "delays": str(delays), "out": str(tmp_path / "out")}
    for name, (column, value) in BAD_ROWS.items():  # the shipped profile with one bad value in its first row
        made[name] = str(profile_with(tmp_path / f"{name}.csv", column, value))
    for name, text in {"negative.txt": "3\n-2\n5\n", "empty.txt": "", "afile": "not a folder"}.items():
        (tmp_path / name).write_text(text)
        made[name.split(".")[0]] = str(tmp_path / name)
    wrong = tmp_path / "wrong-kind.yaml"  # a classifier's name in a detection stage
    wrong.write_text(open("configs/pipelines/video.yaml").read().replace("ssdlite320_mobilenet_v3_large", "resnet18"))
    made["wrong_kind"] = str(wrong)
    (tmp_path / "dup.yaml").write_text(open("configs/pipelines/video.yaml").read() + "sla_s: 0.001\n")
    made["dup_yaml"] = str(tmp_path / "dup.yaml")
    bomb = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"{n}: &{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(bomb) + "\n")
    made["bomb_yaml"] = str(tmp_path / "bomb.yaml")
    for name in ("binary.csv", "binary.yaml", "binary.txt"):
        (tmp_path / name).write_bytes(bytes(range(128, 256)) * 3)
        made[name.replace(".", "_")] = str(tmp_path / name)
    return made


# column -> the bad value put in the first row of the shipped profile
BAD_ROWS = {"p50_above_p99": ("latency_p50_s", "0.5"), "negative_p50": ("latency_p50_s", "-0.1"),
            "negative_share": ("cpu_share", "-0.5"), "share_above_1": ("cpu_share", "1.5"),
            "negative_cpu": ("cpu_s_per_batch", "-0.5"), "huge_throughput": ("throughput_rps", "1e308")}


def profile_with(path, column: str, value: str):
    import csv

    with open(ROOT_PROFILE, newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0][column] = value
    cols = list(dict.fromkeys([*rows[0], column]))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        w.writerows(rows)
    return path


CASES = [
    # (argv, what the message must name); {name} is filled from the fixtures
    (["workload", "show", "static:abc:10"], "'abc'"),
    (["workload", "show", "static:nan:10"], "'nan'"),
    (["workload", "show", "trace:5-3"], "5-3"),
    (["workload", "show", "bursty", "--trace", "/nonexistent/trace.txt"], "/nonexistent/trace.txt"),
    (["experiment", "--workload", "bogus", "--policy", "ipa", "--out", "{out}"], "'bogus'"),
    (["experiment", "--workload", "static:5:0", "--policy", "ipa", "--out", "{out}"], "'0'"),
    (["experiment", "--workload", "static:inf:10", "--policy", "ipa", "--out", "{out}"], "'inf'"),
    (["experiment", "--workload", "static:1:10", "--policy", "greedy", "--out", "{out}"], "'greedy'"),
    (["experiment", "--workload", "static:1:10", "--seed", "-5", "--out", "{out}"], "-5"),
    (["experiment", "--workload", "static:1:10", "--load-scale", "0", "--out", "{out}"], "got 0"),
    (["experiment", "--workload", "static:1:10", "--duration", "0", "--out", "{out}"], "got 0"),
    (["experiment", "{solver}", "--workload", "static:1:10", "--out", "{out}"], "'greedy'"),
    (["experiment", "{delays}", "--workload", "static:1:10", "--out", "{out}"], "-1"),
    (["optimize", "--load", "-3"], "-3"),
    (["optimize", "--load", "nan"], "nan"),
    (["optimize", "--load", "2", "--max-cores", "0"], "got 0"),
    (["optimize", "--load", "2", "--profiles", "{dup}"], "rows 2 and 3"),
    (["optimize", "--load", "2", "--freeze", "detect=yolo"], "'yolo'"),
    (["predictor", "eval", "--stride", "0"], "0"),
    (["predictor", "train", "lstm", "--epochs", "0", "--out", "{out}"], "0"),
    (["optimize", "--load", "2", "--batching-cap", "0"], "got 100 and 0"),
    (["workload", "show", "file:/nonexistent/rates.txt"], "/nonexistent/rates.txt"),
    (["profile", "--device", "tpu", "--out", "{out}"], "'tpu'"),
    (["profile", "--cores", "0", "--out", "{out}"], "'0'"),
    (["energy", "watch", "--", "/nonexistent/cmd"], "/nonexistent/cmd"),
    (["energy", "watch", "--interval", "0", "--duration", "1"], "0"),
    (["serve", "--interval", "0"], "0"),
    (["frontier", "--workload", "static:1:60", "--deltas", "a,b"], "'a,b'"),
    (["experiment", "--all-pipelines", "configs/experiments/nlp.yaml", "--out", "{out}"], "--all-pipelines"),
    (["experiment", "configs/experiments/nlp.yaml", "configs/experiments/bogus.yaml", "--out", "{out}"], "bogus.yaml"),
    (["sla", "--pipeline", "configs/pipelines/audio-qa.yaml", "--profiles", ROOT_PROFILE], "'detect'"),
    (["optimize", "--load", "1", "--pipeline", "configs/pipelines/nlp.yaml", "--profiles",
      "profiles/sum-qa-cpu-2core.csv"], "'nlp-qa'"),
    (["sla", "--pipeline", "configs/pipelines/video.yaml", "--sla-factor", "0"], "0"),
    # issue 21, numbered as the issue lists them
    (["optimize", "--load", "2", "--profiles", "{p50_above_p99}"], "latency_p50_s 0.5 is above latency_p99_s"),  # 1
    (["optimize", "--load", "2", "--profiles", "{negative_p50}"], "'latency_p50_s' must be positive, got -0.1"),  # 1
    (["workload", "show", "file:{negative}"], "line 2: '-2'"),  # 3
    (["experiment", "--workload", "file:{negative}", "--policy", "ipa", "--out", "{out}"], "'-2'"),  # 3
    (["optimize", "--load", "2", "--profiles", "{negative_share}"], "'cpu_share' must be positive"),  # 4
    (["optimize", "--load", "2", "--profiles", "{share_above_1}"], "cpu_share 1.5 is above 1"),  # 4
    (["optimize", "--load", "2", "--profiles", "{negative_cpu}"], "'cpu_s_per_batch' must be positive"),  # 4
    (["optimize", "--load", "2", "--profiles", "{huge_throughput}"], "throughput_rps 1e+308 is more than"),  # 4
    (["frontier", "--workload", "static:1:60", "--betas", "nan", "--out", "{out}"], "'nan': values must be finite"),  # 6
    (["frontier", "--workload", "static:1:60", "--betas", "", "--out", "{out}"], "no values given"),  # 6
    (["experiment", "--workload", "static:1:10", "--policy", "ipa", "--policy", "ipa", "--out", "{out}"],
     "policy given more than once: ipa"),  # 8
    (["experiment", "--workload", "static:1:10", "--workload", "static:1:10", "--out", "{out}"],
     "workload given more than once"),  # 8
    (["experiment", "--workload", "static:1:10", "--policy", "ipa", "--out", "{afile}"], "is a file, not a folder"),  # 10
    (["experiment", "--workload", "static:1:10", "--policy", "ipa", "--out", "/proc/ipa-results"],
     "--out /proc/ipa-results: cannot write there"),  # 10
    (["workload", "show", "static:1:10", "--plot", "/proc/x.png"], "--plot /proc/x.png: cannot write there"),  # 10
    (["profile", "--out", "/proc/p.csv"], "--out /proc/p.csv: cannot write there"),  # 10
    (["profile", "--serving", "--out", "{out}/none.csv"], "no profile CSV there"),  # nothing to add serving's cost to
    (["workload", "show", "spike:2:50:60:10:0"], "WIDTH must be 1 to 50"),  # a spike that never comes
    (["optimize", "--load", "2", "--profiles", "{binary_csv}"], "not a CSV text file"),  # 11
    (["optimize", "--load", "2", "--pipeline", "{binary_yaml}"], "not a YAML text file"),  # 11
    (["workload", "show", "bursty", "--trace", "{binary_txt}"], "not a text file of requests per second"),  # 11
    (["workload", "show", "file:{empty}"], "no rates in the file"),  # 12
    # issue 22: carbon series
    (["experiment", "--workload", "static:1:10", "--carbon", "/nonexistent/c.csv", "--out", "{out}"],
     "--carbon /nonexistent/c.csv: file not found"),
    (["experiment", "--workload", "static:1:10", "--carbon", "{negative}", "--out", "{out}"], "line 1 is '3'"),
    (["experiment", "--workload", "static:1:10", "--carbon", "{binary_txt}", "--out", "{out}"], "not a text file"),
    (["experiment", "--workload", "static:1:10", "--policy", "ipa-carbon", "--out", "{out}"], "--carbon FILE"),
    (["experiment", "--workload", "static:1:10", "--carbon-speedup", "72", "--out", "{out}"], "--carbon FILE"),
    (["experiment", "--workload", "static:1:10", "--carbon-speedup", "0", "--out", "{out}"], "--carbon-speedup"),
    (["frontier", "--workload", "static:1:60", "--carbon", "{empty}", "--out", "{out}"], "an empty file"),
    (["serve", "--carbon-speedup", "72"], "--carbon FILE"),
    (["serve", "--policy", "ipa-carbon"], "--carbon FILE"),
    (["serve", "--carbon", "{afile}"], "line 1 is 'not a folder'"),
    (["experiment", "--workload", "file:{empty}", "--policy", "ipa", "--out", "{out}"], "no rates in the file"),  # 12
    (["profile", "--pipeline", "{wrong_kind}", "--stage", "detect", "--variants", "resnet18", "--batches", "1",
      "--cores", "1", "--out", "{out}"], "'resnet18' is a classification model, but its stage is kind detection"),  # 13
    (["workload", "show", "trace:100-50"], "START must be below END"),  # 14
    (["optimize", "--load", "1e308"], "above the 1e+06 rps"),  # 14
    (["experiment", "--workload", "static:1:10", "--duration", "0", "--out", "{out}"], "--duration"),  # 14
    (["experiment", "--workload", "static:1:100000000", "--policy", "ipa", "--out", "{out}"], "GiB to simulate"),  # 15
    # found beyond the list
    (["workload", "show", "static:1e9:10"], "above the 1e+06 rps"),
    (["experiment", "--workload", "static:1000:10", "--load-scale", "1e10", "--out", "{out}"], "--load-scale 1e+10"),
    (["experiment", "/tmp", "--out", "{out}"], "a directory, not a YAML file"),
    (["optimize", "--load", "2", "--profiles", "/tmp"], "a directory, not a profile CSV"),
    (["workload", "show", "file:/tmp"], "is a directory"),
    (["energy", "watch", "--duration", "1", "--csv", "/tmp"], "is a folder (give a file name)"),
    (["serve", "--weights", "/nonexistent/ckpts", "--out", "{out}"], "--weights /nonexistent/ckpts: no such folder"),
    (["optimize", "--load", "2", "--pipeline", "examples/custom/pipeline.yaml"], "ipa profile --pipeline"),
    # issue 49, item 12: a key given twice, an alias bomb
    (["spec", "check", "{dup_yaml}"], "key 'sla_s' given twice"),
    (["spec", "check", "{bomb_yaml}"], "alias bomb"),
    (["experiment", "{bomb_yaml}", "--out", "{out}"], "alias bomb"),
    # issue 20: the ingress's replicas
    (["serve", "--ingress-replicas", "0"], "--ingress-replicas"),
    (["experiment", "--runtime", "ray", "--ingress-replicas", "65", "--out", "{out}"], "--ingress-replicas"),
]


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gets_one_line_naming_the_value_and_exit_2(argv, names, files, monkeypatch, capsys):
    argv = [a.format(**files) for a in argv]
    monkeypatch.setattr(sys, "argv", ["ipa", *argv])
    before = results()
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    text = out.out + out.err
    assert e.value.code == 2, text
    assert "Traceback" not in text
    assert names.format(**files) in text, text
    assert results() == before, "bad input left a results/ folder behind"


def results() -> set[str]:
    """What the default result folder (results/ under the working directory) holds."""
    import os

    return set(os.listdir("results")) if os.path.isdir("results") else set()


def run_cli(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["ipa", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    return e.value.code, out.out + out.err


def test_a_plan_that_can_serve_nothing_says_so_loudly_and_exits_1(tmp_path, monkeypatch, capsys):
    """Issue 21, case 7: an SLA no variant meets, a core budget below the smallest config."""
    spec = tmp_path / "fast.yaml"
    spec.write_text(open("configs/pipelines/video.yaml").read().replace("sla_s: 4.0", "sla_s: 0.001"))
    code, text = run_cli(monkeypatch, capsys, "experiment", "--pipeline", str(spec), "--profiles", ROOT_PROFILE,
                         "--workload", "static:2:30", "--policy", "ipa", "--out", str(tmp_path / "a"))
    assert code == 1 and "could serve nothing" in text and "SLA (0.001 s)" in text
    assert (tmp_path / "a/summary.csv").is_file(), "what ran is still written"
    code, text = run_cli(monkeypatch, capsys, "experiment", "--max-cores", "1", "--workload", "static:2:30",
                         "--policy", "fa2-low", "--out", str(tmp_path / "b"))
    assert code == 1 and "core budget (1)" in text
    code, text = run_cli(monkeypatch, capsys, "optimize", "--load", "2", "--max-cores", "1")
    assert code == 1 and "no feasible configuration" in text
    code, text = run_cli(monkeypatch, capsys, "optimize", "--load", "2", "--max-cores", "1", "--json")
    assert code == 0 and '"feasible": false' in text and '"holds_rps": 0.0' in text


def test_a_workload_that_sends_no_request_is_named_not_reported_as_if_served(tmp_path, monkeypatch, capsys):
    code, text = run_cli(monkeypatch, capsys, "experiment", "--workload", "static:2:30", "--policy", "fa2-low",
                         "--load-scale", "0.001", "--out", str(tmp_path / "a"))
    assert code == 0 and "no request arrived in static:2:30 (--load-scale 0.001)" in " ".join(text.split())
    code, text = run_cli(monkeypatch, capsys, "experiment", "--workload", "static:2:30", "--policy", "fa2-low",
                         "--out", str(tmp_path / "b"))
    assert code == 0 and "no request arrived" not in text


def test_an_overloaded_plan_exits_1_and_says_what_it_holds(monkeypatch, capsys):
    code, text = run_cli(monkeypatch, capsys, "optimize", "--load", "40", "--max-cores", "2")
    assert code == 1 and "holds" in text and "of 40 rps" in text


def test_variants_without_profile_rows_are_named_and_fa2_low_freezes_a_profiled_one(tmp_path, monkeypatch, capsys):
    """Issue 21, case 2: a spec variant with no rows used to be dropped without a word."""
    from ipa.optimize import make_problem
    from ipa.profiles import load_profiles
    from ipa.spec import load_pipeline

    spec = load_pipeline("configs/pipelines/video.yaml")
    table = load_profiles(ROOT_PROFILE, spec)
    rows = [p for p in table.rows if p.variant != "resnet18"]  # the least accurate classifier, unprofiled
    from ipa.profiles.table import ProfileTable

    ProfileTable(rows, table.meta, "x").save(tmp_path / "p.csv")
    code, text = run_cli(monkeypatch, capsys, "optimize", "--load", "1", "--policy", "fa2-low", "--profiles",
                         str(tmp_path / "p.csv"))
    assert code == 0 and "classify/resnet18" in text and "no rows" in text
    problem = make_problem("fa2-low", spec, load_profiles(tmp_path / "p.csv", spec))
    assert problem.frozen_variants["classify"] == "resnet34"


def test_profile_resumed_with_other_settings_is_refused_and_keeps_the_serving_cost(tmp_path):
    from ipa.energy.estimate import EstimateMeter
    from ipa.errors import ConfigError
    from ipa.profiles.profiler import Plan, ProfilerSettings, run
    from ipa.profiles.table import load_profiles, meta_path
    from ipa.spec import load_pipeline

    spec = load_pipeline("examples/custom/pipeline.yaml")
    out, meter = tmp_path / "p.csv", EstimateMeter()
    plan = [Plan("classify", "tinynet-s", [1], [1])]
    run(spec, plan, out, meter, meter.description, ProfilerSettings(repeats=2, warmup=0, min_window_s=0, idle_s=0.1))
    import json

    meta = json.loads(meta_path(out).read_text()) | {"serving": {"latency_s": 0.03}}
    meta_path(out).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="repeats 2 \\(this run: 3\\)"):
        run(spec, plan, out, meter, meter.description, ProfilerSettings(repeats=3, warmup=0, min_window_s=0, idle_s=0.1))
    more = [Plan("classify", "tinynet-s", [1, 2], [1])]
    run(spec, more, out, meter, meter.description, ProfilerSettings(repeats=2, warmup=0, min_window_s=0, idle_s=0.1))
    table = load_profiles(out)
    assert len(table.rows) == 2 and table.meta["serving"] == {"latency_s": 0.03} and len(table.meta["resumed"]) == 1


def test_energy_below_the_meters_resolution_is_flagged_not_recorded_silently():
    """Issue 21, case 5: a short --min-window recorded 0.00 J per batch with no word."""
    from ipa.profiles.profiler import ProfilerSettings, _resolution_note

    settings = ProfilerSettings(min_window_s=0.05)
    assert "raise --min-window" in _resolution_note({"energy_j_per_batch": 0.0}, settings)
    assert _resolution_note({"energy_j_per_batch": 0.4}, settings) == ""


def test_a_missing_trace_in_the_environment_is_an_error(monkeypatch, capsys):
    monkeypatch.setenv("IPA_TRACE", "/nonexistent/env-trace.txt")
    monkeypatch.setattr(sys, "argv", ["ipa", "workload", "show", "bursty"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "/nonexistent/env-trace.txt" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_on_a_port_in_use_says_so_before_starting_ray(busy_port, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ipa", "serve", "--port", busy_port])
    before = results()
    with pytest.raises(SystemExit) as e:
        main()
    text = capsys.readouterr().err
    assert e.value.code == 2 and f"port {busy_port}" in text and "Traceback" not in text
    assert results() == before  # nothing written: the port is checked first


def test_a_failing_command_passes_its_exit_code_on(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ipa", "energy", "watch", "--interval", "0.2", "--", "false"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1 and "exited with 1" in capsys.readouterr().err


def test_a_weight_given_twice_is_swept_once(tmp_path, monkeypatch, capsys):
    code, _ = run_cli(monkeypatch, capsys, "frontier", "--workload", "static:2:20", "--deltas", "0.1,0.1",
                      "--betas", "1", "--out", str(tmp_path))
    import csv

    with (tmp_path / "frontier.csv").open() as f:
        energy = [r for r in csv.DictReader(f) if r["policy"] == "ipa-energy"]
    assert code == 0 and [float(r["delta"]) for r in energy] == [0.1]
