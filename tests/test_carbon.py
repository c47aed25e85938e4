"""Grid carbon intensity: the series reader, the time mapping, grams beside joules and ipa-carbon's weight."""

import numpy as np
import pytest

from ipa.energy.carbon import co2_g, read_carbon
from ipa.errors import ConfigError


def series(tmp_path, text, name="c.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shared_form_reads_and_maps_seconds_to_hours(tmp_path):
    c = read_carbon(series(tmp_path, "hour,gco2_per_kwh\n0,100\n1,200\n2,300.5\n"))
    assert list(c.hours) == [0, 1, 2] and c.mean == pytest.approx((100 + 200 + 300.5) / 3)
    assert list(c.at([0, 3599, 3600, 7200, 10799])) == [100, 100, 200, 300.5, 300.5]  # real time by default
    assert list(c.at([0, 49, 50, 100], speedup=72)) == [100, 100, 200, 300.5]  # 72 hours per hour: 50 s is an hour
    assert list(c.at([10800, 14400])) == [100, 200]  # past the last hour the series starts over
    assert c.over(0, 100, speedup=72) == pytest.approx((50 * 100 + 50 * 200) / 100)


def test_an_hour_lasts_until_the_next_one_given(tmp_path):
    c = read_carbon(series(tmp_path, "hour,gco2_per_kwh\n5,100\n7,400\n"))  # hour 6 missing: hour 5's value holds
    assert list(c.at([0, 3600, 7200])) == [100, 100, 400]
    assert c.mean == pytest.approx((2 * 100 + 400) / 3) and c.span_h == 3


def test_grams_are_joules_times_intensity_over_a_kwh():
    assert co2_g(np.array([3.6e6, 7.2e6]), np.array([100.0, 50.0])) == pytest.approx([100.0, 100.0])


@pytest.mark.parametrize("text, says", [
    ("", "line 1 is 'an empty file'"),
    ("hour,g\n0,1\n", "line 1 is 'hour,g'"),
    ("hour,gco2_per_kwh\n", "no hours after the header"),
    ("hour,gco2_per_kwh\n0,100\n0,200\n", "line 3: hour 0 after hour 0"),
    ("hour,gco2_per_kwh\n0,-5\n", "line 2"),
    ("hour,gco2_per_kwh\n0.5,5\n", "line 2"),
    ("hour,gco2_per_kwh\n0,dirty\n", "line 2: '0,dirty'"),
    ("hour,gco2_per_kwh\n0,1,2\n", "3 fields"),
    ("hour,gco2_per_kwh\n0,nan\n", "line 2"),
])
def test_a_bad_series_is_refused_with_the_line_and_the_form(tmp_path, text, says):
    with pytest.raises(ConfigError, match="hour,gco2_per_kwh") as e:
        read_carbon(series(tmp_path, text))
    assert says in str(e.value)


def test_a_missing_file_binary_file_or_directory_is_refused_by_name(tmp_path):
    for path, says in ((tmp_path / "none.csv", "file not found"), (tmp_path, "a directory")):
        with pytest.raises(ConfigError, match=says):
            read_carbon(path)
    (tmp_path / "b.csv").write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="not a text file"):
        read_carbon(tmp_path / "b.csv")
