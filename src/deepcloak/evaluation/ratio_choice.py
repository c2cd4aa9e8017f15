"""Automatic choice of the mask ratio, on a validation split held out from the test split.

The rule: the ratio with the largest gray-box gain over the unmasked model, among the ratios
whose clean accuracy is at most ``clean_budget`` below the unmasked model's. Ties go to the
smaller ratio (fewer features removed). Choosing on validation data and reporting on test data
keeps the choice from fitting the test set's noise.
"""

from __future__ import annotations

from deepcloak import validation as _validation
from deepcloak._moved import moved_names
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation import results as _results
from deepcloak.evaluation.results import SweepResult, SweepRow

__all__ = ["choose_ratio"]

#: Absorbs float error when comparing accuracies (fractions of at most a few million samples).
_TOL = 1e-9

# Moved after 0.1.0: the choice is part of the one result model, the budget check is an input check.
__getattr__ = moved_names(
    __name__,
    {"RatioCandidate": _results, "RatioChoice": _results, "check_budget": _validation},
)


def choose_ratio(sweep: SweepResult, clean_budget: float = 0.01) -> _results.RatioChoice:
    """Pick the ratio with the largest gray-box gain whose clean accuracy fits the budget.

    Args:
        sweep: a gray-box sweep on *validation* data
            (:func:`deepcloak.evaluation.sweep.graybox_sweep`);
            it must include ratio 0, the unmasked model.
        clean_budget: the largest clean-accuracy drop allowed versus the unmasked model, as a
            fraction (default 0.01: at most one point below).

    Returns:
        A :class:`~deepcloak.evaluation.results.RatioChoice` recording every candidate, the
        budget and the choice.

    Raises:
        DeepCloakError: the sweep lacks ratio 0, or the budget is not a fraction in [0, 1].
    """
    budget = _validation.check_budget(clean_budget)
    base = next((row for row in sweep.rows if row.ratio == 0), None)
    if base is None:
        raise DeepCloakError(
            "the sweep must include ratio 0 (the unmasked model) to measure gains against; "
            f"got ratios {[row.ratio for row in sweep.rows]}"
        )
    candidates = tuple(_candidate(row, base, budget) for row in sweep.rows)
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
    return _results.RatioChoice(
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


def _candidate(row: SweepRow, base: SweepRow, budget: float) -> _results.RatioCandidate:
    """One ratio's validation figures against the unmasked model's (``base``, ratio 0)."""
    return _results.RatioCandidate(
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
