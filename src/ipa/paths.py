"""Where the files a user names are found, and where results go when the user names no folder.

A relative path is looked for from the working directory, then from the checkout (the shipped configs and profiles
work from anywhere). Results with no --out go to a timestamped folder under results/.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ipa.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def results_folder(kind: str = "") -> Path:
    """results/<kind>-<timestamp> (results/<timestamp> without a kind): where a command writes when not told."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("results") / (f"{kind}-{stamp}" if kind else stamp)


def default_profiles(pipeline: str | Path) -> str:
    """The shipped profiles of a pipeline spec: profiles/<spec file name>-cpu-2core.csv."""
    return f"profiles/{Path(pipeline).stem}-cpu-2core.csv"


def resolve_profiles(profiles: str | None, pipeline: str | Path) -> Path:
    """The profile CSV to plan with: as given, else the pipeline's shipped one, which a pipeline of one's own
    does not have: then the error says how to measure it."""
    default = default_profiles(pipeline)
    try:
        return resolve(profiles or default)
    except ConfigError:
        if profiles and profiles != default:
            raise
        raise ConfigError(f"no profiles for pipeline {pipeline}: {default} is shipped only for the project's own "
                          f"pipelines. Measure yours (ipa profile --pipeline {pipeline} --out PROFILES.csv) and pass "
                          "--profiles PROFILES.csv (or profiles: in an experiment config)") from None


def resolve(path: str) -> Path:
    """A relative path from the working directory if it exists there, else from the checkout."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    alt = REPO / p
    if alt.exists():
        return alt
    raise ConfigError(f"{path}: file not found (looked in {Path.cwd()} and {REPO})")
