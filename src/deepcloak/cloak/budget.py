"""A clean-accuracy budget that accounts for sampling error: bounds on a *paired* accuracy drop.

Masking a model changes its clean accuracy on the same samples, so the drop is a difference of
two paired proportions. Per sample, ``b`` counts correct-before & wrong-after and ``c`` the
reverse; the drop is ``(b - c) / n``. Its upper confidence bound is Newcombe's hybrid score
interval for paired data (Newcombe 1998, "Improved confidence intervals for the difference
between binomial proportions based on paired data", Statistics in Medicine 17, method 10):
Wilson intervals for the two accuracies, combined with the correlation ``phi`` of the 2x2 table.
It keeps its coverage near 0 and 1 where the normal ("Wald") interval does not.

A mask fits a budget when the *upper* bound of its drop does: a mask whose measured drop only
just fits would exceed the budget on new data about half the time.

Example:
    >>> before = torch.tensor([True, True, False, True])
    >>> after = torch.tensor([True, False, False, True])
    >>> paired_drop(before, after).upper   # one-sided 95% upper bound of the drop
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import torch

from deepcloak.errors import DeepCloakError

__all__ = ["PairedDrop", "newcombe_upper", "paired_drop", "wilson_bounds"]


def _z(confidence: float) -> float:
    """One-sided normal quantile of ``confidence`` (1.645 for 0.95)."""
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise DeepCloakError(f"confidence must be a number in (0.5, 1), got {confidence!r}")
    if not 0.5 < confidence < 1.0:
        raise DeepCloakError(
            f"confidence must be in (0.5, 1), e.g. 0.95 for a one-sided 95% bound, got {confidence}"
        )
    return NormalDist().inv_cdf(float(confidence))


def wilson_bounds(successes: torch.Tensor, n: int, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score bounds ``(low, high)`` of ``successes / n``, elementwise, float64.

    Each bound is one-sided at the normal quantile ``z`` (so the pair is a two-sided interval
    of coverage ``1 - 2 * (1 - Phi(z))``). Vectorised over ``successes``, any shape.
    """
    p = successes.double() / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (center - half).clamp(min=0.0), (center + half).clamp(max=1.0)


def newcombe_upper(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, z: float
) -> torch.Tensor:
    """Upper bound of ``(b - c) / n`` from paired 2x2 counts (Newcombe 1998, method 10).

    Args:
        a: both correct; b: correct before, wrong after; c: wrong before, correct after;
            d: both wrong. Integer tensors of one shape; ``n = a + b + c + d`` must be equal
            everywhere and positive.
        z: one-sided normal quantile (1.645 for a one-sided 95% bound).

    Returns:
        float64 tensor of the counts' shape.
    """
    a, b, c, d = (t.double() for t in (a, b, c, d))
    n = int((a + b + c + d).flatten()[0].item())
    p1, p2 = (a + b) / n, (a + c) / n  # accuracy before, after
    _, u1 = wilson_bounds(a + b, n, z)
    l2, _ = wilson_bounds(a + c, n, z)
    denom = torch.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    phi = torch.where(denom > 0, (a * d - b * c) / denom.clamp(min=1e-300), torch.zeros_like(a))
    du2 = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return (p1 - p2) + torch.sqrt(du2.clamp(min=0.0))


@dataclass(frozen=True)
class PairedDrop:
    """The clean-accuracy drop of a masked model against the unmasked one, on paired samples.

    Attributes:
        n: paired samples.
        lost: correct before, wrong after (``b``).
        gained: wrong before, correct after (``c``).
        drop: ``(lost - gained) / n``, as a fraction.
        upper: one-sided upper confidence bound of the drop.
        confidence: the bound's one-sided confidence.
    """

    n: int
    lost: int
    gained: int
    drop: float
    upper: float
    confidence: float

    def fits(self, budget: float) -> bool:
        """Whether the upper bound of the drop is within ``budget`` (a fraction, 0.01 = 1 point)."""
        return self.upper <= budget + 1e-12

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)


def paired_drop(
    before: torch.Tensor, after: torch.Tensor, *, confidence: float = 0.95
) -> PairedDrop:
    """The paired clean-accuracy drop from ``before`` to ``after`` and its upper bound.

    Args:
        before: per-sample correctness of the unmasked model, boolean ``(N,)``.
        after: per-sample correctness of the masked model on the same samples.
        confidence: one-sided confidence of the upper bound, in (0.5, 1).

    Returns:
        A :class:`PairedDrop`.

    Raises:
        DeepCloakError: the vectors are empty, not 1-D booleans, or of different lengths.
    """
    z = _z(confidence)
    if before.dtype != torch.bool or after.dtype != torch.bool:
        raise DeepCloakError("paired correctness must be boolean tensors (correct or not)")
    if before.ndim != 1 or before.shape != after.shape or before.numel() == 0:
        raise DeepCloakError(
            f"paired correctness must be two non-empty 1-D vectors of one length, got "
            f"{tuple(before.shape)} and {tuple(after.shape)}"
        )
    before, after = before.cpu(), after.cpu()
    a, b = (before & after).sum(), (before & ~after).sum()
    c, d = (~before & after).sum(), (~before & ~after).sum()
    upper = newcombe_upper(a, b, c, d, z).item()
    lost, gained, n = int(b), int(c), before.numel()
    if math.isnan(upper):  # cannot happen for valid counts; guard the budget check anyway
        raise DeepCloakError("the drop's bound is undefined; check the correctness vectors")
    return PairedDrop(n, lost, gained, (lost - gained) / n, upper, float(confidence))
