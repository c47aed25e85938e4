"""RAPL through `perf stat -a -e power/energy-pkg/ -I ms -x,`: the energy study's method."""

from __future__ import annotations

import os
import platform
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


def available_events(pmu: Path = PMU, need_tool: bool = True) -> list[str]:
    """The power PMU's energy events; raises MeterUnavailable with the reason when there is none."""
    if need_tool and shutil.which("perf") is None:
        raise MeterUnavailable("perf", "the perf tool is not installed (Debian: apt-get install linux-perf)")
    events = pmu / "events"
    if not events.is_dir():
        raise MeterUnavailable("perf", f"no 'power' PMU ({pmu} is absent): this CPU or VM exposes no RAPL to perf")
    found = [e.name for e in sorted(events.iterdir()) if e.name in EVENTS]
    if not found:
        raise MeterUnavailable("perf", f"the power PMU has no energy events in {events}")
    return found


def parse_event(text: str) -> int:
    """`event=0x02` (a PMU event file) -> 2; umask and others are not used by the power PMU."""
    for part in text.strip().split(","):
        key, _, value = part.partition("=")
        if key == "event":
            return int(value, 0)
    raise ValueError(f"no event= in {text!r}")


class PerfEventMeter(EnergyMeter):
    """The power PMU read directly through perf_event_open(2): the counters `perf stat` reads, no tool needed.

    One counter per event and package (the PMU's cpumask names one CPU per package).
    """

    method = "perf"
    SYSCALL_X86_64 = 298

    def __init__(self, pmu: Path = PMU):
        events = available_events(pmu, need_tool=False)
        pmu_type = int((pmu / "type").read_text())
        cpus = _cpulist((pmu / "cpumask").read_text()) if (pmu / "cpumask").exists() else [0]
        self._fds: list[tuple[str, int, float]] = []
        self._base: dict[int, int] = {}
        for ev in events:
            config = parse_event((pmu / "events" / ev).read_text())
            scale_file = pmu / "events" / f"{ev}.scale"
            scale = float(scale_file.read_text()) if scale_file.exists() else 2.0**-32
            for pkg, cpu in enumerate(cpus):
                fd = _perf_event_open(pmu_type, config, cpu)
                self._fds.append((f"{EVENTS[ev]}-{pkg}", fd, scale))

    def _raw(self, fd: int) -> int:
        return int.from_bytes(os.pread(fd, 8, 0), "little")

    def start(self) -> None:
        self._base = {fd: self._raw(fd) for _, fd, _ in self._fds}

    def read(self) -> Reading:
        if not self._base:
            self.start()
        return Reading(now(), {d: (self._raw(fd) - self._base[fd]) * s for d, fd, s in self._fds}, self.method)

    def stop(self) -> None:
        for _, fd, _ in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = []

    @property
    def description(self) -> str:
        return f"perf (power PMU through perf_event_open: {', '.join(d for d, _, _ in self._fds)})"


def _cpulist(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _perf_event_open(pmu_type: int, config: int, cpu: int) -> int:
    import ctypes
    import struct

    if platform.machine() != "x86_64":
        raise MeterUnavailable("perf", f"perf_event_open is wired for x86_64 only, not {platform.machine()}")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("IIQ", attr, 0, pmu_type, 128, config)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(PerfEventMeter.SYSCALL_X86_64, attr, -1, cpu, -1, 0)
    if fd < 0:
        err = ctypes.get_errno()
        if err in (1, 13):  # EPERM, EACCES
            raise MeterPermissionError("perf", "perf_event_open refused: run as root or set kernel.perf_event_paranoid <= 0")
        raise MeterUnavailable("perf", f"perf_event_open failed: {os.strerror(err)}")
    return fd


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
