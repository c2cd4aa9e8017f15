"""The options the commands share, each declared once: its type, help text and default.

typer takes an option's help from ``Annotated[type, typer.Option(...)]`` and its default from the
parameter, so each shared option is an alias here and each shared default a constant beside it:
``harden`` and ``evaluate`` (and ``demo``, ``train`` where they take the same option) read both
from this one place. :func:`parsed_into` lets a command with many options receive them as one
frozen dataclass.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_DATA",
    "DEFAULT_DEVICE",
    "DEFAULT_EPS",
    "DEFAULT_PRECISION",
    "DEFAULT_SCORE",
    "DEFAULT_SEED",
    "DEFAULT_WORKERS",
    "BatchOpt",
    "BudgetOpt",
    "DataOpt",
    "DeviceOpt",
    "EpsOpt",
    "FitSamplesOpt",
    "LayerOpt",
    "ModelArg",
    "OutputOpt",
    "PickleOpt",
    "PrecisionOpt",
    "RandomWeightsOpt",
    "RatioOpt",
    "RootOpt",
    "ScoreOpt",
    "SeedOpt",
    "SelectOpt",
    "SideOpt",
    "ValFromOpt",
    "ValRootOpt",
    "ValSamplesOpt",
    "WeightsOpt",
    "WorkersOpt",
    "parsed_into",
]

OptionsT = TypeVar("OptionsT", bound="DataclassInstance")

# The defaults the commands share (typer reads a default from the parameter, not the alias).
DEFAULT_DATA = "digits"
DEFAULT_EPS = 8 / 255
DEFAULT_BUDGET = 0.01
DEFAULT_SCORE = "deepcloak"
DEFAULT_SEED = 0
DEFAULT_DEVICE = "auto"
DEFAULT_PRECISION = "fp32"
DEFAULT_WORKERS = 0

# fmt: off
# The model and the data set.
ModelArg = Annotated[str, typer.Argument(help="A deepcloak checkpoint, package.module:factory (with --weights), or a torch.save file (with --allow-pickle).")]
DataOpt = Annotated[str, typer.Option(help="Data set: digits, fashion-mnist, mnist, cifar10, imagefolder.")]
RootOpt = Annotated[Path | None, typer.Option(help="Folder of the data set files.")]
WeightsOpt = Annotated[Path | None, typer.Option(help="state_dict for a factory model (.pt, read with weights_only; .safetensors).")]
RandomWeightsOpt = Annotated[bool, typer.Option(help="Use a factory's own initialisation, seeded with --seed, instead of --weights (a random model: to try things out).")]
PickleOpt = Annotated[bool, typer.Option(help="Allow unpickling a full model: it can run code; trusted files only.")]
OutputOpt = Annotated[str | None, typer.Option(help="Index or key of the logits, for a model that returns a tuple or dict.")]

# The attack and the cloak.
EpsOpt = Annotated[float, typer.Option(help="Attack budget in [0, 1], e.g. 0.031 for 8/255.")]
LayerOpt = Annotated[str | None, typer.Option(help="Module to cloak (default: input of the final nn.Linear).")]
SideOpt = Annotated[str | None, typer.Option(help="input or output of --layer.")]
ScoreOpt = Annotated[str, typer.Option(help="Feature score: deepcloak, random or activation.")]
SelectOpt = Annotated[str | None, typer.Option(help="How the mask is found. Default: beam search (width=8, clean_weight=2, fit_budget=0.03; tuned: docs/default_mask_tuning.md), its size chosen on validation samples within --clean-budget. Others: greedy, random, deepcloak (the paper's score, size chosen the same way). Settings after a colon: beam:width=4. The paper's exact method: --select deepcloak --ratio 0.01.")]
RatioOpt = Annotated[float | None, typer.Option(help="A fixed fraction of features to remove, ranked by --score: the paper's method (no search, no validation). Default: the search chooses.")]
BudgetOpt = Annotated[float, typer.Option(help="Largest clean-accuracy drop the saved mask may cost (0.01 = 1 point), held at 95% confidence on the validation samples.")]

# The samples: fit, validation, test.
ValFromOpt = Annotated[str | None, typer.Option(help="Where the samples the mask is chosen on come from: test (default: a seeded part of the test split, every figure reported on the rest), train (held out of the training split: the model saw them, so the choice is biased), or folder (--val-root, or an image folder's val/).")]
ValSamplesOpt = Annotated[int | None, typer.Option(help="Validation samples (default: 5,000 or half the split, whichever is fewer).")]
ValRootOpt = Annotated[Path | None, typer.Option(help="A validation folder of your own: one sub-folder per class.")]
FitSamplesOpt = Annotated[int | None, typer.Option(help="Training samples to fit on (default: all; validation counted apart).")]

# How it runs.
SeedOpt = Annotated[int, typer.Option(help="Seed of subsets, attacks and random masks.")]
DeviceOpt = Annotated[str, typer.Option(help="Where to run: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option(help="Precision of the passes that only predict: fp32 or bf16 (attacks stay float32).")]
BatchOpt = Annotated[int | None, typer.Option(help="Samples per attack batch (default 256 for harden, 128 for evaluate); results depend on it, not on the number of processes.")]
WorkersOpt = Annotated[int, typer.Option(help="Processes decoding an image folder (in-memory data sets need none).")]
# fmt: on


def parsed_into(
    options: type[OptionsT],
) -> Callable[[Callable[[OptionsT], None]], Callable[..., None]]:
    """Make ``command(o: options)`` a typer command whose options are ``options``' fields.

    A command with forty options reads better as one frozen dataclass (each field an annotated
    option with its default, in ``--help`` order) than as a forty-line signature: typer sees one
    parameter per field, and the command receives them parsed into ``options``.

    Args:
        options: a dataclass whose fields are annotated typer options (or arguments), each
            with a plain default or none (required).

    Returns:
        A decorator for the command.
    """
    hints = typing.get_type_hints(options, include_extras=True)
    parameters = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty
            if field.default is dataclasses.MISSING
            else field.default,
            annotation=hints[field.name],
        )
        for field in dataclasses.fields(options)
    ]

    def decorate(command: Callable[[OptionsT], None]) -> Callable[..., None]:
        @functools.wraps(command)
        def parsed(**given: Any) -> None:
            command(options(**given))

        parsed.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        parsed.__annotations__ = {p.name: p.annotation for p in parameters}
        return parsed

    return decorate
