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
    return {"dup": str(dup), "solver": str(solver), "delays": str(delays), "out": str(tmp_path / "out")}


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
]


@pytest.mark.parametrize("argv,names", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_gets_one_line_naming_the_value_and_exit_2(argv, names, files, monkeypatch, capsys):
    argv = [a.format(**files) for a in argv]
    monkeypatch.setattr(sys, "argv", ["ipa", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    text = out.out + out.err
    assert e.value.code == 2, text
    assert "Traceback" not in text
    assert names.format(**files) in text, text


def test_a_missing_trace_in_the_environment_is_an_error(monkeypatch, capsys):
    monkeypatch.setenv("IPA_TRACE", "/nonexistent/env-trace.txt")
    monkeypatch.setattr(sys, "argv", ["ipa", "workload", "show", "bursty"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "/nonexistent/env-trace.txt" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_on_a_port_in_use_says_so_before_starting_ray(busy_port, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ipa", "serve", "--port", busy_port])
    with pytest.raises(SystemExit) as e:
        main()
    text = capsys.readouterr().err
    assert e.value.code == 2 and f"port {busy_port}" in text and "Traceback" not in text


def test_a_failing_command_passes_its_exit_code_on(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ipa", "energy", "watch", "--interval", "0.2", "--", "false"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 1 and "exited with 1" in capsys.readouterr().err
