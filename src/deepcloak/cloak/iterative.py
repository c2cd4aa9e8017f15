"""Iterative cloaking: re-attack the cloaked model, extend its mask, repeat.

The plain search (:mod:`deepcloak.cloak.search`) crafts its fit samples once, on the unmasked
model. Once a mask is in place an attacker who crafts through it finds other directions.
:func:`iterative_search` repeats: craft the fit samples through the mask chosen so far, extend
that mask with the selector on the new samples (:func:`extend_path`), and choose again on
validation among every mask proposed in any round. Round 1 is exactly the plain search.

The clean budget on the fit samples is spent once over all rounds: a round may lose only what
the earlier rounds left of it, measured against the unmasked model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepcloak.attacks.native import Attack
from deepcloak.cloak.head import HeadFeatures, cache_head_features_multi, full_logits, margins
from deepcloak.cloak.search import SearchCandidate, choose_on_validation
from deepcloak.cloak.selectors import Path, create_selector
from deepcloak.cloak.taps import LayerRef
from deepcloak.errors import DeepCloakError

__all__ = ["IterativeResult", "IterativeRound", "extend_path", "iterative_search"]


def _keep(n_features: int, removed: Sequence[int]) -> torch.Tensor:
    keep = torch.ones(n_features, dtype=torch.bool)
    keep[list(removed)] = False
    return keep


def _clean_correct(h: HeadFeatures, keep: torch.Tensor) -> int:
    return int((margins(full_logits(h.clean, h.weight, h.bias, keep), h.labels) > 0).sum())


@torch.no_grad()
def extend_path(
    fit: HeadFeatures,
    removed: Sequence[int] = (),
    *,
    selector: str = "greedy",
    fit_budget: float = 0.01,
    max_removed: int | None = None,
    **settings: Any,
) -> Path:
    """The selector's path on ``fit`` starting from the removal set ``removed``.

    The selector runs on the features still kept (the removed ones are dropped, so it can
    never pick them again); each entry of the returned path is ``removed`` followed by the new
    removals. The clean fit accuracy may drop by at most ``fit_budget`` against the *unmasked*
    model, the part ``removed`` already spent included. With ``removed=()`` this is exactly
    the selector's own path.

    Args:
        fit: cached fit features.
        removed: the features removed already, in removal order.
        selector, settings: a name in :data:`~deepcloak.cloak.selectors.SELECTORS`, its settings.
        fit_budget: clean-accuracy drop allowed on the fit samples, all rounds together.
        max_removed: longest removal set (default: all features).

    Returns:
        The path: removal sets of growing size, each starting with ``removed``.

    Raises:
        DeepCloakError: bad settings or budget, or a removed index out of range.
    """
    if not 0.0 <= fit_budget <= 1.0:
        raise DeepCloakError(f"fit_budget must be a fraction in [0, 1], got {fit_budget}")
    if any(not 0 <= j < fit.n_features for j in removed) or len(set(removed)) != len(removed):
        raise DeepCloakError(f"removed must be distinct feature indices below {fit.n_features}")
    chosen = create_selector(selector, **settings)
    keep = torch.ones(fit.n_features, dtype=torch.bool, device=fit.device)
    keep[list(removed)] = False
    kept = keep.nonzero().squeeze(1)  # (F',) ascending: index ties break as on the full set
    spent = _clean_correct(fit, torch.ones_like(keep)) - _clean_correct(fit, keep)
    allowed = math.floor(fit_budget * fit.n_samples + 1e-9) - spent
    room = (max_removed if max_removed is not None else fit.n_features) - len(removed)
    if allowed < 0 or room < 1 or kept.numel() == 0:
        return []
    sub = HeadFeatures(
        fit.clean[:, kept], fit.adv[:, kept], fit.labels, fit.weight[:, kept], fit.bias
    )
    path = chosen(sub, fit_budget=allowed / fit.n_samples, max_removed=room)
    start = tuple(int(j) for j in removed)
    return [start + tuple(int(kept[j]) for j in entry) for entry in path]


@dataclass(frozen=True)
class IterativeRound:
    """One round: the mask it started from and the removal sets it proposed.

    Attributes:
        start: removal set the samples were crafted through (``()``: the unmasked model).
        path: the sets this round proposed, each starting with ``start``.
        chosen: the set chosen on validation after this round, among all rounds so far.
    """

    start: tuple[int, ...]
    path: Path
    chosen: tuple[int, ...]

    def start_keep(self, n_features: int) -> torch.Tensor:
        """The ``(F,)`` boolean mask the round's samples were crafted through."""
        return _keep(n_features, self.start)


@dataclass(frozen=True)
class IterativeResult:
    """The rounds and the final choice.

    Attributes:
        rounds: every round, in order.
        path: the sets of all rounds, concatenated (candidates for the final choice).
        removed: the chosen set; ``keep``: the ``(F,)`` boolean mask it gives.
        candidates: validation figures of the unmasked model and of every entry of ``path``.
    """

    rounds: tuple[IterativeRound, ...]
    path: Path
    removed: tuple[int, ...]
    keep: torch.Tensor
    candidates: tuple[SearchCandidate, ...]


def iterative_search(
    model: nn.Module,
    fit_loader: Iterable[Any],
    val: HeadFeatures,
    layer: LayerRef,
    attack: Attack,
    *,
    rounds: int = 3,
    selector: str = "greedy",
    clean_budget: float = 0.01,
    fit_budget: float | None = None,
    confidence: float = 0.95,
    max_samples: int | None = None,
    first: HeadFeatures | None = None,
    **settings: Any,
) -> IterativeResult:
    """Search, re-attack through the chosen mask, extend it; ``rounds`` times.

    Each round crafts the fit samples with ``attack`` through the mask chosen so far (round 1:
    the unmasked model, so it equals :func:`~deepcloak.cloak.search.search_cached`), extends
    that mask with :func:`extend_path`, then chooses on ``val`` among every set proposed so
    far (:func:`~deepcloak.cloak.search.choose_on_validation`). It stops early when a round
    would start from the mask the previous one started from (nothing new to attack).

    Args:
        model: the classifier (left unmodified).
        fit_loader: the fit samples, read once per round; it must not shuffle.
        val: cached validation features (the choice is always made on these).
        layer: the input of the final ``nn.Linear``.
        attack: crafts the fit samples each round.
        rounds: at most this many rounds.
        selector, settings: the selector and its settings.
        clean_budget, confidence: the validation rule.
        fit_budget: drop allowed on the fit samples over all rounds (default ``clean_budget``).
        max_samples: cap on the fit samples.
        first: round 1's cached fit features, if already computed with ``attack``.

    Returns:
        An :class:`IterativeResult`.

    Raises:
        DeepCloakError: ``rounds < 1`` or the errors of the steps.
    """
    if rounds < 1:
        raise DeepCloakError(f"rounds must be at least 1, got {rounds}")
    spend = clean_budget if fit_budget is None else fit_budget
    walk = _Walk()
    for r in range(rounds):
        if r > 0 and walk.start == walk.done[-1].start:
            break
        if r == 0 and first is not None:
            fit = first
        else:
            keep = _keep(val.n_features, walk.start)
            fit = _attacked(model, fit_loader, layer, attack, keep, max_samples)
        new = extend_path(fit, walk.start, selector=selector, fit_budget=spend, **settings)
        walk.advance(new, val, clean_budget, confidence)
    return walk.result(val.n_features)


@dataclass
class _Walk:
    """The state of :func:`iterative_search`: rounds done, path so far, where the next starts."""

    done: list[IterativeRound] = field(default_factory=list)
    path: Path = field(default_factory=list)
    start: tuple[int, ...] = ()
    candidates: tuple[SearchCandidate, ...] = ()

    def advance(self, new: Path, val: HeadFeatures, clean_budget: float, confidence: float) -> None:
        """Extend the path by ``new``, choose on ``val`` among all of it, start there next."""
        self.path += new
        index, self.candidates = choose_on_validation(
            self.path, val, clean_budget, confidence=confidence
        )
        chosen = [(), *self.path][index]
        self.done.append(IterativeRound(self.start, new, chosen))
        self.start = chosen

    def result(self, n_features: int) -> IterativeResult:
        """The search's result once the rounds are over."""
        keep = _keep(n_features, self.start)
        return IterativeResult(tuple(self.done), self.path, self.start, keep, self.candidates)


def _attacked(
    model: nn.Module,
    fit_loader: Iterable[Any],
    layer: LayerRef,
    attack: Attack,
    keep: torch.Tensor,
    max_samples: int | None,
) -> HeadFeatures:
    """The fit samples' features, crafted with ``attack`` through the mask that keeps ``keep``."""
    return cache_head_features_multi(
        model, fit_loader, layer, [attack], keep=keep, max_samples=max_samples
    )
