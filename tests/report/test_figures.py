"""Figures: one helper, Figure objects without pyplot, ratios in %, every band in the legend."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.evaluation.results import AccuracyResult, SweepResult, SweepRow, ThreatModel
from deepcloak.report.figures import (
    Series,
    accuracy_figure,
    eps_figure,
    png,
    ratio_figure,
    sweep_figure,
)
from tests.robust_toys import toy_report

N = 50


def _result(defense: str, tm: str, correct: int, ratio: float, masks: int = 1) -> AccuracyResult:
    vector = torch.arange(N) < correct  # (N,)
    attack = {"name": "none"} if tm == "clean" else {"name": "fgsm", "eps": 0.1}
    return AccuracyResult(
        defense, ThreatModel(tm), attack, vector.repeat(masks, 1) if masks > 1 else vector, ratio
    )


def _sweep() -> SweepResult:
    rows = [
        SweepRow(
            ratio=r,
            n_removed=round(r * 20),
            clean=_result("cloaked", "clean", 45 - int(20 * r), r),
            graybox=_result("cloaked", "gray-box", 10 + int(20 * r), r),
            random_clean=_result("random-mask", "clean", 44, r, masks=3),
            random_graybox=_result("random-mask", "gray-box", 11, r, masks=3),
            whitebox=(_result("cloaked", "white-box", 5, r),),
        )
        for r in (0.0, 0.1, 0.5)
    ]
    return SweepResult(
        rows=rows, layer=LayerRef("fc", Side.INPUT), n_features=20, score="deepcloak",
        attack={"name": "fgsm", "eps": 0.1}, whitebox_attacks=[{"name": "fgsm", "eps": 0.1}],
        n_random=3, seed=0, used_cached_head=True,
    )  # fmt: skip


def _bands_are_named(fig) -> None:  # type: ignore[no-untyped-def]
    ax = fig.axes[0]
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert ax.collections, "expected shaded bands"
    for band in ax.collections:
        assert not band.get_label().startswith("_") and band.get_label() in legend


def test_sweep_figure_shows_ratios_in_percent_and_names_every_band() -> None:
    fig = sweep_figure(_sweep(), title="t")
    ax = fig.axes[0]
    assert "%" in ax.get_xlabel()
    assert max(max(line.get_xdata()) for line in ax.get_lines()) == pytest.approx(50.0)
    _bands_are_named(fig)
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "Wilson" in legend and "random-mask mean" in legend and "white-box FGSM" in legend
    assert png(fig).startswith(b"\x89PNG") and png(fig) == png(sweep_figure(_sweep(), title="t"))


def test_evaluation_figures_share_the_helper_and_conventions() -> None:
    report = toy_report(ratio=0.1)
    ratio = ratio_figure(report)
    assert "%" in ratio.axes[0].get_xlabel()
    assert any(
        line.get_label().startswith("chosen ratio (10%") for line in ratio.axes[0].get_lines()
    )
    _bands_are_named(ratio)
    eps = eps_figure(report)
    _bands_are_named(eps)
    assert len(eps.axes[0].collections) == 3


def test_a_band_without_a_name_is_refused() -> None:
    unnamed = Series("gray-box", [0.0, 1.0], [0.5, 0.4], band=([0.4, 0.3], [0.6, 0.5]))
    with pytest.raises(ValueError, match="needs a legend label"):
        accuracy_figure([unnamed], title="t", xlabel="x")


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip()


def test_import_deepcloak_loads_neither_rich_nor_matplotlib() -> None:
    loaded = _run(
        "import sys, deepcloak; "
        "print(sorted(m for m in ('rich', 'matplotlib') if m in sys.modules))"
    )
    assert loaded == "[]"


def test_figures_never_touch_pyplot_or_the_global_backend() -> None:
    code = (
        # (matplotlib.get_backend() itself imports pyplot: read the raw setting instead)
        "import sys, matplotlib as mpl; "
        "backend = lambda: dict.__getitem__(mpl.rcParams, 'backend'); "
        "before = backend(); from deepcloak.report.figures import Series, accuracy_figure, png; "
        "png(accuracy_figure([Series('a', [0, 1], [0.5, 0.6])], title='t', xlabel='x')); "
        "print('matplotlib.pyplot' in sys.modules, backend() == before)"
    )
    assert _run(code) == "False True"
