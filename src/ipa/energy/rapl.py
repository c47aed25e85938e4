"""RAPL through the powercap sysfs tree: package, core, dram zones of every package."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from ipa.energy.common import EnergyMeter, Reading, now
from ipa.errors import MeterPermissionError, MeterUnavailable

POWERCAP = Path("/sys/class/powercap")


@dataclass
class Zone:
    domain: str  # e.g. package-0, core-0, dram-0
    path: Path
    max_uj: int
    last_uj: int = 0
    total_uj: int = 0

    def raw(self) -> int:
        return int((self.path / "energy_uj").read_text())

    def advance(self) -> None:
        """Accumulate since the last read; a counter below its last value wrapped at max_energy_range_uj."""
        raw = self.raw()
        delta = raw - self.last_uj
        if delta < 0:
            delta += self.max_uj
        self.total_uj += delta
        self.last_uj = raw


def discover(root: Path = POWERCAP) -> list[Zone]:
    """Zones named intel-rapl:N (package N) and intel-rapl:N:M (its core/dram/uncore); AMD uses the same tree."""
    if not root.is_dir():
        raise MeterUnavailable("rapl", f"{root} does not exist (no powercap driver: a VM or a kernel without intel_rapl)")
    zones = []
    for d in sorted(root.glob("intel-rapl:*")):
        parts = d.name.split(":")
        if len(parts) not in (2, 3) or not (d / "energy_uj").exists():
            continue
        name = (d / "name").read_text().strip() if (d / "name").exists() else "zone"
        pkg = parts[1]
        domain = f"package-{pkg}" if name.startswith("package") else f"{name}-{pkg}"
        max_uj = int((d / "max_energy_range_uj").read_text()) if (d / "max_energy_range_uj").exists() else 2**32
        zones.append(Zone(domain, d, max_uj))
    if not zones:
        raise MeterUnavailable("rapl", f"{root} has no intel-rapl zones with energy_uj")
    try:
        for z in zones:
            z.last_uj = z.raw()
    except PermissionError:
        raise MeterPermissionError(
            "rapl", f"{zones[0].path / 'energy_uj'} exists but is readable by root only "
            "(since Linux 5.10); run as root or `chmod a+r` the energy_uj files"
        ) from None
    return zones


class RaplMeter(EnergyMeter):
    method = "rapl"

    def __init__(self, root: Path = POWERCAP):
        self.zones = discover(root)
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            for z in self.zones:
                z.last_uj, z.total_uj = z.raw(), 0

    def read(self) -> Reading:
        with self._lock:
            for z in self.zones:
                z.advance()
            return Reading(now(), {z.domain: z.total_uj / 1e6 for z in self.zones}, self.method)

    @property
    def description(self) -> str:
        return f"rapl ({', '.join(z.domain for z in self.zones)})"
