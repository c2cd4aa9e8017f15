"""The operating system saying no (disk full, read-only, a name too long) and a number JSON cannot
hold are one line naming the path and the reason, exit 2; the temporary files are removed and the
old --out is left as it was. A checkpoint whose file name is not UTF-8 is read."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.errors import DeepCloakError
from deepcloak.io import load_tensors, write_json_atomic
from deepcloak.models import recipes
from deepcloak.models.checkpoint import load_model, save_checkpoint
from deepcloak.models.train import TrainResult
from deepcloak.models.zoo import create_model
from deepcloak.report.files import MARKER, write_folder

runner = CliRunner()


def _full_disk(*args: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write() and fsync() raise it


@pytest.mark.parametrize(
    "command",
    [["train", "--data", "digits"], ["harden", "no-such-model"], ["evaluate", "no-such-model"]],
)
@pytest.mark.parametrize("size", [250, 300])
def test_an_out_name_too_long_fails_at_once_in_one_line(
    tmp_path: Path, command: list[str], size: int
) -> None:
    out = tmp_path / ("x" * size)
    result = runner.invoke(app, [*command, "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = " ".join(result.output.split())  # rich may wrap the line
    assert f"is {size} bytes" in line and "give a name of at most" in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_folder_name_too_long_on_the_way_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["harden", "m", "--out", str(tmp_path / ("y" * 300) / "run")])
    assert result.exit_code == 2 and "more than the 255" in " ".join(result.output.split())


def test_a_full_disk_while_writing_outputs_keeps_the_old_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / MARKER).write_text("deepcloak")
    (out / "report.json").write_text('{"old": true}')
    monkeypatch.setattr(os, "fsync", _full_disk)
    with pytest.raises(DeepCloakError) as caught:
        write_folder(out, lambda d: {"report": _write(d / "report.json", {"new": True})})
    message = str(caught.value)
    assert "\n" not in message and str(out) in message and "No space left" in message, message
    assert "report.json" in message and "left as it was" in message
    assert (out / "report.json").read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the temporary folder is gone


def _write(path: Path, obj: Any) -> Path:
    write_json_atomic(path, obj)
    return path


def test_a_full_disk_while_saving_a_trained_model_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"old")
    monkeypatch.setattr(os, "fsync", _full_disk)
    trained = TrainResult(1, 0.0, 0.0, None, 0.0, ())  # the write is what this test is about
    monkeypatch.setattr(recipes, "train_model", lambda *a, **k: trained)
    args = ["train", "--model", "cnn", "--data", "digits", "--width", "4", "--limit", "16"]
    result = runner.invoke(app, [*args, "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 2, result.output
    # one line, however long the path (it failed once pytest's folder reached pytest-100)
    assert result.output.strip() == f"error: {out}: No space left on device (ENOSPC)", result.output
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [out.name]


def test_a_number_json_cannot_hold_is_one_line_naming_where(tmp_path: Path) -> None:
    out = tmp_path / "run"
    report = {"results": [{"accuracy": 0.5}, {"accuracy": math.nan}]}
    with pytest.raises(DeepCloakError, match=r"results\[1\]\.accuracy is nan") as caught:
        write_folder(out, lambda d: {"report": _write(d / "report.json", report)})
    assert "\n" not in str(caught.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_checkpoint_whose_name_is_not_utf8_is_read(tmp_path: Path) -> None:
    kwargs = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": 4}
    model = create_model("cnn", **kwargs)
    path = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/model-\xff.safetensors"))
    save_checkpoint(path, model, arch="cnn", arch_kwargs=kwargs)
    loaded, _ = load_model(path)
    x = torch.rand(2, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert load_tensors(path)[0].keys() == load_tensors(path, follow_symlinks=False)[0].keys()


def test_weights_whose_name_is_not_utf8_are_read(tmp_path: Path) -> None:
    from safetensors.torch import save

    from deepcloak.models.weights import read_weights as _read_weights

    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8, width=4)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/weights-\xff.safetensors"))
    path.write_bytes(save(state))  # the safetensors library itself cannot open this name
    read = _read_weights(path, allow_pickle=False)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], v) for k, v in state.items())
