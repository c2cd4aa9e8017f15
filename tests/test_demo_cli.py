"""The demo end to end through the command line, and its bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.cloak.fit import Cloak
from deepcloak.data.sets import load_dataset
from deepcloak.models.checkpoint import load_model

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    result = runner.invoke(app, ["demo", "--out", str(out), "--epochs", "3", "--ratio", "0.1"])
    assert result.exit_code == 0, result.output
    assert "gray-box" in result.output and "random mask" in result.output
    return out


def test_demo_writes_report_plot_mask_and_model(demo_dir: Path) -> None:
    names = {p.name for p in demo_dir.iterdir() if not p.name.startswith(".")}
    assert names == {"report.json", "sweep.png", "mask.safetensors", "cloaked_model.safetensors"}
    report = json.loads((demo_dir / "report.json").read_text())
    assert (report["schema"], report["kind"]) == ("deepcloak/2", "harden")
    sweep = report["sweep"]
    assert [round(r["ratio"], 2) for r in sweep["ratios"]] == [i / 100 for i in range(100)]
    at_zero = {(r["defense"], r["threat_model"]): r for r in sweep["results"] if r["ratio"] == 0.0}
    gray, clean = at_zero["cloaked", "gray-box"], at_zero["cloaked", "clean"]
    assert gray["accuracy"] < clean["accuracy"]  # FGSM hurts the model
    assert at_zero["random-mask", "gray-box"]["masks"] == 5
    assert report["threat_models"]["gray-box"].startswith("samples crafted on the unmasked")
    assert report["environment"]["threads"] >= 1
    assert (demo_dir / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_saved_model_is_the_folded_cloaked_model(demo_dir: Path) -> None:
    cloak, ratio = Cloak.load(demo_dir / "mask.safetensors")
    assert ratio == 0.1 and cloak.layer.name == "fc"
    model, meta = load_model(str(demo_dir / "cloaked_model.safetensors"))
    removed = ~cloak.mask(ratio).mask.bool()
    assert bool((model.fc.weight[:, removed] == 0).all())  # folded: masked columns are zero
    assert meta["cloak"]["ratio"] == 0.1
    x, _ = load_dataset("digits", split="test", limit=20).tensors()
    feats = []
    model.fc.register_forward_pre_hook(lambda _m, a: feats.append(a[0]))
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, model.fc(feats[0] * (~removed)))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "1.5"], "ratio must be in [0, 1)"),
        (["--eps", "8"], "eps must be <= 1"),
        (["--eps", "-0.1"], "eps must be >= 0"),
    ],
)
def test_demo_bad_input_is_one_clear_line_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["demo", "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not out.exists()
