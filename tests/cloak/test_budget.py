"""The clean budget's bound on a paired accuracy drop, checked where the truth is known."""

from __future__ import annotations

from statistics import NormalDist

import pytest
import torch

from deepcloak.cloak.search import pick_within_budget
from deepcloak.errors import DeepCloakError
from deepcloak.stats import newcombe_upper, paired_drop, wilson_bounds, wilson_interval

Z95 = NormalDist().inv_cdf(0.95)


def test_wilson_bounds_match_the_reported_interval() -> None:
    for correct, n in [(0, 10), (81, 263), (50, 50), (3, 1000)]:
        lo, hi = wilson_bounds(torch.tensor(correct), n, Z95)
        ref = wilson_interval(correct, n, confidence=0.90)  # two-sided 90% = one-sided 95%
        assert lo.item() == pytest.approx(ref[0], abs=1e-12)
        assert hi.item() == pytest.approx(ref[1], abs=1e-12)


def draw_counts(
    n: int, p_lost: float, p_gained: float, p_wrong: float, draws: int, seed: int
) -> tuple[torch.Tensor, ...]:
    """Multinomial 2x2 tables (a, b, c, d) of ``draws`` independent validation sets."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.tensor([1 - p_lost - p_gained - p_wrong, p_lost, p_gained, p_wrong])
    cats = torch.multinomial(probs.expand(draws, 4), n, replacement=True, generator=gen)
    counts = torch.stack([(cats == i).sum(1) for i in range(4)])
    return tuple(counts)


@pytest.mark.parametrize(
    ("n", "p_lost", "p_gained"),
    [(500, 0.01, 0.0), (2000, 0.012, 0.003), (5000, 0.008, 0.002), (300, 0.03, 0.02)],
)
def test_upper_bound_covers_the_true_drop(n: int, p_lost: float, p_gained: float) -> None:
    a, b, c, d = draw_counts(n, p_lost, p_gained, 0.08, draws=4000, seed=n)
    true_drop = p_lost - p_gained
    upper = newcombe_upper(a, b, c, d, Z95)
    coverage = (upper >= true_drop).double().mean().item()
    naive = ((b - c).double() / n >= true_drop).double().mean().item()
    assert 0.93 <= coverage <= 0.995, coverage  # nominal 0.95, neither broken nor vacuous
    assert naive < 0.7  # the point estimate alone exceeds the truth about half the time


def test_budget_rule_holds_on_new_data_where_the_naive_rule_does_not() -> None:
    """Nested masks whose true drop grows 0.2 points per step; adversarial accuracy grows too."""
    gen = torch.Generator().manual_seed(0)
    n, draws, budget = 2000, 400, 0.01
    true_drops = [0.002 * k for k in range(9)]  # the 5th mask sits exactly on the budget
    held = naive_held = 0
    for _ in range(draws):
        u = torch.rand(n, generator=gen)
        before = torch.rand(n, generator=gen) > 0.08
        drops = [paired_drop(before, before & ~(u < t)) for t in true_drops]
        adv = [0.2 + 0.01 * k for k in range(9)]
        held += true_drops[pick_within_budget(adv, drops, budget)] <= budget + 1e-12
        naive = max(k for k in range(9) if drops[k].drop <= budget)
        naive_held += true_drops[naive] <= budget + 1e-12
    assert held / draws >= 0.95
    assert naive_held / draws < 0.85


def test_paired_drop_counts_and_errors() -> None:
    before = torch.tensor([True, True, False, True, False])
    after = torch.tensor([True, False, True, False, False])
    drop = paired_drop(before, after)
    assert (drop.n, drop.lost, drop.gained) == (5, 2, 1)
    assert drop.drop == pytest.approx(0.2)
    assert drop.upper > drop.drop
    assert paired_drop(before, before).upper > 0  # no evidence of zero drop from 5 samples
    with pytest.raises(DeepCloakError, match="boolean"):
        paired_drop(before.int(), after)
    with pytest.raises(DeepCloakError, match="one length"):
        paired_drop(before, after[:3])
    with pytest.raises(DeepCloakError, match="confidence"):
        paired_drop(before, after, confidence=0.3)
