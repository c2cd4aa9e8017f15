"""The model zoo: every family builds and trains on every input shape it is sized for."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from deepcloak.errors import DeepCloakError
from deepcloak.models.zoo import MODELS, create_model, list_models

SHAPES = [(1, 8), (1, 28), (3, 32)]  # (channels, side): digits, Fashion-MNIST, CIFAR
# Small widths keep the 28x28 and 32x32 cases fast; the structure is what is under test.
SMALL = {
    "cnn": {"width": 4, "hidden": 16},
    "vgg": {"width": 4, "hidden": 16},
    "resnet": {"width": 4},
    "wrn": {"width": 4, "widen_factor": 1},
}


def build(name: str, c: int, s: int, **kwargs: object) -> nn.Module:
    return create_model(name, in_channels=c, num_classes=5, input_size=s, **SMALL[name], **kwargs)


def last_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_registry_names() -> None:
    assert list_models() == ["cnn", "resnet", "vgg", "wrn"]
    assert all(name in MODELS for name in list_models())


@pytest.mark.parametrize("name", ["cnn", "resnet", "vgg", "wrn"])
@pytest.mark.parametrize(("c", "s"), SHAPES)
def test_forward_backward(name: str, c: int, s: int) -> None:
    torch.manual_seed(0)
    model = build(name, c, s)
    x = torch.rand(3, c, s, s, requires_grad=True)
    logits = model(x)
    assert logits.shape == (3, 5)
    logits.logsumexp(1).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    model.eval()
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", ["cnn", "resnet", "vgg", "wrn"])
@pytest.mark.parametrize(("c", "s"), [(1, 8), (3, 32)])
def test_last_linear_input_is_the_feature_vector(name: str, c: int, s: int) -> None:
    model = build(name, c, s).eval()
    seen: list[torch.Tensor] = []
    head = last_linear(model)
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.rand(2, c, s, s)
    logits = model(x)
    handle.remove()
    assert seen[0].shape == (2, head.in_features)
    # The timm-style seam gives the same vector and the same layer.
    pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(pre_logits, seen[0])
    assert model.get_classifier() is head
    torch.testing.assert_close(head(seen[0]), logits)


@pytest.mark.parametrize("name", ["resnet", "wrn"])
def test_resnet_features_are_pooled(name: str) -> None:
    model = build(name, 1, 8).eval()
    x = torch.rand(2, 1, 8, 8)
    fmap = model.forward_features(x)  # (N, C, h, w)
    features = model.forward_head(fmap, pre_logits=True)
    torch.testing.assert_close(features, fmap.mean(dim=(2, 3)))


def test_depth_gives_the_expected_number_of_convs() -> None:
    def convs(model: nn.Module) -> int:
        # Counting 3x3 convs and the linear layer, as the papers count depth.
        return sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())

    for depth in (8, 14, 20):
        assert convs(build("resnet", 1, 8, depth=depth)) + 1 == depth
    for depth in (10, 16):
        # WRN's 6n + 4 also counts the three 1x1 shortcut convs of the original design.
        assert convs(build("wrn", 1, 8, depth=depth)) + 1 == depth - 2
    wide = build("wrn", 1, 8, depth=10)
    assert wide.fc.in_features == 4 * 4 * 1  # width * 4 * widen_factor


def test_normalisation_inside_the_model() -> None:
    torch.manual_seed(0)
    plain = build("cnn", 3, 8)
    torch.manual_seed(0)
    normed = build("cnn", 3, 8, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.25])
    plain.eval(), normed.eval()
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.2, 0.2, 0.25]).view(1, 3, 1, 1)
    torch.testing.assert_close(normed(x), plain((x - mean) / std))
    assert "normalize.mean" in normed.state_dict()


def test_arch_config_rebuilds_and_is_json() -> None:
    model = build("vgg", 3, 32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), pool="flatten")
    config = json.loads(json.dumps(model.arch_config()))
    assert config["mean"] == [0.5, 0.5, 0.5] and config["pool"] == "flatten"
    again = create_model(model.arch, **config)
    shapes = {k: v.shape for k, v in again.state_dict().items()}
    assert shapes == {k: v.shape for k, v in model.state_dict().items()}


def test_create_is_deterministic_under_seed() -> None:
    torch.manual_seed(3)
    a = build("wrn", 1, 8)
    torch.manual_seed(3)
    b = build("wrn", 1, 8)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        torch.testing.assert_close(va, vb, rtol=0, atol=0)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(DeepCloakError, match="cnn, resnet, vgg, wrn"):
        create_model("alexnet", in_channels=1, num_classes=10, input_size=8)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("resnet", {"depth": 9}, "6n \\+ 2"),
        ("wrn", {"depth": 12}, "6n \\+ 4"),
        ("vgg", {"pool": "max"}, "'avg' or 'flatten'"),
        ("cnn", {"depth": 3}, "no option depth.*width"),
        ("cnn", {"mean": [0.5]}, "both mean and std"),
        ("cnn", {"mean": [0.5, 0.5], "std": [1.0, 1.0]}, "1 or in_channels=1"),
        ("cnn", {"mean": [0.5], "std": [0.0]}, "std > 0"),
    ],
)
def test_bad_options_are_clear_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(DeepCloakError, match=match):
        create_model(name, in_channels=1, num_classes=10, input_size=8, **kwargs)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hidden": "abc"}, "option hidden must be an integer, got 'abc'"),
        ({"width": 2.5}, "option width must be an integer, got 2.5"),
        ({"width": True}, "option width must be an integer, got True"),
        ({"mean": "abc", "std": [1.0]}, "option mean must be a list of finite numbers"),
    ],
)
def test_options_of_the_wrong_type_are_refused_before_building(
    options: dict[str, object], message: str
) -> None:
    # `train --option hidden=abc` once ended in a TypeError from inside torch (issue 15).
    with pytest.raises(DeepCloakError, match=message):
        create_model("cnn", in_channels=1, num_classes=3, input_size=8, **options)
