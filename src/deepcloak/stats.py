"""Statistics for honest accuracy claims: Wilson intervals, Newcombe's bound on a paired
accuracy drop, McNemar's exact paired test, and the interval of a mean over random masks.

Every accuracy deepcloak reports carries a Wilson score interval (Wilson 1927; recommended over
the normal "Wald" interval by Brown, Cai & DasGupta 2001, it stays inside [0, 1] and keeps its
coverage near 0% and 100%). "Cloaked beats unmasked" is a paired question, because both models
see the same samples: McNemar's exact test looks only at the samples on which they disagree.

The clean-accuracy budget of the mask search accounts for sampling error the same way. Masking
a model changes its clean accuracy on the same samples, so the drop is a difference of two
paired proportions. Per sample, ``b`` counts correct-before & wrong-after and ``c`` the reverse;
the drop is ``(b - c) / n``. Its upper confidence bound is Newcombe's hybrid score interval for
paired data (Newcombe 1998, "Improved confidence intervals for the difference between binomial
proportions based on paired data", Statistics in Medicine 17, method 10): Wilson bounds for the
two accuracies, combined with the correlation ``phi`` of the 2x2 table. A mask fits a budget
when the *upper* bound of its drop does: a mask whose measured drop only just fits would exceed
the budget on new data about half the time.

One Wilson formula (:func:`_wilson`) serves both the reported interval (Python floats, one
count) and the search's bounds (float64 tensors, many counts at once); each keeps its own
arithmetic, so every figure is what it was when they lived in two modules.

Example:
    >>> wilson_interval(81, 263)          # Newcombe (1998), example (a)
    (0.2553..., 0.3662...)
    >>> mcnemar_exact(cloaked_correct, unmasked_correct).p_greater
    >>> before = torch.tensor([True, True, False, True])
    >>> after = torch.tensor([True, False, False, True])
    >>> paired_drop(before, after).upper   # one-sided 95% upper bound of the drop
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, TypeVar

import torch

from deepcloak.errors import DeepCloakError

__all__ = [
    "McNemarResult",
    "PairedDrop",
    "mcnemar_exact",
    "mean_interval",
    "newcombe_upper",
    "paired_drop",
    "wilson_bounds",
    "wilson_interval",
]

_P = TypeVar("_P", float, torch.Tensor)


def _check_confidence(confidence: float, *, low: float) -> float:
    """``confidence`` as a float in ``(low, 1)``: ``low`` 0 for an interval's coverage, 0.5 for
    a one-sided bound."""
    span = f"({low:g}, 1)"
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise DeepCloakError(f"confidence must be a number in {span}, got {confidence!r}")
    if not low < confidence < 1.0:
        example = "for a one-sided 95% bound" if low else "for a 95% interval"
        raise DeepCloakError(f"confidence must be in {span}, e.g. 0.95 {example}, got {confidence}")
    return float(confidence)


def _z(confidence: float) -> float:
    """One-sided normal quantile of ``confidence`` (1.645 for 0.95)."""
    return NormalDist().inv_cdf(_check_confidence(confidence, low=0.5))


def _wilson(p: _P, n: int, z: float, sqrt: Callable[[_P], _P]) -> tuple[_P, _P]:
    """The Wilson score interval's ``(center, half-width)`` for proportion ``p`` of ``n``.

    ``center = (p + z²/2n) / (1 + z²/n)``, ``half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)``.
    ``p`` is a float (with ``math.sqrt``) or a float64 tensor (with ``torch.sqrt``).
    """
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center, half


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n``.

    ``center = (p + z²/2n) / (1 + z²/n)``, ``half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)``,
    with ``z`` the two-sided normal quantile of ``confidence`` (1.96 for 95%).

    Args:
        correct: number of successes (e.g. correctly classified samples), ``0 <= correct <= n``.
        n: number of trials; ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
        confidence: coverage of the interval, in (0, 1).

    Returns:
        ``(low, high)``, both in [0, 1].

    Raises:
        DeepCloakError: counts that are negative, not integers, or ``correct > n``.
    """
    _check_confidence(confidence, low=0.0)
    for name, value in (("correct", correct), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DeepCloakError(f"{name} must be a non-negative integer count, got {value!r}")
    if correct > n:
        raise DeepCloakError(f"correct ({correct}) cannot exceed the number of samples n ({n})")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    center, half = _wilson(correct / n, n, z, math.sqrt)
    # At p = 0 (p = 1) the lower (upper) bound is exactly 0 (1); floats would leave ~1e-17.
    lo = 0.0 if correct == 0 else max(0.0, center - half)
    hi = 1.0 if correct == n else min(1.0, center + half)
    return lo, hi


def wilson_bounds(successes: torch.Tensor, n: int, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score bounds ``(low, high)`` of ``successes / n``, elementwise, float64.

    Each bound is one-sided at the normal quantile ``z`` (so the pair is a two-sided interval
    of coverage ``1 - 2 * (1 - Phi(z))``). Vectorised over ``successes``, any shape.
    """
    center, half = _wilson(successes.double() / n, n, z, torch.sqrt)
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


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on paired per-sample outcomes of two models, A and B.

    Attributes:
        a_only: samples A gets right and B gets wrong.
        b_only: samples B gets right and A gets wrong.
        n: all paired samples (the agreeing ones carry no information about the difference).
        p_two_sided: exact two-sided p-value of "A and B differ".
        p_greater: exact one-sided p-value of "A beats B" (``a_only`` large).
        p_less: exact one-sided p-value of "B beats A".
    """

    a_only: int
    b_only: int
    n: int
    p_two_sided: float
    p_greater: float
    p_less: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return asdict(self)


def _as_bool_vector(t: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.ndim != 1:
        raise DeepCloakError(f"{name} must be a 1-D per-sample vector, got shape {tuple(t.shape)}")
    if t.dtype != torch.bool:
        if torch.is_floating_point(t) or not bool(((t == 0) | (t == 1)).all()):
            raise DeepCloakError(f"{name} must hold booleans (correct or not), got dtype {t.dtype}")
        t = t.bool()
    return t.cpu()


def mcnemar_exact(a_correct: torch.Tensor, b_correct: torch.Tensor) -> McNemarResult:
    """McNemar's exact test: does model A classify the same samples correctly more often than B?

    Under the null hypothesis the ``a_only + b_only`` discordant samples split as a fair coin:
    ``a_only ~ Binomial(a_only + b_only, 1/2)``. The p-values are exact binomial tail sums
    (``scipy.stats.binomtest``); with no discordant sample every p-value is 1.

    Args:
        a_correct: per-sample correctness of A, boolean ``(N,)``.
        b_correct: per-sample correctness of B on the same samples, boolean ``(N,)``.

    Returns:
        A :class:`McNemarResult`.

    Raises:
        DeepCloakError: the vectors are not 1-D booleans of the same length.
    """
    from scipy.stats import binomtest

    a = _as_bool_vector(a_correct, "a_correct")
    b = _as_bool_vector(b_correct, "b_correct")
    if a.shape != b.shape:
        raise DeepCloakError(
            f"paired outcomes must cover the same samples: got {a.numel()} and {b.numel()}"
        )
    a_only = int((a & ~b).sum())
    b_only = int((b & ~a).sum())
    k = a_only + b_only
    if k == 0:
        p2 = pg = pl = 1.0
    else:
        p2 = float(binomtest(a_only, k, 0.5, alternative="two-sided").pvalue)
        pg = float(binomtest(a_only, k, 0.5, alternative="greater").pvalue)
        pl = float(binomtest(a_only, k, 0.5, alternative="less").pvalue)
    return McNemarResult(
        a_only=a_only,
        b_only=b_only,
        n=a.numel(),
        p_two_sided=min(1.0, p2),
        p_greater=min(1.0, pg),
        p_less=min(1.0, pl),
    )


def mean_interval(correct: torch.Tensor, confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a mean accuracy over several random masks evaluated on the same samples.

    ``correct`` is boolean ``(k, N)``: mask ``j`` classifies sample ``i`` correctly. The mean
    accuracy ``m`` varies with both the samples and the masks drawn, so its standard error adds
    the two sources: ``se² = var_i(c_i) / N + var_j(a_j) / k``, with ``c_i`` the fraction of masks
    right on sample ``i`` and ``a_j`` the accuracy of mask ``j`` (both sample variances). This is
    slightly conservative (the sample-by-mask interaction is counted twice). The interval is
    ``m ± z · se``, clipped to [0, 1]. With one mask, or when ``se = 0`` (every sample right
    under all masks or wrong under all), it is the Wilson interval of the first mask's count.

    Args:
        correct: boolean ``(k, N)`` per-mask, per-sample correctness.
        confidence: coverage, in (0, 1).

    Returns:
        ``(low, high)`` in [0, 1].

    Raises:
        DeepCloakError: ``correct`` is not a non-empty 2-D boolean tensor.
    """
    _check_confidence(confidence, low=0.0)
    if correct.ndim != 2 or correct.dtype != torch.bool or correct.numel() == 0:
        raise DeepCloakError(
            f"expected boolean per-mask correctness of shape (k, N), got {correct.dtype} "
            f"{tuple(correct.shape)}"
        )
    k, n = correct.shape
    c = correct.double()
    per_sample = c.mean(0)  # (N,)
    per_mask = c.mean(1)  # (k,)
    var = per_sample.var().item() / n if n > 1 else 0.0
    var += per_mask.var().item() / k if k > 1 else 0.0
    if k == 1 or var <= 0.0:
        return wilson_interval(int(correct[0].sum()), n, confidence)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    mean, se = per_mask.mean().item(), math.sqrt(var)
    return max(0.0, mean - z * se), min(1.0, mean + z * se)
