"""The ``deepcloak`` command: a thin layer that parses options, calls the API and renders.

No logic lives here: each command builds a config, calls one library function, and prints the
result with rich. Errors a user can cause (:class:`~deepcloak.errors.DeepCloakError`) are shown
as one readable line and exit with status 2.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from deepcloak.errors import DeepCloakError

app = typer.Typer(
    help="Harden a trained image classifier with DeepCloak (arXiv 1702.06763), and measure "
    "honestly what that buys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


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


def user_errors(command: F) -> F:
    """Show a :class:`DeepCloakError` as one line on stderr and exit with status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DeepCloakError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


@app.command()
@user_errors
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the report, plot, mask and model.")
    ] = Path("runs/demo"),
    eps: Annotated[
        float, typer.Option(help="FGSM budget in [0, 1] (digits have 1/16 grey steps).")
    ] = 0.2,
    ratio: Annotated[
        float, typer.Option(help="Fraction of features the saved mask removes, in [0, 1).")
    ] = 0.05,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed of training, attacks and random masks.")] = 0,
) -> None:
    """Train a small ResNet on scikit-learn's digits, cloak it, and sweep mask ratios."""
    from deepcloak.demo import DemoConfig, run_demo, write_demo
    from deepcloak.report import sweep_table

    config = DemoConfig(eps=eps, ratio=ratio, epochs=epochs, seed=seed)
    with progress_bars() as progress:
        result = run_demo(config, progress=progress)
    out.print(
        f"ResNet on digits: test accuracy {100 * result.training.test_accuracy:.1f}% "
        f"({result.training.epochs} epochs, {result.training.seconds:.1f} s)"
    )
    out.print(sweep_table(result.hardened.sweep))
    paths = write_demo(result, out_dir)
    out.print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.seconds:.1f} s)")


def main() -> None:
    """Entry point of the ``deepcloak`` command."""
    app()


if __name__ == "__main__":
    main()
