"""Estimated CPU energy from CPU time, for machines with no energy counter. Always labelled `estimate`.

Model: P = idle_w_per_core * online cores + dynamic_w_per_core * busy cores, busy cores read from
/proc/stat (user+nice+system+irq+softirq+steal jiffies). Constants: a server core draws
TDP / cores when busy; we take the AMD EPYC 7763 (280 W, 64 cores: 4.4 W per busy core) with
idle package power about 30% of TDP (1.3 W per core), so 3.1 W of dynamic power per busy core.
Override with IPA_IDLE_W_PER_CORE and IPA_DYNAMIC_W_PER_CORE when you know better.
"""

from __future__ import annotations

import os
from pathlib import Path

from ipa.energy.common import EnergyMeter, Reading, now

IDLE_W_PER_CORE = 1.3
DYNAMIC_W_PER_CORE = 3.1
PROC_STAT = Path("/proc/stat")


def busy_core_seconds(stat: Path = PROC_STAT) -> tuple[float, int]:
    """Total busy CPU time of the machine (seconds) and the number of online CPUs."""
    lines = stat.read_text().splitlines()
    ticks = os.sysconf("SC_CLK_TCK")
    fields = [int(x) for x in lines[0].split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is inside user
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    cpus = sum(1 for ln in lines if ln.startswith("cpu") and ln[3:4].isdigit())
    return busy / ticks, cpus


class EstimateMeter(EnergyMeter):
    method = "estimate"

    def __init__(self, idle_w_per_core: float | None = None, dynamic_w_per_core: float | None = None,
                 stat: Path = PROC_STAT):
        self.idle_w = idle_w_per_core if idle_w_per_core is not None else float(
            os.environ.get("IPA_IDLE_W_PER_CORE", IDLE_W_PER_CORE))
        self.dyn_w = dynamic_w_per_core if dynamic_w_per_core is not None else float(
            os.environ.get("IPA_DYNAMIC_W_PER_CORE", DYNAMIC_W_PER_CORE))
        self.stat = stat
        self.start()

    def start(self) -> None:
        self._t0 = now()
        self._busy0, self.cpus = busy_core_seconds(self.stat)

    def read(self) -> Reading:
        t = now()
        busy, _ = busy_core_seconds(self.stat)
        idle_j = self.idle_w * self.cpus * (t - self._t0)
        dyn_j = self.dyn_w * (busy - self._busy0)
        return Reading(t, {"package": idle_j + dyn_j}, self.method)

    @property
    def description(self) -> str:
        return (f"estimate ({self.cpus} CPUs x {self.idle_w} W idle + {self.dyn_w} W per busy core, "
                "from /proc/stat CPU time; no energy counter on this machine)")
