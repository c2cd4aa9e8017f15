"""The DeepCloak fit: attack, tap layer L, score its features, and build masks from the ranking.

Example:
    >>> cloak = deepcloak.fit(model, train_loader, attack=FGSM(eps=8 / 255))
    >>> cloak.mask(0.01)                  # FeatureMask removing the top 1% of features
    >>> cloak.apply(model, ratio=0.01)    # insert it into the model, in place
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepcloak.attacks.native import FGSM, Attack, eval_mode
from deepcloak.cloak.mask import FeatureMask, fold_mask, insert_mask, keep_mask, removal_count
from deepcloak.cloak.scores import create_scorer, rank_features
from deepcloak.cloak.taps import LayerRef, Side, resolve_layer, tap
from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.io import load_tensors, save_tensors
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_inputs, check_labels, check_ratio

__all__ = ["Cloak", "fit", "layer_features", "model_device", "unpack_batch"]

#: The paper's default budget in the [0, 1] scale: 8/255.
DEFAULT_EPS = 8 / 255


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def unpack_batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from a DataLoader batch, moved to ``device``, with x checked to lie in [0, 1]."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DeepCloakError(
            f"each batch must be an (inputs, labels) pair, got {type(batch).__name__}"
        )
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DeepCloakError("each batch must hold tensors: (inputs, labels)")
    x, y = x.to(device), y.to(device)
    check_inputs(x)
    return x, y


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

    def metadata(self, ratio: float | None = None) -> dict[str, Any]:
        """Everything needed to reproduce this cloak, JSON-able."""
        from deepcloak._version import __version__

        meta: dict[str, Any] = {
            "format": "deepcloak-mask/1",
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
        save_tensors(
            path,
            {"mask": keep.to(torch.uint8), "scores": self.scores},
            self.metadata(ratio),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> tuple[Cloak, float]:
        """Read a file written by :meth:`save`; returns the cloak and the saved ratio."""
        tensors, meta = load_tensors(path)
        try:
            cloak = cls(
                layer=LayerRef.from_json(meta["layer"]),
                scores=tensors["scores"],
                score_name=meta["score"],
                attack=meta["attack"],
                n_samples=int(meta["n_samples"]),
                seed=int(meta["seed"]),
                selection=meta.get("selection"),
            )
            ratio = float(meta["ratio"])
        except (KeyError, ValueError, TypeError) as e:
            raise DataFormatError(
                f"{path}: not a deepcloak mask file (missing or bad {e})"
            ) from None
        if list(cloak.feature_shape) != meta["feature_shape"]:
            raise DataFormatError(f"{path}: scores do not match the recorded feature shape")
        return cloak, ratio


@torch.no_grad()
def layer_features(model: nn.Module, ref: LayerRef, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Features at ``ref`` for each input batch, then the logits, from one forward pass."""
    with tap(model, ref) as t:
        logits = model(torch.cat(inputs))
        feats = t.take()
    sizes = [x.shape[0] for x in inputs]
    return [*feats.split(sizes), logits]


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
    eval mode and its modes are restored afterwards; it is never modified.

    Args:
        model: a trained classifier taking inputs in [0, 1].
        loader: yields ``(x, y)`` batches, x in [0, 1] on any device (moved to the model's).
        attack: crafts the adversarial samples; default ``FGSM(eps=8/255)`` (the paper's).
        layer: module name of layer L; default: the input of the final ``nn.Linear``.
        side: ``"input"`` or ``"output"`` of ``layer`` (see :func:`~deepcloak.resolve_layer`).
        score: scorer name: ``"deepcloak"`` (the paper's), ``"random"`` or ``"activation"``.
        max_samples: stop after this many samples (``None``: the whole loader).
        seed: seed for random scorers.
        progress: ``progress(task, done, total)`` callback, called after each batch.

    Returns:
        A :class:`Cloak` holding the scores and the ranking.

    Raises:
        DeepCloakError: empty loader, inputs outside [0, 1], labels outside the model's classes,
            NaN/inf features, unknown score name, or a layer that does not exist.
    """
    attack = attack if attack is not None else FGSM(eps=DEFAULT_EPS)
    scorer = create_scorer(score, seed=seed)
    device = model_device(model)
    report = progress or no_progress
    total = max_samples if max_samples is not None else _dataset_size(loader)
    ref: LayerRef | None = None
    done = 0
    with eval_mode(model):
        for batch in loader:
            x, y = unpack_batch(batch, device)
            if max_samples is not None:
                x, y = x[: max_samples - done], y[: max_samples - done]
            if ref is None:
                ref = resolve_layer(model, layer, side, example=x[:1])
            if scorer.needs_adversarial:
                x_adv = attack(model, x, y)
                clean, adv, logits = layer_features(model, ref, x, x_adv)
            else:
                clean, logits = layer_features(model, ref, x)
                adv = clean
            check_labels(y, logits.shape[-1])
            scorer.update(clean, adv)
            done += x.shape[0]
            report("fit", done, total)
            if max_samples is not None and done >= max_samples:
                break
    if ref is None or done == 0:
        raise DeepCloakError("the data loader yielded no samples; expected at least one batch")
    scorer.all_reduce()
    return Cloak(
        layer=ref,
        scores=scorer.compute().cpu(),
        score_name=score,
        attack=attack.spec(),
        n_samples=scorer.count,
        seed=seed,
    )


def _dataset_size(loader: Iterable[Any]) -> int | None:
    dataset = getattr(loader, "dataset", None)
    try:
        return len(dataset) if dataset is not None else None  # type: ignore[arg-type]
    except TypeError:
        return None
