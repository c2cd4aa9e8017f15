"""``deepcloak train`` and the recipes behind it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.models.checkpoint import load_model
from deepcloak.models.recipes import RECIPES, recipe

runner = CliRunner()


def test_recipe_overrides_keep_unset_options() -> None:
    job = recipe("resnet", "fashion-mnist", epochs=None, lr=0.05, arch_kwargs={"width": 8})
    base = RECIPES[("resnet", "fashion-mnist")]
    assert job.epochs == base.epochs and job.lr == 0.05
    assert job.arch_kwargs == {**base.arch_kwargs, "width": 8}


def test_train_command_writes_a_checkpoint_with_its_recipe(tmp_path: Path) -> None:
    path = tmp_path / "cnn.safetensors"
    args = ["train", "--model", "cnn", "--data", "digits", "--epochs", "2", "--limit", "300"]
    result = runner.invoke(app, [*args, "--option", "hidden=32", "--out", str(path)])
    assert result.exit_code == 0, result.output
    model, meta = load_model(str(path))
    assert meta["arch"] == "cnn" and meta["arch_kwargs"]["hidden"] == 32
    assert meta["input_shape"] == [1, 8, 8] and meta["training"]["limit"] == 300
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and model.classifier[-1].in_features == 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "transformer"], "unknown model 'transformer'"),
        (["--option", "width"], "expected key=value"),
        (["--option", "colour=3"], "has no option colour"),
        (["--data", "svhn"], "unknown data set 'svhn'"),
        (["--epochs", "0"], "epochs must be >= 1"),
    ],
)
def test_train_bad_input_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "m.safetensors"
    result = runner.invoke(app, ["train", "--data", "digits", "--out", str(path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not path.exists()
