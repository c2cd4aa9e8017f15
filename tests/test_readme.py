"""The README's Python example runs as written (on a tiny model and digits)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from deepcloak.data.sets import load_dataset
from deepcloak.models.zoo import create_model

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    torch.manual_seed(0)
    namespace = {
        "model": create_model("cnn", in_channels=1, num_classes=10, input_size=8).eval(),
        "train_set": load_dataset("digits", split="train", limit=128),
        "test_set": load_dataset("digits", split="test", limit=64),
        "print": lambda *args: None,
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert os.path.exists("mask.safetensors")
    assert type(namespace["model"].classifier[-1]) is torch.nn.Linear  # folded in place
