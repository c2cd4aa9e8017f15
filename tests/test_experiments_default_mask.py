"""experiments/default_mask.py: the tables it publishes, checked cell by cell on synthetic runs."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from tests.scripts import load_script


@pytest.fixture(scope="module")
def dm() -> ModuleType:
    return load_script("experiments/default_mask.py", "default_mask")


def _run(family: str, seed: int, gain: float, drop: float, pgd: float, ceiling: float) -> Any:
    return {
        "family": family, "label": {"resnet": "ResNet-8", "vgg": "VGG-style (BN)"}[family],
        "seed": seed, "command": "python -m deepcloak harden CKPT --data fashion-mnist --eps "
        "0.04 --out OUT --device cuda",
        "saved_mask": {"validation": {"samples": 5000, "source": "test", "seed": 0,
                                      "clean_drop": 0.002, "clean_drop_upper": 0.006,
                                      "graybox_gain": gain + 0.01}},
        "default": {"test_samples": 5000, "n_removed": 7 + seed, "n_features": 64,
                    "clean": 0.92 - drop, "graybox": 0.30 + gain, "baseline_clean": 0.92,
                    "baseline_graybox": 0.30, "gain": gain, "clean_drop": drop,
                    "whitebox_fgsm": 0.31},
        "whitebox_pgd": {"unmasked": {"acc": 0.05}, "cloaked": {"acc": 0.05 + pgd}, "gain": pgd,
                         "p": 0.01 if pgd > 0.005 else 0.4},
        "ceiling": {"gain": ceiling, "n_removed": 20, "clean_drop": 0.009},
        "checkpoint": {"test_accuracy": 0.921},
        "seconds": {"cli": 12.0},
    }  # fmt: skip


def _cells(text: str, first: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_the_family_table_means_over_seeds_and_judges_the_ceiling(dm: ModuleType) -> None:
    runs = [
        _run("resnet", 0, 0.050, 0.002, 0.010, 0.060),
        _run("resnet", 1, 0.040, 0.012, 0.000, 0.060),  # over the budget on test
        _run("vgg", 0, 0.030, 0.000, 0.000, 0.070),
    ]
    results = {"environment": {"platform": "Linux", "torch": "2.x", "device_name": "H200"},
               "runs": runs, "quick": False, "device": "cuda",
               "seconds": 600.0}  # fmt: skip
    text = dm.published_section(results)
    assert text.startswith(dm.START) and text.endswith(dm.END)
    resnet = _cells(text, "ResNet-8")
    assert resnet == ["ResNet-8", "2", "7/8 of 64", "+4.5", "-0.7", "1/2", "+0.5 (1/2)", "+6.0",
                      "75%"]  # fmt: skip
    vgg = _cells(text, "VGG-style (BN)")
    assert vgg == ["VGG-style (BN)", "1", "7 of 64", "+3.0", "+0.0", "1/1", "+0.0 (0/1)", "+7.0",
                   "43%"]  # fmt: skip
    # Both miss 80% of the ceiling: by 0.8 * 6.0 - 4.5 = 0.3 and 0.8 * 7.0 - 3.0 = 2.6 points.
    assert "ResNet-8 by +0.3 points" in text and "VGG-style (BN) by +2.6 points" in text
    assert "ResNet-8 0.70 (ceiling 0.90); VGG-style (BN) 0.00 (ceiling 0.90)" in text
    assert (
        "`python -m deepcloak harden MODEL --data fashion-mnist --eps 0.04 --device cuda`" in text
    )
    rows = [x for x in text.splitlines() if x.startswith("| ResNet-8 | 1 |")]
    assert len(rows) == 1
    assert _cells(rows[0], "ResNet-8") == [
        "ResNet-8", "1", "92.1", "8", "0.20 (0.60)", "+5.0", "30.0 → 34.0", "+4.0", "-1.2",
        "31.0", "5.0 → 5.0 (0.4)", "+6.0 (20)", "67%", "12",
    ]  # fmt: skip


def test_the_tuning_winner_held_the_budget_in_every_run(dm: ModuleType) -> None:
    def run(family: str, gains: dict[str, float], drops: dict[str, float]) -> dict[str, Any]:
        settings = {}
        for s in dm.grid():
            label = dm.setting_label(s)
            d = drops.get(label, 0.0)
            settings[label] = {**s, "n_removed": 5, "val": {"gain": 0.0},
                               "test": {"gain": gains.get(label, 0.01), "clean_drop": d,
                                        "held": d <= dm.BUDGET}, "seconds": 0.1}  # fmt: skip
        return {"family": family, "settings": settings}

    planned = dm.setting_label(dm.PLANNED)
    assert planned == "w4-cw2-fb0.03"
    best, broke = "w8-cw1-fb0.05", "w8-cw0-fb0.05"
    runs = [
        run("resnet", {best: 0.06, broke: 0.09, planned: 0.05}, {broke: 0.02}),
        run("vgg", {best: 0.05, broke: 0.08, planned: 0.03}, {}),
    ]
    summary = dm.tuning_summary(runs)
    assert summary["settings"][broke]["held"] == 1 and summary["settings"][best]["held"] == 2
    assert summary["winner"] == best and summary["planned"] == planned
    assert summary["settings"][best]["gain"] == pytest.approx(0.055)
    assert summary["settings"][best]["family_gain"] == pytest.approx({"resnet": 0.06, "vgg": 0.05})
    diff = summary["winner_minus_planned"]
    assert diff["mean"] == pytest.approx(0.015) and diff["se"] == pytest.approx(0.005)
    # A tie keeps the planned defaults rather than changing them for nothing.
    assert dm.tuning_summary([run("resnet", {}, {})])["winner"] == planned
