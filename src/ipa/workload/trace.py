"""The Twitter trace: found from --trace, IPA_TRACE or ../shared, read from plain, .bz2 or .gz files."""

from __future__ import annotations

import bz2
import gzip
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ipa._shared import shared_locations
from ipa.errors import ConfigError, TraceNotFoundError

ENV = "IPA_TRACE"
SHARED = Path("shared/data/twitter-trace/twitter-rps.txt.bz2")
GET_IT = (
    "Get it from the IPA artifact repository (github.com/reconfigurable-ml-pipeline/ipa, file "
    "load_tester/barazmoon/twitter/workload.txt), then pass --trace PATH or set IPA_TRACE=PATH. "
    "Without it, use a synthetic workload: static:RPS:SECONDS, step:LOW:HIGH:SECONDS, "
    "sine:MEAN:AMPLITUDE:PERIOD:SECONDS or spike:BASE:PEAK:SECONDS."
)


def default_locations() -> list[Path]:
    """`../shared/...` next to the working directory and next to the checkout that holds this package."""
    return shared_locations(SHARED)


def find_trace(explicit: str | Path | None = None) -> Path:
    """--trace if given, else IPA_TRACE if set, else the first ../shared copy that exists.

    A path the user gave must exist: falling back to another trace would report results for data
    the user did not ask for.
    """
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise TraceNotFoundError(f"--trace {p}: no such file (give an existing trace file, or leave --trace "
                                     f"out to use {ENV} or ../shared)")
        return p
    env = os.environ.get(ENV)
    if env:
        if not Path(env).is_file():
            raise TraceNotFoundError(f"{ENV}={env}: no such file (point it at an existing trace file, or unset it "
                                     "to use ../shared)")
        return Path(env)
    tried = [f"{ENV} (not set)"]
    for p in default_locations():
        if p.is_file():
            return p
        tried.append(f"{p} (absent)")
    raise TraceNotFoundError("no Twitter trace found; looked at: " + "; ".join(tried) + ". " + GET_IT)


def _open_text(path: Path):
    if path.suffix == ".bz2":
        return bz2.open(path, "rt")
    if path.suffix == ".gz":
        return gzip.open(path, "rt")
    return path.open()


@lru_cache(maxsize=4)
def _read_cached(path: str, mtime: float) -> np.ndarray:
    p = Path(path)
    try:
        with _open_text(p) as f:
            text = f.read()
    except (UnicodeDecodeError, OSError, EOFError) as e:  # binary, or a broken .bz2/.gz
        raise ConfigError(f"{p}: not a text file of requests per second ({e}); {FORMAT}") from None
    try:
        rates = np.array(text.split(), dtype=np.int64)
    except (ValueError, OverflowError):
        _raise_bad_token(p, text)
        raise
    if len(rates) == 0:
        raise ConfigError(f"{p}: no rates in the file; {FORMAT}")
    if (rates < 0).any():
        _raise_bad_token(p, text)
    return rates


FORMAT = "a workload file holds whole numbers >= 0, the requests of each second in order, separated by spaces or newlines"


def _raise_bad_token(path: Path, text: str) -> None:
    for line_no, line in enumerate(text.splitlines(), start=1):
        for token in line.split():
            if not token.isdigit():
                raise ConfigError(f"{path}: line {line_no}: '{token}' is not a non-negative integer count of "
                                  f"requests per second ({FORMAT})")


def read_trace(path: str | Path) -> np.ndarray:
    """Per-second request counts as int64; read once per process and file version."""
    p = Path(path)
    if not p.is_file():
        raise TraceNotFoundError(f"{p}: no such file" + (" (a directory)" if p.is_dir() else "")
                                 + f". {GET_IT}")
    return _read_cached(str(p.resolve()), p.stat().st_mtime)
