"""The ``deepcloak`` command: a thin layer that parses options, calls the API and renders.

No logic lives here: each command builds a config, calls one library function, and prints the
result with rich. One module per command (:mod:`~deepcloak.cli.demo`,
:mod:`~deepcloak.cli.train`, :mod:`~deepcloak.cli.harden`, :mod:`~deepcloak.cli.evaluate`); the
options they share are declared once in :mod:`~deepcloak.cli.options`. Errors a user can cause
(:class:`~deepcloak.errors.DeepCloakError`) are shown as one readable line and exit with status 2.
"""

from __future__ import annotations

import os
import signal
import sys

from deepcloak.cli import demo, evaluate, harden, train
from deepcloak.cli.app import app, console, out, user_errors
from deepcloak.cli.running import (
    RichProgress,
    distributed_command,
    progress_bars,
    quiet_progress,
)

__all__ = [
    "Interrupted",
    "RichProgress",
    "app",
    "console",
    "demo",
    "distributed_command",
    "evaluate",
    "harden",
    "main",
    "out",
    "progress_bars",
    "quiet_progress",
    "train",
    "user_errors",
]


# The commands, in the order ``deepcloak --help`` lists them.
for _command in (demo.demo, train.train, harden.harden, evaluate.evaluate):
    app.command()(_command)


class Interrupted(BaseException):
    """Ctrl-C, raised past click (which would turn ``KeyboardInterrupt`` into "Aborted!", exit 1)."""


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: object) -> None:
    # DataLoader workers share the terminal's Ctrl-C; torch expects KeyboardInterrupt there.
    raise Interrupted if os.getpid() == _MAIN_PID else KeyboardInterrupt


def main() -> None:
    """Entry point of the ``deepcloak`` command; Ctrl-C stops it with one line and status 130."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if SIGINT is ignored
        signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except Interrupted:
        console.print("[bold red]interrupted[/] (Ctrl-C)", highlight=False)
        sys.exit(130)
