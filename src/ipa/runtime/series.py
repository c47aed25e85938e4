"""A run's per-second series, whatever ran it: the simulator counts its requests here as they happen, a real run's
requests are counted here from what the load generator saw. Both give the same `SimResult`, which the experiment
scores the same way."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COUNTS = ("arrivals", "completions", "drops", "rejected", "violations", "pas_sum", "core_seconds")


@dataclass
class SimResult:
    """Per-second series (index = second) and run totals, of a simulated or a real run."""

    seconds: int
    series: dict[str, np.ndarray]
    latencies: np.ndarray  # end-to-end latency of every completed request
    completed_pas: np.ndarray  # PAS of every completed request
    arrivals: int
    completed: int
    dropped: int  # every request not answered: refused at admission, expired in a queue, past the drop limit
    in_flight: int
    reconfigurations: int
    rejected: int = 0  # of the dropped: refused at arrival (the real ingress's immediate 503)


class Recorder:
    """Counts requests into per-second buckets: when each arrived, and when each was answered or dropped."""

    def __init__(self, seconds: int, sla_s: float):
        self.n = max(seconds, 1)
        self.sla_s = sla_s
        self.s = {k: np.zeros(self.n) for k in COUNTS}
        self.latencies: list[float] = []
        self.latency_secs: list[int] = []
        self.pas: list[float] = []

    def arrived(self, sec: int) -> None:
        self.s["arrivals"][sec] += 1

    def completed(self, sec: int, latency_s: float, pas: float) -> None:
        """Answered in second `sec`, `latency_s` after it arrived; late past the SLA is a violation."""
        s = self.s
        s["completions"][sec] += 1
        s["pas_sum"][sec] += pas
        if latency_s > self.sla_s:
            s["violations"][sec] += 1
        self.latencies.append(latency_s)
        self.latency_secs.append(sec)
        self.pas.append(pas)

    def dropped(self, sec: int, rejected: bool = False) -> None:
        """Not answered: refused at arrival (`rejected`), expired in a queue or past the drop limit. A violation."""
        s = self.s
        s["drops"][sec] += 1
        s["violations"][sec] += 1
        if rejected:
            s["rejected"][sec] += 1

    def series(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """The series with each second's latency percentiles and mean PAS, every latency, every PAS."""
        lat = np.array(self.latencies)
        series = dict(self.s)
        series["p50_latency_s"], series["p99_latency_s"] = per_second_percentiles(
            lat, np.array(self.latency_secs, dtype=np.int64), self.n)
        done = series["completions"]
        series["pas"] = np.divide(series["pas_sum"], done, out=np.full(self.n, np.nan), where=done > 0)
        return series, lat, np.array(self.pas)


def per_second_percentiles(lat: np.ndarray, secs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """p50 and p99 of the latencies answered in each of `n` seconds (NaN where none was)."""
    p50 = np.full(n, np.nan)
    p99 = np.full(n, np.nan)
    if len(lat):
        order = np.argsort(secs, kind="stable")
        lat, secs = lat[order], secs[order]
        bounds = np.searchsorted(secs, np.arange(n + 1))
        for s in range(n):
            chunk = lat[bounds[s] : bounds[s + 1]]
            if len(chunk):
                p50[s], p99[s] = np.percentile(chunk, [50, 99])
    return p50, p99
