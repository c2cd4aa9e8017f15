"""Batched passes over samples held in memory: craft adversarial inputs, record correctness.

Every stage of an evaluation calls these two, so batching, devices, eval mode, progress and
sharding are handled once. Under ``torchrun`` each process runs batches ``rank, rank + K, ...``
of the batches one process would run (:func:`~deepcloak.distributed.owned_rows`), and the
results are gathered back in sample order on every process: bit for bit a one-process run's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepcloak.attacks.native import Attack, eval_mode
from deepcloak.cloak.fit import model_device
from deepcloak.distributed import Distributed, gather_batches, owned_rows
from deepcloak.models.precision import forward_autocast
from deepcloak.models.runtime import model_inputs
from deepcloak.progress import ProgressFn

__all__ = ["Stage", "correct", "craft", "renamed", "worst_case"]


class Stage:
    """Progress of one task, counted in samples over several passes.

    Args:
        progress: the callback.
        task: the task's name (one progress bar).
        total: samples to process in all passes together.
    """

    def __init__(self, progress: ProgressFn, task: str, total: int) -> None:
        self.progress, self.task, self.total, self.done = progress, task, total, 0
        progress(task, 0, total)

    def advance(self, k: int) -> None:
        """Count ``k`` more samples done."""
        self.done += k
        self.progress(self.task, self.done, self.total)


@torch.no_grad()
def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-sample correctness, boolean ``(N,)`` on the CPU, of ``model`` on ``x``."""
    device = model_device(model)
    preds = []
    with eval_mode(model), forward_autocast(device):  # bf16 inside forward_precision("bf16")
        for rows in owned_rows(x.shape[0], batch_size):
            logits = model(model_inputs(model, x[rows]))
            preds.append(logits.argmax(-1).cpu() == y[rows].cpu())  # (B,)
    return _joined(gather_batches(preds), torch.bool)


def craft(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    stage: Stage | None = None,
) -> torch.Tensor:
    """Adversarial versions of ``x`` (on the CPU), crafted batch by batch on the model's device."""
    device = model_device(model)
    world, n = Distributed.current().world_size, x.shape[0]
    out = []
    for rows in owned_rows(n, batch_size):
        xb, yb = x[rows].to(device), y[rows].to(device)
        out.append(attack(model, xb, yb).detach().cpu())
        if stage is not None:  # the round's samples: all processes advance together
            first = rows.start - rows.start // batch_size % world * batch_size
            stage.advance(min(n, first + world * batch_size) - first)
    return _joined(gather_batches(out), x.dtype, x.shape[1:])


def _joined(
    batches: list[torch.Tensor], dtype: torch.dtype, shape: Sequence[int] = ()
) -> torch.Tensor:
    """The batches as one tensor (empty ``(0, *shape)`` when there are none)."""
    return torch.cat(batches) if batches else torch.empty((0, *shape), dtype=dtype)


def worst_case(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample worst case: correct only where every vector is correct."""
    out = vectors[0].clone()
    for v in vectors[1:]:
        out &= v
    return out


def renamed(progress: ProgressFn, prefix: str) -> ProgressFn:
    """``progress`` with ``prefix`` before every task name."""

    def report(task: str, done: int, total: int | None) -> None:
        progress(prefix + task, done, total)

    return report
