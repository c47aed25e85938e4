"""RAPL through `perf stat -a -e power/energy-pkg/ -I ms -x,`: the energy study's method."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from ipa.energy.common import EnergyMeter, Reading, now
from ipa.errors import MeterPermissionError, MeterUnavailable

PMU = Path("/sys/bus/event_source/devices/power")
EVENTS = {"energy-pkg": "package", "energy-ram": "dram", "energy-cores": "core"}


@dataclass(frozen=True)
class PerfSample:
    t: float  # seconds since perf started (end of the interval)
    domain: str
    joules: float  # energy in this interval


_HUMAN = re.compile(r"(?P<t>\d+[.,]\d+)?\s*(?P<j>[\d,]+\.\d+)\s+Joules\s+power/(?P<ev>[\w-]+)/")


def parse_csv_line(line: str) -> PerfSample | None:
    """One line of `perf stat -I ms -x,`: `time,value,unit,event,...`; None for comments and gaps."""
    parts = line.strip().split(",")
    if len(parts) < 4 or line.startswith("#"):
        return None
    t, value, unit, event = parts[:4]
    m = re.fullmatch(r"power/([\w-]+)/", event.strip())
    if not m or unit.strip() != "Joules":
        return None
    try:
        return PerfSample(float(t), EVENTS.get(m.group(1), m.group(1)), float(value))
    except ValueError:  # "<not counted>", "<not supported>"
        return None


def parse_human(text: str) -> list[PerfSample]:
    """The default (not -x) interval output, such as the energy study's Figure 1, in order of appearance.

    The figure's text lost its line structure, so each `J Joules power/EV/` is read with the time that
    precedes it when there is one; a sample with none gets the previous time plus one interval.
    """
    out: list[PerfSample] = []
    last_t = 0.0
    for m in _HUMAN.finditer(text):
        t = float(m.group("t").replace(",", ".")) if m.group("t") else last_t + 1.0
        last_t = t
        out.append(PerfSample(t, EVENTS.get(m.group("ev"), m.group("ev")), float(m.group("j").replace(",", ""))))
    return out


def available_events(pmu: Path = PMU) -> list[str]:
    """The power PMU's energy events; raises MeterUnavailable with the reason when there is none."""
    if shutil.which("perf") is None:
        raise MeterUnavailable("perf", "the perf tool is not installed (Debian: apt-get install linux-perf)")
    events = pmu / "events"
    if not events.is_dir():
        raise MeterUnavailable("perf", f"no 'power' PMU ({pmu} is absent): this CPU or VM exposes no RAPL to perf")
    found = [e.name for e in sorted(events.iterdir()) if e.name in EVENTS]
    if not found:
        raise MeterUnavailable("perf", f"the power PMU has no energy events in {events}")
    return found


class PerfMeter(EnergyMeter):
    """Runs perf as a subprocess and sums its interval samples in a reader thread."""

    method = "perf"

    def __init__(self, interval_ms: int = 100, pmu: Path = PMU):
        self.events = available_events(pmu)
        self.interval_ms = interval_ms
        self._proc: subprocess.Popen[str] | None = None
        self._totals = {EVENTS[e]: 0.0 for e in self.events}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def command(self) -> list[str]:
        events = ",".join(f"power/{e}/" for e in self.events)
        return ["perf", "stat", "-a", "-e", events, "-I", str(self.interval_ms), "-x,"]

    def start(self) -> None:
        self._proc = subprocess.Popen(self.command(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        try:
            self._proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            return  # running: good
        err = self._proc.stderr.read() if self._proc.stderr else ""
        if "ermission" in err or "paranoid" in err:
            raise MeterPermissionError("perf", "perf may not read RAPL: run as root or lower kernel.perf_event_paranoid")
        raise MeterUnavailable("perf", f"perf exited at once: {err.strip()[:200]}")

    def _pump(self) -> None:
        assert self._proc and self._proc.stderr  # perf stat writes its counts to stderr
        for line in self._proc.stderr:
            s = parse_csv_line(line)
            if s:
                with self._lock:
                    self._totals[s.domain] = self._totals.get(s.domain, 0.0) + s.joules

    def read(self) -> Reading:
        with self._lock:
            return Reading(now(), dict(self._totals), self.method)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
