"""Removal sets grown one feature at a time: the steps the greedy and beam selectors share.

A :class:`RemovalState` is one removal set with the head's logits of the fit samples under it;
:func:`expansions` scores every allowed one-feature extension exactly (see
:func:`~deepcloak.cloak.head.candidate_outcomes`) and :func:`ranked_candidates` orders them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepcloak.cloak.head import HeadFeatures, apply_removal, candidate_outcomes, full_logits
from deepcloak.cloak.head import margins as logit_margins
from deepcloak.errors import DeepCloakError

__all__ = ["RemovalState", "expansions", "min_clean_correct", "ranked_candidates", "start_state"]


def ranked_candidates(
    correct: torch.Tensor, margin: torch.Tensor, allowed: torch.Tensor, limit: int
) -> list[int]:
    """Allowed feature indices by (correct desc, margin desc, index asc), the first ``limit``."""
    idx = allowed.nonzero().squeeze(1)  # ascending index
    if idx.numel() == 0:
        return []
    # Stable sorts from the least to the most significant key give the lexicographic order.
    order = torch.sort(margin[idx], descending=True, stable=True).indices
    idx = idx[order]
    order = torch.sort(correct[idx], descending=True, stable=True).indices
    return [int(i) for i in idx[order][:limit]]


@dataclass
class RemovalState:
    """One removal set and the logits of the fit samples under it."""

    removed: tuple[int, ...]  # in removal order
    keep: torch.Tensor  # (F,) bool
    clean_logits: torch.Tensor  # (N, K)
    adv_logits: torch.Tensor  # (N, K)
    score: float  # adversarial correct + clean_weight * clean correct
    adv_margin: float

    def extend(self, fit: HeadFeatures, j: int, score: float, adv_margin: float) -> RemovalState:
        """This set with feature ``j`` removed too, scored ``score`` with ``adv_margin``."""
        keep = self.keep.clone()
        keep[j] = False
        return RemovalState(
            (*self.removed, j),
            keep,
            apply_removal(self.clean_logits, fit.clean, fit.weight, [j]),
            apply_removal(self.adv_logits, fit.adv, fit.weight, [j]),
            score,
            adv_margin,
        )


def start_state(fit: HeadFeatures, clean_weight: float) -> tuple[RemovalState, int]:
    """The unmasked state, and the number of clean fit samples it gets right."""
    keep = torch.ones(fit.n_features, dtype=torch.bool, device=fit.device)
    zc = full_logits(fit.clean, fit.weight, fit.bias, keep)
    za = full_logits(fit.adv, fit.weight, fit.bias, keep)
    m = logit_margins(za, fit.labels)
    clean = int((logit_margins(zc, fit.labels) > 0).sum())
    score = int((m > 0).sum()) + clean_weight * clean
    return RemovalState((), keep, zc, za, score, float(m.double().sum())), clean


def expansions(
    fit: HeadFeatures,
    state: RemovalState,
    min_clean: int,
    clean_weight: float,
    rivals: int,
    limit: int,
) -> list[tuple[float, float, tuple[int, ...], int]]:
    """The ``limit`` best allowed one-feature extensions: ``(score, margin, set, j)``."""
    oc = candidate_outcomes(
        fit.clean, fit.labels, state.clean_logits, fit.weight, state.keep, rivals=rivals
    )
    oa = candidate_outcomes(
        fit.adv, fit.labels, state.adv_logits, fit.weight, state.keep, rivals=rivals
    )
    allowed = state.keep & (oc.correct >= min_clean)
    score = oa.correct.double() + clean_weight * oc.correct.double()
    return [
        (float(score[j]), float(oa.margin[j]), tuple(sorted((*state.removed, j))), j)
        for j in ranked_candidates(score, oa.margin, allowed, limit)
    ]


def min_clean_correct(fit: HeadFeatures, base_clean: int, fit_budget: float) -> int:
    """Fewest clean fit samples a mask may get right: ``base - floor(budget * N)``."""
    if not 0.0 <= fit_budget <= 1.0:
        raise DeepCloakError(f"fit_budget must be a fraction in [0, 1], got {fit_budget}")
    return base_clean - math.floor(fit_budget * fit.n_samples + 1e-9)
