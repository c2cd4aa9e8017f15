from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks import FGSM
from deepcloak.cloak.fit import fit
from deepcloak.cloak.taps import LayerRef, Side, reaches_logits, resolve_layer, tap
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


class AuxAfterMain(nn.Module):
    """An auxiliary head that runs after the main one; forward returns only the main logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU())
        self.fc = nn.Linear(10, 3)
        self.aux_head = nn.Linear(10, 3)
        self.aux_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        logits = self.fc(h) / 2.0  # scaled after the head: "is the output" alone would miss it
        self.aux_logits = self.aux_head(h)  # runs last, feeds nothing the caller gets
        return logits


def test_default_layer_is_the_linear_that_produces_the_logits() -> None:
    torch.manual_seed(0)
    model, x = AuxAfterMain().eval(), torch.rand(6, 1, 8, 8)
    ref = resolve_layer(model, example=x[:1])
    assert ref == LayerRef("fc", Side.INPUT)
    # Brute force: zeroing the features at the chosen layer changes the logits; at the aux
    # head's input (through a mask on aux_head only) it would not.
    with torch.no_grad():
        base = model(x)
        h = model.body(x)
        torch.testing.assert_close(base, model.fc(h) / 2.0)
        assert not torch.allclose(model.fc(torch.zeros_like(h)) / 2.0, base)
    assert reaches_logits(model, ref, x[:1])
    assert not reaches_logits(model, LayerRef("aux_head", Side.INPUT), x[:1])


def test_a_named_layer_that_does_not_reach_the_logits_warns() -> None:
    torch.manual_seed(0)
    model = AuxAfterMain().eval()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    with pytest.warns(UserWarning, match=r"do not depend on the input of 'aux_head'"):
        fit(model, loader, layer="aux_head", attack=FGSM(eps=0.1))
    fit(model, loader, layer="fc", attack=FGSM(eps=0.1))  # no warning (warnings are errors)


def test_no_linear_reaching_the_logits_asks_for_a_layer() -> None:
    class Dangling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 8)
            self.probe = nn.Linear(64, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.probe(x.flatten(1))
            return self.conv(x).flatten(1)

    with pytest.raises(LayerError, match=r"no nn\.Linear of this model produces its logits"):
        resolve_layer(Dangling(), example=torch.rand(1, 1, 8, 8))


def test_logits_without_gradients_fall_back_to_the_last_linear_to_run() -> None:
    class NoGrad(nn.Module):  # e.g. a frozen feature extractor with its own no_grad
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 2)
            self.hidden = nn.Linear(64, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.fc(self.hidden(x.flatten(1)))

    m, x = NoGrad(), torch.rand(1, 1, 8, 8)
    assert resolve_layer(m, example=x).name == "fc"
    assert reaches_logits(m, LayerRef("hidden", Side.OUTPUT), x)  # cannot tell: no warning


def test_a_bad_side_is_refused_with_or_without_a_layer() -> None:
    # `harden --side sideways` without `--layer` once ended in an enum ValueError (issue 15).
    from deepcloak.harden import HardenConfig

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    for layer in (None, "3"):
        with pytest.raises(
            LayerError, match="unknown side 'sideways'; expected one of: input, output"
        ):
            resolve_layer(model, layer, "sideways")
    with pytest.raises(LayerError, match="unknown side 'sideways'"):
        HardenConfig(side="sideways")
