import bz2
import gzip
import json

import numpy as np
import pytest
from click.testing import CliRunner

from ipa.cli import cli
from ipa.errors import ConfigError, TraceNotFoundError
from ipa.workload import find_trace, load_workload, read_trace
from ipa.workload.patterns import PATTERNS, trace_window
from ipa.workload.trace import default_locations

VALUES = [16, 24, 0, 280, 35, 9]


@pytest.mark.parametrize("opener,suffix", [(open, ".txt"), (bz2.open, ".txt.bz2"), (gzip.open, ".txt.gz")])
def test_trace_reads_plain_bz2_and_gz(tmp_path, opener, suffix):
    p = tmp_path / f"t{suffix}"
    with opener(p, "wt") as f:
        f.write("16 24\n0 280\n35\n9\n")
    assert read_trace(p).tolist() == VALUES


def test_bad_token_names_the_line(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("1\n2\n3 x4\n")
    with pytest.raises(ConfigError, match="line 3: 'x4'"):
        read_trace(p)


def test_missing_trace_says_where_it_looked_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("IPA_TRACE", raising=False)
    monkeypatch.setattr("ipa.workload.trace.default_locations", lambda: [tmp_path / "none.bz2"])
    with pytest.raises(TraceNotFoundError) as e:
        find_trace()
    msg = str(e.value)
    assert "IPA_TRACE (not set)" in msg and "none.bz2 (absent)" in msg and "reconfigurable-ml-pipeline/ipa" in msg
    assert "static:RPS:SECONDS" in msg


def test_a_trace_the_user_names_must_exist_there_is_no_fallback(tmp_path, monkeypatch):
    shared = tmp_path / "shared.txt"
    shared.write_text("1 2 3")
    monkeypatch.setattr("ipa.workload.trace.default_locations", lambda: [shared])
    monkeypatch.delenv("IPA_TRACE", raising=False)
    with pytest.raises(TraceNotFoundError, match="--trace .*nope.txt: no such file"):
        find_trace(tmp_path / "nope.txt")
    monkeypatch.setenv("IPA_TRACE", str(tmp_path / "gone.txt"))
    with pytest.raises(TraceNotFoundError, match="IPA_TRACE=.*gone.txt: no such file"):
        find_trace()
    assert find_trace(shared) == shared  # an explicit path wins over the environment


def test_env_variable_is_used(tmp_path, monkeypatch):
    p = tmp_path / "t.txt"
    p.write_text("1 2 3")
    monkeypatch.setenv("IPA_TRACE", str(p))
    assert find_trace() == p


def test_window_and_damping_truncate_like_ipa():
    trace = np.arange(100)
    assert trace_window(trace, [(10, 14)], 8).tolist() == [1, 1, 1, 1]
    assert trace_window(trace, [(16, 18), (16, 18)], 8).tolist() == [2, 2, 2, 2]
    with pytest.raises(ConfigError, match="outside the trace"):
        trace_window(trace, [(90, 120)])


def test_trace_form_reads_any_window(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(" ".join(str(v) for v in range(0, 400, 4)))
    w = load_workload("trace:10-20/4", trace=p)
    assert w.rps.tolist() == [v // 4 for v in range(40, 80, 4)]


def test_file_form(tmp_path):
    p = tmp_path / "rates.txt"
    p.write_text("3 4 5")
    assert load_workload(f"file:{p}").rps.tolist() == [3, 4, 5]


def test_synthetic_patterns():
    assert load_workload("static:7:5").rps.tolist() == [7] * 5
    assert load_workload("step:2:9:6").rps.tolist() == [2, 2, 2, 9, 9, 9]
    sine = load_workload("sine:10:5:60:120").rps
    assert len(sine) == 120 and sine.max() == 15 and sine.min() == 5
    spike = load_workload("spike:1:50:100:40:5").rps
    assert spike[40:45].tolist() == [50] * 5 and spike.sum() == 95 + 250


@pytest.mark.parametrize("bad,form", [
    ("nope", "static:RPS:SECONDS"), ("trace:abc", "static:RPS:SECONDS"),
    ("static:3", "static:RPS:SECONDS"), ("sine:1:2", "sine:MEAN:AMPLITUDE:PERIOD:SECONDS"),
    ("static:-1:5", "RPS must be a finite number >= 0, got '-1'"), ("static:nan:10", "RPS .* got 'nan'"),
    ("static:inf:10", "got 'inf'"), ("static:5:0", "SECONDS must be at least 1"),
    ("step:1:5:10:2.5", "AT must be a whole number"), ("sine:1:1:0:10", "PERIOD must be > 0"),
    ("step:5:2:30:40", "AT must be 1 to 29 seconds"), ("step:5:2:30:0", "AT must be 1 to 29"),
    ("step:1:5:1", "SECONDS/2 is 0"), ("spike:2:50:60:10:0", "WIDTH must be 1 to 50"),
    ("spike:2:50:60:55:10", "WIDTH must be 1 to 5"), ("spike:2:50:60:60", "AT must be 1 to 59"),
    ("sine:5:10:60:120", "AMPLITUDE must be at most MEAN"), ("trace:0-100/0", "DAMPING .* got 0"),
])
def test_malformed_workloads_say_what_is_wrong_and_the_form(bad, form):
    with pytest.raises(ConfigError, match=form):
        load_workload(bad)


def test_a_small_sine_keeps_its_amplitude():
    w = load_workload("sine:1:0.5:10:30").rps
    assert w.min() == pytest.approx(1 - 0.5 * np.sin(2 * np.pi * 2 / 10)) and w.max() > 1.4


def _have_trace() -> bool:
    return any(p.is_file() for p in default_locations())


EXPECTED = {"bursty": (3, 12.03, 34), "steady-low": (3, 5.1, 8), "steady-high": (23, 28.8, 34),
            "fluctuating": (3, 16.5, 34)}


@pytest.mark.skipif(not _have_trace(), reason="the shared Twitter trace is not beside this checkout")
@pytest.mark.parametrize("name", list(PATTERNS))
def test_paper_patterns_match_the_data_readme(name):
    out = CliRunner().invoke(cli, ["workload", "show", name, "--json"])
    assert out.exit_code == 0, out.output
    stats = json.loads(out.output)
    lo, mean, hi = EXPECTED[name]
    assert stats["seconds"] == 1200 and stats["min"] == lo and stats["max"] == hi
    assert stats["mean"] == pytest.approx(mean, abs=0.05)
