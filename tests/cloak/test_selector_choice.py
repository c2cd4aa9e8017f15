"""One selector value: parsed once, carried as it is by the configs and the search."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deepcloak.cloak import removal_sets
from deepcloak.cloak.search import search_cached
from deepcloak.cloak.selectors import SelectorChoice, parse_selector
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.harden import HardenConfig
from deepcloak.stats import wilson_interval
from tests.cloak.test_selector_settings import _layer, _toy


def test_a_spec_parses_into_one_typed_value_that_unpacks_as_name_and_settings() -> None:
    choice = parse_selector("beam:width=8,fit_budget=0.05,max_removed=4")
    assert isinstance(choice, SelectorChoice)
    name, settings = choice
    assert (name, settings["width"]) == ("beam", 8)
    assert choice.fit_budget == 0.05 and choice.max_removed == 4
    assert choice.selector_settings == {
        "width": 8, "clean_weight": 2.0, "rivals": 16, "stop_at_plateau": True,
    }  # fmt: skip
    assert SelectorChoice.of("beam", {"width": "8", "fit_budget": 0.05, "max_removed": 4}) == choice


def test_configs_hold_the_checked_selector_and_record_it_under_the_old_key() -> None:
    harden = HardenConfig(select="beam", select_params={"width": "8"})
    assert harden.selector == SelectorChoice.of("beam", {"width": 8})
    evaluation = EvaluationConfig(select="greedy", select_params={"clean_weight": 1})
    assert evaluation.cloak.selector == SelectorChoice.of("greedy", {"clean_weight": 1.0})
    for config, choice in ((harden, harden.selector), (evaluation, evaluation.cloak.selector)):
        document = config.to_json()
        assert "selector" not in document
        assert choice is not None and document["selector_settings"] == dict(choice.settings)
    assert HardenConfig(ratio=0.01).selector is None
    assert HardenConfig(ratio=0.01).to_json()["selector_settings"] == {}
    assert dataclasses.replace(evaluation.cloak, select=None).selector is None


def test_the_search_runs_the_choice_as_given_and_refuses_settings_beside_it() -> None:
    h = _toy()
    choice = parse_selector("greedy:clean_weight=1,fit_budget=0.1,max_removed=2")
    given = search_cached(h, h, _layer(), selector=choice, clean_budget=0.05)
    named = search_cached(
        h, h, _layer(), selector="greedy", clean_budget=0.05, fit_budget=0.1, max_removed=2,
        clean_weight=1,
    )  # fmt: skip
    assert (given.path, given.removed, given.settings) == (
        named.path,
        named.removed,
        named.settings,
    )
    assert given.candidates == named.candidates
    assert given.fit_budget == 0.1 and len(given.path) <= 2
    with pytest.raises(DeepCloakError, match="pass the others inside it"):
        search_cached(h, h, _layer(), selector=choice, fit_budget=0.2)
    with pytest.raises(DeepCloakError, match="pass the others inside it"):
        search_cached(h, h, _layer(), selector=choice, width=3)


def test_search_candidates_are_exact_counts_and_the_accuracies_follow_from_them() -> None:
    h = _toy(n=61)  # a prime sample count: no accuracy is a short binary fraction
    result = search_cached(h, h, _layer(), selector="greedy", clean_budget=0.2)
    z = h.clean @ h.weight.T  # brute force, the unmasked head: right when strictly above all
    rival = z.scatter(1, h.labels[:, None], float("-inf")).max(1).values
    ok = z.gather(1, h.labels[:, None]).squeeze(1) > rival
    base = result.candidates[0]
    assert (base.n, base.clean_correct) == (61, int(ok.sum()))
    for c in result.candidates:
        assert isinstance(c.clean_correct, int) and isinstance(c.adv_correct, int)
        assert c.clean_accuracy == c.clean_correct / c.n
        assert c.to_json()["adv_accuracy"] == c.adv_correct / c.n
    validation = result.selection()["validation"]
    chosen = result.chosen
    assert (validation["clean_correct"], validation["adv_correct"]) == (
        chosen.clean_correct, chosen.adv_correct,
    )  # fmt: skip
    assert validation["baseline_clean_correct"] == base.clean_correct


def test_search_choice_builds_its_intervals_from_the_recorded_counts() -> None:
    from deepcloak.evaluation.selection import search_choice

    h = _toy(n=61)
    result = search_cached(h, h, _layer(), selector="greedy", clean_budget=0.2)
    cloak, _ = result.to_cloak()
    choice = search_choice(cloak)
    base = result.candidates[0]
    assert choice.candidates[0].clean_ci == wilson_interval(base.clean_correct, 61, 0.95)
    assert choice.candidates[0].graybox_ci == wilson_interval(base.adv_correct, 61, 0.95)
    # The counts, not the rounded fractions, are read: a record without them is refused.
    assert cloak.selection is not None
    del cloak.selection["validation"]["adv_correct"]
    with pytest.raises(DeepCloakError, match="lacks its exact validation counts"):
        search_choice(cloak)


def test_ranked_candidates_moved_to_removal_sets_and_the_old_path_warns() -> None:
    with pytest.warns(DeprecationWarning, match="removal_sets.ranked_candidates"):
        from deepcloak.cloak.selectors import ranked_candidates
    assert ranked_candidates is removal_sets.ranked_candidates
    picked = ranked_candidates(
        torch.tensor([1, 3, 3]), torch.tensor([0.0, 1.0, 2.0]), torch.ones(3, dtype=torch.bool), 2
    )
    assert picked == [2, 1]
