"""Automatic choice of the mask ratio, on a validation split held out from the test split.

The rule: the ratio with the largest gray-box gain over the unmasked model, among the ratios
whose clean accuracy is at most ``clean_budget`` below the unmasked model's. Ties go to the
smaller ratio (fewer features removed). Choosing on validation data and reporting on test data
keeps the choice from fitting the test set's noise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.results import SweepResult

__all__ = ["RatioCandidate", "RatioChoice", "choose_ratio"]

#: Absorbs float error when comparing accuracies (fractions of at most a few million samples).
_TOL = 1e-9


@dataclass(frozen=True)
class RatioCandidate:
    """One ratio considered: its validation accuracies and whether it fits the budget."""

    ratio: float
    n_removed: int
    clean_accuracy: float
    graybox_accuracy: float
    graybox_gain: float
    clean_drop: float
    within_budget: bool
    clean_ci: tuple[float, float] = (0.0, 1.0)
    graybox_ci: tuple[float, float] = (0.0, 1.0)
    confidence: float = 0.95


@dataclass(frozen=True)
class RatioChoice:
    """The chosen ratio and everything that led to it.

    Attributes:
        ratio: the chosen fraction of features removed (0 when no ratio helps within budget).
        clean_budget: the largest clean-accuracy drop allowed, as a fraction (0.01 = 1 point).
        baseline_clean_accuracy: the unmasked model's clean accuracy on the validation split
            (``None`` for a fixed ratio).
        baseline_graybox_accuracy: the unmasked model's gray-box accuracy there.
        candidates: every ratio considered, in sweep order.
        n_samples: validation samples behind the choice.
        attack: the attack that crafted the validation samples (on the unmasked model).
        split: where the choice was made (``"validation"``, or ``"fixed"`` for a user's ratio).
        reason: one sentence on why this ratio was chosen.
    """

    ratio: float
    clean_budget: float
    baseline_clean_accuracy: float | None
    baseline_graybox_accuracy: float | None
    candidates: tuple[RatioCandidate, ...]
    n_samples: int
    attack: dict[str, Any]
    split: str
    reason: str

    @property
    def chosen(self) -> RatioCandidate | None:
        """The candidate row of the chosen ratio (``None`` for a fixed ratio)."""
        for c in self.candidates:
            if c.ratio == self.ratio:
                return c
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of all fields; each candidate's accuracies with a Wilson interval."""
        d = asdict(self)
        d["candidates"] = [
            {
                **asdict(c),
                "clean_ci": _ci(c.clean_ci, c.confidence),
                "graybox_ci": _ci(c.graybox_ci, c.confidence),
            }
            for c in self.candidates
        ]
        return d


def _ci(interval: tuple[float, float], confidence: float) -> dict[str, Any]:
    return {"low": interval[0], "high": interval[1], "confidence": confidence, "method": "wilson"}


def check_budget(clean_budget: float) -> float:
    """Check a clean-accuracy budget: a fraction in [0, 1] (0.01 = one accuracy point)."""
    if (
        isinstance(clean_budget, bool)
        or not isinstance(clean_budget, (int, float))
        or not math.isfinite(clean_budget)
        or not 0.0 <= clean_budget <= 1.0
    ):
        raise DeepCloakError(
            f"clean_budget must be a fraction in [0, 1] (0.01 = at most 1 point of clean "
            f"accuracy lost), got {clean_budget!r}"
        )
    return float(clean_budget)


def choose_ratio(sweep: SweepResult, clean_budget: float = 0.01) -> RatioChoice:
    """Pick the ratio with the largest gray-box gain whose clean accuracy fits the budget.

    Args:
        sweep: a gray-box sweep on *validation* data
            (:func:`deepcloak.evaluation.sweep.graybox_sweep`);
            it must include ratio 0, the unmasked model.
        clean_budget: the largest clean-accuracy drop allowed versus the unmasked model, as a
            fraction (default 0.01: at most one point below).

    Returns:
        A :class:`RatioChoice` recording every candidate, the budget and the choice.

    Raises:
        DeepCloakError: the sweep lacks ratio 0, or the budget is not a fraction in [0, 1].
    """
    budget = check_budget(clean_budget)
    base = next((row for row in sweep.rows if row.ratio == 0), None)
    if base is None:
        raise DeepCloakError(
            "the sweep must include ratio 0 (the unmasked model) to measure gains against; "
            f"got ratios {[row.ratio for row in sweep.rows]}"
        )
    candidates = tuple(
        RatioCandidate(
            ratio=row.ratio,
            n_removed=row.n_removed,
            clean_accuracy=row.clean_accuracy,
            graybox_accuracy=row.graybox_accuracy,
            graybox_gain=row.graybox_accuracy - base.graybox_accuracy,
            clean_drop=base.clean_accuracy - row.clean_accuracy,
            within_budget=base.clean_accuracy - row.clean_accuracy <= budget + _TOL,
            clean_ci=row.clean.interval,
            graybox_ci=row.graybox.interval,
            confidence=row.graybox.confidence,
        )
        for row in sweep.rows
    )
    eligible = [c for c in candidates if c.within_budget]
    # Largest gain first; among equal gains (within float error) the smallest ratio.
    best = min(eligible, key=lambda c: (-round(c.graybox_gain / _TOL), c.ratio))
    if best.ratio == 0 or best.graybox_gain <= _TOL:
        best = next(c for c in eligible if c.ratio == 0)
        reason = (
            f"no ratio raised gray-box accuracy while losing at most {budget:.2%} clean accuracy; "
            "ratio 0 (the unmasked model) kept"
        )
    else:
        reason = (
            f"largest gray-box gain ({best.graybox_gain:+.2%}) among {len(eligible)} of "
            f"{len(candidates)} ratios losing at most {budget:.2%} clean accuracy "
            f"(this one loses {best.clean_drop:.2%})"
        )
    return RatioChoice(
        ratio=best.ratio,
        clean_budget=budget,
        baseline_clean_accuracy=base.clean_accuracy,
        baseline_graybox_accuracy=base.graybox_accuracy,
        candidates=candidates,
        n_samples=sweep.n_samples,
        attack=dict(sweep.attack),
        split="validation",
        reason=reason,
    )
