import numpy as np
import pytest

from ipa.errors import ConfigError
from ipa.predict import PREDICTORS, make_predictor
from ipa.predict.base import step_maxima
from ipa.predict.lstm import Lstm, windows

RNG = np.random.default_rng(0)
HISTORY = RNG.poisson(20, 300).astype(float)


def test_step_maxima_pads_short_history():
    assert step_maxima(np.array([5.0, 9.0])).tolist() == [5.0] * 11 + [9.0]
    assert step_maxima(np.arange(120.0)).tolist() == [9.0 + 10 * i for i in range(12)]


@pytest.mark.parametrize("name", PREDICTORS)
def test_every_predictor_gives_a_finite_nonnegative_rate(name):
    p = make_predictor(name)
    for history in (HISTORY, HISTORY[:7], np.full(200, 12.0)):
        v = p.predict(history)
        assert np.isfinite(v) and v >= 0


def test_simple_predictors_follow_their_definition():
    h = np.array([1.0, 5.0, 3.0])
    assert make_predictor("reactive").predict(h) == 3.0
    assert make_predictor("max").predict(h) == 5.0
    assert make_predictor("avg").predict(h) == pytest.approx(3.0)


def test_lstm_loads_from_packaged_weights_without_the_trace(monkeypatch):
    monkeypatch.setenv("IPA_TRACE", "/nonexistent")
    lstm = Lstm()
    assert lstm.meta["seed"] == 0 and "ipa predictor train lstm" in lstm.meta["command"]
    # it tracks the level: a steady 30 rps history predicts near 30, a steady 5 near 5
    assert lstm.predict(np.full(120, 30.0)) == pytest.approx(30, rel=0.25)
    assert lstm.predict(np.full(120, 5.0)) == pytest.approx(5, rel=0.5)


def test_lstm_batch_and_single_agree():
    lstm = Lstm()
    hs = np.stack([HISTORY[i : i + 120] for i in range(0, 100, 20)])
    assert lstm.predict_many(hs) == pytest.approx([lstm.predict(h) for h in hs])


def test_windows_build_ipa_inputs_and_targets():
    s = np.arange(200.0)
    d = windows(s, stride=10)
    assert d.x.shape[1] == 12 and d.x[0].tolist() == [9.0 + 10 * i for i in range(12)]
    assert d.y[0] == 139.0  # max of seconds 120..139


def test_unknown_predictor_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: reactive, max, avg, arima, lstm"):
        make_predictor("prophet")


def test_a_scaled_workload_gets_the_lstm_it_would_get_at_the_traces_scale():
    scale = 0.5  # window 2 s
    small = HISTORY * scale
    scaled = make_predictor("lstm", load_scale=scale)
    assert scaled.name == "lstm"
    means = np.convolve(small, [0.5, 0.5])[: len(small)]
    means[0] = small[0]
    assert scaled.predict(small) == pytest.approx(make_predictor("lstm").predict(means / scale) * scale)
    np.testing.assert_allclose(scaled.predict_many(np.stack([small, small])), [scaled.predict(small)] * 2)


def test_a_sparse_scaled_load_is_predicted_near_its_rate_not_at_one_request_per_second():
    counts = np.zeros(600)
    counts[::10] = 1  # 0.1 rps (the trace at 5 rps scaled by 0.02): per-second counts are 0s and 1s
    for name in ("lstm", "max"):
        raw = make_predictor(name).predict(counts)
        scaled = make_predictor(name, load_scale=0.02).predict(counts)
        assert raw >= 0.9  # every 10 s maximum of 0/1 counts is 1 rps (the LSTM adds its bias)
        assert 0.09 < scaled < 0.15, (name, scaled)


def test_a_scaled_loop_starts_from_its_prior_not_from_ten_empty_seconds():
    from ipa.predict import history_s

    scale, prior = 0.005, 0.03  # a request every ~33 s; the first has not come yet
    blind = make_predictor("max", load_scale=scale).predict(np.zeros(10))
    seeded = make_predictor("max", load_scale=scale, prior=prior)
    assert blind == 0.0
    assert seeded.predict(np.zeros(10)) == pytest.approx(prior, rel=0.1)  # 10 s of nothing barely moves it
    assert history_s(seeded, 120) == 120 + 200  # 12 steps of 200 s trailing means
    assert history_s(make_predictor("max"), 120) == 120
