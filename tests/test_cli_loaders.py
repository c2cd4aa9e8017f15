"""``--batch-size`` and ``--workers`` of ``harden`` and ``evaluate`` reach the data loaders."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.errors import DeepCloakError
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.zoo import create_model


@pytest.mark.parametrize(
    ("command", "module"),
    [("harden", "deepcloak.harden"), ("evaluate", "deepcloak.evaluation.run")],
)
def test_batch_size_and_workers_reach_make_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, module: str
) -> None:
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "num_classes": 10, "input_size": 8}
    path = tmp_path / "cnn.safetensors"
    save_checkpoint(path, create_model("cnn", **kwargs), arch="cnn", arch_kwargs=kwargs)
    seen: list[dict[str, Any]] = []

    def recording(dataset: Any, **options: Any) -> Any:
        seen.append(options)
        raise DeepCloakError("stopped after the first loader")

    # by module: the package exports a function named harden
    monkeypatch.setattr(importlib.import_module(module), "make_loader", recording)
    args = [command, str(path), "--data", "digits", "--batch-size", "48", "--workers", "3",
            "--device", "cpu", "--out", str(tmp_path / "out")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "stopped after the first loader" in result.output
    assert seen[0]["batch_size"] == 48 and seen[0]["workers"] == 3
    assert seen[0]["device"] == torch.device("cpu")
