"""Many masks at once: the batched products give exactly the per-mask loop's predictions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks.native import FGSM
from deepcloak.cloak.fit import Cloak, fit
from deepcloak.cloak.mask import keep_mask, masked, removal_count
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.evaluation import mask_grid
from deepcloak.evaluation.mask_grid import MaskGrid, head_outcomes, linear_of, model_outcomes
from deepcloak.evaluation.sweep import graybox_sweep, random_rankings
from tests.conftest import tiny_sequential

N_FEATURES, CLASSES = 24, 7
RATIOS = (0.0, 0.01, 0.1, 0.33, 0.5, 0.9, 0.99)


def _rankings(n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return [torch.randperm(N_FEATURES, generator=gen) for _ in range(n)]


def _grid(rankings: list[torch.Tensor], shape: tuple[int, ...] = (N_FEATURES,)) -> MaskGrid:
    counts = [removal_count(r, N_FEATURES) for r in RATIOS]
    return MaskGrid.build(rankings, counts, shape, torch.device("cpu"))


def _loop(head: nn.Module, feats: torch.Tensor, rankings: list[torch.Tensor]) -> torch.Tensor:
    """The loop the grid replaces: one head call per (ranking, ratio), with keep_mask's masks."""
    shape = tuple(feats.shape[1:])
    with torch.no_grad():
        return torch.stack(
            [
                head(feats * keep_mask(r, ratio, shape)).argmax(-1)
                for r in rankings
                for ratio in RATIOS
            ]
        )


def test_grid_masks_are_keep_mask_of_each_ranking_and_ratio() -> None:
    rankings = _rankings()
    grid = _grid(rankings)
    expected = torch.stack(
        [keep_mask(r, ratio, (N_FEATURES,)) for r in rankings for ratio in RATIOS]
    )
    assert len(grid) == len(rankings) * len(RATIOS)
    assert torch.equal(grid.keeps(0, len(grid)), expected)
    assert torch.equal(grid.keeps(5, 9), expected[5:9])


def test_a_grid_of_one_keep_is_that_keep() -> None:
    keep = keep_mask(_rankings(1)[0], 0.4, (2, 3, 4))
    grid = MaskGrid.of_keep(keep, torch.device("cpu"))
    assert len(grid) == 1 and torch.equal(grid.keeps(0, 1).view(2, 3, 4), keep)


def _linear_heads() -> list[nn.Module]:
    torch.manual_seed(0)
    fc = nn.Linear(N_FEATURES, CLASSES)
    no_bias = nn.Linear(N_FEATURES, CLASSES, bias=False)
    return [fc, nn.Sequential(nn.Flatten(), fc), no_bias]


@pytest.mark.parametrize("head", _linear_heads(), ids=["linear", "flatten-linear", "no-bias"])
def test_linear_head_product_equals_the_per_mask_loop(
    head: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert linear_of(head) is not None
    monkeypatch.setattr(mask_grid, "BLOCK", 2000)  # several chunks of masks
    monkeypatch.setattr(mask_grid, "SAMPLES", 64)  # and of samples
    feats = torch.randn(150, N_FEATURES, generator=torch.Generator().manual_seed(1)).relu()
    labels = torch.randint(0, CLASSES, (150,), generator=torch.Generator().manual_seed(2))
    rankings = _rankings()
    expected = _loop(head, feats, rankings)
    assert torch.equal(head_outcomes(head, feats, _grid(rankings)), expected)
    correct = head_outcomes(head, feats, _grid(rankings), labels)
    assert correct.dtype == torch.bool and torch.equal(correct, expected == labels)


def test_nonlinear_head_falls_back_to_the_loop_with_the_same_predictions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(N_FEATURES, 9), nn.ReLU(), nn.Linear(9, CLASSES))
    assert linear_of(head) is None
    monkeypatch.setattr(mask_grid, "BLOCK", 100)
    monkeypatch.setattr(mask_grid, "SAMPLES", 50)
    feats = torch.randn(120, 2, 3, 4, generator=torch.Generator().manual_seed(1))  # a feature map
    rankings = _rankings()
    got = head_outcomes(head, feats, _grid(rankings, (2, 3, 4)))
    assert torch.equal(got, _loop(head, feats, rankings))


def test_linear_subclass_with_its_own_forward_is_not_taken_for_a_linear() -> None:
    class Scaled(nn.Linear):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    assert linear_of(Scaled(3, 2)) is None
    assert linear_of(nn.Sequential(nn.Flatten(start_dim=2), nn.Linear(3, 2))) is None


def test_whole_model_path_equals_masks_inserted_one_by_one() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, N_FEATURES), nn.ReLU(), nn.Linear(N_FEATURES, CLASSES)
    ).eval()
    ref = LayerRef("2", Side.OUTPUT)
    x = torch.rand(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    rankings = _rankings(2)
    expected = []
    with torch.no_grad():
        for r in rankings:
            for ratio in RATIOS:
                with masked(model, ref, keep_mask(r, ratio, (N_FEATURES,))):
                    expected.append(model(x).argmax(-1))
    got = model_outcomes(model, ref, x, _grid(rankings))
    assert torch.equal(got, torch.stack(expected))
    assert not any(type(m).__name__ == "MaskedLayer" for m in model.modules())


@pytest.mark.parametrize(
    ("layer", "side", "head"),
    [(None, None, True), ("1", "output", True), ("1", "input", False)],
    ids=["linear-head", "relu-linear-head", "no-head"],
)
def test_sweep_masks_equal_each_mask_inserted_in_the_model(
    layer: str | None, side: str | None, head: bool
) -> None:
    """Every (ratio, mask) result of the sweep against a masked forward of the whole model."""
    torch.manual_seed(0)
    model = tiny_sequential().eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(40, 1, 8, 8, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    data = DataLoader(TensorDataset(x, y), batch_size=16)
    attack = FGSM(eps=0.1)
    cloak = fit(model, data, attack=attack, layer=layer, side=side)
    ratios = (0.0, 0.1, 0.3, 0.6)
    result = graybox_sweep(model, cloak, data, attack=attack, ratios=ratios, n_random=3, seed=4)
    assert result.used_cached_head is head
    x_adv = torch.cat([attack(model, xb, yb) for xb, yb in data])
    rankings = [cloak.ranking, *random_rankings(cloak.n_features, 3, 4)]
    for row in result.rows:
        assert row.random_clean is not None and row.random_graybox is not None
        clean = torch.cat([row.clean.per_mask, row.random_clean.per_mask])
        gray = torch.cat([row.graybox.per_mask, row.random_graybox.per_mask])
        for i, ranking in enumerate(rankings):
            with torch.no_grad(), masked(model, cloak.layer, cloak_keep(cloak, ranking, row.ratio)):
                assert torch.equal(clean[i], model(x).argmax(-1) == y)
                assert torch.equal(gray[i], model(x_adv).argmax(-1) == y)


def cloak_keep(cloak: Cloak, ranking: torch.Tensor, ratio: float) -> torch.Tensor:
    return keep_mask(ranking, ratio, cloak.feature_shape)
