from __future__ import annotations

import pytest
import torch

from deepcloak.cloak.mask import keep_mask, rank_features, removal_count
from deepcloak.cloak.scores import DeepCloakScore, RandomScore, create_scorer, deepcloak_score
from deepcloak.errors import DeepCloakError


def test_streaming_score_equals_one_shot_and_merges_across_shards() -> None:
    gen = torch.Generator().manual_seed(0)
    clean, adv = torch.randn(30, 2, 3, generator=gen), torch.randn(30, 2, 3, generator=gen)
    whole = deepcloak_score(clean, adv)
    a, b = DeepCloakScore(), DeepCloakScore()
    for i in range(0, 20, 7):
        a.update(clean[i : min(i + 7, 20)], adv[i : min(i + 7, 20)])
    b.update(clean[20:], adv[20:])
    a.merge(b)
    torch.testing.assert_close(a.compute(), whole)
    assert a.count == 30 and whole.shape == (2, 3) and whole.dtype == torch.float64


def test_nan_features_are_refused() -> None:
    bad = torch.zeros(2, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(DeepCloakError, match="1 NaN or inf"):
        DeepCloakScore().update(torch.zeros(2, 3), bad)


def test_compute_without_data_is_an_error() -> None:
    with pytest.raises(DeepCloakError, match="empty"):
        DeepCloakScore().compute()


def test_random_score_is_seeded() -> None:
    def scores(seed: int) -> torch.Tensor:
        s = RandomScore(seed=seed)
        s.update(torch.zeros(2, 50), torch.zeros(2, 50))
        return s.compute()

    torch.testing.assert_close(scores(3), scores(3))
    assert not torch.equal(scores(3), scores(4))
    assert isinstance(create_scorer("random", seed=1), RandomScore)
    with pytest.raises(DeepCloakError, match="unknown scorer"):
        create_scorer("magic")


def test_ranking_breaks_ties_by_index() -> None:
    scores = torch.tensor([1.0, 3.0, 3.0, 0.0, 3.0, 1.0])
    assert rank_features(scores).tolist() == [1, 2, 4, 0, 5, 3]


@pytest.mark.parametrize(
    ("ratio", "n", "expected"),
    [(0.0, 100, 0), (0.01, 100, 1), (0.29, 100, 29), (0.01, 50, 1), (0.004, 100, 0), (0.99, 7, 7)],
)
def test_removal_count_rounds_half_up(ratio: float, n: int, expected: int) -> None:
    assert removal_count(ratio, n) == expected


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("inf")])
def test_ratio_outside_unit_interval_is_refused(ratio: float) -> None:
    with pytest.raises(DeepCloakError, match="ratio"):
        removal_count(ratio, 10)


def test_keep_mask_removes_exactly_the_top_k() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.7]])
    keep = keep_mask(rank_features(scores), 0.5, (2, 2))
    assert keep.tolist() == [[True, False], [True, False]]
