"""Training recipes: documented settings per (model, data set), and training one to a checkpoint.

``deepcloak train`` and ``experiments/paper_sweep.py`` both go through :func:`train_checkpoint`,
so a checkpoint always records how it was made (architecture, data, settings, seed, accuracy).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepcloak.data.sets import load_dataset
from deepcloak.errors import DeepCloakError
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.train import TrainResult, TrainSettings, train_model
from deepcloak.models.zoo import check_model_options, create_model
from deepcloak.progress import ProgressFn

__all__ = ["RECIPES", "TrainJob", "recipe", "train_checkpoint"]


@dataclass(frozen=True)
class TrainJob:
    """One training run of a zoo model on a data set.

    Attributes:
        model: zoo name (``cnn``, ``vgg``, ``resnet``, ``wrn``).
        data: data set name (see :data:`deepcloak.data.sets.DATASETS`).
        arch_kwargs: family options (``width``, ``depth``, ...), without the input/class sizes.
        epochs, lr, batch_size, optimizer, augment: training settings (see ``train_model``).
        root: folder of the data set files.
        limit: train on a seeded random subset of this many samples.
        seed: seeds initialisation, shuffling and augmentation.
    """

    model: str
    data: str
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    lr: float | None = None
    batch_size: int = 128
    optimizer: str = "sgd"
    augment: bool = False
    root: Path | None = None
    limit: int | None = None
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The training settings as recorded in the checkpoint (JSON-able)."""
        d = asdict(self)
        d["root"] = str(self.root) if self.root is not None else None
        return d


#: Settings that reach a documented accuracy on 2 CPU cores (``docs/results.md`` measures them).
#: Fashion-MNIST + resnet: >= 90% test accuracy in about 4 minutes.
RECIPES: dict[tuple[str, str], TrainJob] = {
    ("cnn", "fashion-mnist"): TrainJob("cnn", "fashion-mnist", {"width": 32, "hidden": 128}),
    ("vgg", "fashion-mnist"): TrainJob(
        "vgg", "fashion-mnist", {"width": 16, "stages": 3, "hidden": 128}
    ),
    ("resnet", "fashion-mnist"): TrainJob("resnet", "fashion-mnist", {"depth": 8, "width": 16}),
    ("wrn", "fashion-mnist"): TrainJob(
        "wrn", "fashion-mnist", {"depth": 10, "widen_factor": 2, "width": 8}
    ),
    ("resnet", "digits"): TrainJob("resnet", "digits", {"width": 32}, epochs=15, batch_size=64),
}


def recipe(model: str, data: str, **overrides: Any) -> TrainJob:
    """The documented recipe for ``model`` on ``data`` (or plain defaults), with ``overrides``.

    ``overrides`` that are ``None`` are ignored, so CLI options left unset keep the recipe's.
    """
    job = RECIPES.get((model, data), TrainJob(model, data))
    arch_kwargs = {**job.arch_kwargs, **(overrides.pop("arch_kwargs", None) or {})}
    return replace(
        job, arch_kwargs=arch_kwargs, **{k: v for k, v in overrides.items() if v is not None}
    )


def train_checkpoint(
    job: TrainJob,
    path: str | os.PathLike[str] | None,
    *,
    progress: ProgressFn | None = None,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, TrainResult, dict[str, Any]]:
    """Train ``job`` and save it (atomically) as a deepcloak checkpoint at ``path``.

    ``device`` is where to train (default: the CPU, where the model is built).

    Returns:
        ``(model, result, metadata)``: the trained model in eval mode, what training did, and the
        metadata written with it (data set, input shape, settings, test accuracy, seed).

    Raises:
        DeepCloakError: unknown model or data set, bad options, or bad settings.
    """
    settings = TrainSettings(  # checks the settings before any data is read
        epochs=job.epochs, lr=job.lr, batch_size=job.batch_size, optimizer=job.optimizer,
        augment=job.augment, hflip=job.data not in ("digits", "mnist"), seed=job.seed,
        channels_last=True, device=device,
    )  # fmt: skip
    check_model_options(job.model, **job.arch_kwargs)  # before any data is read
    train_set = load_dataset(job.data, split="train", root=job.root, limit=job.limit, seed=job.seed)
    test_set = load_dataset(job.data, split="test", root=job.root)
    channels, height, width = train_set.input_shape
    if height != width:
        raise DeepCloakError(f"the zoo models take square inputs; {job.data} has {height}x{width}")
    arch_kwargs = {"in_channels": channels, "num_classes": train_set.num_classes,
                   "input_size": height, **job.arch_kwargs}  # fmt: skip
    torch.manual_seed(job.seed)
    model = create_model(job.model, **arch_kwargs)
    result = train_model(model, train_set, settings, test_set=test_set, progress=progress)
    metadata = {
        "data": job.data,
        "input_shape": list(train_set.input_shape),
        "classes": train_set.classes,
        "training": job.settings(),
        "test_accuracy": result.test_accuracy,
        "train_seconds": result.seconds,
    }
    if path is not None:
        save_checkpoint(path, model, arch=job.model, arch_kwargs=arch_kwargs, metadata=metadata)
    return model.eval(), result, {**metadata, "arch": job.model, "arch_kwargs": arch_kwargs}
