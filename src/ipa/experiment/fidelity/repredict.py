"""A finished real run predicted again with the simulator as it is now: how a change to the simulator would have done
on a run already made. At each cell's own pace (`at_cell_pace`), not a prediction but what is left of the error once
the machine's speed, which moves within and between cells, is known."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ipa.errors import ConfigError
from ipa.experiment import fidelity as rows_of
from ipa.experiment.cells import Setup, cell_dir, shape
from ipa.experiment.config import load_experiment
from ipa.experiment.fidelity.score import PACE_APART, TARGETS
from ipa.experiment.prediction import predict
from ipa.machine.measure import WINDOW_S, served_paces, served_spread
from ipa.machine.replay import own_speed
from ipa.machine.tracker import SpeedTracker, cell_pace, own_paces
from ipa.profiles.calibration import BatchTiming
from ipa.workload import load_workload


def read_run(run: Path) -> list[dict[str, Any]]:
    """A finished run's fidelity.csv rows."""
    path = run / "fidelity.csv"
    if not path.is_file():
        raise ConfigError(f"{run}: no finished real run there ({path.name} not found: ipa experiment --runtime ray "
                          "writes it)")
    return rows_of.read(path)


def repredict(run: Path, at_cell_pace: bool = False) -> list[dict[str, Any]]:
    """RUN's real cells against a prediction made now, from what the run's own prediction was made with (the same
    profiles, config and loads, each cell from the pace the run started it at and the speed its 10 s moved at
    before it, as the run gathered them): fidelity rows, as the run's own.
    `at_cell_pace`: each cell simulated at the CPU pace its real batches had, pooled and each served variant's own,
    at the speed its own 10 s moved at (`ipa.machine.replay.own_speed`) and the spread its batches had within them,
    which the run measured (not a prediction: what is left is the model's error once the machine's own speed is
    known), and again at that pace 3% slower and 3% faster: how far a pace known only that well moves each figure."""
    fidelity = read_run(run)  # first: without a finished run there is no config either
    cfg = load_experiment(run / "config.yaml", runtime="sim")
    setup = Setup.load(cfg)
    twins = {(r["workload"], r["policy"], r["metric"]): r["twin"] for r in fidelity}
    started = {(r["workload"], r["policy"]): float(r["predicted"]) for r in fidelity if r["metric"] == "machine_pace"}
    # the machine's speed as served before each cell, as the run gathered it (`RayCluster._follow`)
    seen = setup.speed or None
    served_so_far = SpeedTracker.refreshed(seen)
    rows = []
    for name in cfg.workloads:
        w = shape(load_workload(name, cfg.trace), cfg.duration_s, cfg.load_scale)
        for policy in cfg.policies:
            real = cell_dir(run, w.name, policy) / "summary.json"
            if not real.is_file():
                continue
            real = json.loads(real.read_text())
            with (cell_dir(run, w.name, policy) / "batches.csv").open() as f:
                batches = [BatchTiming(r["stage"], r["variant"], int(r["cores"]), int(r["size"]), float(r["seconds"]),
                                       float(r["cpu_s"]) if r["cpu_s"] else None,
                                       float(r["t_s"]) if r.get("t_s") else None) for r in csv.DictReader(f)]
            # against the variants' paces as followed so far, as the run measured it
            before = setup.at_speed(seen) if seen else setup
            planned, measured = cell_pace(before.speed, before.profiles, batches)
            cell_setup = setup
            if seen and started.get((w.name, policy)):  # the pace the run's prediction had
                seen = replace(seen, pace=started[(w.name, policy)])
                cell_setup = setup.at_speed(seen)
            known = None
            if seen and at_cell_pace and measured:  # the variants the cell served at their own paces and spread
                own = own_paces(seen.variant_pace, served_paces(setup.profiled, batches))
                spread = served_spread(setup.profiles, batches, window_s=WINDOW_S)
                cell_setup = setup.at_speed(replace(seen, pace=measured, variant_pace=own,
                                                      window_spread=spread or seen.window_spread))
                known = own_speed(cell_setup.profiles, batches, w.seconds)
            predicted = predict(cell_setup, w, policy, known)
            apart = {}
            if cell_setup.speed and at_cell_pace:
                pace = cell_setup.speed.pace
                apart = {f: predict(cell_setup.at_speed(replace(cell_setup.speed, pace=pace * f)), w,
                                    policy, known).summary for f in PACE_APART}
            band = {"predicted_low": predicted.low, "predicted_high": predicted.high} if not at_cell_pace else {}
            rows += [{"workload": w.name, "policy": policy, "metric": m, "predicted": predicted.summary[m],
                      **{k: v.get(m, "nan") for k, v in band.items()},
                      "twin": twins.get((w.name, policy, m), "nan"), "real": real[m],
                      **{f"at_x{f:g}": s[m] for f, s in apart.items()}} for m in TARGETS]
            rows.append({"workload": w.name, "policy": policy, "metric": "machine_pace",
                         "predicted": cell_setup.speed.pace if cell_setup.speed else planned,
                         "twin": "nan", "real": measured if measured else "nan"})
            if seen and measured:  # what this cell served joins what the next one starts from (as the run does)
                seen = served_so_far.follow(seen, setup.at_speed(seen).profiles, setup.profiled, batches, seen.pace,
                                            measured)
    return rows
