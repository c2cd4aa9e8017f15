from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcloak.attacks.native import PGD
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.baselines import feature_squeezing, spatial_smoothing
from tests.robust_toys import quadrant_data, trained_mlp


def _median_filter_2x2(x: torch.Tensor) -> torch.Tensor:
    """Brute force: scipy's median filter with a 2x2 window is over rows i-1..i, columns j-1..j,
    with the border reflected (a sample repeated), and for an even count takes the upper one."""
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 0), (1, 0)), mode="symmetric")
    out = np.empty_like(x.numpy())
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            window = np.sort(xp[:, :, i : i + 2, j : j + 2].reshape(*x.shape[:2], 4), axis=-1)
            out[:, :, i, j] = window[..., 2]
    return torch.from_numpy(out)


def test_feature_squeezing_rounds_to_the_bit_depth() -> None:
    model = trained_mlp()
    x, _ = quadrant_data(8, seed=3)
    defended = feature_squeezing(model, bit_depth=3)
    expected = torch.round(x * 7) / 7  # 3 bits: 8 levels in [0, 1]
    with torch.no_grad():
        torch.testing.assert_close(defended(x), model(expected), rtol=1e-5, atol=1e-5)
    assert defended.spec()["bit_depth"] == 3 and "BPDA" in defended.spec()["gradient"]


def test_spatial_smoothing_is_a_median_filter() -> None:
    model = nn.Identity()
    x, _ = quadrant_data(3, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(
            spatial_smoothing(model, window_size=2)(x), _median_filter_2x2(x)
        )


def test_bpda_passes_the_gradient_straight_through() -> None:
    model = trained_mlp()
    x, y = quadrant_data(6, seed=5)
    defended = feature_squeezing(model, bit_depth=4)
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(defended(x_req), y, reduction="sum"), x_req)
    # The identity estimate: the gradient of the model at the squeezed point.
    z = (torch.round(x * 15) / 15).requires_grad_(True)
    (expected,) = torch.autograd.grad(F.cross_entropy(model(z), y, reduction="sum"), z)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    assert float(grad.abs().sum()) > 0  # not masked: gradient attacks can work


def test_attacks_run_through_the_preprocessors() -> None:
    model = trained_mlp()
    x, y = quadrant_data(40, seed=6)
    for defended in (feature_squeezing(model), spatial_smoothing(model, window_size=3)):
        x_adv = PGD(eps=0.1, steps=5)(defended, x, y)
        with torch.no_grad():
            clean = int((defended(x).argmax(-1) == y).sum())
            adv = int((defended(x_adv).argmax(-1) == y).sum())
        assert adv < clean


def test_bad_settings() -> None:
    model = trained_mlp()
    with pytest.raises(DeepCloakError, match=r"bit_depth must be an integer in 1\.\.64"):
        feature_squeezing(model, bit_depth=0)
    with pytest.raises(DeepCloakError, match="window_size must be a positive integer"):
        spatial_smoothing(model, window_size=0)
