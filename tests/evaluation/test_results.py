"""The one result model: per-sample correctness, its accuracies, intervals and tests."""

from __future__ import annotations

import copy
import math
from statistics import NormalDist

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcloak.attacks.native import FGSM
from deepcloak.cloak.fit import fit
from deepcloak.cloak.mask import keep_mask
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.results import AccuracyResult, ThreatModel, compare
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.stats import mcnemar_exact, mean_interval, wilson_interval


def test_threat_models_accept_their_names() -> None:
    assert ThreatModel.parse("gray-box") is ThreatModel.GRAYBOX is ThreatModel("gray-box")
    assert [t.value for t in ThreatModel] == ["clean", "gray-box", "white-box", "transfer"]
    with pytest.raises(DeepCloakError, match="unknown threat model 'grey'; expected one of: clean"):
        ThreatModel.parse("grey")
    r = AccuracyResult("cloaked", "white-box", {"name": "pgd"}, torch.tensor([True, False]))  # type: ignore[arg-type]
    assert r.threat_model is ThreatModel.WHITEBOX


def test_a_single_model_gets_the_wilson_interval_of_its_counts() -> None:
    correct = torch.arange(40) < 29
    r = AccuracyResult("cloaked", ThreatModel.GRAYBOX, {"name": "fgsm"}, correct, 0.1)
    assert (r.n, r.n_masks, r.n_correct, r.accuracy) == (40, 1, 29, 29 / 40)
    assert r.interval == wilson_interval(29, 40)
    d = r.to_json(per_sample=True)
    assert d["ci"]["method"] == "wilson" and d["per_sample"] == ["1" * 29 + "0" * 11]
    with pytest.raises(DeepCloakError, match="must be boolean"):
        AccuracyResult("cloaked", ThreatModel.CLEAN, {"name": "none"}, torch.ones(3))


def test_the_interval_of_a_mean_over_masks_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    correct = torch.rand(5, 200, generator=gen) < torch.linspace(0.3, 0.6, 5)[:, None]  # (k, N)
    r = AccuracyResult("random-mask", ThreatModel.GRAYBOX, {"name": "fgsm"}, correct, 0.1)
    per_mask = [int(row.sum()) / 200 for row in correct]
    assert r.accuracy == pytest.approx(sum(per_mask) / 5)
    assert r.per_mask_accuracy == pytest.approx(per_mask)
    # Independently: se^2 = var over samples of the per-sample mean / N + var over masks / k.
    per_sample = [sum(bool(correct[j, i]) for j in range(5)) / 5 for i in range(200)]
    m = sum(per_sample) / 200
    var_samples = sum((c - m) ** 2 for c in per_sample) / 199
    var_masks = sum((a - m) ** 2 for a in per_mask) / 4
    se = math.sqrt(var_samples / 200 + var_masks / 5)
    z = NormalDist().inv_cdf(0.975)
    assert r.interval == pytest.approx((m - z * se, m + z * se))
    assert r.to_json()["ci"]["method"] == "mean-over-masks"
    # Wider than the single binomial of the pooled mean would suggest at n = N, never narrower
    # than the masks' own spread.
    assert r.interval[1] - r.interval[0] > 2 * z * math.sqrt(var_masks / 5)


def test_degenerate_means_fall_back_to_wilson() -> None:
    row = torch.arange(30) < 12
    assert mean_interval(row[None]) == wilson_interval(12, 30)  # one mask
    # Identical masks: no spread over masks, only the samples' (variance with N - 1).
    half = NormalDist().inv_cdf(0.975) * math.sqrt(0.4 * 0.6 * 30 / 29 / 30)
    assert mean_interval(row.repeat(4, 1)) == pytest.approx((0.4 - half, 0.4 + half))
    lo, hi = mean_interval(torch.ones(3, 30, dtype=torch.bool))
    assert (lo, hi) == wilson_interval(30, 30) and hi == 1.0
    with pytest.raises(DeepCloakError, match=r"shape \(k, N\)"):
        mean_interval(torch.ones(30, dtype=torch.bool))


def test_compare_is_mcnemar_on_the_vectors() -> None:
    a = AccuracyResult("cloaked", ThreatModel.GRAYBOX, {"name": "fgsm"}, torch.arange(20) < 12)
    b = AccuracyResult("unmasked", ThreatModel.GRAYBOX, {"name": "fgsm"}, torch.arange(20) >= 10)
    c = compare(a, b)
    assert c.test == mcnemar_exact(a.correct, b.correct)
    assert (c.a, c.b, c.a_accuracy, c.b_accuracy) == ("cloaked", "unmasked", 0.6, 0.5)
    many = AccuracyResult("random-mask", ThreatModel.GRAYBOX, {"name": "x"}, a.correct.repeat(2, 1))
    with pytest.raises(DeepCloakError, match="two single models"):
        compare(many, b)


def test_sweep_records_every_random_mask_per_sample(model: nn.Module, loader: DataLoader) -> None:
    attack = FGSM(eps=0.1)
    cloak = fit(model, loader, attack=attack)
    sweep = graybox_sweep(model, cloak, loader, ratios=(0.0, 0.25, 0.5), n_random=3, seed=7)
    y = torch.cat([b[1] for b in loader])
    x_adv = torch.cat([attack(model, b[0], b[1]) for b in loader])
    gen = torch.Generator().manual_seed(7)
    rankings = [torch.randperm(cloak.n_features, generator=gen) for _ in range(3)]
    for row in sweep.rows:
        assert row.random_graybox is not None and row.random_graybox.correct.shape == (3, 40)
        for j, ranking in enumerate(rankings):  # brute force: each random mask, full forward
            masked = copy.deepcopy(model)
            cloak.apply(masked, row.ratio)
            masked.get_submodule(cloak.layer.name).mask.mask.copy_(
                keep_mask(ranking, row.ratio, cloak.feature_shape).float()
            )
            with torch.no_grad():
                expected = masked(x_adv).argmax(-1) == y
            assert torch.equal(row.random_graybox.correct[j], expected)
    comparisons = sweep.comparisons()
    for row, c in zip(sweep.rows, comparisons, strict=True):
        assert c.ratio == row.ratio
        assert c.test == mcnemar_exact(row.graybox.correct, sweep.rows[0].graybox.correct)
