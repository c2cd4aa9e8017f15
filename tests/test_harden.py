"""``deepcloak harden`` on our checkpoints and on users' factory models, and its errors."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.data.sets import load_dataset
from deepcloak.errors import DeepCloakError
from deepcloak.harden import HardenConfig, harden
from deepcloak.io import load_tensors
from deepcloak.models.checkpoint import load_model, save_checkpoint
from deepcloak.models.fits import check_model_fits_data
from deepcloak.models.zoo import create_model
from tests.realdata import FASHION_MNIST_MARKS

runner = CliRunner()
LIMITS = ["--fit-samples", "64", "--test-samples", "48", "--random-masks", "2"]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8)
    path = tmp_path / "cnn.safetensors"
    save_checkpoint(path, model, metadata={"data": "digits", "input_shape": [1, 8, 8]})
    return path


def test_harden_a_checkpoint_writes_report_mask_and_cloaked_checkpoint(
    checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ["harden", str(checkpoint), "--data", "digits", "--eps", "0.1", "--out", str(out)]
    result = runner.invoke(app, [*args, "--ratio", "0.25", *LIMITS])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["train_samples"] == 64 and report["sweep"]["n_samples"] == 48
    assert report["fit"]["ratio"] == 0.25 and report["fit"]["layer"]["side"] == "input"
    _, meta = load_model(str(out / "cloaked_model.safetensors"))
    assert meta["cloak"]["n_removed"] == report["fit"]["n_removed"] > 0


def test_harden_a_factory_model_saves_a_folded_state_dict(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "user_models.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            def mlp():
                torch.manual_seed(0)
                return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_models", None)
    out = tmp_path / "out"
    args = ["harden", "user_models:mlp", "--random-weights", "--out", str(out), "--ratio", "0.25"]
    result = runner.invoke(app, [*args, *LIMITS])
    assert result.exit_code == 0, result.output
    state, meta = load_tensors(out / "cloaked_state_dict.safetensors")
    assert set(state) == {"1.weight", "1.bias", "3.weight", "3.bias"}  # original keys
    removed = int((state["3.weight"].abs().sum(0) == 0).sum())
    assert removed == meta["cloak"]["n_removed"] == 4  # 25% of 16 features


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--data", "fashion-mnist"],
            "trained on inputs of shape (1, 8, 8)",
            marks=FASHION_MNIST_MARKS,
        ),
        (["--attack", "cw"], "unknown attack 'cw'"),
        (["--ratio", "1"], "ratio must be in [0, 1)"),
        (["--eps", "2"], "eps must be <= 1"),
        (["--layer", "nope"], "no layer named 'nope'"),
        (["--data", "cifar100"], "unknown data set 'cifar100'"),
    ],
)
def test_harden_bad_input_writes_nothing(
    checkpoint: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["harden", str(checkpoint), "--out", str(out), *LIMITS, *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_model_with_too_few_outputs_is_refused() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    with pytest.raises(DeepCloakError, match="10 classes but the model has 3 outputs"):
        check_model_fits_data(model, load_dataset("digits", split="test", limit=4))
    with pytest.raises(DeepCloakError, match="does not accept inputs of shape"):
        harden(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, 10)),
            load_dataset("digits", limit=8),
            load_dataset("digits", split="test", limit=8),
            HardenConfig(),
        )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_harden_a_torchscript_model_gives_a_torchscript_cloaked_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet", in_channels=1, num_classes=10, input_size=8, width=4).eval()
    traced = torch.jit.trace(model, torch.rand(2, 1, 8, 8))
    torch.jit.save(traced, str(tmp_path / "model.pt"))
    out = tmp_path / "out"
    args = ["harden", str(tmp_path / "model.pt"), "--out", str(out), "--ratio", "0.25"]
    result = runner.invoke(app, [*args, "--eps", "0.1", *LIMITS])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["sweep"]["used_cached_head"] and report["fit"]["n_removed"] == 4
    cloaked = torch.jit.load(str(out / "cloaked_model.pt"))
    # The same cloak applied to the eager model gives the same logits.
    from deepcloak.cloak.fit import Cloak

    cloak, ratio = Cloak.load(out / "mask.safetensors")
    assert cloak.layer.name == "fc"
    x = torch.rand(5, 1, 8, 8)
    expected = cloak.apply(model, ratio, fold=True)(x)
    torch.testing.assert_close(cloaked(x), expected, rtol=1e-5, atol=1e-5)


def test_scripted_view_recovers_the_features_exactly() -> None:
    from deepcloak.cloak.torchscript import ScriptedClassifier, cloakable

    torch.manual_seed(0)
    model = create_model("resnet", in_channels=1, num_classes=10, input_size=8, width=4).eval()
    with pytest.warns(DeprecationWarning):
        scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)))
    x = torch.rand(4, 1, 8, 8)
    view = cloakable(scripted, x)
    assert isinstance(view, ScriptedClassifier)
    torch.testing.assert_close(view.features(x), x.flatten(1))
    torch.testing.assert_close(view(x), scripted(x))
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(
        cloakable(traced, x).features(x),
        model.forward_head(model.forward_features(x), pre_logits=True),
    )


def test_scripted_model_with_work_after_the_head_is_refused() -> None:
    from deepcloak.cloak.torchscript import cloakable
    from deepcloak.errors import LayerError

    class Doubled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.fc(x.flatten(1)) + 1

    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(LayerError, match="cannot be cloaked"):
        cloakable(torch.jit.trace(Doubled(), x), x)


def test_evaluate_command_writes_json_and_plots(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["evaluate", str(checkpoint), "--attacks", "fgsm,pgd", "--steps", "2", "--eps", "0.1"]
    small = ["--val-samples", "60", "--test-samples", "40", "--fit-samples", "100"]
    no_baselines = ["--no-preprocessing-baselines", "--no-whitebox-baselines", "--eps-grid", "0.1"]
    result = runner.invoke(app, [*args, *small, *no_baselines, "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert (report["schema"], report["kind"]) == ("deepcloak/2", "evaluation")
    assert report["config"]["batch_size"] == 128  # the configured batch size, not the CLI's own
    assert report["run"]["data"]["validation"]["n_used"] == 60
    threat_models = {r["threat_model"] for r in report["results"]}
    assert {"clean", "gray-box", "white-box"} <= threat_models
    assert {p.suffix for p in out.iterdir() if not p.name.startswith(".")} == {".json", ".png"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attacks", "fgsm,deepfool"], "unknown attack 'deepfool'"),
        (["--eps", "3"], "eps must be <= 1"),
        pytest.param(
            ["--data", "fashion-mnist"],
            "trained on inputs of shape (1, 8, 8)",
            marks=FASHION_MNIST_MARKS,
        ),
    ],
)
def test_evaluate_bad_input_writes_nothing(
    checkpoint: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", str(checkpoint), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not out.exists()


def test_evaluate_sources_loads_splits_and_batches_as_configured(checkpoint: Path) -> None:
    from deepcloak.evaluation.config import EvaluationConfig
    from deepcloak.evaluation.run import evaluate_sources
    from deepcloak.sources import DataSource, ModelSource

    config = EvaluationConfig(
        eps=0.1, attacks=("fgsm",), ratio=0.1, ratios=(0.0, 0.1), whitebox_ratios=(0.0,),
        n_random=1, eps_grid=(0.1,), preprocessing_baselines=False, whitebox_baselines=False,
        max_samples=None, max_fit_samples=50, batch_size=7,
    )  # fmt: skip
    calls: list[tuple[str, int]] = []
    report = evaluate_sources(
        ModelSource(spec=str(checkpoint)),
        DataSource(name="digits", val_samples=30, test_samples=20, seed=1),
        config,
        progress=lambda task, done, total: calls.append((task, done)),
    )
    assert report.run["data"]["validation"]["n_used"] == 30
    assert report.run["data"]["test"]["n_used"] == 20
    fit = [done for task, done in calls if task == "fit" and done]
    assert fit[:2] == [7, 14]  # the configured batch size reaches the loaders
    with pytest.raises(DeepCloakError, match="needs validation samples"):
        evaluate_sources(
            ModelSource(spec=str(checkpoint)), DataSource(name="digits", val_samples=0), config
        )
