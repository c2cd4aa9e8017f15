"""Progress reporting without printing: library code calls a callback, the CLI draws the bars."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressFn", "no_progress"]

#: ``progress(task, done, total)``: ``done`` of ``total`` units (samples, epochs, ratios) of the
#: task named ``task`` are finished; ``total`` is ``None`` when unknown. Called repeatedly with a
#: growing ``done``; a new ``task`` string starts a new bar.
ProgressFn = Callable[[str, int, "int | None"], None]


def no_progress(task: str, done: int, total: int | None) -> None:
    """The default progress callback: report nothing."""
