"""Where shared data (the Twitter trace, the speech clip) is looked for: `../shared/` beside the working
directory and beside the checkout. It is never part of the repository."""

from __future__ import annotations

from pathlib import Path


def shared_locations(relative: Path) -> list[Path]:
    """`../<relative>` next to the working directory and next to the checkout that holds this package."""
    repo = Path(__file__).resolve().parents[2]
    seen: list[Path] = []
    for base in (Path.cwd().parent, repo.parent):
        p = (base / relative).resolve()
        if p not in seen:
            seen.append(p)
    return seen
