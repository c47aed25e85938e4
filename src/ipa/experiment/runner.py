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
from typing import Any

import yaml

from ipa._io import atomic_write_text, write_csv
from ipa.experiment import fidelity
from ipa.experiment.cells import SUMMARY_COLUMNS, Setup, cell_dir, shape, write_cell
from ipa.experiment.config import ExperimentConfig
from ipa.experiment.sim_cell import run_sim_cell
from ipa.workload import Workload, load_workload

Progress = Callable[[str, dict | None], None]


def run_experiment(cfg: ExperimentConfig, out: Path, progress: Progress = lambda m, s: None) -> list[dict[str, Any]]:
    """All cells; a cell whose summary.json exists (an earlier, interrupted run) is not run again."""
    setup = Setup.load(cfg)
    workloads = [shape(load_workload(w, cfg.trace), cfg.duration_s, cfg.load_scale) for w in cfg.workloads]
    out.mkdir(parents=True, exist_ok=True)
    cells = [(w, p, cell_dir(out, w.name, p)) for w in workloads for p in cfg.policies]
    todo = [c for c in cells if not (c[2] / "summary.json").is_file()]
    summaries = []
    with _cluster(setup, bool(todo)) as (setup, cluster):
        atomic_write_text(out / "config.yaml", yaml.safe_dump(setup.cfg.model_dump(), sort_keys=False))
        for w, policy, folder in cells:
            done = folder / "summary.json"
            if done.is_file():
                summary = json.loads(done.read_text())
                progress(f"{w.name} / {policy}: kept from the earlier run", summary)
            else:
                summary = _serve_cell(cluster, setup, w, policy, folder, out) if cluster else _sim_cell(setup, w, policy, folder)
                if summary is None:
                    progress(f"{w.name} / {policy}: skipped (see the warning above)", None)
                    continue
                progress(f"{w.name} / {policy}", summary)
            summaries.append(summary)
            write_csv(out / "summary.csv", summaries, SUMMARY_COLUMNS)
    return summaries


def _sim_cell(setup: Setup, w: Workload, policy: str, folder: Path) -> dict[str, Any]:
    cell = run_sim_cell(setup, w, policy)
    write_cell(folder, cell)
    return cell["summary"]


def _serve_cell(cluster, setup: Setup, w: Workload, policy: str, folder: Path, out: Path) -> dict[str, Any] | None:
    """The real cell, then its simulated twin; both written, the fidelity rows merged."""
    from ipa.experiment.ray_cell import save_cell

    real = cluster.run(w, policy)
    if real is None:
        return None
    sim = run_sim_cell(fidelity.twin(setup, real), w, policy)["summary"]
    save_cell(folder, real, sim)
    fidelity.merge(out / "fidelity.csv", fidelity.compare(w.name, policy, sim, real["summary"]))
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
