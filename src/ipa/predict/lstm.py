"""IPA's LSTM load predictor: 12 step maxima in, one LSTM layer of 25 units, a dense output.

Trained with torch (`ipa predictor train lstm`); served with numpy from the small JSON weights
shipped inside the package, so prediction needs neither torch nor the trace.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ipa._io import write_json
from ipa.errors import ConfigError
from ipa.predict.base import HISTORY_S, HORIZON_S, STEP_S, Predictor, step_maxima

WEIGHTS = Path(str(resources.files("ipa.predict") / "lstm_weights.json"))
UNITS = 25
TRAIN_DAYS = 14
TEST_DAYS = 7
DAY = 86_400


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class Lstm(Predictor):
    name = "lstm"

    def __init__(self, weights: Path = WEIGHTS):
        if not weights.is_file():
            raise ConfigError(f"LSTM weights not found at {weights}; train them with `ipa predictor train lstm`")
        w = json.loads(weights.read_text())
        self.w_ih = np.array(w["w_ih"])  # (4U, 1), gates i, f, g, o as torch orders them
        self.w_hh = np.array(w["w_hh"])  # (4U, U)
        self.b = np.array(w["b_ih"]) + np.array(w["b_hh"])
        self.w_out = np.array(w["w_out"])  # (1, U)
        self.b_out = float(w["b_out"][0])
        self.scale = float(w["scale"])
        self.meta = w.get("meta", {})

    def predict(self, history: np.ndarray) -> float:
        return float(self.forward(step_maxima(history)[None, :])[0])

    def predict_many(self, histories: np.ndarray) -> np.ndarray:
        steps = np.stack([step_maxima(h) for h in histories])
        return self.forward(steps)

    def forward(self, steps: np.ndarray) -> np.ndarray:
        """(N, 12) step maxima in rps -> (N,) predicted peak rps."""
        x = steps / self.scale
        n = x.shape[0]
        h = np.zeros((n, UNITS))
        c = np.zeros((n, UNITS))
        for t in range(x.shape[1]):
            gates = x[:, t : t + 1] @ self.w_ih.T + h @ self.w_hh.T + self.b
            i, f, g, o = np.split(gates, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        return np.maximum(0.0, (h @ self.w_out.T)[:, 0] + self.b_out) * self.scale


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (N, 12) step maxima
    y: np.ndarray  # (N,) max over the next 20 s
    histories: np.ndarray  # (N, 120) raw per-second history, for predictors that want it


def series(trace: np.ndarray, first_day: int, days: int, damping: int = 8) -> np.ndarray:
    """IPA's preparation: the days' seconds, zeros dropped, damped by int(x / 8)."""
    part = trace[first_day * DAY : (first_day + days) * DAY]
    return (part[part > 0] // damping).astype(float)


def windows(s: np.ndarray, stride: int = STEP_S) -> Dataset:
    """Every `stride` seconds: the last 120 s as input, the max of the next 20 s as target."""
    starts = np.arange(HISTORY_S, len(s) - HORIZON_S, stride)
    hist = np.lib.stride_tricks.sliding_window_view(s, HISTORY_S)[starts - HISTORY_S]
    fut = np.lib.stride_tricks.sliding_window_view(s, HORIZON_S)[starts]
    x = hist.reshape(len(starts), -1, STEP_S).max(axis=2)
    return Dataset(x, fut.max(axis=1), hist)


def train(trace: np.ndarray, out: Path = WEIGHTS, epochs: int = 4, seed: int = 0, batch: int = 256,
          lr: float = 3e-3, log=print) -> dict:
    """Fit on the first 14 days and write the weights JSON; returns the training record."""
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    data = windows(series(trace, 0, TRAIN_DAYS))
    scale = float(np.percentile(data.y, 99.9))
    x = torch.tensor(data.x / scale, dtype=torch.float32).unsqueeze(-1)
    y = torch.tensor(data.y / scale, dtype=torch.float32).unsqueeze(-1)
    lstm = torch.nn.LSTM(1, UNITS, batch_first=True)
    dense = torch.nn.Linear(UNITS, 1)
    params = list(lstm.parameters()) + list(dense.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            out_seq, _ = lstm(x[idx])
            loss = torch.nn.functional.mse_loss(dense(out_seq[:, -1]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: train RMSE {math.sqrt(total / len(x)) * scale:.3f} rps")
    record = {
        "w_ih": lstm.weight_ih_l0.detach().tolist(),
        "w_hh": lstm.weight_hh_l0.detach().tolist(),
        "b_ih": lstm.bias_ih_l0.detach().tolist(),
        "b_hh": lstm.bias_hh_l0.detach().tolist(),
        "w_out": dense.weight.detach().tolist(),
        "b_out": dense.bias.detach().tolist(),
        "scale": scale,
        "meta": {
            "command": f"ipa predictor train lstm --epochs {epochs} --seed {seed}",
            "seed": seed, "epochs": epochs, "batch": batch, "lr": lr, "samples": len(x),
            "train": f"days 0-{TRAIN_DAYS} of the Twitter trace, zeros dropped, damping 8, stride {STEP_S} s",
            "torch": torch.__version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    write_json(out, record)
    return record["meta"]
