"""How a command runs: progress bars on stderr, and ``torchrun``'s process group if any."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from deepcloak.cli.app import console

if TYPE_CHECKING:
    from deepcloak.distributed import Distributed
    from deepcloak.progress import ProgressFn

__all__ = ["RichProgress", "distributed_command", "progress_bars", "quiet_progress"]


class RichProgress:
    """A :data:`~deepcloak.progress.ProgressFn` that draws one rich bar per task name."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total)
        self._progress.update(self._tasks[task], completed=done, total=total)


@contextlib.contextmanager
def progress_bars() -> Iterator[RichProgress]:
    """Progress bars on stderr for the duration of a command."""
    with Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        yield RichProgress(bars)


@contextlib.contextmanager
def quiet_progress() -> Iterator[ProgressFn]:
    """No progress bars (the processes of ``torchrun`` other than rank 0 draw none)."""
    from deepcloak.progress import no_progress

    yield no_progress


@contextlib.contextmanager
def distributed_command(device: str) -> Iterator[tuple[Distributed, str]]:
    """Run one command in ``torchrun``'s process group, if any (see
    :func:`~deepcloak.distributed.distributed_run`); yields this process's place and device.

    Only rank 0 should print and write; the other processes log errors only.
    """
    from deepcloak.devices import resolve_device
    from deepcloak.distributed import distributed_run

    with distributed_run(resolve_device(device)) as (ctx, resolved):
        if not ctx.is_main:
            logging.getLogger().setLevel(logging.ERROR)
            warnings.simplefilter("ignore")  # rank 0 warns about the same data
        yield ctx, str(resolved)
