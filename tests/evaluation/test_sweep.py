from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcloak.attacks.native import FGSM
from deepcloak.cloak.fit import fit
from deepcloak.cloak.mask import find_masks, keep_mask
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.feature_cache import cache_features, masked_predictions
from deepcloak.evaluation.sweep import graybox_sweep, whitebox_accuracy

RATIOS = (0.0, 0.1, 0.25, 0.5, 0.75)


def _full_forward_accuracy(
    model: nn.Module,
    cloak,
    ratio: float,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
) -> tuple[float, float]:
    cloaked = cloak.apply(copy.deepcopy(model), ratio)
    with torch.no_grad():
        return (
            (cloaked(x).argmax(-1) == y).double().mean().item(),
            (cloaked(x_adv).argmax(-1) == y).double().mean().item(),
        )


def test_cached_sweep_equals_a_full_forward_pass(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], loader: DataLoader
) -> None:
    attack = FGSM(eps=0.1)
    cloak = fit(model, loader, attack=attack)
    result = graybox_sweep(model, cloak, loader, ratios=RATIOS, n_random=2)
    assert result.used_cached_head
    x, y = data
    x_adv = torch.cat([attack(model, x[i : i + 16], y[i : i + 16]) for i in range(0, 40, 16)])
    for row in result.rows:
        clean, gray = _full_forward_accuracy(model, cloak, row.ratio, x, x_adv, y)
        assert row.clean_accuracy == pytest.approx(clean)
        assert row.graybox_accuracy == pytest.approx(gray)
    assert not find_masks(model)  # the model is left unmasked


def test_cached_logits_equal_the_cloaked_model_logits(model: nn.Module, loader: DataLoader) -> None:
    cloak = fit(model, loader, attack=FGSM(eps=0.1))
    cache = cache_features(model, loader, cloak.layer, FGSM(eps=0.1))
    x = torch.cat([b[0] for b in loader])
    for ratio in RATIOS:
        keep = keep_mask(cloak.ranking, ratio, cloak.feature_shape)
        with torch.no_grad():
            expected = cloak.apply(copy.deepcopy(model), ratio)(x)
            got = cache.head(cache.clean * keep)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_sweep_falls_back_to_full_forward_when_no_head_separates() -> None:
    class ScaledLogits(nn.Module):  # does something after the final Linear
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU())
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * self.fc(self.body(x)) + 1.0

    torch.manual_seed(0)
    model = ScaledLogits().eval()
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 3, (24,))
    loader = DataLoader(list(zip(x, y, strict=True)), batch_size=8)
    attack = FGSM(eps=0.2)
    cloak = fit(model, loader, attack=attack)
    cache = cache_features(model, loader, cloak.layer, attack)
    assert cache.head is None and cache.inputs is not None
    result = graybox_sweep(model, cloak, loader, ratios=(0.0, 0.5), n_random=0)
    x_adv = torch.cat([attack(model, x[i : i + 8], y[i : i + 8]) for i in range(0, 24, 8)])
    for row in result.rows:
        clean, gray = _full_forward_accuracy(model, cloak, row.ratio, x, x_adv, y)
        assert (row.clean_accuracy, row.graybox_accuracy) == pytest.approx((clean, gray))
        assert row.random_graybox_accuracy is None
    preds = masked_predictions(model, cache, keep_mask(cloak.ranking, 0.5, cloak.feature_shape))
    assert preds[0].shape == (24,)


def test_random_baseline_and_whitebox(model: nn.Module, loader: DataLoader) -> None:
    cloak = fit(model, loader, attack=FGSM(eps=0.1))
    result = graybox_sweep(
        model,
        cloak,
        loader,
        ratios=RATIOS,
        n_random=3,
        whitebox_attacks=[FGSM(eps=0.1)],
        whitebox_ratios=(0.0, 0.5),
    )
    first = result.rows[0]
    # At ratio 0 every mask is the identity: all columns agree.
    assert first.random_graybox_accuracy == pytest.approx(first.graybox_accuracy)
    assert first.random_graybox_std == pytest.approx(0.0)
    wb = whitebox_accuracy(model, cloak, loader, FGSM(eps=0.1), [0.5])
    assert result.rows[3].whitebox_accuracy == pytest.approx(wb[0.5])
    assert result.rows[1].whitebox_accuracy is None
    doc = result.to_json()
    assert {r["threat_model"] for r in doc["results"]} == {"clean", "gray-box", "white-box"}
    assert {r["defense"] for r in doc["results"]} == {"cloaked", "random-mask"}


def test_sweep_bad_input(model: nn.Module, loader: DataLoader) -> None:
    cloak = fit(model, loader, attack=FGSM(eps=0.1))
    with pytest.raises(DeepCloakError, match="ratio"):
        graybox_sweep(model, cloak, loader, ratios=(0.0, 1.2))
    with pytest.raises(DeepCloakError, match="at least one ratio"):
        graybox_sweep(model, cloak, loader, ratios=())
    with pytest.raises(DeepCloakError, match="no samples"):
        graybox_sweep(model, cloak, [], ratios=(0.0,))
