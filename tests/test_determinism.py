"""The same command with the same seed gives byte-identical files and identical numbers."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.data.sets import load_dataset
from deepcloak.environment import environment
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.train import train_model
from deepcloak.models.zoo import create_model
from tests.report_numbers import numbers

ARCH_KWARGS = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": 4, "blocks": 2}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Identical numbers are promised for the same thread count; the suite's is one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trained_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("cnn", **ARCH_KWARGS)
    train_set = load_dataset("digits", split="train", limit=400, seed=seed)
    train_model(model, train_set, epochs=2, batch_size=64, seed=seed)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "cnn-digits.safetensors"
    save_checkpoint(path, trained_model(), arch="cnn", arch_kwargs=ARCH_KWARGS)
    return path


def test_training_with_the_same_seed_is_identical() -> None:
    first, second = trained_model().state_dict(), trained_model().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = trained_model(seed=1).state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the seed does matter


CLOCK_KEYS = {"seconds", "environment", "time", "timings"}


def test_harden_twice_gives_identical_masks_and_numbers(checkpoint: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["harden", str(checkpoint), "--data", "digits", "--attack", "pgd", "--steps", "3",
            "--fit-samples", "300", "--test-samples", "150", "--random-masks", "2",
            "--ratio", "0.25", "--seed", "3"]  # fmt: skip
    for run in ("a", "b"):
        result = runner.invoke(app, [*args, "--out", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
    a, b = tmp_path / "a", tmp_path / "b"
    for name in ("mask.safetensors", "cloaked_model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    report_a = json.loads((a / "report.json").read_text())
    report_b = json.loads((b / "report.json").read_text())
    assert numbers(report_a, CLOCK_KEYS) == numbers(report_b, CLOCK_KEYS)
    accuracies = re.findall(r"accuracy\": (0\.\d+)", json.dumps(numbers(report_a, CLOCK_KEYS)))
    assert len(accuracies) > 100  # a sweep of numbers was compared, not blanks


def test_environment_records_threads_device_and_versions() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = environment("cpu")
        torch.set_num_threads(2)
        two = environment(torch.device("cpu"), precision="bf16")
    finally:
        torch.set_num_threads(threads)
    assert (one["threads"], two["threads"]) == (1, 2)
    assert one["device"] == "cpu" and one["device_name"] and one["precision"] == "float32"
    assert two["precision"] == "bf16" and one["torch"] == torch.__version__
    assert json.loads(json.dumps(one, allow_nan=False)) == one
