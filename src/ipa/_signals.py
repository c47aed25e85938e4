"""SIGTERM (what kill, systemd and Kubernetes send) stops a command the way Ctrl-C does: logs written, Ray shut down."""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so every `except KeyboardInterrupt` cleanup runs for it too."""


def _raise(signum, frame) -> None:
    raise Terminated()


def stop_on_sigterm() -> None:
    """(Re)install the handler; Ray's `ray.init` installs its own (a bare sys.exit), so call it after that too."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)
