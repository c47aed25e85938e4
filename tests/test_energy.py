import os
import time
from pathlib import Path

import pytest

from ipa.energy.common import EnergyMeter, Reading
from ipa.energy.detect import open_meter
from ipa.energy.estimate import EstimateMeter
from ipa.energy.perf import PerfMeter, parse_csv_line, parse_human
from ipa.energy.rapl import RaplMeter
from ipa.energy.watch import watch
from ipa.errors import ConfigError, MeterPermissionError, MeterUnavailable

DATA = Path(__file__).parent / "data"


def fake_powercap(root: Path, packages: int = 2, energy_uj: int = 1_000_000, max_uj: int = 10_000_000) -> Path:
    """A powercap tree as the intel_rapl driver lays it out: package zones with core/dram subzones."""
    for pkg in range(packages):
        zone = root / f"intel-rapl:{pkg}"
        for path, name in [(zone, f"package-{pkg}"), (root / f"intel-rapl:{pkg}:0", "core"),
                           (root / f"intel-rapl:{pkg}:1", "dram")]:
            path.mkdir(parents=True, exist_ok=True)
            (path / "name").write_text(name + "\n")
            (path / "energy_uj").write_text(f"{energy_uj}\n")
            (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return root


def set_uj(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_rapl_reads_every_package_and_domain(tmp_path):
    root = fake_powercap(tmp_path)
    meter = RaplMeter(root)
    meter.start()
    set_uj(root, "intel-rapl:0", 3_500_000)
    set_uj(root, "intel-rapl:1:1", 1_250_000)
    r = meter.read()
    assert r.method == "rapl"
    assert set(r.joules) == {"package-0", "core-0", "dram-0", "package-1", "core-1", "dram-1"}
    assert r.joules["package-0"] == pytest.approx(2.5)
    assert r.joules["dram-1"] == pytest.approx(0.25)
    assert r.joules["package-1"] == 0


def test_rapl_counter_wrap_around_is_accumulated(tmp_path):
    root = fake_powercap(tmp_path, packages=1, energy_uj=9_000_000, max_uj=10_000_000)
    meter = RaplMeter(root)
    meter.start()
    set_uj(root, "intel-rapl:0", 9_800_000)
    meter.read()
    set_uj(root, "intel-rapl:0", 300_000)  # wrapped past 10 J
    assert meter.read().joules["package-0"] == pytest.approx(1.3)


def test_rapl_absent_tree_says_why(tmp_path):
    with pytest.raises(MeterUnavailable, match="does not exist"):
        RaplMeter(tmp_path / "powercap")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file; the permission case needs a normal user")
def test_rapl_root_only_files_are_a_permission_error(tmp_path):
    root = fake_powercap(tmp_path, packages=1)
    (root / "intel-rapl:0" / "energy_uj").chmod(0o000)
    with pytest.raises(MeterPermissionError, match="root"):
        RaplMeter(root)


def test_rapl_permission_error_is_named_even_as_root(tmp_path, monkeypatch):
    root = fake_powercap(tmp_path, packages=1)
    real_read = Path.read_text

    def deny(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", deny)
    with pytest.raises(MeterPermissionError, match="readable by root only"):
        RaplMeter(root)


def test_perf_csv_interval_output_is_parsed():
    samples = [s for line in (DATA / "perf_interval.csv").read_text().splitlines() if (s := parse_csv_line(line))]
    assert [(s.domain, s.joules) for s in samples] == [
        ("package", 71.65), ("dram", 9.12), ("package", 72.91), ("dram", 9.30), ("package", 134.09)]
    assert samples[-1].t == pytest.approx(3.001240052)


def test_energy_study_figure_1_is_parsed():
    samples = parse_human((DATA / "figure1.txt").read_text())
    joules = [s.joules for s in samples]
    assert joules[:3] == [71.65, 72.91, 73.71]
    assert 134.09 in joules and all(s.domain == "package" for s in samples)
    assert len(samples) == 24


def test_perf_without_power_pmu_says_not_available(tmp_path):
    with pytest.raises(MeterUnavailable) as e:
        PerfMeter(pmu=tmp_path / "power")
    assert "power" in e.value.reason or "perf" in e.value.reason


def _busy(seconds: float) -> None:
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


def test_estimate_shows_more_energy_busy_than_sleeping():
    meter = EstimateMeter()
    with meter.window() as idle:
        time.sleep(0.5)
    with meter.window() as busy:
        _busy(0.5)
    assert busy.total > idle.total > 0
    assert busy.method == idle.method == "estimate"


def test_auto_detection_here_falls_back_and_explains():
    detection = open_meter("auto", gpu=False)
    if Path("/sys/class/powercap/intel-rapl:0").exists():
        pytest.skip("this machine has RAPL")
    assert "rapl" in detection.skipped
    if detection.meter.method == "estimate":  # this machine: neither RAPL nor a power PMU
        assert "perf" in detection.skipped and "estimate" in detection.explain()
    else:
        assert detection.meter.method == "perf"


def test_unknown_meter_names_the_allowed_ones():
    with pytest.raises(ConfigError, match="allowed: auto, rapl, perf, nvml, estimate"):
        open_meter("joulemeter")


class StepMeter(EnergyMeter):
    """A meter whose counter is a clock, so interval lines are checkable; the watch loop itself is real."""

    method = "test"

    def read(self) -> Reading:
        t = time.monotonic()
        return Reading(t, {"package": 10.0 * t}, self.method)


def test_watch_prints_one_row_per_interval_and_stops_at_duration():
    w = watch(StepMeter(), interval_s=0.1, duration_s=0.35)
    rows, elapsed = w.rows, w.elapsed_s
    assert len(rows) == 4 and elapsed == pytest.approx(0.35, abs=0.05)
    assert sum(r.joules for r in rows) == pytest.approx(10 * elapsed, rel=1e-6)


def test_watch_measures_a_command_until_it_exits():
    w = watch(EstimateMeter(), interval_s=0.2, command=["python3", "-c", "import time; time.sleep(0.5)"])
    rows, elapsed = w.rows, w.elapsed_s
    assert w.exit_code == 0
    assert 0.4 < elapsed < 2 and rows


def fake_pmu(root: Path, with_events: bool = True) -> Path:
    """The power PMU's sysfs folder as Linux lays it out (type, cpumask, events/energy-*)."""
    (root / "events").mkdir(parents=True)
    (root / "type").write_text("9\n")
    (root / "cpumask").write_text("0,28\n")
    if with_events:
        (root / "events" / "energy-pkg").write_text("event=0x02\n")
        (root / "events" / "energy-pkg.scale").write_text("2.3283064365386962890625e-10\n")
        (root / "events" / "energy-pkg.unit").write_text("Joules\n")
    return root


def test_pmu_event_and_cpumask_parsing():
    from ipa.energy.perf import _cpulist, parse_event

    assert parse_event("event=0x02\n") == 2 and parse_event("event=0x19,umask=0x1") == 25
    assert _cpulist("0,28\n") == [0, 28] and _cpulist("0-3,8") == [0, 1, 2, 3, 8]


def test_power_pmu_without_energy_events_is_unavailable(tmp_path):
    """Seen on the H100 VM: a `power` PMU with no energy-* events, so no RAPL."""
    from ipa.energy.perf import PerfEventMeter

    with pytest.raises(MeterUnavailable, match="no energy events"):
        PerfEventMeter(pmu=fake_pmu(tmp_path / "power", with_events=False))


def test_power_pmu_lists_its_energy_events(tmp_path):
    from ipa.energy.perf import available_events

    assert available_events(fake_pmu(tmp_path / "power"), need_tool=False) == ["energy-pkg"]
