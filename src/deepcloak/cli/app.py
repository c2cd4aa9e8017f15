"""The typer app every command registers on, its consoles, and how a user's error is shown.

Errors a user can cause (:class:`~deepcloak.errors.DeepCloakError`, or the OS refusing a file)
are shown as one readable line on stderr and exit with status 2.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from deepcloak.errors import DeepCloakError

__all__ = ["app", "console", "out", "user_errors"]

app = typer.Typer(
    help="Harden a trained image classifier with DeepCloak (arXiv 1702.06763), and measure "
    "honestly what that buys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: Progress, warnings and errors (stderr).
console = Console(stderr=True)
#: Results (stdout).
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(command: F) -> F:
    """Show a :class:`DeepCloakError`, or the OS refusing a file (disk full, read-only,
    permissions), as one line on stderr and exit with status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (DeepCloakError, OSError) as e:
            rank = os.environ.get("RANK", "0")  # torchrun's; the group may be gone by now
            where = f" (rank {rank})" if rank != "0" else ""
            # soft_wrap: one line the terminal may fold, never a path broken by rich at width 80
            console.print(
                f"[bold red]error{where}:[/] {_one_line(e)}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _one_line(e: Exception) -> str:
    """The error's message; for the OS's, the file and the reason (``EACCES``, ...)."""
    if isinstance(e, OSError) and not isinstance(e, DeepCloakError):
        code = errno.errorcode.get(e.errno or 0, "")
        path = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
        return f"{path}{e.strerror or e}" + (f" ({code})" if code else "")
    return str(e)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Torch CPU threads (default: one per core; 1 is best on a busy machine)."
        ),
    ] = None,
) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
