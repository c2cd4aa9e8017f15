"""The DeepCloak fit: attack, tap layer L, score its features, and build masks from the ranking.

Example:
    >>> cloak = deepcloak.fit(model, train_loader, attack=FGSM(eps=8 / 255))
    >>> cloak.mask(0.01)                  # FeatureMask removing the top 1% of features
    >>> cloak.apply(model, ratio=0.01)    # insert it into the model, in place
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepcloak._version import __version__
from deepcloak.attacks.base import Attack
from deepcloak.attacks.native import FGSM
from deepcloak.batches import unpack_batch
from deepcloak.cloak.mask import (
    FeatureMask,
    fold_mask,
    insert_mask,
    keep_mask,
    rank_features,
    removal_count,
)
from deepcloak.cloak.maskfile import FORMAT, read_mask_file, write_mask_file
from deepcloak.cloak.scores import FeatureScore, create_scorer
from deepcloak.cloak.taps import (
    LayerRef,
    Side,
    first_forward,
    reaches_logits,
    resolve_layer,
    tap,
)
from deepcloak.distributed import Distributed, from_main, gather_batches, iter_owned
from deepcloak.errors import DataFormatError, DeepCloakError, LayerError
from deepcloak.models.outputs import check_finite_logits, select_logits
from deepcloak.models.runtime import eval_mode, model_device, model_dtype, model_inputs
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_labels, check_ratio

__all__ = ["Cloak", "attacked_features", "fit", "layer_features"]
# Re-exported for callers that import them from here (their home: deepcloak.batches and
# deepcloak.models.runtime).
__all__ += ["model_device", "unpack_batch"]

#: The paper's default budget in the [0, 1] scale: 8/255.
DEFAULT_EPS = 8 / 255


@dataclass
class Cloak:
    """The result of :func:`fit`: one score per feature of layer L and the masks they imply.

    Attributes:
        layer: the features scored (input or output of a named module).
        scores: float64 tensor of the feature shape; higher means removed first.
        score_name: the scorer that produced ``scores``.
        attack: the attack's name and parameters (``{"name": "fgsm", "eps": ...}``).
        n_samples: how many samples were scored.
        seed: the seed of the fit (used by random scorers).
        selection: how a mask search chose the mask (selector, settings, validation figures),
            recorded in the saved metadata; ``None`` for a plain fit.
    """

    layer: LayerRef
    scores: torch.Tensor
    score_name: str
    attack: dict[str, Any]
    n_samples: int
    seed: int = 0
    selection: dict[str, Any] | None = None
    ranking: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.ranking = rank_features(self.scores)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of the features of layer L (without the batch dimension)."""
        return tuple(self.scores.shape)

    @property
    def n_features(self) -> int:
        """Number of features of layer L."""
        return self.scores.numel()

    def n_removed(self, ratio: float) -> int:
        """How many features :meth:`mask` removes at ``ratio``: ``round(ratio * n_features)``."""
        return removal_count(ratio, self.n_features)

    def mask(self, ratio: float) -> FeatureMask:
        """The mask removing the top ``round(ratio * n_features)`` features by score.

        Args:
            ratio: fraction of features removed, ``0 <= ratio < 1``; halves round up.
        """
        return FeatureMask(keep_mask(self.ranking, check_ratio(ratio), self.feature_shape))

    def apply(self, model: nn.Module, ratio: float, *, fold: bool = False) -> nn.Module:
        """Insert the mask at ``ratio`` into ``model`` at layer L, in place; returns ``model``.

        Args:
            model: the model the cloak was fit on (or one with the same layer L).
            ratio: fraction of features removed.
            fold: merge the mask into the ``nn.Linear`` at L, so inference costs nothing extra
                (only possible when L is the input or output of an ``nn.Linear``).
        """
        insert_mask(model, self.layer, self.mask(ratio))
        return fold_mask(model, self.layer.name) if fold else model

    def check_features(self, feature_shape: tuple[int, ...]) -> None:
        """Refuse features of another shape than the cloak was fit on (another model).

        Raises:
            DeepCloakError: ``feature_shape`` is not :attr:`feature_shape`.
        """
        if feature_shape != self.feature_shape:
            raise DeepCloakError(
                f"the cloak was fit on features of shape {self.feature_shape}, but {self.layer} "
                f"gives {feature_shape} here: is this the same model?"
            )

    def check_fits(self, model: nn.Module, x: torch.Tensor) -> None:
        """Check that the cloak's layer exists in ``model`` and gives features of its shape.

        Args:
            model: the model the cloak is for.
            x: a few of its inputs ``(B, C, H, W)`` (the first two are run).

        Raises:
            DeepCloakError: no such layer, or features of another shape (another model).
        """
        try:
            with torch.no_grad(), eval_mode(model), tap(model, self.layer) as t:
                model(model_inputs(model, x[:2]))
                feats = t.take()
        except (AttributeError, LayerError) as e:
            raise DeepCloakError(
                f"the cloak's layer ({self.layer}) is not usable in this model: {e}"
            ) from None
        self.check_features(tuple(feats.shape[1:]))

    def metadata(self, ratio: float | None = None) -> dict[str, Any]:
        """Everything needed to reproduce this cloak, JSON-able."""
        meta: dict[str, Any] = {
            "format": FORMAT,
            "layer": self.layer.to_json(),
            "feature_shape": list(self.feature_shape),
            "score": self.score_name,
            "attack": self.attack,
            "n_samples": self.n_samples,
            "seed": self.seed,
            "deepcloak_version": __version__,
        }
        if self.selection is not None:
            meta["selection"] = self.selection
        if ratio is not None:
            meta["ratio"] = ratio
            meta["n_removed"] = self.n_removed(ratio)
        return meta

    def save(self, path: str | os.PathLike[str], ratio: float) -> None:
        """Write the mask at ``ratio`` and all scores to a safetensors file, atomically."""
        keep = keep_mask(self.ranking, check_ratio(ratio), self.feature_shape)
        write_mask_file(path, self.scores, keep, self.metadata(ratio))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> tuple[Cloak, float]:
        """Read a file written by :meth:`save`; returns the cloak and the saved ratio.

        Raises:
            DataFormatError: the file is missing or malformed; the message names the field.
        """
        f = read_mask_file(path)
        selection = f.metadata.get("selection")
        if selection is not None and not isinstance(selection, dict):
            raise DataFormatError(
                f"{path}: metadata field 'selection' is a {type(selection).__name__}, "
                "expected a JSON object (how a mask search chose the mask)"
            )
        cloak = cls(
            f.layer, f.scores, f.score_name, f.attack, f.n_samples, f.seed, selection=selection
        )
        return cloak, f.ratio


@torch.no_grad()
def layer_features(model: nn.Module, ref: LayerRef, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Features at ``ref`` for each input batch, then the logits, from one forward pass.

    Raises:
        DeepCloakError: the model returns no single tensor, or NaN/inf logits.
    """
    with tap(model, ref) as t:
        logits = select_logits(model(model_inputs(model, torch.cat(inputs))))
        feats = t.take()
    check_finite_logits(logits)
    sizes = [x.shape[0] for x in inputs]
    return [*torch.split(feats, sizes), logits]


def attacked_features(
    model: nn.Module, ref: LayerRef, attack: Attack, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attack ``x`` and return ``(x_adv, clean features, adversarial features, logits)``.

    The same as ``layer_features(model, ref, x, attack(model, x, y))`` (logits of the clean
    batch, then of the adversarial one), at the cost of the attack plus one forward pass: when
    the attack's first forward pass ran on ``x`` itself (FGSM's gradient pass, the ART attacks'
    label check), its features and logits are reused instead of running ``x`` again.

    Raises:
        DeepCloakError: the model returns no single tensor, or NaN/inf logits.
    """
    with first_forward(model, ref) as first:
        x_adv = attack(model, x, y)
    reused = first.reuse_for(x)
    if reused is None:
        clean, adv, logits = layer_features(model, ref, x, x_adv)
        return x_adv, clean, adv, logits
    clean, clean_logits = reused
    check_finite_logits(clean_logits)
    adv, adv_logits = layer_features(model, ref, x_adv)
    return x_adv, clean, adv, torch.cat([clean_logits, adv_logits])


def fit(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    attack: Attack | None = None,
    layer: str | None = None,
    side: Side | str | None = None,
    score: str = "deepcloak",
    max_samples: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Cloak:
    """Fit DeepCloak: score every feature of layer L by how much ``attack`` moves it.

    The attack runs against the model as given (unmasked), as in the paper. The model is used in
    eval mode and left as it came in: same parameters and buffers, every module's own mode.

    Args:
        model: a trained classifier taking inputs in [0, 1] (for one that returns a tuple or
            dict, wrap it in :class:`~deepcloak.models.outputs.SelectOutput`).
        loader: yields ``(x, y)`` batches, x in [0, 1] on any device (moved to the model's).
        attack: crafts the adversarial samples; default ``FGSM(eps=8/255)`` (the paper's).
        layer: module name of layer L; default: the input of the ``nn.Linear`` that produces
            the logits (see :func:`~deepcloak.cloak.taps.resolve_layer`).
        side: ``"input"`` or ``"output"`` of ``layer`` (see :func:`~deepcloak.resolve_layer`).
        score: scorer name: ``"deepcloak"`` (the paper's), ``"random"`` or ``"activation"``.
        max_samples: stop after this many samples (``None``: the whole loader).
        seed: seed for random scorers.
        progress: ``progress(task, done, total)`` callback, called after each batch.

    Under ``torchrun`` (a ``torch.distributed`` process group), every process passes the same
    ``loader`` (the whole data): each attacks batches ``rank, rank + K, ...`` and the per-batch
    score sums are added in batch order on every process, so scores and masks are bit for bit
    those of one process.

    Returns:
        A :class:`Cloak` holding the scores and the ranking.

    Raises:
        DeepCloakError: empty loader, inputs outside [0, 1], labels outside the model's classes,
            NaN/inf logits or features, unknown score name, or a layer that does not exist.

    Warns:
        UserWarning: the named layer does not reach the logits, so no mask there can matter.
    """
    attack = attack if attack is not None else FGSM(eps=DEFAULT_EPS)
    scorer = create_scorer(score, seed=seed)
    job = _Job(model, attack, layer, side, max_samples, progress or no_progress)
    with eval_mode(model):
        ref = _score_all(job, loader, scorer, lambda: create_scorer(score, seed=seed))
    return Cloak(
        layer=ref,
        scores=scorer.compute().cpu(),
        score_name=score,
        attack=attack.spec(),
        n_samples=scorer.count,
        seed=seed,
    )


def _score_all(
    job: _Job, loader: Iterable[Any], scorer: FeatureScore, fresh: Callable[[], FeatureScore]
) -> LayerRef:
    """Score every batch into ``scorer``: sharded across processes under torchrun, else serially."""
    if Distributed.current().enabled:
        return _score_shards(job, loader, scorer, fresh)
    return _score_batches(job, loader, scorer)


@dataclass(frozen=True)
class _Job:
    """What every batch of a fit needs besides the batch."""

    model: nn.Module
    attack: Attack
    layer: str | None
    side: Side | str | None
    max_samples: int | None
    report: ProgressFn


def _score_batches(job: _Job, loader: Iterable[Any], scorer: FeatureScore) -> LayerRef:
    """Feed every batch (up to ``max_samples``) to ``scorer``; return the layer scored."""
    device, dtype = model_device(job.model), model_dtype(job.model)
    max_samples = job.max_samples
    total = max_samples if max_samples is not None else dataset_size(loader)
    ref: LayerRef | None = None
    done = 0
    for batch in loader:
        x, y = unpack_batch(batch, device, dtype)
        if max_samples is not None:
            x, y = x[: max_samples - done], y[: max_samples - done]
        if ref is None:
            ref = _resolve_and_check(job.model, job.layer, job.side, x[:1])
        _update(job, ref, scorer, x, y)
        done += x.shape[0]
        job.report("fit", done, total)
        if max_samples is not None and done >= max_samples:
            break
    if ref is None or done == 0:
        raise DeepCloakError("the data loader yielded no samples; expected at least one batch")
    return ref


def _update(
    job: _Job, ref: LayerRef, scorer: FeatureScore, x: torch.Tensor, y: torch.Tensor
) -> None:
    """Attack one batch (if the scorer needs it) and add its features to ``scorer``."""
    if scorer.needs_adversarial:
        _, clean, adv, logits = attacked_features(job.model, ref, job.attack, x, y)
    else:
        clean, logits = layer_features(job.model, ref, x)
        adv = clean
    check_labels(y, logits.shape[-1])
    scorer.update(clean, adv)


def _score_shards(
    job: _Job, loader: Iterable[Any], scorer: FeatureScore, new_scorer: Callable[[], FeatureScore]
) -> LayerRef:
    """:func:`_score_batches` across processes, in rounds of one batch per process.

    In each round the processes share their batch sizes (so each knows where its batch starts
    and where ``max_samples`` cuts), score their own batch, and gather the per-batch sums,
    which every process adds to ``scorer`` in batch order: the additions of one process, in its
    order, so the float64 sums are bit for bit equal.
    """
    ctx = Distributed.current()
    device, dtype = model_device(job.model), model_dtype(job.model)
    total = job.max_samples if job.max_samples is not None else dataset_size(loader)
    batches = iter_owned(loader, ctx)
    ref: LayerRef | None = None
    done = 0
    while job.max_samples is None or done < job.max_samples:
        batch = next(batches, None)
        x, y = unpack_batch(batch, device, dtype) if batch is not None else (None, None)
        sizes = gather_batches([torch.tensor([0 if y is None else y.shape[0]])], ctx)
        starts = [done + sum(int(s) for s in sizes[:r]) for r in range(len(sizes))]
        keep = [
            max(0, min(int(n), job.max_samples - start)) if job.max_samples is not None
            else int(n)
            for n, start in zip(sizes, starts, strict=True)
        ]  # fmt: skip
        if sum(keep) == 0:
            break
        if ref is None:  # on batch 0's first sample, as one process; errors on every process
            example = from_main(x[:1].cpu() if ctx.is_main and x is not None else None)
            if example is None:  # cannot be: batch 0, rank 0's, exists when any batch does
                raise DeepCloakError("rank 0 holds no batch to resolve the layer on")
            ref = _resolve_and_check(job.model, job.layer, job.side, example.to(device))
        part = new_scorer()
        if x is not None and y is not None and keep[ctx.rank] > 0:
            _update(job, ref, part, x[: keep[ctx.rank]], y[: keep[ctx.rank]])
        for total_b, n in zip(gather_batches([] if part.total is None else [part.total[None]], ctx),
                              [k for k in keep if k > 0], strict=True):  # fmt: skip
            if scorer.total is None:  # as FeatureScore.update: zeros, then +=
                scorer.total = torch.zeros_like(total_b[0], device=device)
            scorer.total += total_b[0].to(device)
            scorer.count += n
        done += sum(keep)
        job.report("fit", done, total)
    if ref is None or done == 0:
        raise DeepCloakError("the data loader yielded no samples; expected at least one batch")
    return ref


def _resolve_and_check(
    model: nn.Module, layer: str | None, side: Side | str | None, example: torch.Tensor
) -> LayerRef:
    """Resolve layer L on ``example``; warn if a named layer does not reach the logits."""
    ref = resolve_layer(model, layer, side, example=example)
    if layer is not None and not reaches_logits(model, ref, example):
        warnings.warn(
            f"the model's logits do not depend on the {ref}: a mask there leaves every "
            "prediction unchanged. Pick a layer on the path to the output (omit layer= for "
            "the one that produces the logits)",
            UserWarning,
            stacklevel=3,
        )
    return ref


def dataset_size(loader: Iterable[Any]) -> int | None:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None
