"""Features at layer L of clean and adversarial samples, cached for the ratio sweep.

The gray-box sweep (:mod:`deepcloak.evaluation.sweep`) crafts its adversarial samples once, on
the unmasked model, and keeps their features at layer L: each mask then only re-runs the part of
the model after L (its *head*, when that part can be isolated and reproduces the model's
logits), or the whole masked model where it cannot. The cache stays on the model's device when
it fits, else in host memory, moved to the device in chunks.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcloak.attacks.base import Attack
from deepcloak.cloak.fit import layer_features, model_device, unpack_batch
from deepcloak.cloak.taps import LayerRef, Side, tap
from deepcloak.distributed import Distributed, from_main, gather_batches, iter_owned
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.mask_grid import MaskGrid, head_outcomes, model_outcomes
from deepcloak.models.precision import Precision, forward_autocast
from deepcloak.models.runtime import eval_mode, model_dtype
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_labels

__all__ = ["DEVICE_SHARE", "FeatureCache", "cache_device", "cache_features", "masked_predictions"]

log = logging.getLogger(__name__)


#: Share of the device's free memory a feature cache may take: while the batches are joined, the
#: cache exists twice, and the rest of the memory is for the model and the attacks.
DEVICE_SHARE = 0.25


@dataclass
class FeatureCache:
    """Features at layer L of clean and adversarial test samples.

    The tensors live on the model's device when they fit (:func:`cache_device`), else in host
    memory.

    ``head`` maps features at L to the model's logits when that part of the model could be
    isolated and was checked to reproduce the model's output; otherwise the inputs are kept
    and every evaluation runs the whole (masked) model.
    """

    layer: LayerRef
    clean: torch.Tensor  # (N, *F)
    adv: torch.Tensor  # (N, *F)
    labels: torch.Tensor  # (N,)
    head: nn.Module | None
    inputs: torch.Tensor | None = None  # (N, C, H, W), only without a head
    adv_inputs: torch.Tensor | None = None

    @property
    def n_samples(self) -> int:
        """Number of cached samples."""
        return self.labels.numel()

    def outcomes(
        self,
        model: nn.Module,
        grid: MaskGrid,
        labels: torch.Tensor | None,
        precision: Precision | str | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions (or correctness, given ``labels``) ``(M, N)`` of the clean and the
        adversarial samples under each mask of ``grid``.

        Raises:
            DeepCloakError: the cache holds neither a head nor the inputs.
        """
        if self.head is not None:
            head = self.head
            clean, adv = (
                head_outcomes(head, f, grid, labels, precision=precision)
                for f in (self.clean, self.adv)
            )
            return clean, adv
        if self.inputs is None or self.adv_inputs is None:
            raise DeepCloakError("feature cache holds neither a head nor the inputs")
        clean, adv = (
            model_outcomes(model, self.layer, xs, grid, labels, precision=precision)
            for xs in (self.inputs, self.adv_inputs)
        )
        return clean, adv


def _find_head(model: nn.Module, ref: LayerRef, example: torch.Tensor) -> nn.Module | None:
    """The part of ``model`` after layer L, if it is one module we can call on features alone.

    Candidates: the module itself when L is its input (the default: the final ``nn.Linear``),
    or the rest of a top-level ``nn.Sequential``. A candidate is used only if it reproduces the
    model's logits on ``example``, so a model that does more after L falls back safely.
    """
    module = model.get_submodule(ref.name)
    candidate: nn.Module | None = None
    if ref.side is Side.INPUT:
        candidate = module
    elif isinstance(model, nn.Sequential) and "." not in ref.name:
        names = [n for n, _ in model.named_children()]
        rest = [m for n, m in model.named_children()][names.index(ref.name) + 1 :]
        candidate = nn.Sequential(*rest)
    if candidate is None:
        return None
    with torch.no_grad(), tap(model, ref) as t:
        expected = model(example)
        feats = t.take()
        try:
            got = candidate(feats)
        except Exception:  # the candidate needs more than the features: not a head
            return None
    reproduces = (
        isinstance(got, torch.Tensor)
        and got.shape == expected.shape
        and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    )
    return candidate if reproduces else None


def cache_device(
    device: torch.device, n_samples: int | None, bytes_per_sample: int
) -> torch.device:
    """Where a feature cache lives: ``device`` if it fits, else host memory.

    On CUDA it fits when it takes at most :data:`DEVICE_SHARE` of the free device memory
    (``torch.cuda.mem_get_info``); an unknown number of samples goes to host memory.
    """
    if device.type == "cpu":
        return device
    if device.type == "cuda" and n_samples is not None:
        need = n_samples * bytes_per_sample
        if need <= DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]:
            return device
        log.info("feature cache (%.0f MiB) kept in host memory", need / 2**20)
    return torch.device("cpu")


def _bytes_per_sample(*examples: torch.Tensor) -> int:
    """Bytes one sample takes in each of ``examples`` (batches), added up."""
    return sum(t[0].numel() * t.element_size() for t in examples)


def cache_features(
    model: nn.Module,
    loader: Iterable[Any],
    layer: LayerRef,
    attack: Attack,
    *,
    progress: ProgressFn | None = None,
    precision: Precision | str | None = None,
    shard: bool = True,
) -> FeatureCache:
    """Craft adversarial samples on the unmasked ``model`` and cache features at ``layer``.

    The attack runs in float32; the forward pass that reads the features runs in ``precision``
    (default: the current forward precision, :mod:`deepcloak.models.precision`). Under
    ``torchrun`` each process attacks its batches of ``loader`` (the whole test data on every
    process) and the cache is gathered back in batch order on every process; ``shard=False``
    has every process read every batch (for an attack that only replays stored samples).

    Raises:
        DeepCloakError: the loader is empty, or inputs or labels are invalid.
    """
    device, dtype, store = model_device(model), model_dtype(model), None
    report = progress or no_progress
    total = len(getattr(loader, "dataset", ())) or None
    ctx = Distributed.current() if shard else Distributed()
    batches = iter_owned(loader, ctx)
    first = next(batches, None)
    example = _head_example(first, ctx, device, dtype)
    with eval_mode(model):
        head = _find_head(model, layer, example.to(device))
        if head is None:
            log.warning("no separable head after %s: the sweep runs the full model", layer)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", "adv", "y", "x", "x_adv")}
        for batch in itertools.chain([first] if first is not None else [], batches):
            x, y = unpack_batch(batch, device, dtype)  # the model's dtype: cached x too
            x_adv = attack(model, x, y)
            with torch.no_grad(), forward_autocast(device, precision):
                f_clean, f_adv, logits = layer_features(model, layer, x, x_adv)
            check_labels(y, logits.shape[-1])
            held = (f_clean, f_adv, y) if head is not None else (f_clean, f_adv, y, x, x_adv)
            if store is None:  # the first batch sizes the cache
                store = cache_device(device, total, _bytes_per_sample(*held))
            # clean, adv, y, and without a head x and x_adv: the first len(held) parts
            for kept, t in zip(list(parts.values())[: len(held)], held, strict=True):
                kept.append(t.to(store))
            done = sum(t.numel() for t in parts["y"]) * ctx.world_size
            report("attack test set", min(done, total) if total else done, total)
    return _joined(layer, head, parts, store, ctx)


def _head_example(
    first: Any, ctx: Distributed, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """The samples a head is checked on: the first 16 of batch 0 (rank 0's first), the same on
    every process.

    Raises:
        DeepCloakError: the loader yielded no samples.
    """
    example = from_main(
        unpack_batch(first, device, dtype)[0][:16].cpu()
        if first is not None and ctx.is_main
        else None
    )
    if example is None:
        raise DeepCloakError("the test loader yielded no samples; expected at least one batch")
    return example


def _joined(
    layer: LayerRef,
    head: nn.Module | None,
    parts: dict[str, list[torch.Tensor]],
    store: torch.device | None,
    ctx: Distributed,
) -> FeatureCache:
    """The cache from each batch's parts, gathered across processes in batch order."""
    # Gathers travel through host memory; one process keeps its cache where it is.
    cached = (
        {k: [t.to(store) for t in gather_batches(v, ctx)] for k, v in parts.items()}
        if ctx.enabled
        else parts
    )
    return FeatureCache(
        layer=layer,
        clean=torch.cat(cached["clean"]),
        adv=torch.cat(cached["adv"]),
        labels=torch.cat(cached["y"]),
        head=head,
        inputs=torch.cat(cached["x"]) if head is None else None,
        adv_inputs=torch.cat(cached["x_adv"]) if head is None else None,
    )


def masked_predictions(
    model: nn.Module,
    cache: FeatureCache,
    keep: torch.Tensor,
    *,
    precision: Precision | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes ``(N,)`` of the clean and adversarial cached samples under ``keep``.

    The predictions are on the model's device.
    """
    grid = MaskGrid.of_keep(keep, model_device(model))
    clean, adv = cache.outcomes(model, grid, None, precision)
    return clean[0], adv[0]
