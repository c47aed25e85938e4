"""Pick the best meter this machine has, and say why the better ones are not available."""

from __future__ import annotations

from dataclasses import dataclass, field

from ipa.energy.common import EnergyMeter, Reading, now
from ipa.errors import ConfigError, MeterUnavailable

METERS = ("auto", "rapl", "perf", "nvml", "estimate")


@dataclass
class Detection:
    meter: EnergyMeter
    skipped: dict[str, str] = field(default_factory=dict)  # meter -> why it was not used

    def explain(self) -> str:
        lines = [f"energy meter: {self.meter.description}"]
        lines += [f"  {name} not used: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _build(name: str) -> EnergyMeter:
    if name == "rapl":
        from ipa.energy.rapl import RaplMeter

        return RaplMeter()
    if name == "perf":
        from ipa.energy.perf import PerfEventMeter, PerfMeter

        try:
            return PerfEventMeter()  # same counters, no subprocess
        except MeterUnavailable as direct:
            try:
                return PerfMeter()
            except MeterUnavailable as tool:
                reasons = dict.fromkeys([direct.reason, tool.reason])  # the same cause is said once
                raise MeterUnavailable("perf", "; ".join(reasons)) from None
    if name == "nvml":
        from ipa.energy.nvml import NvmlMeter

        return NvmlMeter()
    from ipa.energy.estimate import EstimateMeter

    return EstimateMeter()


def open_meter(name: str = "auto", gpu: bool = True) -> Detection:
    """`auto`: rapl, then perf, then estimate for the CPU; NVML alongside where a GPU is visible.

    A forced meter that cannot run raises MeterUnavailable with its reason.
    """
    if name not in METERS:
        raise ConfigError(f"unknown meter '{name}' (allowed: {', '.join(METERS)})")
    if name != "auto":
        return Detection(_build(name))
    skipped: dict[str, str] = {}
    cpu: EnergyMeter | None = None
    for candidate in ("rapl", "perf"):
        try:
            cpu = _build(candidate)
            break
        except MeterUnavailable as e:
            skipped[candidate] = e.reason
    cpu = cpu or _build("estimate")
    if not gpu:
        return Detection(cpu, skipped)
    try:
        return Detection(CombinedMeter([cpu, _build("nvml")]), skipped)
    except MeterUnavailable as e:
        skipped["nvml"] = e.reason
        return Detection(cpu, skipped)


class CombinedMeter(EnergyMeter):
    """A CPU meter and a GPU meter read together; the method names both (`rapl+nvml`)."""

    def __init__(self, meters: list[EnergyMeter]):
        self.meters = meters
        self.method = "+".join(m.method for m in meters)

    def start(self) -> None:
        for m in self.meters:
            m.start()

    def read(self) -> Reading:
        joules: dict[str, float] = {}
        for m in self.meters:
            joules.update(m.read().joules)
        return Reading(now(), joules, self.method)

    def stop(self) -> None:
        for m in self.meters:
            m.stop()

    @property
    def description(self) -> str:
        return " + ".join(m.description for m in self.meters)
