"""The search's documented rules, each pushed to the case where a small slip would show.

Issue 15: with these rules broken one at a time (ties toward the larger mask, the fit budget off
by one sample, a searched cloak's removal order reversed), every other test still passed.
"""

from __future__ import annotations

import pytest
import torch

from deepcloak.cloak.head import HeadFeatures
from deepcloak.cloak.search import (
    choose_on_validation,
    pick_within_budget,
    search_cached,
)
from deepcloak.cloak.selectors import create_selector
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.stats import paired_drop
from tests.cloak.test_search import toy_head

LAYER = LayerRef("fc", Side.INPUT)


def test_a_tie_goes_to_the_smaller_mask() -> None:
    fits = paired_drop(torch.ones(10, dtype=torch.bool), torch.ones(10, dtype=torch.bool))
    assert pick_within_budget([0.5, 0.7, 0.7, 0.6], [fits] * 4, 1.0) == 1
    assert pick_within_budget([0.5, 0.5, 0.5], [fits] * 3, 1.0) == 0  # no gain: no mask


def test_choose_on_validation_breaks_a_tie_toward_fewer_removed_features() -> None:
    # Feature 2 has zero weight: removing it after feature 0 changes nothing, a perfect tie.
    h = _budget_head(k=2, n=10)
    index, candidates = choose_on_validation([(0,), (0, 2)], h, clean_budget=1.0)
    assert candidates[1].adv_accuracy == candidates[2].adv_accuracy > candidates[0].adv_accuracy
    assert index == 1


def _budget_head(k: int, n: int) -> HeadFeatures:
    """``n`` samples where removing feature 0 turns every wrong adversarial sample of class 0
    right and costs exactly the ``k`` clean samples of class 1 (feature 2 has zero weight).

    Class 1's logit weighs feature 0 twice as much as class 0's, so a class-0 margin is
    ``f1 - f0`` (``f1`` without feature 0) and a class-1 margin ``f0 - f1`` (``-f1``).
    """
    weight = torch.tensor([[1.0, 1.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1] * k + [0] * (n - k))
    clean = torch.tensor([[2.0, 1.0, 1.0]] * k + [[0.5, 1.0, 1.0]] * (n - k), dtype=torch.float64)
    adv = torch.tensor([[0.0, 1.0, 1.0]] * k + [[2.0, 1.0, 1.0]] * (n - k), dtype=torch.float64)
    return HeadFeatures(clean, adv, labels, weight, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize(("k", "n"), [(2, 10), (29, 100), (7, 10)])  # 0.29 * 100 < 29 in floats
@pytest.mark.parametrize("selector", ["greedy", "beam"])
def test_the_fit_budget_allows_exactly_its_samples(k: int, n: int, selector: str) -> None:
    h = _budget_head(k, n)
    settings = {"clean_weight": 0.0, "width": 2} if selector == "beam" else {}
    chosen = create_selector(selector, **settings)
    # A budget of exactly k samples allows the removal that costs k; one sample less does not.
    assert chosen(h, fit_budget=k / n, max_removed=3)[0] == (0,)
    assert (0,) not in chosen(h, fit_budget=(k - 1) / n, max_removed=3)
    assert (0,) not in chosen(h, fit_budget=k / n - 1e-6, max_removed=3)


def test_a_searched_cloak_ranks_its_removed_features_in_removal_order() -> None:
    fit = toy_head(300, 12, 4, seed=6)
    result = search_cached(fit, fit, LAYER, selector="greedy", clean_budget=0.5, fit_budget=0.5)
    assert result.n_removed >= 3  # long enough for the order to matter
    cloak, ratio = result.to_cloak()
    n = fit.n_features
    assert [int(j) for j in cloak.ranking[: result.n_removed]] == list(result.removed)
    # Each smaller ratio of the cloak is the path's entry of that size (the sweep's rows).
    for size, entry in enumerate(result.path[: result.n_removed], start=1):
        removed = (cloak.mask(size / n).mask.flatten() == 0).nonzero().flatten().tolist()
        assert set(removed) == set(entry) and result.removed[:size] == entry, size
    assert ratio == result.n_removed / n
