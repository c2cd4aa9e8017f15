from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks.native import FGSM, PGD
from deepcloak.cloak.fit import fit
from deepcloak.cloak.mask import find_masks
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig, build_attack
from deepcloak.evaluation.results import SCHEMA, EvaluationReport, ThreatModel
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.sanity import CheckStatus
from deepcloak.stats import mean_interval, wilson_interval
from tests.robust_toys import (
    TOY_CONFIG,
    gradient_masked_mlp,
    loader,
    quadrant_data,
    toy_report,
    trained_mlp,
)

DEFENSES = {
    "unmasked",
    "cloaked",
    "random-mask",
    "activation-pruning",
    "feature-squeezing",
    "spatial-smoothing",
}
ROBUST = (ThreatModel.GRAYBOX, ThreatModel.WHITEBOX, ThreatModel.TRANSFER)


@pytest.fixture(scope="module")
def report() -> EvaluationReport:
    """The toy evaluation at a fixed ratio of 0.1 (so that cloaked and unmasked differ)."""
    return toy_report(ratio=0.1)


def test_every_defence_under_every_threat_model_and_attack(report: EvaluationReport) -> None:
    assert {r.defense for r in report.results} == DEFENSES
    assert report.threat_models() == list(ThreatModel)
    for d in DEFENSES:
        assert report.result(d, "clean").attack_name == "none"
        for tm in ROBUST:
            for attack in (*TOY_CONFIG.attack.attacks, "worst-case"):
                assert report.result(d, tm, attack).n == 60
    removed = {report.defenses[d]["n_removed"] for d in ("cloaked", "random-mask")}
    assert removed == {report.defenses["activation-pruning"]["n_removed"]} == {3}  # 10% of 32


def test_worst_case_is_per_sample_and_at_most_each_attack(report: EvaluationReport) -> None:
    for d in DEFENSES:
        for tm in ROBUST:
            per_attack = [report.result(d, tm, a) for a in TOY_CONFIG.attack.attacks]
            worst = report.result(d, tm)
            brute = torch.stack([r.correct for r in per_attack]).all(0)
            assert torch.equal(worst.correct, brute)
            assert worst.accuracy <= min(r.accuracy for r in per_attack)
    # The attacks actually bite (robust accuracy below clean), so the test above is not vacuous.
    assert (
        report.result("unmasked", "gray-box").accuracy < report.result("unmasked", "clean").accuracy
    )


def test_every_accuracy_carries_its_interval(report: EvaluationReport) -> None:
    curve = [r for row in report.ratio_curve.rows for r in row.results()]
    for r in [*report.results, *report.eps_curve, *curve]:
        lo, hi = r.interval
        if r.n_masks == 1:
            assert (lo, hi) == wilson_interval(r.n_correct, r.n)
        else:  # random masks: the interval of their mean, from the per-mask vectors
            assert r.defense == "random-mask" and (lo, hi) == mean_interval(r.correct)
        assert lo <= r.accuracy <= hi


def test_random_masks_keep_every_mask(report: EvaluationReport) -> None:
    for tm in ("clean", "gray-box", "transfer"):
        r = report.result("random-mask", tm, "pgd" if tm != "clean" else "worst-case")
        assert r.correct.shape == (TOY_CONFIG.compare.n_random, 60)
        assert r.accuracy == pytest.approx(sum(r.per_mask_accuracy) / TOY_CONFIG.compare.n_random)
    white = report.result("random-mask", "white-box", "pgd")
    assert white.n_masks == 1 and white.note == "first random mask only"


def test_graybox_and_whitebox_reproduce_by_hand(report: EvaluationReport) -> None:
    # Independently: fit the same cloak, craft PGD on the unmasked model (gray-box) and through
    # the cloaked model (white-box), and compare per sample with the report.
    model = copy.deepcopy(trained_mlp(0))
    x, y = quadrant_data(60, 3)
    cloak = fit(model, loader(200, 1), attack=FGSM(eps=0.05))
    pgd = PGD(eps=0.05, steps=10)
    x_gray = torch.cat([pgd(model, x[i : i + 128], y[i : i + 128]) for i in range(0, 60, 128)])
    cloaked = cloak.apply(copy.deepcopy(model), 0.1)
    x_white = pgd(cloaked, x, y)
    with torch.no_grad():
        gray = cloaked(x_gray).argmax(-1) == y
        white = cloaked(x_white).argmax(-1) == y
    assert torch.equal(report.result("cloaked", "gray-box", "pgd").correct, gray)
    assert torch.equal(report.result("cloaked", "white-box", "pgd").correct, white)
    assert report.result("cloaked", "gray-box", "pgd").attack == pgd.spec()


def test_mcnemar_on_the_same_samples(report: EvaluationReport) -> None:
    assert [c.threat_model for c in report.comparisons] == list(ThreatModel)
    for c in report.comparisons:
        a = report.result("cloaked", c.threat_model).correct
        b = report.result("unmasked", c.threat_model).correct
        a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
        assert (c.test.a_only, c.test.b_only, c.test.n) == (a_only, b_only, 60)
        k = a_only + b_only
        tail = sum(math.comb(k, i) for i in range(a_only, k + 1)) / 2**k if k else 1.0
        assert c.test.p_greater == pytest.approx(tail)
    assert any(c.test.a_only + c.test.b_only > 0 for c in report.comparisons)


def test_ratio_is_chosen_on_validation_within_the_budget() -> None:
    chosen = toy_report()
    choice = chosen.ratio_choice
    assert choice.split == "validation" and choice.clean_budget == 0.01
    assert [c.ratio for c in choice.candidates] == list(TOY_CONFIG.cloak.ratios)
    assert choice.n_samples == 60 and choice.attack["name"] == "pgd"
    eligible = [c for c in choice.candidates if c.within_budget]
    assert choice.chosen in eligible
    assert choice.chosen.graybox_gain == max(c.graybox_gain for c in eligible)
    assert chosen.cloak["ratio"] == chosen.ratio == choice.ratio
    fixed = toy_report(ratio=0.1).ratio_choice
    assert fixed.split == "fixed" and fixed.ratio == 0.1


def test_sanity_checks_pass_on_a_normal_model(report: EvaluationReport) -> None:
    names = {c.name for c in report.sanity}
    assert names == {
        "more-steps",
        "eps-growth",
        "gradient-free-not-stronger",
        "iterative-beats-single-step",
        "white-box-not-weaker",
        "transfer-not-stronger",
    }
    assert report.warnings == [], [c.message for c in report.warnings]


SMALL = EvaluationConfig(
    eps=0.1,
    attacks=("fgsm", "pgd", "square"),
    steps=10,
    max_queries=100,
    ratio=0.1,
    ratios=(0.0, 0.1),
    whitebox_ratios=(0.0,),
    n_random=1,
    eps_grid=(0.0, 0.1, 0.2),
    preprocessing_baselines=False,
    whitebox_baselines=False,
    max_samples=60,
)


def test_sanity_checks_flag_a_gradient_masked_model() -> None:
    model = copy.deepcopy(gradient_masked_mlp()).train()  # train mode: must come back as it was
    calls: list[tuple[str, int, int | None]] = []
    result = evaluate_cloak(
        model,
        loader(100, 1),
        loader(60, 2),
        loader(60, 3),
        config=SMALL,
        progress=lambda task, done, total: calls.append((task, done, total)),
    )
    status = {c.name: c.status for c in result.sanity}
    assert status["gradient-free-not-stronger"] is CheckStatus.WARN
    assert status["eps-growth"] is CheckStatus.WARN
    warn = next(c for c in result.sanity if c.name == "gradient-free-not-stronger")
    assert warn.values["gradient_free_accuracy"] < warn.values["gradient_accuracy"]
    # The model is left as it was: no mask, its own modes.
    assert not find_masks(model) and all(m.training for m in model.modules())
    # Progress: every task counts up to its total.
    tasks = {t for t, _, _ in calls}
    assert {"fit", "gray-box attacks", "white-box attacks", "accuracy vs eps"} <= tasks
    for task in tasks:
        dones = [d for t, d, _ in calls if t == task]
        total = next(n for t, _, n in calls if t == task)
        assert dones == sorted(dones) and dones[-1] == total


def test_the_json_is_complete_and_strict(report: EvaluationReport) -> None:
    data = json.loads(json.dumps(report.to_json(), allow_nan=False))
    assert data["schema"] == SCHEMA == "deepcloak/2" and data["kind"] == "evaluation"
    run = data["run"]
    assert run["seed"] == 0 and run["layer"] == {"name": "3", "side": "input"}
    assert run["data"]["test"]["n_used"] == 60 and run["data"]["num_classes"] == 4
    assert run["data"]["validation_test_overlap"] == 0
    assert run["metadata"] == {"model": "toy-mlp", "data": "quadrants"}
    env = data["environment"]
    assert {"torch", "numpy", "adversarial-robustness-toolbox", "deepcloak"} <= set(env)
    assert env["adversarial-robustness-toolbox"] and env["device"] == "cpu"
    assert env["threads"] == 1  # the toy report runs on one thread
    assert run["started_at"] <= run["finished_at"] and run["duration_s"] > 0
    for r in data["results"]:
        assert r["threat_model"] in data["threat_models"]
        assert r["attack"]["name"] and len(r["per_sample"]) == r["masks"] and r["n"] == 60
        assert all(len(s) == 60 for s in r["per_sample"])
        assert [s.count("1") for s in r["per_sample"]] == r["per_mask_correct"]
        assert sum(r["per_mask_correct"]) == r["correct"]
        if r["attack"]["name"] == "pgd":
            assert {"eps", "steps", "step_size", "norm", "restarts", "seed"} <= set(r["attack"])
    assert "per_sample" not in report.to_json(per_sample=False)["results"][0]


# ------------------------------------------------------------------------------------ bad input
def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(
        DeepCloakError,
        match=r"unknown attack 'cw'; expected one of: apgd, apgd-t, art-apgd, art-pgd",
    ):
        EvaluationConfig(attacks=("pgd", "cw"))
    with pytest.raises(DeepCloakError, match=r"eps must be <= 1.*Did you mean 8/255"):
        EvaluationConfig(eps=8)
    with pytest.raises(DeepCloakError, match="eps must be >= 0"):
        EvaluationConfig(eps=-0.1)
    with pytest.raises(DeepCloakError, match="eps_grid value must be <= 1"):
        EvaluationConfig(eps_grid=(0.0, 16))
    with pytest.raises(DeepCloakError, match="'fgsm' is L-inf only"):
        EvaluationConfig(norm="l2", eps=0.5)
    with pytest.raises(DeepCloakError, match="unknown norm 'l1'; expected one of: linf, l2"):
        EvaluationConfig(norm="l1")
    with pytest.raises(DeepCloakError, match="clean_budget must be a fraction"):
        EvaluationConfig(clean_budget=5)
    with pytest.raises(DeepCloakError, match="ratios must include 0"):
        EvaluationConfig(ratios=(0.1, 0.2))
    with pytest.raises(DeepCloakError, match="unknown scorer 'magic'"):
        EvaluationConfig(score="magic")
    with pytest.raises(DeepCloakError, match="bad parameters for attack 'apgd'"):
        EvaluationConfig(attack_params={"apgd": {"momentum": 0.9}})
    with pytest.raises(DeepCloakError, match="attacks must not repeat"):
        EvaluationConfig(attacks=("pgd", "pgd"))
    l2 = EvaluationConfig(norm="l2", eps=0.5, attacks=("pgd", "apgd", "square"))
    assert build_attack("square", l2).spec()["norm"] == "l2"


def _tensor_loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=16)


def test_data_that_does_not_match_the_model() -> None:
    model = trained_mlp(0)
    x, y = quadrant_data(20, 7)
    good = _tensor_loader(x, y)
    rgb = _tensor_loader(x.repeat(1, 3, 1, 1), y)
    with pytest.raises(
        DeepCloakError, match=r"does not accept inputs of shape \(3, 8, 8\).*the test data"
    ):
        evaluate_cloak(model, good, good, rgb, config=SMALL)
    with pytest.raises(
        DeepCloakError, match=r"labels of the test data do not match the model.*\[0, 3\]"
    ):
        evaluate_cloak(model, good, good, _tensor_loader(x, y + 6), config=SMALL)
    with pytest.raises(
        DeepCloakError, match=r"does not accept inputs of shape \(3, 8, 8\).*validation data"
    ):
        evaluate_cloak(model, good, rgb, good, config=SMALL)
    with pytest.raises(DeepCloakError, match=r"test data: inputs must lie in \[0, 1\]"):
        evaluate_cloak(model, good, good, _tensor_loader(x * 255, y), config=SMALL)
    with pytest.raises(DeepCloakError, match="the test loader yielded no samples"):
        evaluate_cloak(model, good, good, [], config=SMALL)
    surrogate = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(DeepCloakError, match="the surrogate has 10 outputs but the model 4"):
        evaluate_cloak(model, good, good, good, config=SMALL, surrogate=surrogate)


def test_missing_art_fails_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "art", None)  # makes `import art` raise ImportError
    never = [(torch.zeros(1), torch.zeros(1))]  # would fail if anything read it
    with pytest.raises(DeepCloakError, match=r"pip install 'deepcloak\[art\]'"):
        evaluate_cloak(trained_mlp(0), never, never, never, config=TOY_CONFIG)
    assert not dataclasses.replace(SMALL, attacks=("pgd",)).uses_art


def test_a_cloak_from_another_model_is_refused() -> None:
    model = trained_mlp(0)
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    cloak = fit(other, loader(32, 1), attack=FGSM(eps=0.05))
    with pytest.raises(DeepCloakError, match="is this the same model"):
        evaluate_cloak(model, cloak, loader(20, 2), loader(20, 3), config=SMALL)


def test_overlapping_splits_are_reported() -> None:
    model = copy.deepcopy(trained_mlp(0))
    config = dataclasses.replace(SMALL, attacks=("fgsm",), eps_grid=(0.0,))
    same = loader(30, 3)
    result = evaluate_cloak(model, loader(60, 1), same, same, config=config)
    assert result.run["data"]["validation_test_overlap"] == 30
    assert any("also appear in the test split" in note for note in result.notes)


def test_a_given_cloak_is_used_as_is() -> None:
    model = copy.deepcopy(trained_mlp(0))
    cloak = fit(model, loader(100, 1), attack=FGSM(eps=0.1), score="random", seed=3)
    config = dataclasses.replace(SMALL, attacks=("fgsm",), eps_grid=(0.0, 0.1))
    result = evaluate_cloak(model, cloak, loader(30, 2), loader(30, 3), config=config)
    assert result.cloak["score"] == "random" and result.cloak["seed"] == 3
    assert result.run["data"]["train"]["source"] == "given cloak"
    assert result.config.attack.attacks == ("fgsm",)
