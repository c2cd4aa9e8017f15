"""What the search is fed: multi-attack caches, and iterative cloaking against plain references."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks.native import FGSM, PGD
from deepcloak.cloak.fit import layer_features
from deepcloak.cloak.head import (
    HeadFeatures,
    cache_head_features,
    cache_head_features_multi,
    concat_head_features,
)
from deepcloak.cloak.iterative import extend_path, iterative_search
from deepcloak.cloak.mask import masked
from deepcloak.cloak.search import search_cached
from deepcloak.cloak.selectors import create_selector
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError
from tests.cloak.test_search import objective, toy_head
from tests.conftest import TinyResNet
from tests.robust_toys import loader as quadrant_loader
from tests.robust_toys import trained_mlp

FC = LayerRef("fc", Side.INPUT)


def tiny_setup(n: int = 48, seed: int = 0) -> tuple[nn.Module, DataLoader]:
    torch.manual_seed(seed)
    model = TinyResNet().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x, y = torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 4, (n,), generator=gen)
    return model, DataLoader(TensorDataset(x, y), batch_size=16)


def assert_same(a: HeadFeatures, b: HeadFeatures) -> None:
    for name in ("clean", "adv", "labels", "weight", "bias"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))


def test_multi_budget_cache_equals_concatenated_single_caches() -> None:
    model, loader = tiny_setup()
    attacks = [FGSM(eps=0.02), FGSM(eps=0.04), PGD(eps=0.08, steps=2, step_size=0.04)]
    multi = cache_head_features_multi(model, loader, FC, attacks)
    singles = [cache_head_features(model, loader, FC, a) for a in attacks]
    assert multi.n_samples == 3 * 48
    assert_same(multi, concat_head_features(singles))
    assert_same(cache_head_features_multi(model, loader, FC, attacks[:1]), singles[0])
    capped = cache_head_features_multi(model, loader, FC, attacks[:2], max_samples=20)
    assert_same(capped, concat_head_features(
        [cache_head_features(model, loader, FC, a, max_samples=20) for a in attacks[:2]]
    ))  # fmt: skip


def test_cache_through_a_mask_crafts_on_the_cloaked_model() -> None:
    model, loader = tiny_setup()
    keep = torch.tensor([True, False, True, True, False, True])
    attack = FGSM(eps=0.1)
    got = cache_head_features_multi(model, loader, FC, [attack], keep=keep)
    x, y = loader.dataset.tensors  # type: ignore[attr-defined]
    with masked(model, FC, keep) as cloaked:
        x_adv = attack(cloaked, x, y)  # independent: the whole set in one batch
    clean, adv, _ = layer_features(model, FC, x, x_adv)  # read before the mask
    torch.testing.assert_close(got.clean, clean)
    torch.testing.assert_close(got.adv, adv)
    plain = cache_head_features(model, loader, FC, attack)
    assert not torch.allclose(got.adv, plain.adv), "crafting through the mask should differ"
    assert model.fc.__class__ is nn.Linear, "the mask is removed afterwards"


def test_concat_refuses_different_heads_and_no_parts() -> None:
    a, b = toy_head(10, 4, 3, seed=0), toy_head(10, 4, 3, seed=1)
    with pytest.raises(DeepCloakError, match="same head"):
        concat_head_features([a, b])
    with pytest.raises(DeepCloakError, match="at least one"):
        concat_head_features([])


@pytest.mark.parametrize(("selector", "settings"), [("greedy", {}), ("beam", {"width": 3})])
def test_extend_from_nothing_is_the_plain_selector(selector: str, settings: dict) -> None:
    h = toy_head(200, 9, 4, seed=2)
    plain = create_selector(selector, **settings)(h, fit_budget=0.03, max_removed=9)
    assert plain, "the toy problem should let the selector remove something"
    assert extend_path(h, (), selector=selector, fit_budget=0.03, **settings) == plain


@pytest.mark.parametrize(("seed", "start"), [(4, (1,)), (5, (5, 1)), (7, (2, 3))])
def test_extension_equals_brute_force_from_a_start_set(seed: int, start: tuple[int, ...]) -> None:
    h = toy_head(150, 8, 4, seed=seed)
    budget = 0.04
    base_clean = objective(h, set())[2]
    min_clean = base_clean - int(budget * h.n_samples)  # 6 samples, against the unmasked model
    path = extend_path(h, start, selector="greedy", fit_budget=budget)
    assert path and all(p[: len(start)] == start for p in path)
    removed = set(start)
    for entry in path:  # each step: the best allowed feature by a full recompute
        scored = [
            (-objective(h, removed | {j})[0], -objective(h, removed | {j})[1], j)
            for j in range(8)
            if j not in removed and objective(h, removed | {j})[2] >= min_clean
        ]
        best = min(scored)[2]
        assert entry[-1] == best
        assert objective(h, removed | {best})[0] > objective(h, removed)[0]
        removed.add(best)
    for entry in path:
        assert objective(h, set(entry))[2] >= min_clean


def test_extension_gets_no_budget_when_the_start_spent_it() -> None:
    h = toy_head(150, 8, 4, seed=3)
    base = objective(h, set())[2]
    costly = max(range(8), key=lambda j: base - objective(h, {j})[2])
    assert base - objective(h, {costly})[2] >= 2
    assert extend_path(h, (costly,), selector="greedy", fit_budget=1 / 150) == []
    with pytest.raises(DeepCloakError, match="distinct feature indices"):
        extend_path(h, (8,))


def test_iterative_round_one_is_the_plain_search_and_later_rounds_extend_it() -> None:
    model = copy.deepcopy(trained_mlp(1))
    layer = LayerRef("3", Side.INPUT)  # input of the final Linear
    fit_loader, attack = quadrant_loader(200, 1), FGSM(eps=0.05)
    val = cache_head_features(model, quadrant_loader(200, 2), layer, attack)
    fit = cache_head_features(model, fit_loader, layer, attack)
    kwargs = {"selector": "greedy", "clean_budget": 0.05, "fit_budget": 0.1, "clean_weight": 1.0}
    plain = search_cached(fit, val, layer, **kwargs)  # type: ignore[arg-type]
    one = iterative_search(model, fit_loader, val, layer, attack, rounds=1, **kwargs)
    assert one.path == plain.path and one.path
    assert one.removed == plain.removed
    torch.testing.assert_close(one.keep, plain.keep)
    three = iterative_search(model, fit_loader, val, layer, attack, rounds=3, **kwargs)
    assert three.rounds[0] == one.rounds[0]
    assert len(three.rounds) >= 2 and three.rounds[1].path, "round 2 should extend the mask"
    for prev, nxt in zip(three.rounds, three.rounds[1:], strict=False):
        assert nxt.start == prev.chosen != prev.start
        assert all(p[: len(nxt.start)] == nxt.start for p in nxt.path)
    # Round 2 learns from samples crafted through round 1's mask, not the plain samples.
    through = cache_head_features_multi(
        model, fit_loader, layer, [attack], keep=three.rounds[1].start_keep(fit.n_features)
    )
    assert three.rounds[1].path == extend_path(
        through, three.rounds[1].start, selector="greedy", fit_budget=0.1, clean_weight=1.0
    )
    fits = [c.fits for c in three.candidates]
    advs = [c.adv_accuracy for c in three.candidates]
    best = max(range(len(advs)), key=lambda i: (fits[i], advs[i], -i))
    assert three.removed == [(), *three.path][best]
    with pytest.raises(DeepCloakError, match="rounds"):
        iterative_search(model, fit_loader, val, layer, attack, rounds=0)
