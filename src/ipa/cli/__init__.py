"""`ipa ...`: one subcommand per job. Errors the user can fix print as one message, no traceback.

The commands live by what they do: `plan` (optimize, sla, spec), `measure` (profile, energy, workload, predictor),
`run` (experiment, frontier, serve), `fidelity`; `options` holds what several of them take.
"""

from __future__ import annotations

import os
import sys

import click
from rich.console import Console
from rich.table import Table

from ipa._signals import Terminated, stop_on_sigterm
from ipa.display import plain
from ipa.errors import IpaError

# Text we print holds paths, workload names and [brackets] from users: never markup or :emoji: codes.
console = Console(soft_wrap=True, markup=False, emoji=False, highlight=False, **({} if sys.stdout.isatty() else {"width": 200}))
err_console = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Energy-aware inference pipeline adaptation."""


def error(text: str) -> None:
    """An error the user can fix, printed as it is (no markup: messages hold paths and [brackets])."""
    err_console.print("error: " + text, style="red")


def note(text: str) -> None:
    """Something the user should know that does not stop the command (nothing when `text` is empty)."""
    if text:
        err_console.print("note: " + text, style="yellow")


def main() -> None:
    stop_on_sigterm()
    try:
        code = cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as e:
        terminated = isinstance(e, Terminated) or isinstance(e.__context__, Terminated)
        err_console.print("terminated" if terminated else "interrupted", style="yellow", markup=False)
        sys.exit(143 if terminated else 130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except IpaError as e:
        error(str(e))
        sys.exit(2)
    except (OSError, UnicodeDecodeError) as e:  # a path the checks above did not foresee: one line, not a traceback
        if os.environ.get("IPA_DEBUG"):
            raise
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        error(f"{where}{getattr(e, 'strerror', None) or e} (IPA_DEBUG=1 shows where)")
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def print_table(rows: list[dict], title: str = "") -> None:
    if not rows:
        console.print(f"{title}: (no rows)")
        return
    t = Table(title=title or None)
    for col in rows[0]:
        t.add_column(str(col))
    for r in rows:
        t.add_row(*[plain(v) if isinstance(v, float) else "" if v is None else str(v) for v in r.values()])
    console.print(t)


def log_to(con: Console) -> None:
    """Warnings and progress of the serving runtime on stderr (replica down, failed reconfiguration, meter)."""
    import logging

    from rich.logging import RichHandler

    handler = RichHandler(console=con, show_path=False, show_time=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler], force=True)
    for noisy in ("ray", "ray.serve", "filelock", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


from ipa.cli import fidelity, measure, plan, run  # noqa: E402,F401  (registers the commands)
