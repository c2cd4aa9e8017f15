"""``deepcloak train``: train a zoo model on a data set and save a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepcloak.cli.app import out, user_errors
from deepcloak.cli.options import DEFAULT_DEVICE, DataOpt, DeviceOpt, RootOpt
from deepcloak.cli.parsing import key_values
from deepcloak.cli.running import progress_bars
from deepcloak.report.files import check_output_file

__all__ = ["train"]


@user_errors
def train(
    model: Annotated[str, typer.Option(help="Zoo model: cnn, vgg, resnet, wrn.")] = "resnet",
    data: DataOpt = "fashion-mnist",
    root: RootOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the recipe's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: 0.1 SGD, 1e-3 Adam).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam.")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="Random crops (and flips).")] = None,
    width: Annotated[int | None, typer.Option(help="Base width of the model.")] = None,
    depth: Annotated[int | None, typer.Option(help="Depth (resnet 6n+2, wrn 6n+4).")] = None,
    option: Annotated[list[str] | None, typer.Option(help="Other model option as key=value (JSON value), repeatable.")] = None,
    limit: Annotated[int | None, typer.Option(help="Train on a random subset of this many samples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and shuffling.")] = 0,
    out_path: Annotated[Path | None, typer.Option("--out", help="Checkpoint file (default: runs/<model>-<data>.safetensors).")] = None,
    device: DeviceOpt = DEFAULT_DEVICE,
) -> None:  # fmt: skip
    """Train a zoo model on a data set and save a checkpoint (safetensors + JSON metadata)."""
    path = out_path or Path("runs") / f"{model}-{data}.safetensors"
    check_output_file(path)
    from deepcloak.devices import resolve_device
    from deepcloak.models.recipes import recipe, train_checkpoint

    arch_kwargs = {"width": width, "depth": depth, **key_values(option or [])}
    job = recipe(
        model, data, root=root, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
        augment=augment, limit=limit, seed=seed,
        arch_kwargs={k: v for k, v in arch_kwargs.items() if v is not None},
    )  # fmt: skip
    with progress_bars() as progress:
        _, result, meta = train_checkpoint(
            job, path, progress=progress, device=resolve_device(device)
        )
    out.print(
        f"{model} on {data}: test accuracy {100 * (result.test_accuracy or 0):.2f}% after "
        f"{result.epochs} epochs ({result.seconds:.0f} s); options {meta['arch_kwargs']}"
    )
    out.print(f"wrote {path}")
