"""Search for the mask that buys the most robustness within a clean-accuracy budget.

The paper's score ranks features one at a time by how far attacks move them. The search asks
instead which *set* of removed features turns wrong adversarial predictions into right ones
without breaking clean ones. It runs on cached features (see :mod:`deepcloak.cloak.head`): the
fit samples are attacked once, on the unmasked model, and every candidate mask is then scored
against the final ``nn.Linear`` alone.

Two data splits, never the test data:

1. **fit** samples: a selector (:data:`~deepcloak.cloak.selectors.SELECTORS`) proposes a path
   of removal sets of growing size;
2. **validation** samples: the entry of the path with the highest adversarial accuracy is
   chosen among those whose *upper confidence bound* of the paired clean-accuracy drop stays
   within the budget (:mod:`deepcloak.stats`), so the budget holds on new data with high
   probability rather than only on the samples the choice was made on.

Example:
    >>> result = search_mask(model, fit_loader, val_loader, selector="greedy", clean_budget=0.01)
    >>> result.apply(model, fold=True)          # or result.save("mask.safetensors")
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from deepcloak.attacks import create_attack
from deepcloak.attacks.native import FGSM, Attack
from deepcloak.cloak.fit import DEFAULT_EPS, Cloak, model_device, unpack_batch
from deepcloak.cloak.head import (
    HeadFeatures,
    apply_removal,
    cache_head_features,
    full_logits,
    margins,
)
from deepcloak.cloak.mask import fold_mask, insert_mask
from deepcloak.cloak.selectors import Path, SelectorChoice
from deepcloak.cloak.taps import LayerRef, resolve_layer
from deepcloak.errors import DeepCloakError
from deepcloak.models.runtime import model_dtype
from deepcloak.progress import ProgressFn
from deepcloak.stats import PairedDrop, paired_drop

__all__ = [
    "SearchCandidate",
    "SearchResult",
    "choose_on_validation",
    "pick_within_budget",
    "search_cached",
    "search_mask",
]


@dataclass(frozen=True)
class SearchCandidate:
    """One entry of the selector's path, measured on the validation samples, as exact counts.

    Attributes:
        n_removed: features removed.
        n: validation samples.
        clean_correct: validation samples right under the mask.
        adv_correct: adversarial (gray-box) validation samples right under the mask.
        drop: the paired clean-accuracy drop against the unmasked model, with its bound.
        fits: whether the bound is within the budget.
    """

    n_removed: int
    n: int
    clean_correct: int
    adv_correct: int
    drop: PairedDrop
    fits: bool

    @property
    def clean_accuracy(self) -> float:
        """Validation clean accuracy under the mask."""
        return self.clean_correct / self.n

    @property
    def adv_accuracy(self) -> float:
        """Validation adversarial (gray-box) accuracy under the mask."""
        return self.adv_correct / self.n

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: ``n_removed``, the accuracies, ``drop`` and ``fits``."""
        return {
            "n_removed": self.n_removed,
            "clean_accuracy": self.clean_accuracy,
            "adv_accuracy": self.adv_accuracy,
            "drop": asdict(self.drop),
            "fits": self.fits,
        }


@dataclass
class SearchResult:
    """The chosen mask and everything that led to it.

    Attributes:
        layer: layer L (the input of the final ``nn.Linear``).
        keep: ``(F,)`` boolean mask, ``False`` for removed features.
        removed: the chosen removal set, in removal order.
        path: every removal set the selector proposed (the chosen one is among them or empty).
        selector: the selector's name; ``settings``: its settings.
        clean_budget: largest allowed clean-accuracy drop (fraction); ``confidence``: of its bound.
        fit_budget: the clean-accuracy drop the selector allowed itself on the fit samples.
        candidates: validation figures of the unmasked model (first) and of every path entry.
        attack: the attack that crafted the fit and validation samples.
        fit_samples, val_samples: how many samples each split held.
        seconds: wall time of each stage (``cache``, ``search``, ``validate``).
        kept_order: ``(F,)`` the paper's score on the fit samples (``sum |f(x_adv) - f(x)|``):
            :meth:`to_cloak` ranks the features the search kept by it, after the removed ones.
    """

    layer: LayerRef
    keep: torch.Tensor
    removed: tuple[int, ...]
    path: Path
    selector: str
    settings: dict[str, Any]
    clean_budget: float
    confidence: float
    fit_budget: float
    candidates: tuple[SearchCandidate, ...]
    attack: dict[str, Any]
    fit_samples: int
    val_samples: int
    seconds: dict[str, float] = field(default_factory=dict)
    kept_order: torch.Tensor | None = field(default=None, compare=False)

    @property
    def n_removed(self) -> int:
        """Features the chosen mask removes."""
        return len(self.removed)

    @property
    def chosen(self) -> SearchCandidate:
        """Validation figures of the chosen mask."""
        return next(c for c in self.candidates if c.n_removed == self.n_removed)

    def selection(self) -> dict[str, Any]:
        """What a mask file records about the choice: selector, settings, validation figures."""
        c, base = self.chosen, self.candidates[0]
        return {
            "selector": self.selector,
            "settings": self.settings,
            "clean_budget": self.clean_budget,
            "confidence": self.confidence,
            "fit_budget": self.fit_budget,
            "fit_samples": self.fit_samples,
            "val_samples": self.val_samples,
            "removed": list(self.removed),
            "validation": {
                "clean_accuracy": c.clean_accuracy,
                "adv_accuracy": c.adv_accuracy,
                "baseline_clean_accuracy": base.clean_accuracy,
                "baseline_adv_accuracy": base.adv_accuracy,
                "clean_drop": c.drop.to_json(),
                # exact counts, so every interval derived later needs no rounding back
                "clean_correct": c.clean_correct,
                "adv_correct": c.adv_correct,
                "baseline_clean_correct": base.clean_correct,
                "baseline_adv_correct": base.adv_correct,
            },
        }

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the whole result."""
        return {
            **self.selection(),
            "layer": self.layer.to_json(),
            "attack": self.attack,
            "path": [list(p) for p in self.path],
            "candidates": [c.to_json() for c in self.candidates],
            "seconds": self.seconds,
        }

    def to_cloak(self, *, seed: int = 0) -> tuple[Cloak, float]:
        """A :class:`Cloak` whose mask at the returned ratio is exactly the chosen mask.

        Its scores rank the removed features first, in removal order; the selection is
        recorded in its metadata (and so in a saved mask file).
        """
        n = self.keep.numel()
        # The features kept rank after the removed ones by the paper's score (scaled into
        # [0, 1]), so larger ratios of the cloak (the sweep's curve past the chosen size) extend
        # the search's mask the paper's way rather than in an arbitrary order of ties.
        scores = torch.zeros(n, dtype=torch.float64)
        if self.kept_order is not None:
            order = self.kept_order.detach().to("cpu", torch.float64).flatten()
            scores = order / order.max() if float(order.max()) > 0 else scores
        for pos, j in enumerate(self.removed):
            scores[j] = 1.0 + len(self.removed) - pos
        cloak = Cloak(
            layer=self.layer,
            scores=scores,
            score_name=f"search:{self.selector}",
            attack=self.attack,
            n_samples=self.fit_samples,
            seed=seed,
            selection=self.selection(),
        )
        return cloak, self.n_removed / n

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the chosen mask as a deepcloak mask file (see :meth:`Cloak.save`)."""
        cloak, ratio = self.to_cloak()
        cloak.save(path, ratio)

    def apply(self, model: nn.Module, *, fold: bool = False) -> nn.Module:
        """Insert the chosen mask into ``model`` at layer L, in place (``fold``: into the head)."""
        cloak, ratio = self.to_cloak()
        insert_mask(model, self.layer, cloak.mask(ratio))
        return fold_mask(model, self.layer.name) if fold else model


def pick_within_budget(
    adv_accuracies: Sequence[float], drops: Sequence[PairedDrop], clean_budget: float
) -> int:
    """Index of the best adversarial accuracy among entries whose drop bound fits the budget.

    Entry 0 is the unmasked model and always fits; ties go to the lower index (fewer removed
    features, for a path of growing sets).
    """
    best = 0
    for i in range(1, len(adv_accuracies)):
        if drops[i].fits(clean_budget) and adv_accuracies[i] > adv_accuracies[best]:
            best = i
    return best


@torch.no_grad()
def choose_on_validation(
    path: Path, val: HeadFeatures, clean_budget: float, *, confidence: float = 0.95
) -> tuple[int, tuple[SearchCandidate, ...]]:
    """Pick the path entry with the best validation adversarial accuracy within the budget.

    An entry fits when the one-sided upper confidence bound of its paired clean-accuracy drop
    (against the unmasked model) is at most ``clean_budget`` (see :func:`pick_within_budget`).

    Returns:
        ``(index, candidates)``: the chosen entry's index in ``[()] + path`` (0 = no mask) and
        the validation figures of the unmasked model and of every path entry.
    """
    keep = torch.ones(val.n_features, dtype=torch.bool, device=val.device)
    zc = full_logits(val.clean, val.weight, val.bias, keep)
    za = full_logits(val.adv, val.weight, val.bias, keep)
    base = (margins(zc, val.labels) > 0).cpu()
    prev: tuple[int, ...] = ()
    candidates = []
    for removed in [(), *path]:
        gone, back = set(removed) - set(prev), set(prev) - set(removed)
        zc = apply_removal(zc, val.clean, val.weight, sorted(gone), sorted(back))
        za = apply_removal(za, val.adv, val.weight, sorted(gone), sorted(back))
        clean_ok = (margins(zc, val.labels) > 0).cpu()
        drop = paired_drop(base, clean_ok, confidence=confidence)
        candidates.append(
            SearchCandidate(
                n_removed=len(removed),
                n=int(clean_ok.numel()),
                clean_correct=int(clean_ok.sum()),
                adv_correct=int((margins(za, val.labels) > 0).sum()),
                drop=drop,
                fits=len(removed) == 0 or drop.fits(clean_budget),
            )
        )
        prev = removed
    best = pick_within_budget(
        [c.adv_accuracy for c in candidates], [c.drop for c in candidates], clean_budget
    )
    return best, tuple(candidates)


def search_cached(
    fit: HeadFeatures,
    val: HeadFeatures,
    layer: LayerRef,
    *,
    selector: str | SelectorChoice = "greedy",
    clean_budget: float = 0.01,
    confidence: float = 0.95,
    fit_budget: float | None = None,
    max_removed: int | None = None,
    attack: dict[str, Any] | None = None,
    **settings: Any,
) -> SearchResult:
    """Search a mask on cached fit features and choose its size on cached validation features.

    Args:
        fit: features and head from the fit samples (the selector sees only these).
        val: features from held-out validation samples, same layer and head.
        layer: layer L the features come from.
        selector: a name in :data:`~deepcloak.cloak.selectors.SELECTORS`, or a
            :class:`~deepcloak.cloak.selectors.SelectorChoice` already holding its settings and
            the search's (then ``fit_budget``, ``max_removed`` and ``settings`` stay unset).
        clean_budget: largest clean-accuracy drop allowed on new data (0.01 = 1 point).
        confidence: one-sided confidence of the drop's upper bound on validation.
        fit_budget: drop the selector may spend on the fit samples (default
            :data:`~deepcloak.cloak.selectors.DEFAULT_FIT_BUDGET`, 3 points, whatever
            ``clean_budget`` is: tuned to hold a 1-point budget on validation).
        max_removed: longest path (default: all features).
        attack: the attack's spec, recorded in the result.
        **settings: the selector's settings (``width`` for beam, ``seed`` for random, ...).

    Returns:
        A :class:`SearchResult`.

    Raises:
        DeepCloakError: unknown selector, bad settings or budgets, or mismatched splits.
    """
    _check_splits(fit, val, clean_budget)
    choice = _selector_choice(selector, settings, fit_budget=fit_budget, max_removed=max_removed)
    chosen_selector, fit_budget = choice.create(), choice.fit_budget
    t0 = time.perf_counter()
    path = chosen_selector(
        fit, fit_budget=fit_budget, max_removed=choice.max_removed or fit.n_features
    )
    t1 = time.perf_counter()
    index, candidates = choose_on_validation(path, val, clean_budget, confidence=confidence)
    removed = [(), *path][index]
    keep = torch.ones(fit.n_features, dtype=torch.bool)
    keep[list(removed)] = False
    return SearchResult(
        layer=layer, keep=keep, removed=removed, path=path, selector=choice.name,
        settings=chosen_selector.settings(), clean_budget=clean_budget, confidence=confidence,
        fit_budget=fit_budget, candidates=candidates, attack=attack or {},
        fit_samples=fit.n_samples, val_samples=val.n_samples,
        seconds={"search": t1 - t0, "validate": time.perf_counter() - t1},
        kept_order=(fit.adv - fit.clean).abs().sum(0, dtype=torch.float64).cpu(),
    )  # fmt: skip


def _check_splits(fit: HeadFeatures, val: HeadFeatures, clean_budget: float) -> None:
    """A budget that is a fraction, and fit and validation features of the same head."""
    if not 0.0 <= clean_budget <= 1.0:
        raise DeepCloakError(f"clean_budget must be a fraction in [0, 1], got {clean_budget}")
    if val.weight.shape != fit.weight.shape or not torch.equal(
        val.weight, fit.weight.to(val.device)
    ):
        raise DeepCloakError("fit and validation features must come from the same head")


def _selector_choice(
    selector: str | SelectorChoice,
    settings: dict[str, Any],
    *,
    fit_budget: float | None,
    max_removed: int | None,
) -> SelectorChoice:
    """The selector with its settings checked: as given, or built from a name and keywords."""
    if isinstance(selector, SelectorChoice):
        if settings or fit_budget is not None or max_removed is not None:
            raise DeepCloakError(
                f"selector {selector.name!r} came with its settings ({selector.settings}); "
                "pass the others inside it (SelectorChoice.of), not beside it"
            )
        return selector
    given = {"fit_budget": fit_budget, "max_removed": max_removed}  # None takes the default
    return SelectorChoice.of(
        selector, {**settings, **{k: v for k, v in given.items() if v is not None}}
    )


def search_mask(
    model: nn.Module,
    fit_loader: Iterable[Any],
    val_loader: Iterable[Any],
    *,
    layer: LayerRef | Cloak | str | None = None,
    attack: Attack | None = None,
    selector: str | SelectorChoice = "greedy",
    clean_budget: float = 0.01,
    confidence: float = 0.95,
    max_samples: int | None = None,
    progress: ProgressFn | None = None,
    **settings: Any,
) -> SearchResult:
    """Attack the unmasked ``model`` on fit and validation data, then :func:`search_cached`.

    Args:
        model: a trained classifier taking inputs in [0, 1] (left unmodified).
        fit_loader: ``(x, y)`` batches the selector learns from (e.g. training data).
        val_loader: held-out ``(x, y)`` batches the mask size is chosen on (never test data).
        layer: layer L: a :class:`LayerRef`, a fitted :class:`Cloak` (its layer and attack are
            used), a module name (its input), or ``None`` for the input of the final
            ``nn.Linear``.
        attack: crafts the samples (default: the cloak's attack, else ``FGSM(eps=8/255)``).
        selector, clean_budget, confidence, settings: see :func:`search_cached`.
        max_samples: cap on the fit samples.
        progress: ``progress(task, done, total)`` while the fit and validation samples are
            attacked (tasks ``search: fit`` and ``search: validation``).

    Returns:
        A :class:`SearchResult`; ``result.save(path)`` writes a mask file.
    """
    if isinstance(layer, Cloak):
        spec = dict(layer.attack)
        attack = attack or create_attack(spec.pop("name"), **spec)
        layer = layer.layer
    attack = attack or FGSM(eps=DEFAULT_EPS)
    if not isinstance(layer, LayerRef):
        x, _ = unpack_batch(next(iter(fit_loader)), model_device(model), model_dtype(model))
        layer = resolve_layer(model, layer, "input" if layer else None, example=x[:1])
    t0 = time.perf_counter()
    fit = cache_head_features(
        model, fit_loader, layer, attack, max_samples=max_samples, progress=progress,
        task="search: fit",
    )  # fmt: skip
    val = cache_head_features(
        model, val_loader, layer, attack, progress=progress, task="search: validation"
    )
    cached = time.perf_counter() - t0
    result = search_cached(
        fit, val, layer, selector=selector, clean_budget=clean_budget, confidence=confidence,
        attack=attack.spec(), **settings,
    )  # fmt: skip
    result.seconds = {"cache": cached, **result.seconds}
    return result
