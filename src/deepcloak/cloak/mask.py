"""Masks: from scores to a ranking, from a ratio to a 0/1 mask, and the mask layer itself.

:func:`rank_features` orders features by score, :func:`removal_count` says how many a ratio
removes, :func:`keep_mask` and :func:`random_keep_mask` build the boolean masks. A
:class:`FeatureMask` multiplies features (``(N, *feature_shape)``) by a constant 0/1 tensor.
:func:`insert_mask` puts it before or after a named module of an existing model, in place and
without copying or retraining; :func:`remove_mask` restores the original module object;
:func:`fold_mask` merges it into an ``nn.Linear`` so the cloaked model costs nothing extra.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.models.runtime import model_device
from deepcloak.validation import check_finite, check_ratio

__all__ = [
    "FeatureMask",
    "MaskedLayer",
    "find_masks",
    "fold_mask",
    "insert_mask",
    "keep_mask",
    "masked",
    "random_keep_mask",
    "rank_features",
    "removal_count",
    "remove_mask",
]

log = logging.getLogger(__name__)


def rank_features(scores: torch.Tensor) -> torch.Tensor:
    """Flat feature indices from highest to lowest score; ties go to the lower index.

    Args:
        scores: one score per feature, any shape ``F``.

    Returns:
        ``int64`` tensor of length ``prod(F)``: the order in which features are removed.

    Raises:
        DeepCloakError: a score is NaN or inf.
    """
    flat = scores.detach().flatten().double().cpu()
    check_finite(flat, "feature scores")
    # A stable sort keeps equal scores in index order, so the ranking is fully deterministic.
    return torch.sort(flat, descending=True, stable=True).indices


def removal_count(ratio: float, n_features: int) -> int:
    """How many of ``n_features`` a ``ratio`` removes: ``round(ratio * n)``, halves rounded up.

    A small tolerance absorbs float error, so ``0.29 * 100`` removes 29, not 28.
    """
    check_ratio(ratio)
    return min(n_features, math.floor(ratio * n_features + 0.5 + 1e-9))


def keep_mask(ranking: torch.Tensor, ratio: float, shape: tuple[int, ...]) -> torch.Tensor:
    """Boolean mask of ``shape`` keeping all but the first ``round(ratio * n)`` ranked features.

    Logs a warning when a ratio above 0 removes nothing (1% of 32 features rounds to 0): such a
    "cloak" is the unmasked model.
    """
    n = ranking.numel()
    n_removed = removal_count(ratio, n)
    if ratio > 0 and n_removed == 0:
        log.warning(
            "ratio %g of %d features rounds to 0 removed features: this mask changes nothing "
            "(the smallest ratio that removes one is %.3g)",
            ratio,
            n,
            0.5 / n,
        )
    keep = torch.ones(n, dtype=torch.bool)
    keep[ranking[:n_removed]] = False
    return keep.view(shape)


def random_keep_mask(
    shape: tuple[int, ...], n_removed: int, generator: torch.Generator
) -> torch.Tensor:
    """Boolean mask of ``shape`` removing ``n_removed`` features drawn uniformly at random.

    The baseline every score must beat. The features removed are the first ``n_removed`` of a
    random permutation drawn from ``generator`` (on the CPU), so the same generator state gives
    the same mask, and ``random_keep_mask(shape, removal_count(ratio, n), gen)`` equals
    ``keep_mask(torch.randperm(n, generator=gen), ratio, shape)``.

    Raises:
        DeepCloakError: ``n_removed`` is not between 0 and the number of features.
    """
    n = math.prod(shape)
    if isinstance(n_removed, bool) or not isinstance(n_removed, int) or not 0 <= n_removed <= n:
        raise DeepCloakError(f"n_removed must be an integer in [0, {n}], got {n_removed!r}")
    keep = torch.ones(n, dtype=torch.bool)
    keep[torch.randperm(n, generator=generator)[:n_removed]] = False
    return keep.view(shape)


class FeatureMask(nn.Module):
    """Multiplies features by a fixed 0/1 mask (1 keeps a feature, 0 removes it).

    Args:
        keep: boolean (or 0/1) tensor of the feature shape: every non-batch dimension, e.g.
            ``(512,)`` for pooled features or ``(C, H, W)`` for a feature map.

    Shape:
        - Input: ``(N, *feature_shape)``
        - Output: same as input, with removed features set to exactly 0.
    """

    mask: torch.Tensor

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool and not bool(((keep == 0) | (keep == 1)).all()):
            raise DeepCloakError("a feature mask must hold only 0 and 1")
        # A buffer, not a parameter: it moves with .to(device) and is saved, but never trained.
        self.register_buffer("mask", keep.to(torch.float32).clone())

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """The shape of the features this mask applies to."""
        return tuple(self.mask.shape)

    @property
    def n_features(self) -> int:
        """How many features the mask covers."""
        return self.mask.numel()

    @property
    def n_removed(self) -> int:
        """How many features the mask removes."""
        return int((self.mask == 0).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.feature_shape:
            raise DeepCloakError(
                f"feature mask expects features of shape (N, *{self.feature_shape}), "
                f"got {tuple(x.shape)}"
            )
        return x * self.mask.to(x.dtype)  # (N, *F) * (*F)

    def extra_repr(self) -> str:
        return f"features={self.feature_shape}, removed={self.n_removed}"


class MaskedLayer(nn.Module):
    """A module with a :class:`FeatureMask` on its input or output.

    Holds the original module object (not a copy) so that :func:`remove_mask` can put it back.
    """

    def __init__(self, layer: nn.Module, mask: FeatureMask, side: Side) -> None:
        super().__init__()
        self.layer = layer
        self.mask = mask
        self.side = Side(side)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.side is Side.INPUT:
            return self.layer(self.mask(x), *args, **kwargs)
        return self.mask(self.layer(x, *args, **kwargs))

    def extra_repr(self) -> str:
        return f"side={self.side.value}"


def _parent_and_attr(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise LayerError(f"model has no layer named {name!r}") from None


def insert_mask(model: nn.Module, ref: LayerRef, mask: FeatureMask) -> nn.Module:
    """Put ``mask`` on the ``ref.side`` of module ``ref.name``, in place.

    The module is replaced by a :class:`MaskedLayer` that wraps it, so its parameters keep
    their identity (under the new name ``<name>.layer``). Returns ``model``.

    Raises:
        LayerError: no such module, the model is the module itself, or it is already masked.
    """
    if not ref.name:
        raise LayerError("cannot mask the whole model; name one of its submodules")
    target = _get(model, ref.name)
    if isinstance(target, MaskedLayer):
        raise LayerError(f"layer {ref.name!r} is already masked; remove_mask() it first")
    mask = mask.to(model_device(target))
    parent, attr = _parent_and_attr(model, ref.name)
    setattr(parent, attr, MaskedLayer(target, mask, ref.side))
    return model


def remove_mask(model: nn.Module, name: str) -> nn.Module:
    """Undo :func:`insert_mask` on module ``name``: the original module object returns."""
    wrapper = _get(model, name)
    if not isinstance(wrapper, MaskedLayer):
        raise LayerError(f"layer {name!r} carries no mask to remove")
    parent, attr = _parent_and_attr(model, name)
    setattr(parent, attr, wrapper.layer)
    return model


@contextlib.contextmanager
def masked(
    model: nn.Module, ref: LayerRef, keep: torch.Tensor | FeatureMask
) -> Iterator[nn.Module]:
    """``model`` with a mask at ``ref`` for the duration of a ``with`` block, removed on exit.

    Args:
        model: the model to mask in place.
        ref: the layer and side to mask.
        keep: a boolean keep-tensor of the feature shape, or a :class:`FeatureMask`.

    Example:
        >>> with masked(model, cloak.layer, cloak.mask(0.01)) as m:
        ...     logits = m(x)
    """
    mask = keep if isinstance(keep, FeatureMask) else FeatureMask(keep)
    insert_mask(model, ref, mask)
    try:
        yield model
    finally:
        remove_mask(model, ref.name)


def find_masks(model: nn.Module) -> dict[str, MaskedLayer]:
    """All masked layers in ``model``, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLayer)}


@torch.no_grad()
def fold_mask(model: nn.Module, name: str) -> nn.Module:
    """Merge the mask on ``nn.Linear`` ``name`` into a new ``nn.Linear``, in place.

    For a mask on the input, ``W[:, j]`` is zeroed for every removed feature ``j``; for a mask
    on the output, row ``W[j]`` and ``b[j]`` are. The logits equal the unfolded model's (up to
    float rounding) and inference costs exactly what the original model did. The fold writes a
    new ``nn.Linear``: the original one keeps its weights, so any other model sharing it is
    unaffected. Folding cannot be undone with :func:`remove_mask`.

    Raises:
        LayerError: ``name`` carries no mask, or the masked module is not an ``nn.Linear``.
    """
    wrapper = _get(model, name)
    if not isinstance(wrapper, MaskedLayer):
        raise LayerError(f"layer {name!r} carries no mask to fold")
    linear = wrapper.layer
    if not isinstance(linear, nn.Linear):
        raise LayerError(
            f"only a mask on an nn.Linear can be folded; {name!r} is a {type(linear).__name__}. "
            "Keep the mask layer (its cost is one multiply per feature)"
        )
    keep = wrapper.mask.mask.to(linear.weight.dtype)
    folded = nn.Linear(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    if wrapper.side is Side.INPUT:
        folded.weight.copy_(linear.weight * keep[None, :])  # (out, in) * (1, in)
        if linear.bias is not None:
            folded.bias.copy_(linear.bias)
    else:
        folded.weight.copy_(linear.weight * keep[:, None])  # (out, in) * (out, 1)
        if linear.bias is not None:
            folded.bias.copy_(linear.bias * keep)
    folded.train(linear.training)
    parent, attr = _parent_and_attr(model, name)
    setattr(parent, attr, folded)
    return model
