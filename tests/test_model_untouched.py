"""The caller's model leaves every API call as it came in: parameters and buffers byte-identical,
``requires_grad`` and ``.grad`` as they were, and every module's own train/eval mode restored.

The model trains (train mode) with a frozen, eval-mode feature extractor inside, batch norms
and dropout: a call that runs ``model.train(was_training)`` or forgets eval mode is caught.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deepcloak
from deepcloak.attacks import FGSM, PGD, ArtPGD
from deepcloak.models.fits import check_model_fits_data


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.flatten(self.pool(self.block(self.frozen(x))), 1)))


def _mixed() -> nn.Module:
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():
        model(torch.rand(16, 1, 8, 8))  # non-trivial batch-norm statistics
    model.train()
    model.frozen.eval()
    model.frozen.requires_grad_(False)
    return model


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {
            k: (v.dtype, v.detach().numpy().tobytes()) for k, v in model.state_dict().items()
        },
        "modes": {n: m.training for n, m in model.named_modules()},
        "grad": {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()},
        "ids": [id(p) for p in model.parameters()],
    }


def _data() -> tuple[TensorDataset, DataLoader]:
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(
        torch.rand(24, 1, 8, 8, generator=gen), torch.randint(0, 3, (24,), generator=gen)
    )
    return data, DataLoader(data, batch_size=8)


def _fit(model: nn.Module) -> None:
    deepcloak.fit(model, _data()[1], attack=FGSM(eps=0.1))


def _attacks(model: nn.Module) -> None:
    x, y = _data()[0].tensors
    for attack in (FGSM(eps=0.1), PGD(eps=0.1, steps=2), ArtPGD(eps=0.1, steps=2)):
        attack(model, x, y)


def _sweep(model: nn.Module) -> None:
    loader = _data()[1]
    cloak = deepcloak.fit(model, loader, attack=FGSM(eps=0.1))
    deepcloak.graybox_sweep(
        model, cloak, loader, ratios=(0.0, 0.5), n_random=1,
        whitebox_attacks=[FGSM(eps=0.1)], whitebox_ratios=(0.5,),
    )  # fmt: skip


def _harden(model: nn.Module) -> None:
    data = _data()[0]
    config = deepcloak.HardenConfig(
        ratio=0.5, ratios=(0.0, 0.5), whitebox_ratios=(0.5,), n_random=1, batch_size=8
    )
    deepcloak.harden(model, data, data, config)


def _fits_data(model: nn.Module) -> None:
    check_model_fits_data(model, _data()[0])


@pytest.mark.parametrize("call", [_fit, _attacks, _sweep, _harden, _fits_data])
def test_the_callers_model_comes_back_as_it_went_in(call: Callable[[nn.Module], None]) -> None:
    model = _mixed()
    before = _snapshot(model)
    call(model)
    assert _snapshot(model) == before
