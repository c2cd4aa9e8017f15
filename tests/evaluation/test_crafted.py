"""Each attack pass runs once: the crafted-set store, its reuse, and numbers equal to before it.

``data/toy_main.json`` holds the per-sample numbers of the toy evaluations (fixed ratio 0.1, and
the ratio chosen on validation) as main computed them before the store existed (commit e8d603a,
which crafted 7 PGD passes more), in the compact form of :func:`compact`. Issue 17 re-pinned
what it changes by design, and nothing else: the APGD and Square numbers (native APGD; each
attack after the first on the samples still standing), the worst cases they enter and the sanity
values; every FGSM and PGD vector, the curves and the ratio choice are still main's.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from deepcloak.attacks.native import FGSM, PGD
from deepcloak.cloak.fit import fit
from deepcloak.cloak.mask import find_masks, keep_mask
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.crafted import CraftedSets, CraftKey, Replay, Samples, target
from deepcloak.evaluation.results import EvaluationReport
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.sweep import graybox_sweep, whitebox_results
from deepcloak.evaluation.timings import Timings
from deepcloak.report.tables import timings_table
from tests.robust_toys import (
    TOY_CONFIG,
    loader,
    quadrant_data,
    single_thread,
    toy_report,
    trained_mlp,
)

MAIN = json.loads((Path(__file__).parent / "data" / "toy_main.json").read_text())


def _key(section: str, r: dict[str, Any]) -> str:
    a = r["attack"]
    attack = ",".join(f"{k}={a[k]}" for k in sorted(a) if k != "of")
    return f"{section}|{r['defense']}|{r['threat_model']}|{attack}|{r['ratio']}"


def compact(report: EvaluationReport) -> dict[str, Any]:
    """Every per-sample vector of a report by what produced it, the choice and the checks."""
    d = report.to_json(per_sample=True)
    out: dict[str, Any] = {}
    sections = (
        ("results", d["results"]),
        ("eps_curve", [r.to_json(per_sample=True) for r in report.eps_curve]),
        ("ratio_curve", report.ratio_curve.to_json(per_sample=True)["results"]),
    )
    for section, results in sections:
        for r in results:
            out[_key(section, r)] = "/".join(r["per_sample"])
    out["ratio"] = d["ratio_choice"]["ratio"]
    out["candidates"] = [
        [c["ratio"], c["clean_accuracy"], c["graybox_accuracy"]]
        for c in d["ratio_choice"]["candidates"]
    ]
    out["sanity"] = {c["name"]: c["values"] for c in d["sanity_checks"]}
    return out


def _model_state(model: torch.nn.Module) -> tuple[Any, ...]:
    """What a model computes, independently of the store's names: its object and its masks."""
    inner = getattr(model, "model", model)  # a preprocessing baseline wraps the model
    masks = tuple(
        (name, tuple(m.mask.mask.flatten().tolist()))
        for name, m in sorted(find_masks(inner).items())
    )
    return type(model).__name__, getattr(model, "name", None), id(inner), masks


@pytest.fixture(scope="module")
def counted() -> tuple[EvaluationReport, list[tuple[str, tuple[Any, ...], str]]]:
    """The toy evaluation at ratio 0.1, recording every crafting call with what it crafted."""
    calls: list[tuple[str, tuple[Any, ...], str]] = []
    original = Samples.craft

    def craft(self: Samples, attack: Any, model: torch.nn.Module, stage: Any = None) -> Any:
        calls.append((json.dumps(attack.spec(), sort_keys=True), _model_state(model), self.split))
        return original(self, attack, model, stage)

    with pytest.MonkeyPatch.context() as mp, single_thread():
        mp.setattr(Samples, "craft", craft)
        report = evaluate_cloak(
            trained_mlp(0), loader(200, 1), loader(60, 2), loader(60, 3),
            config=dataclasses.replace(TOY_CONFIG, ratio=0.1), surrogate=trained_mlp(1),
        )  # fmt: skip
    return report, calls


def test_numbers_equal_mains_before_the_store(
    counted: tuple[EvaluationReport, list[tuple[str, tuple[Any, ...], str]]],
) -> None:
    assert compact(counted[0]) == MAIN["fixed"]
    assert compact(toy_report()) == MAIN["chosen"]  # chosen on validation (ratio 0 here)


def test_no_attack_model_and_split_is_crafted_twice(
    counted: tuple[EvaluationReport, list[tuple[str, tuple[Any, ...], str]]],
) -> None:
    report, calls = counted
    assert len(calls) == len(set(calls))
    passes = report.timings.passes
    keys = [(json.dumps(p.attack, sort_keys=True), p.model, p.split) for p in passes]
    assert len(keys) == len(set(keys))
    # fit 1, gray-box 4, transfer 4, white-box 4 x 5 defences, eps curve 2 x 2 budgets (0 needs
    # no attack, 0.05 is the defences' PGD), unbounded probe 1, more steps 1; the ratio curve's
    # gray-box set and its white-box sets at ratios 0 and 0.1 are all taken from the store.
    assert len(passes) == len(calls) + 1 == 1 + 4 + 4 + 20 + 4 + 1 + 1
    pgd = json.dumps(counted[0].result("cloaked", "white-box", "pgd").attack, sort_keys=True)
    uses = {(k[0], k[1]): p.uses for k, p in zip(keys, passes, strict=True)}
    assert uses[(pgd, "unmasked")] == 3  # eps curve, ratio curve's gray-box and its ratio 0
    assert uses[(pgd, "cloaked@0.1")] == 3  # eps curve, more-steps check, ratio curve at 0.1
    assert report.timings.reused == sum(p.uses for p in passes) == 6


def test_timings_add_up(
    counted: tuple[EvaluationReport, list[tuple[str, tuple[Any, ...], str]]],
) -> None:
    t = counted[0].timings
    names = [s.name for s in t.stages]
    assert names == [
        "prepare", "fit", "ratio choice", "defenses", "attacks", "eps curve", "sanity checks",
        "ratio curve", "report",
    ]  # fmt: skip
    assert {p.stage for p in t.passes} <= set(names)
    for s in t.stages:
        assert 0 <= t.stage_attack_seconds(s.name) <= s.seconds
    assert 0 < t.attack_seconds <= t.total_seconds
    assert t.overhead == pytest.approx(t.total_seconds / t.attack_seconds)
    assert t.total_seconds <= counted[0].run["duration_s"] + 0.1
    fit_pass = next(p for p in t.passes if p.split == "train")
    assert (fit_pass.attack["name"], fit_pass.samples, fit_pass.threat_model) == ("fgsm", 200, None)
    tms = {p.model: p.threat_model for p in t.passes if p.split == "test"}
    assert tms["unmasked"] == "gray-box" and tms["surrogate"] == "transfer"
    assert tms["cloaked@0.1"] == tms["feature-squeezing"] == "white-box"
    data = json.loads(json.dumps(counted[0].to_json()["timings"], allow_nan=False))
    assert len(data["attack_passes"]) == len(t.passes)
    assert sum(s["attack_passes"] for s in data["stages"]) == len(t.passes)
    table = timings_table(counted[0])
    assert table.row_count == len(names)


# ------------------------------------------------------------------------------- the store
def _samples(n: int = 24) -> Samples:
    x, y = quadrant_data(n, 5)
    return Samples(x, y, 8, "test")


def test_the_store_crafts_once_per_key_and_budget_zero_not_at_all() -> None:
    model, samples, timings = trained_mlp(0), _samples(), Timings()
    store = CraftedSets(timings)
    pgd = PGD(eps=0.05, steps=3)
    first = store.get(pgd, model, target("unmasked"), samples)
    assert store.get(PGD(eps=0.05, steps=3), model, target("cloaked", 0.0), samples) is first
    assert torch.equal(first, samples.craft(pgd, model))
    other = store.get(PGD(eps=0.05, steps=4), model, target("unmasked"), samples)
    assert not torch.equal(other, first)
    val = dataclasses.replace(samples, split="validation")
    store.get(pgd, model, target("unmasked"), val)
    assert store.get(PGD(eps=0.0, steps=3), model, target("unmasked"), samples) is samples.x
    assert len(store.crafted) == len(timings.passes) == 3
    assert [p.uses for p in timings.passes] == [1, 0, 0]
    assert store.crafted[0] == CraftKey.of(pgd, "unmasked", "test")


def test_targets_name_models_and_threat_models() -> None:
    assert target("cloaked", 0.1).key == "cloaked@0.1"
    assert target("random-mask", 0.1, mask=0).key == "random-mask#0@0.1"
    assert target("cloaked", 0.0) == target("unmasked")  # a mask removing nothing
    assert target("surrogate").threat_model == "transfer"
    assert target("feature-squeezing").threat_model == "white-box"


def test_a_ratio_zero_mask_crafts_exactly_the_unmasked_samples() -> None:
    model = copy.deepcopy(trained_mlp(0))
    cloak = fit(model, loader(64, 1), attack=FGSM(eps=0.05))
    samples, pgd = _samples(), PGD(eps=0.05, steps=5)
    white = whitebox_results(model, cloak, loader(24, 5, batch_size=8), [pgd], [0.0])
    assert torch.equal(white[0.0][0].correct, samples.correct(model, samples.craft(pgd, model)))
    assert keep_mask(cloak.ranking, 0.0, cloak.feature_shape).all()


def test_a_sweep_given_its_samples_equals_one_that_crafts_them() -> None:
    model = copy.deepcopy(trained_mlp(0))
    cloak = fit(model, loader(64, 1), attack=FGSM(eps=0.05))
    data, pgd, ratios = loader(24, 5, batch_size=8), PGD(eps=0.05, steps=3), (0.0, 0.1, 0.3)
    crafting = graybox_sweep(
        model, cloak, data, attack=pgd, ratios=ratios, n_random=2, whitebox_attacks=[pgd],
        whitebox_ratios=(0.1,),
    )  # fmt: skip
    x_adv = _samples().craft(pgd, model)
    white = whitebox_results(model, cloak, data, [pgd], [0.1])
    given = graybox_sweep(
        model, cloak, data, attack=pgd, ratios=ratios, n_random=2, whitebox_attacks=[pgd],
        whitebox_ratios=(0.1,), adversarial=x_adv, whitebox=white,
    )  # fmt: skip
    assert given.to_json(per_sample=True) == crafting.to_json(per_sample=True)
    with pytest.raises(DeepCloakError, match="do not match the loader's batch"):
        graybox_sweep(model, cloak, data, attack=pgd, ratios=ratios, adversarial=x_adv[:20])
    with pytest.raises(DeepCloakError, match="the loader yielded 24 samples but 25"):
        graybox_sweep(
            model, cloak, data, attack=pgd, ratios=ratios, adversarial=torch.cat([x_adv, x_adv[:1]])
        )
    assert Replay(pgd, x_adv).spec() == pgd.spec()
