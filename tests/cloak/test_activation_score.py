from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcloak.cloak.fit import fit
from deepcloak.cloak.scores import SCORERS, ActivationScore, create_scorer


def test_minus_mean_absolute_activation() -> None:
    clean = torch.tensor([[1.0, -4.0, 0.0, 2.0], [3.0, 0.0, 0.0, -2.0]])
    scorer = create_scorer("activation")
    assert isinstance(scorer, ActivationScore) and not scorer.needs_adversarial
    scorer.update(clean[:1], clean[:1])
    scorer.update(clean[1:], clean[1:])
    expected = -clean.abs().double().mean(0)  # [-2, -2, 0, -2]
    torch.testing.assert_close(scorer.compute(), expected)
    assert "activation" in SCORERS


def test_the_least_active_features_are_removed_first(loader: DataLoader) -> None:
    class Boom:  # the fit must not attack: activation pruning needs no adversarial samples
        def __call__(self, *args: object) -> torch.Tensor:
            raise AssertionError("attacked")

        def spec(self) -> dict[str, str]:
            return {"name": "boom"}

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 4)).eval()
    cloak = fit(model, loader, attack=Boom(), score="activation")  # type: ignore[arg-type]
    feats = torch.cat([model[:3](b[0]) for b in loader]).detach()  # (N, 10)
    mean_abs = feats.abs().double().mean(0)
    torch.testing.assert_close(cloak.scores, -mean_abs)
    removed = (~cloak.mask(0.3).mask.bool()).nonzero().flatten()
    kept_min = mean_abs[cloak.mask(0.3).mask.bool()].min()
    assert len(removed) == 3 and bool((mean_abs[removed] <= kept_min).all())


@pytest.mark.parametrize("shape", [(5,), (2, 3, 3)])
def test_any_feature_shape(shape: tuple[int, ...]) -> None:
    scorer = ActivationScore()
    f = torch.randn(7, *shape)
    scorer.update(f, f)
    assert scorer.compute().shape == shape
