"""The simulated run's per-second books, kept beside the event loop: its requests (`ipa.runtime.series`), the
cores it reserved, and the energy a meter on the machine would read."""

from __future__ import annotations

import math

import numpy as np

from ipa.profiles.serving import ServingCost
from ipa.runtime.series import Recorder, SimResult


class Accounts:
    def __init__(self, seconds: int, sla_s: float, idle_w_per_core: float):
        self.seconds = seconds
        self.idle_w = idle_w_per_core
        self.requests = Recorder(seconds, sla_s)
        self.s = self.requests.s
        self.s["energy_idle_j"] = np.zeros(self.requests.n)
        self.s["energy_dynamic_j"] = np.zeros(self.requests.n)
        self._accrued_to = 0.0

    def batch(self, sec: int, joules: float) -> None:
        """A batch ended in second `sec`, costing its row's joules."""
        self.s["energy_dynamic_j"][sec] += joules

    def accrue(self, t: float, cores: int) -> None:
        """`cores` were reserved from the last accrual up to t: their core-seconds and idle energy, per second."""
        t0 = self._accrued_to
        if t <= t0:
            return
        for sec in range(int(t0), min(math.ceil(t), self.seconds)):
            overlap = min(t, sec + 1) - max(t0, sec)
            if overlap > 0:
                self.s["core_seconds"][sec] += cores * overlap
                self.s["energy_idle_j"][sec] += cores * overlap * self.idle_w
        self._accrued_to = t

    def result(self, cpus: float | None, serving: ServingCost, j_per_cpu_s: float, arrivals: int, completed: int,
               dropped: int, in_flight: int, reconfigurations: int, rejected: int) -> SimResult:
        """The series, with energy: idle (the reserved cores', or with `cpus` the whole machine's: a meter reads
        every core's idle draw), the batches', and serving's CPU at the profiles' joules per CPU-second."""
        series, lat, pas = self.requests.series()
        n = self.seconds
        if cpus is not None:  # the whole machine idles, whatever is reserved
            series["energy_idle_j"] = np.full(n, self.idle_w * cpus)
        series["serving_cpu_s"] = serving.cpu(self.s["arrivals"] - self.s["rejected"], self.s["arrivals"])
        series["energy_serving_j"] = series["serving_cpu_s"] * j_per_cpu_s
        series["energy_j"] = series["energy_idle_j"] + series["energy_dynamic_j"] + series["energy_serving_j"]
        return SimResult(n, series, lat, pas, arrivals, completed, dropped, in_flight, reconfigurations, rejected)
