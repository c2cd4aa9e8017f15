"""Cached features at layer L and the linear head after them: masks evaluated without the model.

When L is the input of the final ``nn.Linear`` (``logits = W f + b``), removing feature ``j``
changes every logit by ``-f_j * W[:, j]``. :func:`candidate_outcomes` uses this to score the
removal of *every* feature in one pass over the cached samples: per sample it needs the
true-class logit and the best rival's, so only the true class and the ``rivals`` strongest
rivals are recomputed per candidate; the pairs (sample, candidate) where a weaker rival might
overtake them are recomputed in full. The result is exact for any number of classes, and the
cost is ``O(N * F * rivals)`` instead of ``O(N * F * K)``. Chunked, it runs on whatever device
the tensors are on.

A sample counts as correct when its true-class logit is *strictly* above every other logit
(an exact tie counts as wrong).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcloak.attacks.native import Attack, eval_mode
from deepcloak.cloak.fit import dataset_size, layer_features, model_device, unpack_batch
from deepcloak.cloak.mask import masked
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.models.runtime import model_dtype
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_finite, check_labels

__all__ = [
    "HeadFeatures",
    "Outcomes",
    "apply_removal",
    "cache_head_features",
    "cache_head_features_multi",
    "candidate_outcomes",
    "concat_head_features",
    "full_logits",
    "linear_head",
    "margins",
]

#: Elements per chunk of the (samples x rivals x features) work tensor: bounds memory (~64 MB).
CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class HeadFeatures:
    """Features at L of clean and adversarial samples, and the linear head that follows.

    Attributes:
        clean: ``(N, F)`` features of clean samples.
        adv: ``(N, F)`` features of their adversarial versions (crafted on the unmasked model).
        labels: ``(N,)`` true classes.
        weight: ``(K, F)`` weight of the head.
        bias: ``(K,)`` bias of the head (zeros when it has none).
    """

    clean: torch.Tensor
    adv: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self) -> None:
        n, f = self.clean.shape if self.clean.ndim == 2 else (-1, -1)
        k = self.weight.shape[0] if self.weight.ndim == 2 else -1
        if (
            n < 1
            or self.adv.shape != self.clean.shape
            or self.labels.shape != (n,)
            or self.weight.shape != (k, f)
            or self.bias.shape != (k,)
        ):
            raise DeepCloakError(
                "head features must be clean (N, F), adv (N, F), labels (N,), weight (K, F) and "
                f"bias (K,) with N >= 1; got {tuple(self.clean.shape)}, {tuple(self.adv.shape)}, "
                f"{tuple(self.labels.shape)}, {tuple(self.weight.shape)}, {tuple(self.bias.shape)}"
            )
        check_labels(self.labels, k)

    @property
    def n_samples(self) -> int:
        """Number of cached samples ``N``."""
        return self.labels.numel()

    @property
    def n_features(self) -> int:
        """Number of features ``F``."""
        return self.clean.shape[1]

    @property
    def device(self) -> torch.device:
        """Where the tensors live (and where the search runs)."""
        return self.clean.device

    def to(self, device: torch.device | str) -> HeadFeatures:
        """A copy on ``device``."""
        return HeadFeatures(*(t.to(device) for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return self.clean, self.adv, self.labels, self.weight, self.bias


def linear_head(model: nn.Module, layer: LayerRef) -> nn.Linear:
    """The ``nn.Linear`` whose input is ``layer`` (the only layer L the search supports).

    Raises:
        LayerError: ``layer`` is not the input side of an ``nn.Linear``.
    """
    module = model.get_submodule(layer.name) if layer.name else model
    if layer.side is not Side.INPUT or not isinstance(module, nn.Linear):
        raise LayerError(
            f"the mask search needs L to be the input of an nn.Linear (logits = W f + b); "
            f"{layer} is not. Use the default layer (the input of the final nn.Linear)"
        )
    return module


@torch.no_grad()
def cache_head_features(
    model: nn.Module,
    loader: Iterable[Any],
    layer: LayerRef,
    attack: Attack,
    *,
    max_samples: int | None = None,
    progress: ProgressFn | None = None,
    task: str = "attack",
) -> HeadFeatures:
    """Attack the unmasked ``model`` once and cache the features at ``layer`` and its head.

    Note that the head is taken as the ``nn.Linear`` at ``layer``: layer L must be the input of
    the *final* ``nn.Linear`` for the cached logits to be the model's (they are checked).

    Raises:
        DeepCloakError: empty loader, bad inputs or labels, non-finite features, or a layer
            whose ``nn.Linear`` does not produce the model's logits.
    """
    return cache_head_features_multi(
        model, loader, layer, [attack], max_samples=max_samples, progress=progress, task=task
    )


def concat_head_features(parts: Sequence[HeadFeatures]) -> HeadFeatures:
    """One cache holding the samples of every part, in order (the parts share one head).

    Raises:
        DeepCloakError: no parts, or parts whose heads differ.
    """
    if not parts:
        raise DeepCloakError("concat_head_features needs at least one HeadFeatures")
    first = parts[0]
    for p in parts[1:]:
        same = p.weight.shape == first.weight.shape and torch.equal(p.weight, first.weight)
        if not same or not torch.equal(p.bias, first.bias):
            raise DeepCloakError("head features to concatenate must come from the same head")
    return HeadFeatures(
        torch.cat([p.clean for p in parts]),
        torch.cat([p.adv for p in parts]),
        torch.cat([p.labels for p in parts]),
        first.weight,
        first.bias,
    )


@torch.no_grad()
def cache_head_features_multi(
    model: nn.Module,
    loader: Iterable[Any],
    layer: LayerRef,
    attacks: Sequence[Attack],
    *,
    keep: torch.Tensor | None = None,
    max_samples: int | None = None,
    progress: ProgressFn | None = None,
    task: str = "attack",
) -> HeadFeatures:
    """Cache the features of several attacks (e.g. budgets) on the same samples, in one pass.

    The result equals ``concat_head_features([cache_head_features(model, loader, layer, a)
    for a in attacks])``: the samples of the first attack, then those of the second, ...,
    each with its clean features (repeated per attack), so a selector weighs every attack
    equally. The loader is read once, so it may shuffle.

    Args:
        model: the classifier (left unmodified).
        loader: ``(x, y)`` batches.
        layer: the input of the final ``nn.Linear`` (see :func:`cache_head_features`).
        attacks: the attacks that craft the adversarial samples, at least one.
        keep: if given, ``(F,)`` boolean mask at ``layer`` *through which* the samples are
            crafted (re-attacking a cloaked model); the features are read before the mask.
        max_samples: cap on the samples per attack.
        progress: ``progress(task, done, total)`` after each batch (long passes show progress).
        task: the name the progress is reported under.

    Raises:
        DeepCloakError: no attacks, empty loader, bad inputs, or non-finite features.
    """
    if not attacks:
        raise DeepCloakError("cache_head_features_multi needs at least one attack")
    head = linear_head(model, layer)
    clean: list[torch.Tensor] = []
    adv: list[list[torch.Tensor]] = [[] for _ in attacks]
    labels: list[torch.Tensor] = []
    done = 0
    report = progress or no_progress
    total = max_samples if max_samples is not None else dataset_size(loader)
    with eval_mode(model):
        for batch in loader:
            x, y = unpack_batch(batch, model_device(model), model_dtype(model))
            if max_samples is not None:
                x, y = x[: max_samples - done], y[: max_samples - done]
            for out, attack in zip(adv, attacks, strict=True):
                with torch.enable_grad():
                    x_adv = _craft(model, layer, attack, x, y, keep)
                f_clean, f_adv, logits = layer_features(model, layer, x, x_adv)
                if done == 0:
                    _check_head(head, f_clean, logits[: x.shape[0]], layer)
                out.append(f_adv.flatten(1))
            clean.append(f_clean.flatten(1))
            labels.append(y)
            done += y.numel()
            report(task, done, total)
            if max_samples is not None and done >= max_samples:
                break
    return _assemble(head, clean, adv, labels)


def _check_head(
    head: nn.Linear, f_clean: torch.Tensor, logits: torch.Tensor, layer: LayerRef
) -> None:
    """Raise unless ``head`` maps the clean features at ``layer`` to the model's ``logits``."""
    if not torch.allclose(head(f_clean), logits, rtol=1e-4, atol=1e-4):
        raise LayerError(f"the nn.Linear at {layer} does not produce the model's logits")


def _assemble(
    head: nn.Linear,
    clean: list[torch.Tensor],
    adv: list[list[torch.Tensor]],
    labels: list[torch.Tensor],
) -> HeadFeatures:
    """Join the batches into one :class:`HeadFeatures` per attack, then concatenate those."""
    if sum(y.numel() for y in labels) == 0:
        raise DeepCloakError("the data loader yielded no samples; expected at least one batch")
    bias = head.bias if head.bias is not None else head.weight.new_zeros(head.out_features)
    f_clean_all, y_all = torch.cat(clean), torch.cat(labels)
    check_finite(f_clean_all, "clean features")
    parts = []
    for out in adv:
        part = HeadFeatures(
            f_clean_all, torch.cat(out), y_all, head.weight.detach().clone(), bias.detach().clone()
        )
        check_finite(part.adv, "adversarial features")
        parts.append(part)
    return concat_head_features(parts)


def _craft(
    model: nn.Module,
    layer: LayerRef,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    keep: torch.Tensor | None,
) -> torch.Tensor:
    """``attack(model, x, y)``, run through the model masked with ``keep`` if one is given."""
    if keep is None:
        return attack(model, x, y)
    with masked(model, layer, keep.to(x.device)) as cloaked:
        return attack(cloaked, x, y)


def full_logits(
    feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Logits ``(f * keep) W^T + b`` of every sample, ``(N, K)``: the full recompute."""
    return (feats * keep.to(feats.dtype)) @ weight.T + bias  # (N, F) @ (F, K) + (K,)


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the best other logit, per sample ``(N,)``; ``> 0`` is correct."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    rivals = logits.scatter(1, labels[:, None], float("-inf"))
    return true - rivals.max(1).values


def apply_removal(
    logits: torch.Tensor,
    feats: torch.Tensor,
    weight: torch.Tensor,
    removed: Iterable[int] = (),
    restored: Iterable[int] = (),
) -> torch.Tensor:
    """Logits after removing (and putting back) features: ``z - f_j W[:, j]`` (``+`` to restore)."""
    out = logits.clone()
    for sign, idx in ((-1.0, list(removed)), (1.0, list(restored))):
        if idx:
            cols = torch.tensor(idx, device=feats.device)
            out += sign * (feats[:, cols] @ weight[:, cols].T)  # (N, r) @ (r, K)
    return out


@dataclass(frozen=True)
class Outcomes:
    """What removing each single feature would do, summed over the samples.

    Attributes:
        correct: ``(F,)`` int64, samples correct after removing feature ``j``.
        margin: ``(F,)`` float64, sum of the samples' margins after removing ``j``.
    """

    correct: torch.Tensor
    margin: torch.Tensor


@torch.no_grad()
def candidate_outcomes(
    feats: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    weight: torch.Tensor,
    keep: torch.Tensor,
    *,
    rivals: int = 16,
) -> Outcomes:
    """Score the removal of every feature ``j`` from the current mask in one pass.

    Args:
        feats: ``(N, F)`` cached features.
        labels: ``(N,)`` true classes.
        logits: ``(N, K)`` logits under the current mask ``keep``.
        weight: ``(K, F)`` head weight.
        keep: ``(F,)`` boolean current mask; for a removed ``j`` the outcome is the current one.
        rivals: how many of the strongest rival classes are updated per candidate; weaker
            ones are bounded and recomputed in full only where they could matter.

    Returns:
        :class:`Outcomes` over all ``F`` features (exact, whatever ``rivals`` is).
    """
    n, f = feats.shape
    k = weight.shape[0]
    r = max(1, min(rivals, k - 1))
    w_min, w_max = weight.min(0).values, weight.max(0).values  # (F,): bound weaker rivals
    chunk = max(1, CHUNK_ELEMENTS // max(1, (r + 1) * f))
    correct = torch.zeros(f, dtype=torch.int64, device=feats.device)
    margin = torch.zeros(f, dtype=torch.float64, device=feats.device)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        m = _chunk_margins(
            feats[sl] * keep.to(feats.dtype), labels[sl], logits[sl], weight, r, w_min, w_max
        )  # (B, F)
        correct += (m > 0).sum(0)
        margin += m.double().sum(0)
    return Outcomes(correct, margin)


def _chunk_margins(
    f: torch.Tensor,  # (B, F), already masked
    y: torch.Tensor,  # (B,)
    z: torch.Tensor,  # (B, K)
    weight: torch.Tensor,  # (K, F)
    r: int,
    w_min: torch.Tensor,  # (F,)
    w_max: torch.Tensor,  # (F,)
) -> torch.Tensor:
    """Margins ``(B, F)`` after removing each feature, for one chunk of samples."""
    k = weight.shape[0]
    true = z.gather(1, y[:, None]).squeeze(1)  # (B,)
    new_true = true[:, None] - f * weight[y]  # (B, F)
    others = z.scatter(1, y[:, None], float("-inf"))
    top = others.topk(min(r + 1, k - 1), dim=1)  # the r strongest rivals, and the next one
    idx, val = top.indices[:, :r], top.values[:, :r]  # (B, r)
    new_rivals = val[:, :, None] - f[:, None, :] * weight[idx]  # (B, r, F)
    best_rival = new_rivals.max(1).values  # (B, F)
    margin = new_true - best_rival
    if r < k - 1:
        # A weaker rival k changes to z_k - f_j W[k, j] <= z_(r+1) + max_k(-f_j W[k, j]).
        shift = torch.where(f >= 0, -f * w_min, -f * w_max)  # (B, F)
        bound = top.values[:, r : r + 1] + shift
        unsure = bound > best_rival  # a weaker rival might be the best one: recompute
        if bool(unsure.any()):
            b_idx, j_idx = unsure.nonzero(as_tuple=True)
            margin[b_idx, j_idx] = _exact_pairs(f, y, z, weight, b_idx, j_idx)
    return margin


def _exact_pairs(
    f: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    weight: torch.Tensor,
    b_idx: torch.Tensor,
    j_idx: torch.Tensor,
) -> torch.Tensor:
    """Exact margins of the (sample, removed feature) pairs, over all classes."""
    k = weight.shape[0]
    step = max(1, CHUNK_ELEMENTS // k)
    out = []
    for s in range(0, b_idx.numel(), step):
        b, j = b_idx[s : s + step], j_idx[s : s + step]
        new = z[b] - f[b, j][:, None] * weight[:, j].T  # (P, K)
        out.append(margins(new, y[b]))
    return torch.cat(out)
