"""Training loop for the zoo models: SGD or Adam, one-cycle or cosine schedule, tensor augmentation.

Data sets are torch ``Dataset``s of ``(x, y)`` with ``x`` a float ``(C, H, W)`` tensor in [0, 1]
and ``y`` an int64 class, batched by :func:`deepcloak.data.loader.make_loader`: in-memory sets
(``ImageDataset``, ``TensorDataset``) by slicing their tensors (much faster than a ``DataLoader``
on few CPU cores), any other data set (an image folder read from disk) through a ``DataLoader``.

Training is deterministic on CPU for a given ``seed``: one seeded ``torch.Generator`` draws the
shuffling and augmentation, and the global RNG (dropout) is seeded inside ``fork_rng`` so that the
caller's random state is left as it was.

Training uses torch's intra-op threads (by default one per core). Where other processes share
the cores, give each ``torch.set_num_threads(1)`` (or start it with ``OMP_WAIT_POLICY=PASSIVE``):
oversubscribed OpenMP threads spin-wait, and on 2 busy cores made ResNet-8 steps 35x slower.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deepcloak.data.loader import make_loader
from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError
from deepcloak.models.outputs import correct
from deepcloak.models.runtime import model_device
from deepcloak.progress import ProgressFn
from deepcloak.validation import check_positive

__all__ = [
    "OptimizerName",
    "Schedule",
    "TrainResult",
    "TrainSettings",
    "accuracy",
    "augment_batch",
    "train_model",
]

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


class OptimizerName(str, Enum):
    """The optimisers :func:`train_model` knows; strings (``"sgd"``) are accepted too."""

    SGD = "sgd"
    ADAM = "adam"


class Schedule(str, Enum):
    """Learning-rate schedules, stepped every batch.

    ``onecycle``: linear warm-up from ``lr / 25`` to ``lr`` over the first 25 % of steps, then
    cosine annealing to zero (Smith & Topin 2017, arXiv 1708.07120). ``cosine``: cosine annealing
    from ``lr`` to zero (Loshchilov & Hutter 2017). ``constant``: ``lr`` throughout.
    """

    ONECYCLE = "onecycle"
    COSINE = "cosine"
    CONSTANT = "constant"


@dataclass(frozen=True)
class TrainResult:
    """What a training run did.

    Attributes:
        epochs: epochs trained.
        train_loss: mean training loss over the last epoch.
        train_accuracy: accuracy on the (augmented) training batches of the last epoch.
        test_accuracy: accuracy on ``test_set`` after training, or ``None`` without one.
        seconds: wall-clock time of the whole run, evaluation included.
        losses: mean training loss of each epoch.
    """

    epochs: int
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float
    losses: tuple[float, ...]


def _batches(
    data: Dataset[Batch] | DataLoader[Batch] | Iterable[Batch],
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterable[Batch]:
    """Batches of ``data``, shuffled when ``generator`` is given; a ``Dataset`` is batched by
    :func:`~deepcloak.data.loader.make_loader`, anything else is taken as batches already."""
    if isinstance(data, Dataset):
        return make_loader(
            data,
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            drop_last=drop_last and len(data) >= batch_size,  # type: ignore[arg-type]
        )
    return data  # a DataLoader or any iterable of (x, y) batches


def augment_batch(
    x: torch.Tensor, *, padding: int, hflip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per sample, on tensors.

    Args:
        x: images ``(N, C, H, W)``.
        padding: pixels of zero padding on each side before cropping back to ``H x W``.
        hflip: flip each image left-right with probability 1/2.
        generator: source of randomness (on CPU), for reproducible augmentation.

    Returns:
        Augmented images, same shape as ``x``.
    """
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n, device=x.device)[:, None, None, None]  # (N, 1, 1, 1)
        chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]  # (1, C, 1, 1)
        x = padded[batch, chans, rows, cols]  # (N, C, H, W)
    if hflip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def _lr_factor(schedule: Schedule, step: int, total: int) -> float:
    """Multiplier of the peak learning rate before optimiser step ``step`` of ``total``."""
    if schedule is Schedule.CONSTANT:
        return 1.0
    warm = max(1, round(0.25 * total)) if schedule is Schedule.ONECYCLE else 0
    if step < warm:
        # One-cycle warm-up from lr / 25, as torch's OneCycleLR; written out here because
        # OneCycleLR divides by zero when there are fewer than about four steps.
        return 0.04 + 0.96 * step / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class TrainSettings:
    """How :func:`train_model` trains; every field has a default except ``epochs``.

    Attributes:
        epochs: passes over the training set, each in a new random order; the last incomplete
            batch of an epoch is dropped (a batch of one would break batch norm).
        batch_size: samples per step; 128 to 256 keeps 2 CPU cores busy.
        lr: peak learning rate; ``None`` for 0.1 with SGD, 1e-3 with Adam.
        weight_decay: L2 penalty (SGD) or decoupled decay (Adam, i.e. AdamW).
        optimizer: ``"sgd"`` (with ``momentum``, ``nesterov``) or ``"adam"``.
        momentum: SGD momentum.
        nesterov: use Nesterov momentum with SGD.
        schedule: ``"onecycle"``, ``"cosine"`` or ``"constant"`` (see :class:`Schedule`).
        label_smoothing: cross-entropy label smoothing.
        augment: random crop with zero padding and (with ``hflip``) horizontal flips.
        crop_padding: padding for the random crop; ``None`` for ``max(1, round(H / 8))``.
        hflip: flip horizontally when augmenting (turn off for digits and text).
        channels_last: train in NHWC memory layout, about 1.5x faster for conv nets on CPU
            (oneDNN); the model is returned in the default layout.
        seed: seeds shuffling, augmentation and dropout.
        device: where to train; ``None`` for the model's device. The model is moved there.
    """

    epochs: int
    batch_size: int = 128
    lr: float | None = None
    weight_decay: float = 5e-4
    optimizer: OptimizerName | str = OptimizerName.SGD
    momentum: float = 0.9
    nesterov: bool = True
    schedule: Schedule | str = Schedule.ONECYCLE
    label_smoothing: float = 0.0
    augment: bool = False
    crop_padding: int | None = None
    hflip: bool = True
    channels_last: bool = False
    seed: int = 0
    device: torch.device | str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DeepCloakError(f"{name} must be >= 1 (an integer), got {value!r}")
        if self.lr is not None:
            check_positive(self.lr, "lr")  # torch's own error is a traceback from the optimiser
        for name, low, high, allowed in (
            ("weight_decay", 0.0, math.inf, ">= 0"),
            ("momentum", 0.0, 1.0, "in [0, 1]"),
            ("label_smoothing", 0.0, 1.0, "in [0, 1]"),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise DeepCloakError(f"{name} must be a finite number {allowed}, got {value!r}")
        if self.crop_padding is not None and (
            isinstance(self.crop_padding, bool)
            or not isinstance(self.crop_padding, int)
            or self.crop_padding < 0
        ):
            raise DeepCloakError(f"crop_padding must be an integer >= 0, got {self.crop_padding!r}")
        object.__setattr__(
            self, "optimizer", parse_enum(OptimizerName, self.optimizer, what="optimizer")
        )
        object.__setattr__(self, "schedule", parse_enum(Schedule, self.schedule, what="schedule"))

    @property
    def peak_lr(self) -> float:
        """``lr``, or the optimiser's default."""
        if self.lr is not None:
            return self.lr
        return 0.1 if self.optimizer is OptimizerName.SGD else 1e-3


def train_model(
    model: nn.Module,
    train_set: Dataset[Batch],
    settings: TrainSettings | None = None,
    *,
    test_set: Dataset[Batch] | None = None,
    progress: ProgressFn | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy; return what happened.

    Args:
        model: a classifier taking ``(N, C, H, W)`` inputs in [0, 1], returning logits.
        train_set: ``(x, y)`` samples; a ``TensorDataset`` is fastest.
        settings: how to train; or give its fields as keywords (``epochs=5, lr=0.05``).
        test_set: if given, accuracy on it after training goes into the result.
        progress: ``progress("train", samples_done, samples_total)`` after each step.
        **options: fields of :class:`TrainSettings`, when ``settings`` is not given.

    Returns:
        A :class:`TrainResult`. The model is left in eval mode.

    Raises:
        DeepCloakError: bad options, an empty data set, or a loss that became NaN or infinite.
    """
    cfg = _settings(settings, options)
    n = len(train_set)  # type: ignore[arg-type]
    if n == 0:
        raise DeepCloakError("train_set is empty")
    dev = torch.device(cfg.device) if cfg.device is not None else model_device(model)
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    steps = n // cfg.batch_size if n >= cfg.batch_size else 1
    loop = _Loop(model, cfg, _optimizer(model, cfg), dev, epochs_steps=cfg.epochs * steps)
    pad = cfg.crop_padding if cfg.crop_padding is not None else 0
    if cfg.augment and cfg.crop_padding is None:
        pad = max(1, round(train_set[0][0].shape[-1] / 8))  # 4 for 28 and 32, 1 for 8
    total, losses, train_acc = cfg.epochs * steps * min(cfg.batch_size, n), [], 0.0
    start = time.perf_counter()
    # fork_rng: seed dropout reproducibly without changing the caller's global random state.
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        for epoch in range(cfg.epochs):
            loss, train_acc = loop.epoch(train_set, pad, epoch, progress, total)
            losses.append(loss)
    model.eval()
    if cfg.channels_last:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    test_acc = accuracy(model, test_set, device=dev) if test_set is not None else None
    return TrainResult(
        epochs=cfg.epochs,
        train_loss=losses[-1],
        train_accuracy=train_acc,
        test_accuracy=test_acc,
        seconds=time.perf_counter() - start,
        losses=tuple(losses),
    )


def _settings(settings: TrainSettings | None, options: dict[str, Any]) -> TrainSettings:
    """``settings``, or :class:`TrainSettings` built from keyword ``options`` (not both)."""
    if settings is not None:
        if options:
            raise DeepCloakError(
                f"give either settings= or keyword options, not both (got {sorted(options)})"
            )
        return settings
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise DeepCloakError(
            f"unknown training option(s) {', '.join(unknown)}; expected some of "
            f"{', '.join(sorted(known))}"
        )
    if "epochs" not in options:
        raise DeepCloakError("train_model needs epochs=... (or settings=TrainSettings(...))")
    return TrainSettings(**options)


def _optimizer(model: nn.Module, cfg: TrainSettings) -> torch.optim.Optimizer:
    """SGD (with momentum, maybe Nesterov) or AdamW, at the peak learning rate."""
    if cfg.optimizer is OptimizerName.SGD:
        return torch.optim.SGD(
            model.parameters(), lr=cfg.peak_lr, momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay,
        )  # fmt: skip
    return torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay)


class _Loop:
    """The training steps: one optimiser, one schedule, one generator for order and noise."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainSettings,
        opt: torch.optim.Optimizer,
        device: torch.device,
        *,
        epochs_steps: int,
    ) -> None:
        self.model, self.cfg, self.opt, self.device = model, cfg, opt, device
        schedule = Schedule(cfg.schedule)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: _lr_factor(schedule, step, epochs_steps)
        )
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.done = 0

    def step(self, x: torch.Tensor, y: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on a batch; returns the batch's summed loss and correct count."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.cfg.augment:
            x = augment_batch(x, padding=pad, hflip=self.cfg.hflip, generator=self.gen)
        logits = self.model(x.contiguous(memory_format=self.layout))  # (B, K)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        self.scheduler.step()
        return loss.detach() * len(y), (logits.detach().argmax(1) == y).sum()

    def epoch(
        self, data: Dataset[Batch], pad: int, epoch: int, progress: ProgressFn | None, total: int
    ) -> tuple[float, float]:
        """One pass over ``data``; returns its mean loss and training accuracy.

        Raises:
            DeepCloakError: the loss or the weights became NaN or infinite.
        """
        self.model.train()
        # Accumulate on the device: no host sync per step.
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen = 0
        for x, y in _batches(data, batch_size=self.cfg.batch_size, generator=self.gen,
                             drop_last=True):  # fmt: skip
            batch_loss, batch_correct = self.step(x, y, pad)
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(y)
            self.done += len(y)
            if progress is not None:
                progress("train", self.done, total)
        mean_loss = loss_sum.item() / seen
        # Weights too: the last step of an epoch can overflow after its loss was recorded.
        finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if not (math.isfinite(mean_loss) and finite):
            raise DeepCloakError(
                f"training diverged in epoch {epoch + 1} (mean loss {mean_loss}, finite "
                f"weights: {finite}); try a lower lr (was {self.cfg.peak_lr})"
            )
        acc = correct.item() / seen
        log.info(
            "epoch %d/%d: loss %.4f, train acc %.4f", epoch + 1, self.cfg.epochs, mean_loss, acc
        )
        return mean_loss, acc


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: Dataset[Batch] | DataLoader[Batch] | Iterable[Batch],
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``data``, computed in eval mode.

    Args:
        model: classifier returning logits ``(N, K)``.
        data: a ``Dataset`` of ``(x, y)``, or a ``DataLoader`` / iterable of ``(x, y)`` batches.
        batch_size: samples per forward pass when ``data`` is a ``Dataset``.
        device: where to compute; default the model's device (the model is not moved).

    Returns:
        Fraction of samples classified correctly, in [0, 1].

    Raises:
        DeepCloakError: ``data`` holds no samples.
    """
    dev = torch.device(device) if device is not None else model_device(model)
    n_correct, seen = 0, 0
    for x, y in _batches(data, batch_size=batch_size):
        n_correct += int(correct(model, x.to(dev), y.to(dev)).sum())
        seen += len(y)
    if seen == 0:
        raise DeepCloakError("accuracy needs at least one sample; the data set is empty")
    return n_correct / seen
