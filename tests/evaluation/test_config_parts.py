"""The evaluation config's parts: each setting has one home, flat names still reach it."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import (
    LEVELS,
    SETTING_PARTS,
    AttackSettings,
    CheckSettings,
    CloakSettings,
    ComparisonSettings,
    EvaluationConfig,
    RuntimeSettings,
    SampleSettings,
)

PARTS = {
    "attack": AttackSettings,
    "cloak": CloakSettings,
    "compare": ComparisonSettings,
    "checks": CheckSettings,
    "samples": SampleSettings,
    "runtime": RuntimeSettings,
}

#: report.json's `config` keys (docs/schema.md), flat as before the settings had parts.
RECORDED = {
    "eps", "norm", "attacks", "steps", "restarts", "max_queries", "attack_params", "fit_eps",
    "score", "layer", "side", "ratio", "ratios", "whitebox_ratios", "clean_budget",
    "select_attack", "n_random", "eps_grid", "eps_factors", "bit_depth", "window_size",
    "preprocessing_baselines", "whitebox_baselines", "sanity_tolerance", "more_steps_factor",
    "max_unbounded_accuracy", "max_samples", "max_fit_samples", "batch_size", "confidence",
    "seed", "precision", "select", "select_params", "selector_settings", "level",
    "level_overrides",
}  # fmt: skip


def test_each_setting_lives_in_exactly_one_part() -> None:
    names = [f.name for cls in PARTS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(SETTING_PARTS)
    assert {f.name for f in dataclasses.fields(EvaluationConfig)} == {*PARTS, "level"}
    for name, part in SETTING_PARTS.items():
        assert name in {f.name for f in dataclasses.fields(PARTS[part])}
    # every setting a level fixes has a home
    assert {n for level in LEVELS.values() for n in level} <= set(SETTING_PARTS)


def test_flat_settings_go_to_their_parts() -> None:
    config = EvaluationConfig(eps=0.1, n_random=3, max_samples=None, seed=4, confidence=0.9)
    assert config.attack == AttackSettings(eps=0.1)
    assert config.compare == ComparisonSettings(n_random=3)
    assert config.samples == SampleSettings(max_samples=None)
    assert config.runtime == RuntimeSettings(seed=4)
    assert config.checks == CheckSettings(confidence=0.9)
    assert config.cloak == CloakSettings()
    assert config == EvaluationConfig(
        attack=AttackSettings(eps=0.1), compare=ComparisonSettings(n_random=3),
        samples=SampleSettings(max_samples=None), runtime=RuntimeSettings(seed=4),
        checks=CheckSettings(confidence=0.9),
    )  # fmt: skip
    # a flat setting over a given part wins; the part's other settings stay
    over = EvaluationConfig(attack=AttackSettings(eps=0.1, steps=3), steps=5)
    assert over.attack == AttackSettings(eps=0.1, steps=5)
    replaced = dataclasses.replace(config, eps=0.2, ratio=0.1)
    assert replaced.attack == AttackSettings(eps=0.2)
    assert replaced.cloak.ratio == 0.1 and replaced.cloak.select is None  # fixed ratio: ranking
    assert (replaced.compare, replaced.samples) == (config.compare, config.samples)


def test_a_part_given_whole_to_a_level_is_kept_whole() -> None:
    attack = AttackSettings(eps=0.1, steps=3)
    config = EvaluationConfig.for_level("quick", attack=attack, n_random=1)
    assert config.attack == attack  # not the quick level's attacks and steps
    assert config.compare.n_random == 1 and config.samples.max_samples == 100  # the level's
    assert {"attacks", "steps", "n_random"} <= set(config.level_overrides)


def test_bad_flat_names_and_parts_are_clear_errors() -> None:
    with pytest.raises(DeepCloakError, match=r"unknown evaluation setting 'epss'.*'eps'"):
        EvaluationConfig(epss=0.1)
    with pytest.raises(DeepCloakError, match=r"unknown evaluation setting 'steps_'"):
        EvaluationConfig.for_level("quick", steps_=3)
    with pytest.raises(DeepCloakError, match=r"attack must be AttackSettings\(...\), got dict"):
        EvaluationConfig(attack={"eps": 0.1})


@pytest.mark.parametrize(
    ("part", "settings", "message"),
    [
        (AttackSettings, {"eps": 2}, "eps must be <= 1"),
        (AttackSettings, {"attacks": ("pgd", "pgd")}, "must not repeat"),
        (CloakSettings, {"ratios": (0.1, 0.2)}, "ratios must include 0"),
        (CloakSettings, {"side": "middle"}, "unknown side 'middle'; expected one of: input"),
        (ComparisonSettings, {"n_random": 0}, "n_random must be >= 1"),
        (CheckSettings, {"more_steps_factor": 1}, "more_steps_factor must be >= 2"),
        (SampleSettings, {"batch_size": 0}, "batch_size must be an integer >= 1"),
        (RuntimeSettings, {"precision": "fp8"}, "fp8"),
    ],
)
def test_each_part_checks_its_own_settings(
    part: type, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(DeepCloakError, match=message):
        part(**settings)


def test_report_json_config_stays_flat() -> None:
    config = EvaluationConfig.for_level("quick", eps=0.1, side="input", precision="fp32")
    recorded = config.to_json()
    assert set(recorded) == RECORDED
    assert recorded["eps"] == 0.1 and recorded["side"] == "input"
    assert recorded["eps_grid"] == [0.05, 0.1, 0.2] and recorded["level"] == "quick"
    assert recorded["level_overrides"] == []


def test_flat_reads_warn_and_give_the_parts_value() -> None:
    config = EvaluationConfig(eps=0.1, n_random=3)
    with pytest.warns(DeprecationWarning, match=r"EvaluationConfig.eps moved to .*attack\.eps"):
        assert config.eps == 0.1
    with pytest.warns(DeprecationWarning, match=r"compare\.n_random"):
        assert config.n_random == 3
    with pytest.raises(AttributeError, match="no attribute 'epss'"):
        config.epss  # noqa: B018
    assert config.setting("n_random") == 3
    assert copy.deepcopy(config) == config
