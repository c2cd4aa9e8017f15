"""Many masks evaluated at once on cached features: a sweep's inner loop as a few products.

A sweep asks, at every ratio, what the cloak's mask and each random mask do to the predictions
of the cached clean and adversarial samples: 100 ratios times 6 masks are 600 masks.
:class:`MaskGrid` holds them implicitly (each ranking's feature positions and each ratio's
removal count) and builds any chunk of them on demand, on the device.

When the part of the model after layer L is one ``nn.Linear`` (``logits = W (f * m) + b``),
masking the features is masking the columns of ``W``, so a chunk of ``k`` masks costs one
product of the features with ``k`` masked copies of ``W``: ``(n, F) x (F, k * C)``. Any other
head is called once per mask, and without a head the whole model runs once per mask (with the
mask inserted at L). All three give the same predictions (``tests/evaluation/test_mask_grid.py``
compares them); everything stays on the model's device, and features held in host memory move
to it one chunk of samples at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepcloak.cloak.mask import masked
from deepcloak.cloak.taps import LayerRef
from deepcloak.models.precision import Precision, forward_autocast
from deepcloak.models.runtime import eval_mode, model_device

__all__ = ["MaskGrid", "head_outcomes", "linear_of", "model_outcomes"]

#: Elements of the largest tensor one chunk creates: bounds memory (64 MiB of float32).
BLOCK = 1 << 24
#: Samples per chunk of cached features.
SAMPLES = 4096


@dataclass(frozen=True)
class MaskGrid:
    """Boolean keep-masks of every (ranking, ratio) pair, built on demand in chunks.

    Mask ``i`` is ranking ``i // n_ratios`` at ratio ``i % n_ratios``: it removes the first
    ``counts[i % n_ratios]`` features of that ranking, exactly as
    :func:`~deepcloak.cloak.mask.keep_mask` does.

    Attributes:
        positions: ``(P, F)`` position of each feature in each of the ``P`` rankings.
        counts: ``(R,)`` features removed at each of the ``R`` ratios.
        shape: the feature shape at L.
    """

    positions: torch.Tensor
    counts: torch.Tensor
    shape: tuple[int, ...]

    @classmethod
    def build(
        cls,
        rankings: Sequence[torch.Tensor],
        counts: Sequence[int],
        shape: tuple[int, ...],
        device: torch.device,
    ) -> MaskGrid:
        """The grid of ``rankings`` (flat feature orders) by removal ``counts``, on ``device``."""
        ranks = torch.stack([r.flatten() for r in rankings]).to(device)  # (P, F)
        order = torch.arange(ranks.shape[1], device=device).expand_as(ranks)
        positions = torch.empty_like(ranks).scatter_(1, ranks, order)
        return cls(positions, torch.as_tensor(list(counts), dtype=torch.long, device=device), shape)

    @classmethod
    def of_keep(cls, keep: torch.Tensor, device: torch.device) -> MaskGrid:
        """A grid of one mask: ``keep`` itself (boolean, of the feature shape)."""
        flat = keep.flatten().to(torch.bool)
        ranking = torch.argsort(flat.to(torch.int8), stable=True)  # removed features first
        return cls.build([ranking], [int((~flat).sum())], tuple(keep.shape), device)

    @property
    def n_rankings(self) -> int:
        """``P``, the rankings (for a sweep: the cloak's, then the random ones)."""
        return self.positions.shape[0]

    @property
    def n_ratios(self) -> int:
        """``R``, the removal counts."""
        return self.counts.numel()

    @property
    def n_features(self) -> int:
        """Features per mask."""
        return self.positions.shape[1]

    def __len__(self) -> int:
        return self.n_rankings * self.n_ratios

    def keeps(self, start: int, stop: int) -> torch.Tensor:
        """Masks ``start`` to ``stop - 1``, ``(k, F)`` boolean (flat features)."""
        i = torch.arange(start, stop, device=self.positions.device)
        return self.positions[i // self.n_ratios] >= self.counts[i % self.n_ratios, None]


def linear_of(head: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` that ``head`` amounts to on flat features, else ``None``.

    A plain ``nn.Linear``, or an ``nn.Sequential`` of ``nn.Flatten``/``nn.Identity`` modules
    and one final ``nn.Linear``; a subclass that overrides ``forward`` does not count.
    """
    mods = list(head) if isinstance(head, nn.Sequential) else [head]
    *lead, last = mods or [nn.Identity()]
    plain = isinstance(last, nn.Linear) and type(last).forward is nn.Linear.forward
    flat = all(
        isinstance(m, nn.Identity)
        or (isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1)
        for m in lead
    )
    return last if plain and flat else None  # type: ignore[return-value]


def _linear_chunks(
    linear: nn.Linear, f: torch.Tensor, grid: MaskGrid
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, predictions (k, n))`` per chunk of masks: one product per chunk."""
    weight = linear.weight  # (C, F)
    bias = linear.bias if linear.bias is not None else weight.new_zeros(weight.shape[0])
    n, c = f.shape[0], weight.shape[0]
    f = f.flatten(1).to(weight.dtype)  # (n, F)
    step = max(1, BLOCK // (c * max(grid.n_features, n)))
    for start in range(0, len(grid), step):
        keeps = grid.keeps(start, min(start + step, len(grid)))  # (k, F)
        k = keeps.shape[0]
        masked_w = (keeps[:, None, :] * weight).reshape(k * c, -1)  # (k * C, F)
        logits = F.linear(f, masked_w, bias.repeat(k))  # (n, k * C)
        yield start, logits.view(n, k, c).argmax(-1).T  # (k, n)


def _head_chunks(
    head: nn.Module, f: torch.Tensor, grid: MaskGrid
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, predictions (k, n))`` per chunk of masks: one head call per mask."""
    step = max(1, BLOCK // grid.n_features)
    for start in range(0, len(grid), step):
        keeps = grid.keeps(start, min(start + step, len(grid))).view(-1, *grid.shape)
        masks = keeps.to(f.dtype)
        yield start, torch.stack([head(f * m).argmax(-1) for m in masks])  # (k, n)


def _outcomes(
    chunks: Iterator[tuple[int, torch.Tensor]], y: torch.Tensor | None, out: torch.Tensor, s: int
) -> None:
    """Write each chunk's predictions (or correctness against ``y``) into ``out[:, s:]``."""
    for start, preds in chunks:
        block = preds if y is None else preds == y
        out[start : start + block.shape[0], s : s + block.shape[1]] = block


def _empty(grid: MaskGrid, n: int, labels: torch.Tensor | None) -> torch.Tensor:
    dtype = torch.long if labels is None else torch.bool
    return torch.empty(len(grid), n, dtype=dtype, device=grid.positions.device)


@torch.no_grad()
def head_outcomes(
    head: nn.Module,
    feats: torch.Tensor,
    grid: MaskGrid,
    labels: torch.Tensor | None = None,
    *,
    precision: Precision | str | None = None,
) -> torch.Tensor:
    """Predictions of ``head`` on ``feats`` under every mask of ``grid``, or their correctness.

    Args:
        head: the part of the model after L (left in eval mode while it runs).
        feats: ``(N, *F)`` features at L, on any device (moved to the grid's in chunks).
        grid: the masks; its device is where the work runs.
        labels: ``(N,)`` true classes: the result is then the correctness instead.
        precision: of the forward passes (default: the current one).

    Returns:
        ``(M, N)`` predicted classes (``int64``) or correctness (``bool``), on the grid's device.
    """
    device = grid.positions.device
    out = _empty(grid, feats.shape[0], labels)
    linear = linear_of(head)
    with eval_mode(head), forward_autocast(device, precision):
        for s in range(0, feats.shape[0], SAMPLES):
            f = feats[s : s + SAMPLES].to(device, non_blocking=True)
            y = None if labels is None else labels[s : s + SAMPLES].to(device)
            chunks = _linear_chunks(linear, f, grid) if linear else _head_chunks(head, f, grid)
            _outcomes(chunks, y, out, s)
    return out


@torch.no_grad()
def model_outcomes(
    model: nn.Module,
    layer: LayerRef,
    inputs: torch.Tensor,
    grid: MaskGrid,
    labels: torch.Tensor | None = None,
    *,
    precision: Precision | str | None = None,
) -> torch.Tensor:
    """As :func:`head_outcomes`, running the whole ``model`` with each mask inserted at ``layer``.

    ``model`` is left unmasked. The inputs go through the model in chunks of at most
    :data:`BLOCK` elements.
    """
    device = model_device(model)
    out = _empty(grid, inputs.shape[0], labels)
    size = max(1, min(SAMPLES, BLOCK // max(1, math.prod(inputs.shape[1:]))))
    with eval_mode(model), forward_autocast(device, precision):
        for s in range(0, inputs.shape[0], size):
            x = inputs[s : s + size].to(device, non_blocking=True)
            y = None if labels is None else labels[s : s + size].to(device)
            _outcomes(_model_chunks(model, layer, x, grid), y, out, s)
    return out


def _model_chunks(
    model: nn.Module, layer: LayerRef, x: torch.Tensor, grid: MaskGrid
) -> Iterator[tuple[int, torch.Tensor]]:
    for i in range(len(grid)):
        with masked(model, layer, grid.keeps(i, i + 1).view(grid.shape)):
            yield i, model(x).argmax(-1)[None]  # (1, n)
