"""Evaluation levels, the visible sample cap, and the mask search inside an evaluation."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepcloak.attacks.native import FGSM
from deepcloak.cli import app
from deepcloak.cloak.search import search_mask
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import LEVELS, EvaluationConfig, EvaluationLevel, build_attack
from deepcloak.evaluation.crafted import Samples
from deepcloak.evaluation.results import EvaluationReport
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.selection import search_choice, search_cloak
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.zoo import create_model
from tests.report.test_schema import _undocumented
from tests.robust_toys import loader, quadrant_data, single_thread, trained_mlp

runner = CliRunner()

#: A cheap evaluation of the toy MLP: native attacks only, few ratios and budgets.
SMALL = EvaluationConfig.for_level(
    "quick", eps=0.05, ratios=(0.0, 0.05, 0.1, 0.2, 0.3), eps_factors=(1.0,), n_random=1,
    steps=5, max_samples=50,
)  # fmt: skip


def test_standard_is_the_default_evaluation() -> None:
    assert EvaluationConfig.for_level("standard") == EvaluationConfig()
    assert EvaluationConfig().level is EvaluationLevel.STANDARD
    assert EvaluationConfig().level_overrides == ()
    # what standard must keep: white-box APGD-CE and APGD-T, Square, the random baseline, the probes
    standard = EvaluationConfig()
    assert {"apgd", "apgd-t", "square"} <= set(standard.attack.attacks)
    assert standard.compare.n_random >= 5 and standard.checks.more_steps_factor >= 4
    assert standard.samples.max_samples == 500


@pytest.mark.parametrize("level", list(EvaluationLevel))
def test_a_level_fixes_its_settings_and_explicit_settings_win(level: EvaluationLevel) -> None:
    config = EvaluationConfig.for_level(level.value)
    for name, value in LEVELS[level].items():
        assert config.setting(name) == value, name
    assert config.level_overrides == ()
    tuned = EvaluationConfig.for_level(level, steps=7, max_samples=None)
    assert (tuned.attack.steps, tuned.samples.max_samples) == (7, None)
    changed = {"steps": 7, "max_samples": None}
    expected = {n for n, v in changed.items() if LEVELS[level][n] != v}  # thorough: no cap already
    # explicit steps are APGD's too, which the level sets apart in attack_params
    assert tuned.attack.attack_params.get("apgd", {}).get("steps") is None
    assert build_attack("apgd", tuned).spec()["steps"] == 7
    expected |= {"attack_params"} if "apgd" in LEVELS[level]["attack_params"] else set()
    assert set(tuned.level_overrides) == expected
    assert tuned.to_json()["level"] == level.value
    assert set(tuned.to_json()["level_overrides"]) == set(tuned.level_overrides)


def test_levels_grow_in_cost() -> None:
    configs = [EvaluationConfig.for_level(lv) for lv in EvaluationLevel]
    quick, standard, thorough = (c.attack for c in configs)
    assert set(quick.attacks) < set(standard.attacks) <= set(thorough.attacks)
    assert quick.steps < standard.steps < thorough.steps
    assert quick.restarts <= standard.restarts < thorough.restarts
    assert standard.max_queries < thorough.max_queries
    assert len(quick.eps_factors) < len(standard.eps_factors) < len(thorough.eps_factors)
    assert configs[0].compare.n_random < configs[1].compare.n_random < configs[2].compare.n_random
    quick_cap, standard_cap, thorough_cap = (c.samples.max_samples for c in configs)
    assert quick_cap is not None and standard_cap is not None
    assert quick_cap < standard_cap and thorough_cap is None
    assert not configs[0].uses_art  # a first look needs no ART


def test_eps_factors_form_the_curve() -> None:
    config = EvaluationConfig.for_level("quick", eps=0.4)
    assert config.attack.resolved_eps_grid == (0.2, 0.4, 0.8)
    assert EvaluationConfig(eps=0.4, eps_factors=(1, 4)).attack.resolved_eps_grid == (0.4, 1.0)
    with pytest.raises(DeepCloakError, match="eps_factors"):
        EvaluationConfig(eps_factors=(-1.0,))
    with pytest.raises(DeepCloakError, match="eps_factors"):
        EvaluationConfig(eps_factors=())


def test_unknown_level_and_selector_are_clear_errors() -> None:
    with pytest.raises(DeepCloakError, match=r"unknown level 'fast'.*quick, standard, thorough"):
        EvaluationConfig.for_level("fast")
    with pytest.raises(DeepCloakError, match=r"unknown selector 'best'.*beam, deepcloak, greedy"):
        EvaluationConfig(select="best")
    with pytest.raises(DeepCloakError, match="drop the fixed ratio"):
        EvaluationConfig(select="greedy", ratio=0.1)


def _evaluate(config: EvaluationConfig, n_val: int = 60, n_test: int = 60) -> EvaluationReport:
    with single_thread():
        return evaluate_cloak(
            trained_mlp(0), loader(300, 1), loader(n_val, 2), loader(n_test, 3), config=config
        )


@functools.cache
def _capped_report() -> EvaluationReport:
    return _evaluate(SMALL, n_val=40)


def test_the_cap_is_recorded_with_available_and_evaluated_counts() -> None:
    data = _capped_report().to_json()["run"]["data"]
    assert (data["test"]["n_available"], data["test"]["n_used"]) == (60, 50)
    assert (data["validation"]["n_available"], data["validation"]["n_used"]) == (40, 40)
    assert data["sample_cap"] == {
        "max_samples": 50, "source": "setting", "level": "quick", "capped": ["test"],
    }  # fmt: skip
    assert _capped_report().results[0].n == 50
    lifted = dataclasses.replace(SMALL, max_samples=None, ratio=0.1)
    cap = _evaluate(lifted).to_json()["run"]["data"]["sample_cap"]
    assert cap["max_samples"] is None and cap["capped"] == []


def test_the_level_cap_is_attributed_to_the_level() -> None:
    config = EvaluationConfig.for_level("quick", eps=0.05, steps=2, n_random=1, ratio=0.1)
    assert config.max_samples_source == "level"
    assert dataclasses.replace(config, max_samples=10).max_samples_source == "setting"


#: A search that removes features on the toy MLP (checked: 3 of 32 at these settings).
SEARCH = dataclasses.replace(SMALL, eps=0.1, select="greedy", clean_budget=0.2)


def _val_samples(n: int = 60) -> Samples:
    x, y = quadrant_data(n, 2)
    return Samples(x, y, 32)


def test_search_cloak_masks_exactly_what_search_mask_finds() -> None:
    config = SEARCH
    model, val = trained_mlp(0), _val_samples()
    with single_thread():
        cloak = search_cloak(model, loader(300, 1), val, config)
        choice = search_choice(cloak)
        found = search_mask(
            model, loader(300, 1), loader(60, 2), attack=FGSM(eps=0.1), selector="greedy",
            clean_budget=0.2, max_samples=config.samples.max_fit_samples,
        )  # fmt: skip
    assert found.n_removed > 0  # a real search result, not the empty mask
    keep = cloak.mask(choice.ratio).mask.bool().flatten()
    assert torch.equal(keep, found.keep)
    assert choice.ratio == found.n_removed / found.keep.numel()
    assert choice.chosen is not None and choice.chosen.n_removed == found.n_removed
    assert choice.chosen.graybox_accuracy == found.chosen.adv_accuracy
    assert cloak.selection == found.selection()


@functools.cache
def _searched_report() -> EvaluationReport:
    return _evaluate(SEARCH)


def test_evaluate_with_select_evaluates_the_searched_mask() -> None:
    report = _searched_report()
    selection = report.cloak["selection"]
    assert selection["selector"] == "greedy" and selection["clean_budget"] == 0.2
    assert {"settings", "validation", "removed"} <= set(selection)
    assert report.cloak["n_removed"] == len(selection["removed"]) > 0
    assert report.ratio_choice.reason.startswith("mask search (greedy)")
    assert report.ratio == report.ratio_choice.ratio
    cloaked = report.defenses["cloaked"]
    assert cloaked["n_removed"] == len(selection["removed"])
    document = report.to_json()
    assert document["config"]["select"] == "greedy"
    assert not _undocumented(document), _undocumented(document)


def test_select_with_a_given_cloak_is_a_clear_error() -> None:
    with single_thread():
        cloak = search_cloak(
            trained_mlp(0),
            loader(100, 1),
            _val_samples(),
            dataclasses.replace(SMALL, select="greedy"),
        )
        with pytest.raises(DeepCloakError, match="a fitted cloak was given"):
            evaluate_cloak(
                trained_mlp(0), cloak, loader(40, 2), loader(40, 3),
                config=dataclasses.replace(SMALL, select="greedy"),
            )  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "cnn.safetensors"
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8)
    save_checkpoint(path, model, metadata={"data": "digits", "input_shape": [1, 8, 8]})
    return path


CHEAP = [
    "--data",
    "digits",
    "--level",
    "quick",
    "--eps",
    "0.1",
    "--steps",
    "2",
    "--attacks",
    "fgsm",
]
SMALL_DATA = ["--val-samples", "60", "--fit-samples", "100", "--eps-grid", "0.1"]


def test_cli_prints_the_cap_and_max_samples_lifts_it(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    args = ["evaluate", str(checkpoint), *CHEAP, *SMALL_DATA, "--out", str(out)]
    result = runner.invoke(app, [*args, "--max-samples", "40"])
    assert result.exit_code == 0, result.output
    # The search's validation is one FGSM pass: the cap leaves its samples whole.
    line = (
        "evaluating 40 of 300 test samples and all 60 validation samples "
        "(cap from --max-samples; --max-samples all to lift); validation: 60 of the 360 test "
        "samples (seed 0); the test figures are on the others"
    )
    assert line in " ".join(result.output.split())
    assert "evaluated mask: beam search" in result.output  # the default search, said first
    assert "chosen on 60 of the 360 test samples" in " ".join(result.output.split())
    report = json.loads((out / "evaluation.json").read_text())
    assert report["run"]["data"]["test"]["n_used"] == 40
    assert report["run"]["metadata"]["validation"]["source"] == "test"
    assert report["run"]["data"]["validation"]["n_used"] == 60
    assert report["run"]["data"]["sample_cap"]["capped"] == ["test"]
    assert report["config"]["level"] == "quick"
    assert set(report["config"]["level_overrides"]) >= {"max_samples", "attacks", "steps"}
    result = runner.invoke(app, [*args, "--max-samples", "all", "--test-samples", "30"])
    assert result.exit_code == 0, result.output
    assert "evaluating all 30 test and 60 validation samples (no cap)" in result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert report["run"]["data"]["sample_cap"]["max_samples"] is None
    assert report["run"]["data"]["test"]["n_used"] == 30


def test_cli_names_the_level_as_the_cap_source(checkpoint: Path, tmp_path: Path) -> None:
    args = ["evaluate", str(checkpoint), *CHEAP, *SMALL_DATA, "--ratio", "0.1"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    line = (
        "evaluating 100 of 300 test samples and all 60 validation samples (cap from --level "
        "quick; --max-samples all to lift)"
    )
    assert line in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-samples", "0"], "--max-samples must be a positive count or 'all'"),
        (["--max-samples", "many"], "--max-samples must be a positive count or 'all'"),
        (["--level", "fast"], "unknown level 'fast'; expected one of: quick, standard, thorough"),
        (["--select", "best"], "unknown selector 'best'; expected one of: beam, deepcloak, greedy"),
    ],
)
def test_cli_bad_level_cap_or_selector_writes_nothing(
    checkpoint: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "c"
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_cli_select_records_the_search(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = ["evaluate", str(checkpoint), *CHEAP, *SMALL_DATA, "--max-samples", "40"]
    result = runner.invoke(
        app, [*args, "--select", "greedy", "--clean-budget", "0.02", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert report["config"]["select"] == "greedy"
    assert report["cloak"]["selection"]["selector"] == "greedy"
    assert report["cloak"]["selection"]["clean_budget"] == 0.02
    assert report["ratio_choice"]["reason"].startswith("mask search (greedy)")


def test_a_resumed_evaluation_with_select_gives_the_same_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepcloak.evaluation.stages as stages_module

    first = _evaluate_in(tmp_path, resume=False)

    def no_search(*args: object, **kwargs: object) -> None:
        raise AssertionError("the search ran again instead of resuming the saved fit stage")

    monkeypatch.setattr(stages_module, "search_cloak", no_search)
    again = _evaluate_in(tmp_path, resume=True)
    assert again.ratio_choice.to_json() == first.ratio_choice.to_json()
    assert again.cloak == first.cloak


def _evaluate_in(work: Path, *, resume: bool) -> EvaluationReport:
    with single_thread():
        return evaluate_cloak(
            trained_mlp(0), loader(300, 1), loader(60, 2), loader(60, 3), config=SEARCH,
            work_dir=work / "stages", resume=resume,
        )  # fmt: skip
