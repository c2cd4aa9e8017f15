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


@app.command()
@user_errors
def harden(
    model: Annotated[
        str,
        typer.Argument(
            help="A deepcloak checkpoint, package.module:factory (with --weights), "
            "or a torch.save file (with --allow-pickle)."
        ),
    ],
    data: Annotated[
        str, typer.Option(help="Data set: digits, fashion-mnist, mnist, cifar10, imagefolder.")
    ] = "digits",
    root: Annotated[Path | None, typer.Option(help="Folder of the data set files.")] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="state_dict for a factory model (.pt loaded with weights_only, or .safetensors)."
        ),
    ] = None,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            help="Allow unpickling a full model: it can run code, use trusted files only."
        ),
    ] = False,
    attack: Annotated[
        str, typer.Option(help="Attack for the fit and the test samples: fgsm or pgd.")
    ] = "fgsm",
    eps: Annotated[float, typer.Option(help="Attack budget in [0, 1], e.g. 0.031 for 8/255.")] = 8
    / 255,
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 10,
    ratio: Annotated[
        float, typer.Option(help="Fraction of features the saved mask removes, in [0, 1).")
    ] = 0.01,
    layer: Annotated[
        str | None, typer.Option(help="Module to cloak (default: input of the final nn.Linear).")
    ] = None,
    side: Annotated[str | None, typer.Option(help="input or output of --layer.")] = None,
    score: Annotated[str, typer.Option(help="Feature score: deepcloak or random.")] = "deepcloak",
    fit_samples: Annotated[
        int | None, typer.Option(help="Training samples for the fit (default: all).")
    ] = None,
    test_samples: Annotated[
        int | None, typer.Option(help="Test samples for the sweep (default: all).")
    ] = None,
    random_masks: Annotated[int, typer.Option(help="Random masks per ratio in the baseline.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of subsets, attacks and random masks.")] = 0,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the report, plot, mask and model.")
    ] = Path("runs/harden"),
) -> None:
    """Fit DeepCloak on a model's training data and sweep mask ratios on its test data."""
    from deepcloak.checkpoint import load_model
    from deepcloak.data import load_dataset
    from deepcloak.harden import HardenConfig, trained_input_shape, write_harden
    from deepcloak.harden import harden as run_harden
    from deepcloak.report import sweep_table

    config = HardenConfig(
        attack=attack, eps=eps, steps=steps, ratio=ratio, layer=layer, side=side, score=score,
        n_random=random_masks, seed=seed,
    )  # fmt: skip
    config.make_attack()  # an unknown attack name fails here, before loading anything
    net, model_info = load_model(model, weights=weights, allow_pickle=allow_pickle)
    train_set = load_dataset(data, split="train", root=root, limit=fit_samples, seed=seed)
    test_set = load_dataset(data, split="test", root=root, limit=test_samples, seed=seed)
    with progress_bars() as progress:
        result = run_harden(
            net, train_set, test_set, config, input_shape=trained_input_shape(model_info),
            progress=progress,
        )  # fmt: skip
    out.print(sweep_table(result.sweep))
    data_info = {
        "data": data, "root": str(root) if root else None, "train_samples": len(train_set),
        "test_samples": len(test_set), "input_shape": list(train_set.input_shape),
    }  # fmt: skip
    paths = write_harden(result, out_dir, model_info=model_info, data_info=data_info,
                         title=f"DeepCloak: {model} on {data}")  # fmt: skip
    out.print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.seconds:.1f} s)")


def main() -> None:
    """Entry point of the ``deepcloak`` command."""
    app()


if __name__ == "__main__":
    main()
