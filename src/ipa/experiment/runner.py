"""The orchestration: every (workload x policy) cell through the cell runner of its runtime, each written
atomically into its own folder; finished cells are kept.

`sim` cells run in `ipa.experiment.sim_cell`; `ray` cells in `ipa.experiment.ray_cell`, then again in the
simulator as their fidelity twin (`ipa.experiment.fidelity`). The cell runners know nothing of each other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ipa._io import atomic_write_text, write_csv, write_json
from ipa.errors import ConfigError
from ipa.experiment import fidelity, prediction
from ipa.experiment.cells import (
    SUMMARY_COLUMNS,
    Setup,
    cell_dir,
    cell_settings,
    differences,
    read_settings,
    shape,
    write_cell,
)
from ipa.experiment.config import ExperimentConfig
from ipa.experiment.sim_cell import run_sim_cell
from ipa.machine.replay import batch_paces
from ipa.machine.tracker import cell_pace
from ipa.workload import Workload, load_workload
from ipa.workload.patterns import PATTERNS
from ipa.workload.trace import find_trace

Progress = Callable[[str, dict | None], None]
# What simulating costs in memory (measured on static workloads, docs/benchmarks.md): the per-second series and
# decisions, and the latency and accuracy kept for every request
BYTES_PER_SECOND, BYTES_PER_REQUEST = 1600, 150


class Cell(NamedTuple):
    """One (workload, policy) of a run, and whether an earlier run's result for it is kept."""

    workload: Workload
    policy: str
    folder: Path
    settings: dict[str, Any]
    keep: bool  # finished before with the same settings
    changed: list[str]  # what differs from the earlier run's settings, in words


def run_experiment(cfg: ExperimentConfig, out: Path, progress: Progress = lambda m, s: None,
                   tick: Callable[[float], None] = lambda done: None) -> list[dict[str, Any]]:
    """All cells. A cell finished by an earlier run into the same folder (its summary.json exists) is kept
    only if it was computed with the same settings (`cell.json`); otherwise it is computed again. `tick` hears
    how much of the running simulated cell is done (0..1)."""
    cfg = cfg.model_copy(update={"trace": _trace_read(cfg)})  # the files record the trace actually read
    setup = Setup.load(cfg)
    workloads = [shape(load_workload(w, cfg.trace), cfg.duration_s, cfg.load_scale) for w in cfg.workloads]
    for w in workloads:
        check_fits(w)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for w in workloads:
        for p in cfg.policies:
            folder = cell_dir(out, w.name, p)
            settings = cell_settings(setup, w, p)
            finished = (folder / "summary.json").is_file()
            changed = differences(read_settings(folder), settings) if finished else []
            cells.append(Cell(w, p, folder, settings, finished and not changed, changed))
    summaries = []
    with _cluster(setup, not all(c.keep for c in cells)) as (fitted, cluster):
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.model_dump(), sort_keys=False))
        for w, policy, folder, settings, keep, changed in cells:
            if keep:
                summary = json.loads((folder / "summary.json").read_text())
                progress(f"{w.name} / {policy}: kept from the earlier run", summary)
            else:
                (folder / "summary.json").unlink(missing_ok=True)  # unfinished until this run writes it again
                write_json(folder / "cell.json", settings)
                summary = (_serve_cell(cluster, w, policy, folder, out) if cluster
                           else _sim_cell(fitted, w, policy, folder, tick))
                if summary is None:
                    progress(f"{w.name} / {policy}: skipped (see the warning above)", None)
                    continue
                again = f" (computed again: {'; '.join(changed)})" if changed else ""
                progress(f"{w.name} / {policy}{again}", summary)
            summaries.append(summary)
            write_csv(out / "summary.csv", summaries, SUMMARY_COLUMNS)
    return summaries


def _trace_read(cfg: ExperimentConfig) -> str | None:
    """The trace file the workloads will be read from (None when none of them needs it)."""
    if not any(w in PATTERNS or w.startswith("trace:") for w in cfg.workloads):
        return cfg.trace
    return str(find_trace(cfg.trace).resolve())


def check_fits(w: Workload) -> None:
    """Refuse a workload whose simulation would not fit in this machine's free memory (it would swap, then be
    killed, hours in)."""
    need = BYTES_PER_SECOND * w.seconds + BYTES_PER_REQUEST * float(w.rps.sum())
    free = _available_bytes()
    if free is not None and need > 0.75 * free:
        raise ConfigError(f"workload '{w.name}': {w.seconds} s and {w.rps.sum():.3g} requests take about "
                          f"{need / 2**30:.1f} GiB to simulate, and this machine has {free / 2**30:.1f} GiB free: "
                          "simulate a shorter part (--duration S, or a trace window trace:START-END)")


def _available_bytes() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sim_cell(setup: Setup, w: Workload, policy: str, folder: Path,
              tick: Callable[[float], None] = lambda done: None) -> dict[str, Any]:
    cell = run_sim_cell(setup, w, policy, tick=tick)
    write_cell(folder, cell)
    return cell["summary"]


def _serve_cell(cluster, w: Workload, policy: str, folder: Path, out: Path) -> dict[str, Any] | None:
    """The simulator's prediction of the cell (before it runs: its own control loop on the profiles the run starts
    from, this machine's CPUs, the load generator on them, over several seeds: `ipa.experiment.prediction`), the
    real cell, then its twin (the run's configs replayed on what it measured); all written, the fidelity rows
    merged. Both the prediction and the real cell start from the machine's pace as last served (`RayCluster.run`)."""
    from ipa.experiment.ray_cell import save_cell

    setup = cluster.setup
    predicted = prediction.predict(setup, w, policy)
    real = cluster.run(w, policy)
    if real is None:
        return None
    twin = run_sim_cell(fidelity.twin(setup, real), w, policy, replay=real["decisions"],
                        pace=batch_paces(real["batches"], real["learned"]), client=True)["summary"]
    save_cell(folder, real, predicted, twin)
    fidelity.merge(out / "fidelity.csv", fidelity.compare(
        w.name, policy, predicted, twin, real["summary"], cell_pace(setup.speed, setup.profiles, real["batches"]),
        prediction.same_config_pct(predicted.decisions, real["decisions"])))
    return real["summary"]


@contextmanager
def _cluster(setup: Setup, needed: bool) -> Iterator[tuple[Setup, Any]]:
    """For --runtime ray: one Ray cluster for every cell, and the setup fitted to it; nothing for the simulator."""
    if setup.cfg.runtime != "ray" or not needed:
        yield setup, None
        return
    from ipa.experiment.ray_cell import RayCluster

    with RayCluster(setup) as cluster:
        yield cluster.setup, cluster
