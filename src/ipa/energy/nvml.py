"""GPU energy through NVML (nvidia-ml-py): the total-energy counter, or integrated power samples."""

from __future__ import annotations

import threading
import time

from ipa.energy.common import EnergyMeter, Reading, now
from ipa.errors import MeterUnavailable


def _nvml():
    try:
        import pynvml
    except ImportError:
        raise MeterUnavailable("nvml", "nvidia-ml-py is not installed") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        raise MeterUnavailable("nvml", f"no NVIDIA driver or GPU ({e})") from None
    return pynvml


class NvmlMeter(EnergyMeter):
    """Every visible GPU, one domain each (gpu0, gpu1, ...)."""

    method = "nvml"

    def __init__(self, sample_s: float = 0.05):
        self.nv = _nvml()
        count = self.nv.nvmlDeviceGetCount()
        if count == 0:
            raise MeterUnavailable("nvml", "NVML sees no GPU")
        self.handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self.names = [self.nv.nvmlDeviceGetName(h) for h in self.handles]
        self.counter = [self._has_counter(h) for h in self.handles]
        self.sample_s = sample_s
        self._base = [0.0] * count
        self._integrated = [0.0] * count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _has_counter(self, h) -> bool:
        try:
            self.nv.nvmlDeviceGetTotalEnergyConsumption(h)
            return True
        except self.nv.NVMLError:
            return False

    def _counter_j(self, i: int) -> float:
        return self.nv.nvmlDeviceGetTotalEnergyConsumption(self.handles[i]) / 1000.0  # mJ

    def start(self) -> None:
        self._base = [self._counter_j(i) if c else 0.0 for i, c in enumerate(self.counter)]
        self._integrated = [0.0] * len(self.handles)
        if not all(self.counter):
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        """Power sampling for GPUs without the energy counter (pre-Volta): trapezoid-free, sample x dt."""
        last = time.monotonic()
        while not self._stop.wait(self.sample_s):
            t = time.monotonic()
            with self._lock:
                for i, h in enumerate(self.handles):
                    if not self.counter[i]:
                        self._integrated[i] += self.nv.nvmlDeviceGetPowerUsage(h) / 1000.0 * (t - last)
            last = t

    def read(self) -> Reading:
        with self._lock:
            joules = {
                f"gpu{i}": (self._counter_j(i) - self._base[i]) if c else self._integrated[i]
                for i, c in enumerate(self.counter)
            }
        return Reading(now(), joules, self.method)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=1)

    @property
    def description(self) -> str:
        return f"nvml ({', '.join(f'gpu{i}: {n}' for i, n in enumerate(self.names))})"
