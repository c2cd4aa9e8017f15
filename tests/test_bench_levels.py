"""``bench/levels.py``: the levels document is generated from the code and the recorded times."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from deepcloak.evaluation.config import LEVELS, EvaluationLevel
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _levels() -> ModuleType:
    return load_script("bench/levels.py", "bench_levels")


def test_the_levels_table_comes_from_the_code() -> None:
    rows = {row[0]: row[1:] for row in _levels().level_rows()}
    for i, level in enumerate(EvaluationLevel):
        attacks = next(v for k, v in rows.items() if k.startswith("attacks"))
        assert attacks[i] == ", ".join(LEVELS[level]["attacks"])
        cap = LEVELS[level]["max_samples"]
        assert rows["test samples (cap; the search's validation samples are not capped)"][i] == (
            "all" if cap is None else f"{cap:,}"
        )


def test_the_document_is_the_rendering_of_the_recorded_times() -> None:
    module = _levels()
    times = json.loads((ROOT / "docs" / "evaluation-levels.json").read_text())
    assert (ROOT / "docs" / "evaluation-levels.md").read_text() == module.markdown(times)


def test_scaling_to_the_level_caps_is_linear_per_stage() -> None:
    run = {
        "seconds": 110.0, "stages": {"fit": 10.0, "attacks": 100.0}, "fit_samples": 1000,
        "level_fit_samples": 3000, "test_samples": 50, "level_samples": 500,
        "sample_cap_overridden": True,
    }  # fmt: skip
    # 10 s x 3 + 100 s x 10 = 1,030 s
    assert _levels()._at_level_caps(run) == "≈ 17 min (500 test samples)"
    assert _levels()._at_level_caps({**run, "sample_cap_overridden": False}) == "as measured"


def test_the_autoattack_comparison_renders_each_row() -> None:
    row = {
        "model": "resnet (seed 100, 1 epochs)", "variant": "cloaked", "eps": 0.02, "clean": 0.9,
        "peer_accuracy": 0.25, "level": "standard", "accuracy": 0.255, "only_peer": 3,
        "only_deepcloak": 1, "p_value": 0.3125, "cost_ratio": 0.2, "seconds": 20.0,
        "peer_seconds": 100.0, "n": 200, "first": 300,
    }  # fmt: skip
    lines = _levels().peer_section({"run": {"setting": "a test"}, "rows": [row]})
    assert lines[0].startswith("<!-- autoattack:start") and lines[-1] == "<!-- autoattack:end -->"
    assert (
        "| resnet (seed 100, 1 epochs) | cloaked | 0.02 | 300–499 | 90.0% | 25.0% | `standard` "
        "| 25.5% | 3 / 1 | 0.31 | 0.20 (20 s / 100 s) |"
    ) in lines
