from __future__ import annotations

import pytest
import torch
from torch import nn

from deepcloak.cloak.taps import LayerRef, Side, resolve_layer, tap
from deepcloak.errors import LayerError
from tests.conftest import DEFAULT_LAYERS


def test_default_layer_is_the_input_of_the_last_linear(model: nn.Module, model_name: str) -> None:
    ref = resolve_layer(model)
    assert ref == LayerRef(DEFAULT_LAYERS[model_name], Side.INPUT)
    assert resolve_layer(model, example=torch.rand(1, 1, 8, 8)) == ref


def test_default_layer_follows_execution_order_when_given_an_example() -> None:
    class HeadFirst(nn.Module):  # registers fc before the hidden Linear that runs first
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 2)
            self.hidden = nn.Linear(64, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.hidden(x.flatten(1)))

    m = HeadFirst()
    assert resolve_layer(m).name == "hidden"  # registration order alone is fooled
    assert resolve_layer(m, example=torch.rand(1, 1, 8, 8)).name == "fc"


def test_timm_style_get_classifier_is_honoured() -> None:
    class TimmLike(nn.Sequential):
        def get_classifier(self) -> nn.Module:
            return self[1]

    m = TimmLike(nn.Linear(4, 3), nn.Linear(3, 2), nn.Linear(2, 2))
    assert resolve_layer(m) == LayerRef("1", Side.INPUT)


def test_named_layer_side_defaults(model: nn.Module, model_name: str) -> None:
    linear = DEFAULT_LAYERS[model_name]
    assert resolve_layer(model, linear).side is Side.INPUT
    assert resolve_layer(model, linear, "output").side is Side.OUTPUT
    conv_name = next(n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Flatten)))
    assert resolve_layer(model, conv_name).side is Side.OUTPUT


def test_unknown_layer_lists_candidates(model: nn.Module) -> None:
    with pytest.raises(LayerError, match=r"no layer named 'nope'.*candidates:"):
        resolve_layer(model, "nope")


def test_model_without_linear_asks_for_a_layer() -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(LayerError, match="name the layer"):
        resolve_layer(m)


def test_tap_captures_the_input_of_fc(model: nn.Module, model_name: str) -> None:
    name = DEFAULT_LAYERS[model_name]
    seen: list[torch.Tensor] = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    x = torch.rand(3, 1, 8, 8)
    with tap(model, LayerRef(name, Side.INPUT)) as t:
        model(x)
        feats = t.take()
    h.remove()
    torch.testing.assert_close(feats, seen[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_models_get_a_clear_error() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)))
    with pytest.raises(LayerError, match="TorchScript"):
        resolve_layer(scripted)
