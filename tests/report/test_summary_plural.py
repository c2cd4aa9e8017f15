"""The one-line comparison with the paper's score names one feature in the singular."""

from __future__ import annotations

from deepcloak.report.summary import paper_line


def _side(n: int, gain: float) -> dict[str, object]:
    share = {"accuracy": 0.5, "interval": [0.4, 0.6]}
    return {"n_removed": n, "test": {"clean": share, "graybox": share, "clean_drop": 0.0,
                                     "graybox_gain": gain}}  # fmt: skip


def test_one_feature_is_singular_and_more_are_plural() -> None:
    assert "removes 1 feature: test clean" in paper_line(_side(1, 0.01), _side(7, 0.05))
    assert "removes 3 features: test clean" in paper_line(_side(3, 0.01), _side(7, 0.05))
