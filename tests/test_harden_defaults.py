"""The default: a searched mask, chosen on samples the model never trained on, said in one block."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.data.sets import load_dataset
from deepcloak.errors import DeepCloakError
from deepcloak.harden import HardenConfig, HardenResult, harden
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.train import train_model
from deepcloak.models.zoo import create_model
from deepcloak.report.summary import saved_mask_lines
from deepcloak.report.tables import sweep_markdown
from tests.counting import CountSamples

ARCH = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": 8}
FAST = {"ratios": (0.0, 0.1, 0.5), "whitebox_ratios": (0.0,), "n_random": 1, "eps": 0.15}


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("resnet", **ARCH)
    train_model(model, load_dataset("digits"), epochs=4, batch_size=64, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def searched(trained: nn.Module) -> HardenResult:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    return harden(trained, train, test, HardenConfig(**FAST))  # type: ignore[arg-type]


def test_the_default_config_searches_and_a_fixed_ratio_is_the_papers_method() -> None:
    assert HardenConfig().select == "beam" and HardenConfig().ratio is None
    paper = HardenConfig(ratio=0.01)
    assert paper.select is None and paper.ratio == 0.01 and not paper.searches
    assert HardenConfig(select=None).ratio == 0.01  # the paper's 1%
    with pytest.raises(DeepCloakError, match=r"a fixed ratio .* is the paper's method"):
        HardenConfig(select="beam", ratio=0.05)
    with pytest.raises(DeepCloakError, match="score='random' ranks features for the paper"):
        HardenConfig(score="random")
    with pytest.raises(DeepCloakError, match="unknown validation source"):
        HardenConfig(val_from="dev")


def test_the_default_chooses_on_test_samples_and_reports_on_the_rest(
    searched: HardenResult,
) -> None:
    assert searched.validation is not None and searched.search is not None
    assert searched.validation.source == "test" and searched.validation.samples == 180
    assert searched.sweep.n_samples == 180  # the other half of digits' 360 test samples
    assert searched.search.val_samples == 180 and searched.search.fit_samples == 1437
    record = searched.saved_mask()
    assert record["method"] == "search" and record["selector"] == "beam"
    assert record["n_removed"] == searched.search.n_removed
    assert record["ratio"] == pytest.approx(searched.search.n_removed / record["n_features"])
    row, base = searched.sweep.row(searched.ratio), searched.sweep.row(0.0)
    assert record["test"]["clean"]["correct"] == row.clean.n_correct
    assert record["test"]["graybox_gain"] == row.graybox.accuracy - base.graybox.accuracy
    assert record["test"]["whitebox"][0]["accuracy"] == row.whitebox[0].accuracy


def test_the_fit_samples_are_attacked_once(trained: nn.Module) -> None:
    """The search's cached features also rank the features the paper's way: no second fit."""
    train = load_dataset("digits", limit=400)
    test = load_dataset("digits", split="test", limit=100)
    counted = CountSamples(trained)
    config = HardenConfig(**{**FAST, "whitebox_ratios": (), "n_random": 0})  # type: ignore[arg-type]
    harden(counted, train, test, config)
    # Crafting a set costs 3 passes per sample (FGSM's forward, then the clean and the
    # adversarial features at L): 400 fit + 50 validation samples here, 50 test samples in the
    # sweep, and a few checks. A second crafting of the fit set (the paper's fit before the
    # search, as before) would add at least 2 x 400.
    once = 3 * (400 + 50) + 3 * 50
    assert once <= counted.samples < once + 2 * 400


def _block(result: HardenResult) -> str:
    return "\n".join(saved_mask_lines(result.saved_mask()))


def test_the_block_says_what_was_saved_and_what_it_bought(searched: HardenResult) -> None:
    record, text = searched.saved_mask(), _block(searched)
    n, total = record["n_removed"], record["n_features"]
    assert f"layer fc (input): {n} of {total} features removed" in text
    assert "chosen on 180 of the 360 test samples (seed 0)" in text
    val, test = record["validation"], record["test"]
    if record["fits_budget"]:
        assert f"upper bound {100 * val['clean_drop_upper']:.2f} <= budget 1.00" in text
    clean = test["clean"]
    assert f"test (180 samples): clean {100 * clean['accuracy']:.1f}%" in text
    assert f"gray-box FGSM(eps=0.15) {100 * test['graybox']['accuracy']:.1f}%" in text
    assert "white-box FGSM(eps=0.15) (the attacker knows the mask)" in text


def test_when_no_mask_fits_the_block_and_the_report_say_so(trained: nn.Module) -> None:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    config = HardenConfig(**FAST, clean_budget=0.0)  # type: ignore[arg-type]
    result = harden(trained, train, test, config)
    record = result.saved_mask()
    assert result.ratio == 0.0 and record["n_removed"] == 0 and record["fits_budget"] is False
    assert "no mask fits a 0-point budget" in _block(result)
    assert "the saved model is the unmasked one" in _block(result)


def test_the_table_marks_the_saved_row_and_the_extension(searched: HardenResult) -> None:
    lines = sweep_markdown(searched.sweep, saved=searched.ratio, searched=True).splitlines()
    marks = [line.rsplit("|", 2)[-2].strip() for line in lines[2:]]
    ratios = [float(line.split("|")[1].strip().rstrip("%")) / 100 for line in lines[2:]]
    assert marks.count("saved") == 1
    saved_at = ratios[marks.index("saved")]
    assert saved_at == pytest.approx(searched.ratio, abs=5e-4)
    assert all((m == "ext.") == (r > saved_at + 1e-9) for r, m in zip(ratios, marks, strict=True))


def test_validation_from_train_is_reported_as_biased(trained: nn.Module) -> None:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    config = HardenConfig(**FAST, val_from="train", val_samples=300)  # type: ignore[arg-type]
    result = harden(trained, train, test, config)
    assert result.validation is not None and result.validation.biased
    assert result.sweep.n_samples == 360 and result.search is not None
    assert result.search.fit_samples == 1437 - 300
    assert "the choice is biased" in _block(result)


@pytest.fixture(scope="module")
def checkpoint(trained: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "resnet.safetensors"
    save_checkpoint(path, trained, arch="resnet", arch_kwargs=ARCH)
    return path


def test_harden_with_no_flags_saves_the_searched_mask_and_prints_the_block(
    checkpoint: Path, tmp_path: Path
) -> None:
    args = ["harden", str(checkpoint), "--eps", "0.15", "--random-masks", "1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "saved mask: beam search" in result.output
    assert "chosen on 180 of the 360 test samples" in result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    saved = report["saved_mask"]
    assert saved["method"] == "search" and saved["validation"]["source"] == "test"
    assert report["data"]["validation"]["samples"] == 180 and report["data"]["test_samples"] == 180
    assert report["search"]["seconds"]["search"] >= 0


def test_the_papers_method_is_one_flag_away(checkpoint: Path, tmp_path: Path) -> None:
    args = ["harden", str(checkpoint), "--eps", "0.15", "--random-masks", "1"]
    result = CliRunner().invoke(
        app, [*args, "--select", "deepcloak", "--ratio", "0.05", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["saved_mask"]["method"] == "ratio" and report["config"]["select"] is None
    assert report["data"]["test_samples"] == 360  # no validation drawn from the test split
    assert report["saved_mask"]["n_removed"] == round(0.05 * report["saved_mask"]["n_features"])
    bad = CliRunner().invoke(app, [*args, "--select", "beam", "--ratio", "0.05"])
    assert bad.exit_code == 2 and "is the paper's method" in bad.output


def test_a_searched_config_is_recorded_with_its_validation_source(searched: HardenResult) -> None:
    resolved = replace(searched.config)
    assert resolved.select == "beam" and resolved.val_from == "test"
