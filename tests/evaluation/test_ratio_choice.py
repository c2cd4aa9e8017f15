from __future__ import annotations

import pytest
import torch

from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.ratio_choice import choose_ratio
from deepcloak.evaluation.results import AccuracyResult, SweepResult, SweepRow, ThreatModel
from deepcloak.stats import wilson_interval

N = 1000


def _result(tm: str, accuracy: float, ratio: float) -> AccuracyResult:
    """A result whose first ``accuracy * N`` of N samples are correct."""
    correct = torch.arange(N) < round(accuracy * N)
    return AccuracyResult("cloaked", ThreatModel(tm), {"name": "pgd"}, correct, ratio)


def _sweep(rows: list[tuple[float, float, float]]) -> SweepResult:
    """A validation sweep from ``(ratio, clean accuracy, gray-box accuracy)`` rows."""
    return SweepResult(
        rows=[
            SweepRow(
                ratio=r,
                n_removed=round(r * 100),
                clean=_result("clean", clean, r),
                graybox=_result("gray-box", gray, r),
            )
            for r, clean, gray in rows
        ],
        layer=LayerRef("fc", Side.INPUT),
        n_features=100,
        score="deepcloak",
        attack={"name": "pgd", "eps": 0.03},
        whitebox_attacks=[],
        n_random=0,
        seed=0,
        used_cached_head=True,
    )


SWEEP = _sweep(
    [
        (0.0, 0.900, 0.30),
        (0.05, 0.895, 0.40),  # loses 0.5 points: within a 1-point budget
        (0.1, 0.885, 0.50),  # loses 1.5 points
        (0.2, 0.800, 0.60),  # loses 10 points
    ]
)


def test_largest_gain_within_the_budget() -> None:
    choice = choose_ratio(SWEEP, clean_budget=0.01)
    assert choice.ratio == 0.05
    assert choice.split == "validation" and choice.clean_budget == 0.01
    assert choice.baseline_clean_accuracy == 0.9 and choice.baseline_graybox_accuracy == 0.3
    assert [c.within_budget for c in choice.candidates] == [True, True, False, False]
    assert choice.chosen is not None and choice.chosen.graybox_gain == pytest.approx(0.1)
    assert choice.attack == {"name": "pgd", "eps": 0.03} and choice.n_samples == 1000
    assert "largest gray-box gain" in choice.reason
    assert choose_ratio(SWEEP, clean_budget=0.02).ratio == 0.1
    assert choose_ratio(SWEEP, clean_budget=0.5).ratio == 0.2
    assert choose_ratio(SWEEP, clean_budget=0.0).ratio == 0.0


def test_a_drop_exactly_at_the_budget_is_allowed() -> None:
    # 0.90 - 0.89 is 0.010000000000000009 in floats.
    sweep = _sweep([(0.0, 0.90, 0.3), (0.1, 0.89, 0.4)])
    assert choose_ratio(sweep, clean_budget=0.01).ratio == 0.1


def test_ties_go_to_the_smaller_ratio_and_no_gain_keeps_zero() -> None:
    tie = _sweep([(0.0, 0.9, 0.3), (0.2, 0.9, 0.5), (0.1, 0.9, 0.5)])
    assert choose_ratio(tie).ratio == 0.1
    worse = _sweep([(0.0, 0.9, 0.3), (0.1, 0.9, 0.2), (0.2, 0.7, 0.9)])
    choice = choose_ratio(worse)
    assert choice.ratio == 0.0
    assert "no ratio raised gray-box accuracy" in choice.reason


def test_the_choice_is_recorded_as_json() -> None:
    d = choose_ratio(SWEEP).to_json()
    assert d["ratio"] == 0.05 and d["clean_budget"] == 0.01
    assert len(d["candidates"]) == 4 and d["candidates"][2]["within_budget"] is False
    # Intervals come from the exact counts (885 of 1000 clean at ratio 0.1).
    low, high = wilson_interval(885, N)
    assert d["candidates"][2]["clean_ci"]["low"] == low
    assert d["candidates"][2]["clean_ci"]["high"] == high


def test_bad_input() -> None:
    with pytest.raises(DeepCloakError, match="must include ratio 0"):
        choose_ratio(_sweep([(0.1, 0.9, 0.3)]))
    with pytest.raises(DeepCloakError, match=r"clean_budget must be a fraction in \[0, 1\]"):
        choose_ratio(SWEEP, clean_budget=1.5)
    with pytest.raises(DeepCloakError, match="clean_budget"):
        choose_ratio(SWEEP, clean_budget=-0.01)


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("RatioChoice", "deepcloak.evaluation.results"),
        ("RatioCandidate", "deepcloak.evaluation.results"),
        ("check_budget", "deepcloak.validation"),
    ],
)
def test_moved_names_still_import_from_ratio_choice_with_a_warning(name: str, home: str) -> None:
    import importlib

    import deepcloak.evaluation.ratio_choice as old

    with pytest.warns(DeprecationWarning, match=rf"moved to {home}\.{name}"):
        moved = getattr(old, name)
    assert moved is getattr(importlib.import_module(home), name)
