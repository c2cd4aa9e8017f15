"""Training loop for the zoo models: SGD or Adam, one-cycle or cosine schedule, tensor augmentation.

Data sets are torch ``Dataset``s of ``(x, y)`` with ``x`` a float ``(C, H, W)`` tensor in [0, 1]
and ``y`` an int64 class. A ``TensorDataset`` is batched by slicing its tensors (much faster than
a ``DataLoader`` on few CPU cores); any other data set goes through a ``DataLoader``.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from deepcloak.errors import DeepCloakError
from deepcloak.progress import ProgressFn

__all__ = ["OptimizerName", "Schedule", "TrainResult", "accuracy", "augment_batch", "train_model"]

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


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _batches(
    data: Dataset | DataLoader | Iterable[Batch],
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Batches of ``data``, shuffled when ``generator`` is given."""
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
        n = len(x)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            if order is None:
                yield x[i : i + batch_size], y[i : i + batch_size]
            else:
                idx = order[i : i + batch_size]
                yield x[idx], y[idx]
    elif isinstance(data, Dataset):
        yield from DataLoader(
            data,
            batch_size=batch_size,
            shuffle=generator is not None,
            generator=generator,
            drop_last=drop_last and len(data) >= batch_size,  # type: ignore[arg-type]
        )
    else:
        yield from data  # a DataLoader or any iterable of (x, y) batches


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


def train_model(
    model: nn.Module,
    train_set: Dataset,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float | None = None,
    weight_decay: float = 5e-4,
    optimizer: OptimizerName | str = OptimizerName.SGD,
    momentum: float = 0.9,
    nesterov: bool = True,
    schedule: Schedule | str = Schedule.ONECYCLE,
    label_smoothing: float = 0.0,
    augment: bool = False,
    crop_padding: int | None = None,
    hflip: bool = True,
    channels_last: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
    test_set: Dataset | None = None,
) -> TrainResult:
    """Train ``model`` in place with cross-entropy; return what happened.

    Args:
        model: a classifier taking ``(N, C, H, W)`` inputs in [0, 1], returning logits.
        train_set: ``(x, y)`` samples; a ``TensorDataset`` is fastest.
        epochs: passes over ``train_set``, each in a new random order; the last incomplete
            batch of an epoch is dropped (a batch of one would break batch norm).
        batch_size: samples per step; 128 to 256 keeps 2 CPU cores busy.
        lr: peak learning rate; default 0.1 for SGD, 1e-3 for Adam.
        weight_decay: L2 penalty (SGD) or decoupled decay (Adam, i.e. AdamW).
        optimizer: ``"sgd"`` (with ``momentum``, ``nesterov``) or ``"adam"``.
        momentum: SGD momentum.
        nesterov: use Nesterov momentum with SGD.
        schedule: ``"onecycle"``, ``"cosine"`` or ``"constant"`` (see :class:`Schedule`).
        label_smoothing: cross-entropy label smoothing.
        augment: random crop with zero padding and (with ``hflip``) horizontal flips.
        crop_padding: padding for the random crop; default ``max(1, round(H / 8))``.
        hflip: flip horizontally when augmenting (turn off for digits and text).
        channels_last: train in NHWC memory layout, about 1.5x faster for conv nets on CPU
            (oneDNN); the model is returned in the default layout.
        seed: seeds shuffling, augmentation and dropout.
        device: where to train; default the model's device. The model is moved there.
        progress: ``progress("train", samples_done, samples_total)`` after each step.
        test_set: if given, accuracy on it after training goes into the result.

    Returns:
        A :class:`TrainResult`. The model is left in eval mode.

    Raises:
        DeepCloakError: bad options, an empty data set, or a loss that became NaN or infinite.
    """
    if epochs < 1 or batch_size < 1:
        raise DeepCloakError(f"need epochs >= 1 and batch_size >= 1; got {epochs}, {batch_size}")
    try:
        opt_name, sched = OptimizerName(optimizer), Schedule(schedule)
    except ValueError:
        raise DeepCloakError(
            f"unknown optimizer {optimizer!r} or schedule {schedule!r}; expected optimizer in "
            f"{[o.value for o in OptimizerName]}, schedule in {[s.value for s in Schedule]}"
        ) from None
    n = len(train_set)  # type: ignore[arg-type]
    if n == 0:
        raise DeepCloakError("train_set is empty")
    dev = torch.device(device) if device is not None else _device_of(model)
    model.to(dev)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model.to(memory_format=layout)  # type: ignore[call-overload]  # missing from stubs
    if lr is None:
        lr = 0.1 if opt_name is OptimizerName.SGD else 1e-3
    opt: torch.optim.Optimizer
    if opt_name is OptimizerName.SGD:
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
            weight_decay=weight_decay,
        )  # fmt: skip
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = n // batch_size if n >= batch_size else 1
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: _lr_factor(sched, step, epochs * steps)
    )
    gen = torch.Generator().manual_seed(seed)
    pad = crop_padding if crop_padding is not None else 0
    if augment and crop_padding is None:
        pad = max(1, round(train_set[0][0].shape[-1] / 8))  # 4 for 28 and 32, 1 for 8
    total, done, losses = epochs * steps * min(batch_size, n), 0, []
    start = time.perf_counter()
    # fork_rng: seed dropout reproducibly without changing the caller's global random state.
    fork_devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            model.train()
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), dtype=torch.long, device=dev)
            seen = 0
            for x, y in _batches(train_set, batch_size=batch_size, generator=gen, drop_last=True):
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)  # (B, C, H, W)
                if augment:
                    x = augment_batch(x, padding=pad, hflip=hflip, generator=gen)
                x = x.contiguous(memory_format=layout)
                logits = model(x)  # (B, K)
                loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                scheduler.step()
                # Accumulate on the device: no host sync per step.
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                seen += len(y)
                done += len(y)
                if progress is not None:
                    progress("train", done, total)
            epoch_loss = loss_sum.item() / seen
            # Weights too: the last step of an epoch can overflow after its loss was recorded.
            finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            if not (math.isfinite(epoch_loss) and finite):
                raise DeepCloakError(
                    f"training diverged in epoch {epoch + 1} (mean loss {epoch_loss}, finite "
                    f"weights: {finite}); try a lower lr (was {lr})"
                )
            losses.append(epoch_loss)
            train_acc = correct.item() / seen
            log.info(
                "epoch %d/%d: loss %.4f, train acc %.4f", epoch + 1, epochs, epoch_loss, train_acc
            )
    model.eval()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    test_acc = accuracy(model, test_set, device=dev) if test_set is not None else None
    return TrainResult(
        epochs=epochs,
        train_loss=losses[-1],
        train_accuracy=train_acc,
        test_accuracy=test_acc,
        seconds=time.perf_counter() - start,
        losses=tuple(losses),
    )


@torch.no_grad()
def accuracy(
    model: nn.Module,
    data: Dataset | DataLoader | Iterable[Batch],
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
    dev = torch.device(device) if device is not None else _device_of(model)
    # Restore each module's own mode afterwards, not just the top one: a caller may have
    # frozen some batch norms in eval mode inside a model that is training.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    correct, seen = 0, 0
    try:
        for x, y in _batches(data, batch_size=batch_size):
            logits = model(x.to(dev))  # (B, K)
            correct += int((logits.argmax(1) == y.to(dev)).sum())
            seen += len(y)
    finally:
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise DeepCloakError("accuracy needs at least one sample; the data set is empty")
    return correct / seen
