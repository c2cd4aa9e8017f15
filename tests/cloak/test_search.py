"""Mask search: incremental logits, selectors against brute force, the search API and mask files."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks.native import FGSM
from deepcloak.cloak.fit import Cloak, fit
from deepcloak.cloak.head import (
    HeadFeatures,
    apply_removal,
    cache_head_features,
    candidate_outcomes,
    full_logits,
    linear_head,
)
from deepcloak.cloak.mask import find_masks
from deepcloak.cloak.search import search_cached, search_mask
from deepcloak.cloak.selectors import SELECTORS, create_selector
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError, LayerError
from tests.conftest import TinyResNet


def toy_head(n: int, f: int, k: int, seed: int, dtype: torch.dtype = torch.float64) -> HeadFeatures:
    """Random features correlated with the labels, and adversarial ones pushed against them."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(k, f, generator=gen, dtype=dtype)
    bias = 0.1 * torch.randn(k, generator=gen, dtype=dtype)
    labels = torch.randint(0, k, (n,), generator=gen)
    clean = (torch.randn(n, f, generator=gen, dtype=dtype) + weight[labels]).relu()
    noise = torch.randn(n, f, generator=gen, dtype=dtype)
    adv = (clean + noise - weight[labels] * 0.8).relu()
    return HeadFeatures(clean, adv, labels, weight, bias)


def brute_margins(h: HeadFeatures, feats: torch.Tensor, removed: set[int]) -> torch.Tensor:
    """Margins by a full recompute with plain Python over the classes (independent code)."""
    keep = torch.tensor([j not in removed for j in range(h.n_features)], dtype=feats.dtype)
    logits = (feats * keep) @ h.weight.T + h.bias
    out = []
    for row, y in zip(logits, h.labels.tolist(), strict=True):
        rival = max(float(v) for c, v in enumerate(row) if c != y)
        out.append(float(row[y]) - rival)
    return torch.tensor(out, dtype=torch.float64)


def objective(h: HeadFeatures, removed: set[int]) -> tuple[int, float, int]:
    """(adversarial correct, summed adversarial margin, clean correct) of one removal set."""
    adv = brute_margins(h, h.adv, removed)
    clean = brute_margins(h, h.clean, removed)
    return int((adv > 0).sum()), float(adv.sum()), int((clean > 0).sum())


@pytest.mark.parametrize("rivals", [1, 3, 11])
def test_candidate_outcomes_equal_a_full_recompute(rivals: int) -> None:
    h = toy_head(120, 9, 12, seed=1)
    keep = torch.ones(9, dtype=torch.bool)
    keep[[2, 5]] = False
    logits = full_logits(h.adv, h.weight, h.bias, keep)
    out = candidate_outcomes(h.adv, h.labels, logits, h.weight, keep, rivals=rivals)
    for j in range(9):
        m = brute_margins(h, h.adv, {2, 5, j})
        assert int(out.correct[j]) == int((m > 0).sum())
        torch.testing.assert_close(out.margin[j], m.sum())


def test_incremental_logits_equal_a_full_recompute() -> None:
    h = toy_head(50, 8, 5, seed=2, dtype=torch.float32)
    keep = torch.ones(8, dtype=torch.bool)
    z = full_logits(h.clean, h.weight, h.bias, keep)
    z = apply_removal(z, h.clean, h.weight, removed=[1, 4, 6])
    z = apply_removal(z, h.clean, h.weight, removed=[0], restored=[4])
    keep[[0, 1, 6]] = False
    torch.testing.assert_close(z, (h.clean * keep) @ h.weight.T + h.bias)


def reference_greedy(
    h: HeadFeatures, fit_budget: float, clean_weight: float = 0.0
) -> list[tuple[int, ...]]:
    """Greedy removal with every candidate scored by a full recompute (the brute force step)."""
    adv, _, base_clean = objective(h, set())
    min_clean = base_clean - math.floor(fit_budget * h.n_samples + 1e-9)
    order: list[int] = []
    path = []
    current = adv + clean_weight * base_clean
    while len(order) < h.n_features:
        scored = []
        for j in range(h.n_features):
            if j not in order:
                adv, margin, clean = objective(h, {*order, j})
                if clean >= min_clean:
                    scored.append((-(adv + clean_weight * clean), -margin, j))
        if not scored or -min(scored)[0] <= current:
            break
        best = min(scored)
        order.append(best[2])
        current = -best[0]
        path.append(tuple(order))
    return path


@pytest.mark.parametrize(("seed", "clean_weight"), [(0, 0.0), (1, 0.0), (2, 0.0), (0, 2.0)])
def test_greedy_equals_brute_force_steps(seed: int, clean_weight: float) -> None:
    h = toy_head(150, 7, 4, seed=seed)
    greedy = create_selector("greedy", rivals=2, clean_weight=clean_weight)
    path = greedy(h, fit_budget=0.05, max_removed=7)
    assert path == reference_greedy(h, 0.05, clean_weight)
    assert path, "the toy problem should let greedy remove something"


def test_full_width_beam_finds_the_best_subset_of_every_size() -> None:
    h = toy_head(100, 6, 4, seed=3)
    beam = create_selector("beam", width=20, clean_weight=0.0, stop_at_plateau=False)  # C(6, 3)
    path = beam(h, fit_budget=1.0, max_removed=6)
    assert [len(p) for p in path] == [1, 2, 3, 4, 5, 6]
    for removed in path:
        subsets = itertools.combinations(range(6), len(removed))
        best = min(subsets, key=lambda s: (-objective(h, set(s))[0], -objective(h, set(s))[1], s))
        assert sorted(removed) == list(best)


def test_greedy_respects_the_fit_budget() -> None:
    h = toy_head(200, 10, 4, seed=4)
    path = create_selector("greedy")(h, fit_budget=0.01, max_removed=10)
    base = objective(h, set())[2]
    for removed in path:
        assert base - objective(h, set(removed))[2] <= 2  # floor(0.01 * 200)


def test_ranking_selectors_give_prefixes() -> None:
    h = toy_head(60, 8, 3, seed=5)
    for name in ("deepcloak", "random"):
        path = create_selector(name)(h, fit_budget=0.0, max_removed=5)
        assert [len(p) for p in path] == [1, 2, 3, 4, 5]
        assert all(path[i] == path[-1][: i + 1] for i in range(5))
    score = (h.adv - h.clean).abs().sum(0)
    assert create_selector("deepcloak")(h, fit_budget=0.0, max_removed=1)[0][0] == int(
        score.argmax()
    )


def test_selector_registry_names_and_errors() -> None:
    assert SELECTORS.names() == ["beam", "deepcloak", "greedy", "random"]
    with pytest.raises(DeepCloakError, match="unknown selector 'nope'"):
        create_selector("nope")
    with pytest.raises(DeepCloakError, match="selector 'greedy' has no setting 'width'"):
        create_selector("greedy", width=3)


def test_search_cached_chooses_within_the_validation_bound() -> None:
    fit_h, val_h = toy_head(400, 12, 4, seed=6), toy_head(400, 12, 4, seed=7)
    val_h = HeadFeatures(val_h.clean, val_h.adv, val_h.labels, fit_h.weight, fit_h.bias)
    layer = LayerRef("fc", Side.INPUT)
    result = search_cached(fit_h, val_h, layer, selector="greedy", clean_budget=0.05)
    assert result.candidates[0].n_removed == 0
    assert len(result.candidates) == len(result.path) + 1
    chosen = result.chosen
    assert chosen.drop.upper <= 0.05 or result.n_removed == 0
    fitting = [c.adv_accuracy for c in result.candidates if c.fits]
    assert chosen.adv_accuracy == max(fitting)
    assert int((~result.keep).sum()) == result.n_removed


def test_the_cloak_of_a_search_removes_the_searched_set_then_the_paper_way() -> None:
    fit_h, val_h = toy_head(400, 12, 4, seed=6), toy_head(400, 12, 4, seed=7)
    val_h = HeadFeatures(val_h.clean, val_h.adv, val_h.labels, fit_h.weight, fit_h.bias)
    result = search_cached(fit_h, val_h, LayerRef("fc", Side.INPUT), clean_budget=0.2)
    assert result.n_removed > 0
    cloak, ratio = result.to_cloak()
    assert torch.equal(cloak.mask(ratio).mask.bool().flatten(), result.keep)
    # Past the searched size, features go in the order of the paper's score on the fit samples.
    paper = (fit_h.adv - fit_h.clean).abs().sum(0)
    rest = [j for j in paper.argsort(descending=True).tolist() if j not in result.removed]
    for extra in range(1, 4):
        keep = cloak.mask((result.n_removed + extra) / 12).mask.bool().flatten()
        assert set(torch.nonzero(~keep).flatten().tolist()) == {*result.removed, *rest[:extra]}


def test_search_mask_end_to_end_and_mask_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 4, (64,))
    fit_loader = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
    val_loader = DataLoader(TensorDataset(x[40:], y[40:]), batch_size=16)
    result = search_mask(
        model, fit_loader, val_loader, attack=FGSM(eps=0.1), selector="beam", width=2,
        clean_budget=0.5,
    )  # fmt: skip
    assert result.layer == LayerRef("fc", Side.INPUT)
    assert result.fit_samples == 40 and result.val_samples == 24
    assert set(result.seconds) == {"cache", "search", "validate"}
    assert json.loads(json.dumps(result.to_json()))["selector"] == "beam"
    path = tmp_path / "mask.safetensors"
    result.save(path)
    cloak, ratio = Cloak.load(path)
    assert cloak.selection == result.selection()
    assert cloak.selection is not None and cloak.selection["selector"] == "beam"
    torch.testing.assert_close(cloak.mask(ratio).mask.bool(), result.keep)
    result.apply(model)
    masked_fc = find_masks(model)["fc"]
    torch.testing.assert_close(masked_fc.mask.mask.bool(), result.keep)


def test_search_mask_reuses_a_cloaks_layer_and_attack() -> None:
    torch.manual_seed(1)
    model = TinyResNet().eval()
    loader = DataLoader(TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 4, (32,))))
    cloak = fit(model, loader, attack=FGSM(eps=0.05))
    result = search_mask(model, loader, loader, layer=cloak, selector="deepcloak")
    assert result.attack == cloak.attack
    assert result.path[0][0] == int(cloak.ranking[0])


def test_search_needs_the_input_of_a_linear_head() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU())
    with pytest.raises(LayerError, match=r"input of an nn\.Linear"):
        linear_head(model, LayerRef("2", Side.INPUT))
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))))
    with pytest.raises(LayerError, match="does not produce the model's logits"):
        cache_head_features(model, loader, LayerRef("1", Side.INPUT), FGSM(eps=0.1))


def test_bad_head_shapes_and_budgets_are_refused() -> None:
    h = toy_head(10, 4, 3, seed=8)
    with pytest.raises(DeepCloakError, match="head features must be"):
        HeadFeatures(h.clean, h.adv[:5], h.labels, h.weight, h.bias)
    with pytest.raises(DeepCloakError, match="clean_budget"):
        search_cached(h, h, LayerRef("fc", Side.INPUT), clean_budget=2.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_search_follows_the_device_of_the_features() -> None:
    h = toy_head(300, 16, 10, seed=9, dtype=torch.float32)
    cpu = create_selector("greedy", rivals=3)(h, fit_budget=0.02, max_removed=16)
    gpu = create_selector("greedy", rivals=3)(h.to("cuda"), fit_budget=0.02, max_removed=16)
    assert cpu == gpu


def test_a_selector_spec_carries_its_settings_and_the_searchs() -> None:
    from deepcloak.cloak.selectors import parse_selector

    search = {"fit_budget": 0.03, "max_removed": None}
    assert parse_selector("greedy") == (
        "greedy",
        {"clean_weight": 0.0, "rivals": 16, "stop_at_plateau": True, **search},
    )
    assert parse_selector("beam:width=4, clean_weight=2.5,fit_budget=0.03") == (
        "beam",
        {"width": 4, "clean_weight": 2.5, "rivals": 16, "stop_at_plateau": True, **search},
    )
    assert parse_selector("beam:stop_at_plateau=false,max_removed=5")[1] == {
        "width": 8, "clean_weight": 2.0, "rivals": 16, "stop_at_plateau": False,
        "fit_budget": 0.03, "max_removed": 5,
    }  # fmt: skip
