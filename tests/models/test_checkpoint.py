"""Checkpoints round-trip exactly; every other kind of model file loads or fails clearly."""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import deepcloak
from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.io import save_tensors
from deepcloak.models.checkpoint import load_model, save_checkpoint
from deepcloak.models.zoo import create_model

FAMILIES = {
    "cnn": {"width": 4, "hidden": 8},
    "vgg": {"width": 4, "hidden": 8, "mean": [0.5], "std": [0.3]},
    "resnet": {"width": 4},
    "wrn": {"width": 4, "widen_factor": 1},
}
USER_MODULE = "deepcloak_test_user_models"


def trained_like(name: str, **kwargs: object) -> nn.Module:
    """A zoo model with non-trivial batch-norm statistics (so buffers must round-trip)."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=1, num_classes=3, input_size=8, **kwargs)
    with torch.no_grad():
        model.train()
        model(torch.rand(16, 1, 8, 8) * 2)
    return model.eval()


def assert_same_logits(a: nn.Module, b: nn.Module) -> None:
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_checkpoint_round_trip(tmp_path: Path, name: str) -> None:
    model = trained_like(name, **FAMILIES[name])
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, model, metadata={"dataset": "digits", "test_accuracy": 0.97, "seed": 0})
    loaded, meta = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert_same_logits(model, loaded)
    assert meta["arch"] == name and meta["arch_kwargs"] == model.arch_config()
    assert meta["dataset"] == "digits" and meta["test_accuracy"] == 0.97
    assert meta["deepcloak_version"] == deepcloak.__version__ and meta["source"] == "checkpoint"


def test_save_checks_what_it_writes(tmp_path: Path) -> None:
    model = trained_like("resnet", width=4)
    path = tmp_path / "m.safetensors"
    with pytest.raises(DeepCloakError, match="reserved"):
        save_checkpoint(path, model, metadata={"arch": "vgg"})
    with pytest.raises(DeepCloakError, match="JSON"):
        save_checkpoint(path, model, metadata={"when": object()})
    with pytest.raises(DataFormatError, match=r"stem\.0\.weight \(4, 1, 3, 3\) vs \(8, 1, 3, 3\)"):
        save_checkpoint(path, model, arch="resnet", arch_kwargs={**model.arch_config(), "width": 8})
    with pytest.raises(DeepCloakError, match="arch="):
        save_checkpoint(path, nn.Linear(2, 2))
    with pytest.raises(DeepCloakError, match="unknown arch"):
        save_checkpoint(path, nn.Linear(2, 2), arch="mlp", arch_kwargs={})
    assert not path.exists()


def test_torchscript_round_trip(tmp_path: Path) -> None:
    model = trained_like("resnet", width=4)
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():  # TorchScript is deprecated upstream; users still have files
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(model, torch.rand(2, 1, 8, 8)).save(str(path))
    loaded, meta = load_model(path)
    assert meta["source"] == "torchscript" and not loaded.training
    assert_same_logits(model, loaded)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user's module on sys.path, with a good factory and some bad ones."""
    (tmp_path / f"{USER_MODULE}.py").write_text(
        textwrap.dedent("""
        from torch import nn

        def build():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))

        def not_a_model():
            return 42

        def needs_args(width):
            return nn.Linear(width, 3)

        class Zoo:
            build = staticmethod(build)
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop(USER_MODULE, None)


@pytest.mark.parametrize("fmt", ["pt", "safetensors", "wrapped", "dataparallel"])
def test_factory_with_weights(user_module: Path, fmt: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))
    state = model.state_dict()
    path = user_module / f"weights.{fmt}"
    if fmt == "safetensors":
        save_file(state, path)
    elif fmt == "wrapped":
        torch.save({"state_dict": state, "epoch": 3}, path)
    elif fmt == "dataparallel":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    loaded, meta = load_model(f"{USER_MODULE}:build", weights=path)
    assert meta == {"source": "factory", "factory": f"{USER_MODULE}:build", "weights": str(path)}
    assert not loaded.training
    assert_same_logits(model, loaded)
    loaded, _ = load_model(f"{USER_MODULE}:Zoo.build", weights=path)  # dotted attribute
    assert_same_logits(model, loaded)


def test_factory_weights_that_do_not_fit(user_module: Path) -> None:
    path = user_module / "other.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(64, 5)).state_dict(), path)
    with pytest.raises(DataFormatError, match=r"2 missing \(e\.g\. 3\.weight, 3\.bias\)"):
        load_model(f"{USER_MODULE}:build", weights=path)
    with pytest.raises(DataFormatError, match=r"1\.weight \(5, 64\) vs \(8, 64\)"):
        load_model(f"{USER_MODULE}:build", weights=path)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("deepcloak_no_such_pkg.models:build", DeepCloakError, "no module named"),
        (f"{USER_MODULE}:nope", DeepCloakError, "has no attribute 'nope'.*build"),
        (f"{USER_MODULE}:not_a_model", DeepCloakError, "returned a int"),
        (f"{USER_MODULE}:needs_args", DeepCloakError, "no arguments"),
        ("no/such/file.pt", DataFormatError, "no such file"),
    ],
)
def test_bad_specs(user_module: Path, spec: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_model(spec, random_weights=":" in spec)  # past the weights check, to the factory


def test_pickle_refused_unless_allowed(tmp_path: Path) -> None:
    model = trained_like("cnn", width=4, hidden=8)
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(DeepCloakError, match=r"can run arbitrary code.*--allow-pickle"):
        load_model(path)
    loaded, meta = load_model(path, allow_pickle=True)
    assert meta["source"] == "pickle" and not loaded.training
    assert_same_logits(model, loaded)


@pytest.mark.parametrize("zipped", [True, False])
def test_state_dict_alone_is_not_a_model(tmp_path: Path, zipped: bool) -> None:
    path = tmp_path / "weights.pt"
    state = trained_like("cnn", width=4, hidden=8).state_dict()
    torch.save(state, path, _use_new_zipfile_serialization=zipped)  # False: the pre-1.6 format
    with pytest.raises(DataFormatError, match=r"state_dict.*factory"):
        load_model(path)
    with pytest.raises(DeepCloakError, match=r"only used with a 'package\.module:factory'"):
        load_model(path, weights=path)


def test_corrupt_and_foreign_files(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, trained_like("cnn", width=4, hidden=8))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataFormatError, match="not a readable safetensors"):
        load_model(truncated)
    garbage = tmp_path / "model.bin"
    garbage.write_bytes(b"hello, not a model")
    with pytest.raises(DataFormatError, match="unknown model file format"):
        load_model(garbage)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, bare)
    with pytest.raises(DataFormatError, match=r"holds only weights.*factory"):
        load_model(bare)
    mask = tmp_path / "mask.safetensors"
    save_tensors(mask, {"mask": torch.ones(4)}, {"format": "deepcloak.cloak.mask"})
    with pytest.raises(DataFormatError, match="not a model checkpoint"):
        load_model(mask)


def test_a_factory_without_weights_is_refused_unless_random_weights_are_asked_for(
    user_module: Path,
) -> None:
    spec = f"{USER_MODULE}:build"
    with pytest.raises(DeepCloakError, match=r"random, unseeded model.*--random-weights"):
        load_model(spec)
    before = torch.random.get_rng_state()
    a, meta = load_model(spec, random_weights=True, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is left alone
    b, _ = load_model(spec, random_weights=True, seed=3)
    c, _ = load_model(spec, random_weights=True, seed=4)
    assert meta == {"source": "factory", "factory": spec, "weights": None, "random_weights_seed": 3}
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))
    with pytest.raises(DeepCloakError, match="give weights or random_weights, not both"):
        load_model(spec, weights=user_module / "w.pt", random_weights=True)
    with pytest.raises(DeepCloakError, match="random_weights is only used with a"):
        load_model("some/file.safetensors", random_weights=True)


@pytest.mark.parametrize("shape", ["abc", [1, "8", 8], [1, 8.0, 8], [0, 8, 8], [True, 8, 8], {}])
def test_checkpoint_input_shape_that_is_not_a_shape_is_one_clear_error(
    tmp_path: Path, shape: object
) -> None:
    # Once `ValueError: invalid literal for int()` from the API and the CLI (issue 15).
    from deepcloak.sources import trained_input_shape

    model = trained_like("cnn", width=4, hidden=8)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, metadata={"input_shape": shape})
    with pytest.raises(DataFormatError, match=r"m\.safetensors: 'input_shape' must be a list"):
        load_model(path)
    with pytest.raises(DeepCloakError, match="metadata 'input_shape' must be a list of one to"):
        trained_input_shape({"input_shape": shape})
    if shape == "abc":  # and the CLI: one line, exit 2
        from typer.testing import CliRunner

        from deepcloak.cli import app

        result = CliRunner().invoke(app, ["harden", str(path), "--out", str(tmp_path / "o")])
        text = " ".join(result.output.split())  # the line wraps at the terminal's width
        assert result.exit_code == 2 and "'input_shape' must be a list" in text
