"""Input validation shared by the fit, the attacks and the sweeps.

Each check raises :class:`~deepcloak.errors.DeepCloakError` with what was wrong and what was
expected; none uses ``assert`` (asserts vanish under ``python -O``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from deepcloak.errors import DeepCloakError

__all__ = [
    "check_budget",
    "check_epsilon",
    "check_finite",
    "check_input_shape",
    "check_inputs",
    "check_labels",
    "check_positive",
    "check_positive_int",
    "check_ratio",
    "check_ratios",
]


def check_ratio(ratio: float) -> float:
    """Check a mask ratio (fraction of features removed): a number with ``0 <= ratio < 1``."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise DeepCloakError(f"ratio must be a number in [0, 1), got {ratio!r}")
    if not 0.0 <= ratio < 1.0:
        raise DeepCloakError(
            f"ratio must be in [0, 1) (the fraction of features removed), got {ratio}; "
            "for percentages divide by 100, e.g. 1% -> 0.01"
        )
    return float(ratio)


def check_ratios(ratios: Iterable[float]) -> list[float]:
    """Check a non-empty sequence of ratios; returns them as a list of floats."""
    out = [check_ratio(r) for r in ratios]
    if not out:
        raise DeepCloakError("expected at least one ratio, got none")
    return out


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


def check_epsilon(eps: float, *, name: str = "eps") -> float:
    """Check an attack budget in the [0, 1] input scale (e.g. 8/255 ~ 0.031)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
        raise DeepCloakError(f"{name} must be a number in [0, 1], got {eps!r}")
    if eps < 0:
        raise DeepCloakError(f"{name} must be >= 0, got {eps}")
    if eps > 1:
        raise DeepCloakError(
            f"{name} must be <= 1: inputs are in [0, 1], so budgets are too (8/255 ~ 0.031); "
            f"got {eps}. Did you mean {eps}/255 = {eps / 255:.4f}?"
        )
    return float(eps)


def check_positive_int(value: int, name: str) -> int:
    """Check a count that must be an integer ``>= 1`` (steps, restarts, samples...)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeepCloakError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def check_input_shape(value: object, name: str = "input_shape") -> tuple[int, ...]:
    """Check an input shape such as ``(C, H, W)``: one to four integers ``>= 1``.

    Raises:
        DeepCloakError: anything else (text, floats, booleans, zero or negative sizes).
    """
    items = list(value) if isinstance(value, (list, tuple)) else None
    if (
        items is None
        or not 1 <= len(items) <= 4
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in items)
    ):
        raise DeepCloakError(
            f"{name} must be a list of one to four integers >= 1 (e.g. [1, 28, 28]), got {value!r}"
        )
    return tuple(int(v) for v in items)


def check_positive(value: float, name: str) -> float:
    """Check a finite number ``> 0`` (a step size, a temperature...)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise DeepCloakError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_inputs(x: torch.Tensor) -> None:
    """Check that a batch of inputs is floating point, finite and within [0, 1]."""
    if not torch.is_floating_point(x):
        raise DeepCloakError(
            f"inputs must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}; "
            "convert images with x.float() / 255"
        )
    if x.numel() == 0:
        raise DeepCloakError("got an empty batch of inputs")
    lo, hi = torch.aminmax(x.detach())
    lo_v, hi_v = float(lo), float(hi)
    if not (math.isfinite(lo_v) and math.isfinite(hi_v)):
        raise DeepCloakError("inputs contain NaN or inf; expected finite values in [0, 1]")
    if lo_v < 0.0 or hi_v > 1.0:
        raise DeepCloakError(
            f"inputs must lie in [0, 1] (normalisation belongs inside the model), "
            f"got values in [{lo_v:.4g}, {hi_v:.4g}]"
        )


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    """Check that labels are integer class indices in ``[0, num_classes)``."""
    if y.dtype in (torch.bool,) or torch.is_floating_point(y) or torch.is_complex(y):
        raise DeepCloakError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.numel() == 0:
        return
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DeepCloakError(
            f"labels must be in [0, {num_classes - 1}] (the model has {num_classes} outputs), "
            f"got labels in [{lo}, {hi}]"
        )


def check_finite(t: torch.Tensor, what: str) -> None:
    """Check that ``t`` holds no NaN or inf; ``what`` names it in the error."""
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise DeepCloakError(
            f"{what} contain {n_bad} NaN or inf values; expected finite values. "
            "Check the model's weights and inputs (is it trained? does it overflow in float16?)"
        )
