from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from deepcloak.cloak.mask import (
    FeatureMask,
    MaskedLayer,
    find_masks,
    fold_mask,
    insert_mask,
    keep_mask,
    random_keep_mask,
    removal_count,
    remove_mask,
)
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError, LayerError


def test_feature_mask_zeroes_exactly_the_removed_features() -> None:
    keep = torch.tensor([True, False, True, False, True])
    x = torch.randn(3, 5)
    out = FeatureMask(keep)(x)
    torch.testing.assert_close(out[:, keep], x[:, keep])
    assert bool((out[:, ~keep] == 0).all())


def test_feature_mask_on_feature_maps() -> None:
    keep = torch.ones(2, 3, 3, dtype=torch.bool)
    keep[1, 0, 2] = False
    out = FeatureMask(keep)(torch.ones(4, 2, 3, 3))
    assert out.sum().item() == 4 * (18 - 1)
    assert bool((out[:, 1, 0, 2] == 0).all())


def test_feature_mask_rejects_wrong_shape_and_non_binary_values() -> None:
    with pytest.raises(DeepCloakError, match="shape"):
        FeatureMask(torch.ones(5, dtype=torch.bool))(torch.ones(2, 6))
    with pytest.raises(DeepCloakError, match="0 and 1"):
        FeatureMask(torch.tensor([0.5, 1.0]))


def test_masked_features_get_zero_gradient(model: nn.Module, model_name: str) -> None:
    from tests.conftest import DEFAULT_LAYERS

    name = DEFAULT_LAYERS[model_name]
    linear = model.get_submodule(name)
    keep = torch.ones(linear.in_features, dtype=torch.bool)
    keep[::2] = False
    insert_mask(model, LayerRef(name, Side.INPUT), FeatureMask(keep))
    feats = torch.randn(3, linear.in_features, requires_grad=True)
    model.get_submodule(name)(feats).sum().backward()
    assert bool((feats.grad[:, ~keep] == 0).all())
    assert bool((feats.grad[:, keep] != 0).any())


def test_insert_and_remove_restore_the_same_module(model: nn.Module, model_name: str) -> None:
    from tests.conftest import DEFAULT_LAYERS

    name = DEFAULT_LAYERS[model_name]
    original = model.get_submodule(name)
    x = torch.rand(5, 1, 8, 8)
    before = model(x)
    keep = torch.ones(original.in_features, dtype=torch.bool)
    insert_mask(model, LayerRef(name, Side.INPUT), FeatureMask(keep))
    assert isinstance(model.get_submodule(name), MaskedLayer)
    assert list(find_masks(model)) == [name]
    torch.testing.assert_close(model(x), before)  # an all-ones mask changes nothing
    with pytest.raises(LayerError, match="already masked"):
        insert_mask(model, LayerRef(name, Side.INPUT), FeatureMask(keep))
    remove_mask(model, name)
    assert model.get_submodule(name) is original
    with pytest.raises(LayerError, match="no mask"):
        remove_mask(model, name)


@pytest.mark.parametrize("side", [Side.INPUT, Side.OUTPUT])
def test_fold_gives_the_same_logits_as_the_mask_layer(
    model: nn.Module, model_name: str, side: Side
) -> None:
    from tests.conftest import DEFAULT_LAYERS

    name = DEFAULT_LAYERS[model_name]
    linear = model.get_submodule(name)
    n = linear.in_features if side is Side.INPUT else linear.out_features
    keep = torch.rand(n, generator=torch.Generator().manual_seed(0)) > 0.4
    x = torch.rand(7, 1, 8, 8)
    insert_mask(model, LayerRef(name, side), FeatureMask(keep))
    hooked = model(x)
    fold_mask(model, name)
    folded_layer = model.get_submodule(name)
    assert type(folded_layer) is nn.Linear
    torch.testing.assert_close(model(x), hooked, rtol=1e-6, atol=1e-6)
    # The original layer object keeps its weights: folding writes a new one.
    assert folded_layer is not linear and not torch.equal(folded_layer.weight, linear.weight)


def test_fold_refuses_a_mask_on_a_non_linear_layer() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(72, 3))
    insert_mask(model, LayerRef("0", Side.OUTPUT), FeatureMask(torch.ones(2, 6, 6)))
    with pytest.raises(LayerError, match=r"only a mask on an nn\.Linear"):
        fold_mask(model, "0")


def test_random_keep_mask_is_keep_mask_of_a_random_permutation() -> None:
    for n_removed, ratio in ((0, 0.0), (3, 0.25), (11, 0.9)):
        got = random_keep_mask((3, 4), n_removed, torch.Generator().manual_seed(7))
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(7))
        assert removal_count(ratio, 12) == n_removed
        assert torch.equal(got, keep_mask(perm, ratio, (3, 4)))
        assert got.shape == (3, 4) and int((~got).sum()) == n_removed
    with pytest.raises(DeepCloakError, match="n_removed"):
        random_keep_mask((4,), 5, torch.Generator())


def test_a_ratio_that_removes_nothing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    ranking = torch.arange(64)
    with caplog.at_level(logging.WARNING, logger="deepcloak.cloak.mask"):
        assert bool(keep_mask(ranking, 0.0, (64,)).all())
        assert not caplog.records  # ratio 0 removes nothing on purpose
        assert bool(keep_mask(ranking, 0.007, (64,)).all())  # 0.45 features round to 0
    assert "rounds to 0 removed features" in caplog.text
    assert int((~keep_mask(ranking, 0.01, (64,))).sum()) == 1  # 0.64 rounds to 1
