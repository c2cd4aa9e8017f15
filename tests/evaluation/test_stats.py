from __future__ import annotations

import importlib
import math
from statistics import NormalDist

import pytest
import torch
from scipy.stats import norm

import deepcloak.stats
from deepcloak.errors import DeepCloakError
from deepcloak.stats import mcnemar_exact, wilson_bounds, wilson_interval


# Newcombe (1998), "Two-sided confidence intervals for the single proportion", Stat. Med. 17,
# Table I, method 3 (score interval without continuity correction), to 4 decimals.
@pytest.mark.parametrize(
    ("correct", "n", "expected"),
    [
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0000, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
    ],
)
def test_wilson_matches_newcombe_1998(correct: int, n: int, expected: tuple[float, float]) -> None:
    lo, hi = wilson_interval(correct, n)
    assert (round(lo, 4), round(hi, 4)) == expected


def _wilson_by_hand(k: int, n: int, confidence: float) -> tuple[float, float]:
    # The score interval as the roots of (p_hat - p)^2 = z^2 p (1 - p) / n, a quadratic in p.
    z = norm.ppf(1 - (1 - confidence) / 2)
    p_hat = k / n
    a = 1 + z**2 / n
    b = -(2 * p_hat + z**2 / n)
    c = p_hat**2
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize(("k", "n"), [(0, 7), (3, 7), (7, 7), (450, 500), (1, 1000)])
def test_wilson_is_the_root_of_the_score_equation(k: int, n: int, confidence: float) -> None:
    lo, hi = wilson_interval(k, n, confidence)
    exp_lo, exp_hi = _wilson_by_hand(k, n, confidence)
    assert lo == pytest.approx(max(0.0, exp_lo), abs=1e-12)
    assert hi == pytest.approx(min(1.0, exp_hi), abs=1e-12)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


def test_wilson_edges_and_bad_input() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    wide, narrow = wilson_interval(5, 10, 0.99), wilson_interval(5, 10, 0.8)
    assert wide[0] < narrow[0] and narrow[1] < wide[1]
    with pytest.raises(DeepCloakError, match=r"correct \(11\) cannot exceed"):
        wilson_interval(11, 10)
    with pytest.raises(DeepCloakError, match="non-negative integer"):
        wilson_interval(-1, 10)
    with pytest.raises(DeepCloakError, match="non-negative integer"):
        wilson_interval(2.5, 10)  # type: ignore[arg-type]
    with pytest.raises(DeepCloakError, match="confidence must be in"):
        wilson_interval(5, 10, 95)


def _paired(a_only: int, b_only: int, both: int, neither: int) -> tuple[torch.Tensor, torch.Tensor]:
    a = [True] * a_only + [False] * b_only + [True] * both + [False] * neither
    b = [False] * a_only + [True] * b_only + [True] * both + [False] * neither
    return torch.tensor(a), torch.tensor(b)


def test_mcnemar_against_hand_computed_binomial_tails() -> None:
    # 8 vs 2 discordant pairs: P(X >= 8 | Bin(10, 1/2)) = (45 + 10 + 1) / 1024.
    a, b = _paired(8, 2, both=30, neither=5)
    result = mcnemar_exact(a, b)
    assert (result.a_only, result.b_only, result.n) == (8, 2, 45)
    assert result.p_greater == pytest.approx(56 / 1024)
    assert result.p_two_sided == pytest.approx(112 / 1024)
    assert result.p_less == pytest.approx(1 - 11 / 1024)  # P(X <= 8) = 1 - P(X >= 9)
    flipped = mcnemar_exact(b, a)
    assert flipped.p_less == pytest.approx(result.p_greater)
    assert flipped.p_two_sided == pytest.approx(result.p_two_sided)


@pytest.mark.parametrize(("a_only", "b_only"), [(0, 5), (3, 3), (12, 4), (1, 20)])
def test_mcnemar_one_sided_is_a_binomial_tail_sum(a_only: int, b_only: int) -> None:
    k = a_only + b_only
    tail = sum(math.comb(k, i) for i in range(a_only, k + 1)) / 2**k
    a, b = _paired(a_only, b_only, both=4, neither=4)
    assert mcnemar_exact(a, b).p_greater == pytest.approx(tail)


def test_mcnemar_no_discordant_pairs_and_bad_input() -> None:
    a, b = _paired(0, 0, both=6, neither=3)
    result = mcnemar_exact(a, b)
    assert (result.p_two_sided, result.p_greater, result.p_less) == (1.0, 1.0, 1.0)
    assert mcnemar_exact(torch.tensor([1, 0, 1]), torch.tensor([0, 0, 1])).a_only == 1
    with pytest.raises(DeepCloakError, match="same samples"):
        mcnemar_exact(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool))
    with pytest.raises(DeepCloakError, match="booleans"):
        mcnemar_exact(torch.tensor([0.5, 1.0]), torch.tensor([True, False]))
    with pytest.raises(DeepCloakError, match="1-D"):
        mcnemar_exact(torch.ones(2, 2, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool))


# The two Wilson implementations as they were before deepcloak.stats merged them (verbatim
# arithmetic): the one formula must give every figure bit for bit as before.
def _old_interval(correct: int, n: int, confidence: float) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = correct / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if correct == 0 else max(0.0, center - half)
    hi = 1.0 if correct == n else min(1.0, center + half)
    return lo, hi


def _old_bounds(successes: torch.Tensor, n: int, z: float) -> tuple[torch.Tensor, torch.Tensor]:
    p = successes.double() / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (center - half).clamp(min=0.0), (center + half).clamp(max=1.0)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 29, 100, 263, 1000, 10000])
@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_one_wilson_gives_the_old_figures_exactly(n: int, confidence: float) -> None:
    counts = range(n + 1) if n <= 1000 else [0, 1, 2, 17, n // 3, n // 2, n - 1, n]
    for k in counts:
        assert wilson_interval(k, n, confidence) == _old_interval(k, n, confidence)
    if n:
        z = NormalDist().inv_cdf(confidence)
        ks = torch.tensor(list(counts))
        for new, old in zip(wilson_bounds(ks, n, z), _old_bounds(ks, n, z), strict=True):
            assert new.dtype == torch.float64 and torch.equal(new, old)


@pytest.mark.parametrize(
    ("old", "names"),
    [
        (
            "deepcloak.cloak.budget",
            ["PairedDrop", "newcombe_upper", "paired_drop", "wilson_bounds"],
        ),
        (
            "deepcloak.evaluation.stats",
            ["McNemarResult", "mcnemar_exact", "mean_interval", "wilson_interval"],
        ),
    ],
)
def test_moved_statistics_still_import_from_their_old_modules_with_a_warning(
    old: str, names: list[str]
) -> None:
    module = importlib.import_module(old)
    for name in names:
        with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to deepcloak\.stats"):
            moved = getattr(module, name)
        assert moved is getattr(deepcloak.stats, name)
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018
