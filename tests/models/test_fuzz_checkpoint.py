"""Fuzzing checkpoints and safetensors reading: mutated files and arbitrary metadata raise only
deepcloak's errors, load no more than the file holds, and finish quickly.

Torch's allocations are not visible to tracemalloc, so the memory bound is checked on what is
loaded (it never exceeds the file) and by the meta-device check that runs before any tensor is
allocated (``tests/models/test_hostile_checkpoint.py`` measures the resident memory).
"""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st

from deepcloak.errors import DeepCloakError
from deepcloak.io import load_tensors, save_tensors
from deepcloak.models.checkpoint import CHECKPOINT_FORMAT, load_model, save_checkpoint
from deepcloak.models.zoo import create_model
from tests.fuzz_settings import fuzz_settings, mutated, quickly


def _good_checkpoint() -> bytes:
    torch.manual_seed(0)
    model = create_model("resnet", in_channels=1, num_classes=3, input_size=8, width=2)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "good.safetensors"
        save_checkpoint(path, model)
        return path.read_bytes()


GOOD = _good_checkpoint()
HEADER_LEN = int.from_bytes(GOOD[:8], "little")
HEADER = json.loads(GOOD[8 : 8 + HEADER_LEN])
META = json.loads(HEADER["__metadata__"]["deepcloak"])


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def load_or_refuse(path: Path) -> torch.nn.Module | None:
    """The loaded model, or ``None`` when deepcloak refused the file (any other error fails)."""
    with quickly():
        try:
            return load_model(path)[0]
        except DeepCloakError:
            return None


@fuzz_settings()
@given(data=mutated(GOOD, header=8 + HEADER_LEN))
def test_fuzz_checkpoint_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    model = load_or_refuse(path)
    if model is not None:
        assert state_bytes(model) <= len(data)


KWARG_NAMES = sorted(
    {*META["arch_kwargs"], "depth", "width", "stages", "blocks", "convs_per_stage", "hidden"}
    | {"max_width", "widen_factor", "mean", "std", "pool", "dropout", "stem_stride", "x"}
)
VALUES = st.one_of(
    st.integers(-3, 70),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.floats(-2, 2), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def metadata(draw: Any) -> dict[str, Any]:
    """The good checkpoint's metadata with some fields replaced, deleted or retyped."""
    meta = dict(META)
    kwargs = dict(META["arch_kwargs"])
    for name in draw(st.lists(st.sampled_from(KWARG_NAMES), max_size=3)):
        kwargs[name] = draw(VALUES)
    meta["arch_kwargs"] = draw(st.one_of(st.just(kwargs), VALUES))
    meta["arch"] = draw(st.sampled_from(["resnet", "resnet", "vgg", "cnn", "wrn", "mlp", 1]))
    meta["format"] = draw(st.sampled_from([CHECKPOINT_FORMAT] * 4 + ["deepcloak.cloak.mask", 1]))
    meta["format_version"] = draw(st.sampled_from([1, 1, 1, 2, "1", None]))
    for key in draw(st.lists(st.sampled_from(sorted(meta)), max_size=1)):
        del meta[key]
    return meta


@fuzz_settings()
@given(meta=metadata())
def test_fuzz_checkpoint_metadata(tmp_path: Path, meta: dict[str, Any]) -> None:
    header = {**HEADER, "__metadata__": {"deepcloak": json.dumps(meta)}}
    text = json.dumps(header).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + GOOD[8 + HEADER_LEN :])
    model = load_or_refuse(path)
    if model is not None:
        assert state_bytes(model) <= path.stat().st_size


def _tensors_file() -> bytes:
    tensors = {
        "scores": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "order": torch.arange(5),
        "keep": torch.ones(7, dtype=torch.bool),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.safetensors"
        save_tensors(path, tensors, {"format": "test", "ratio": 0.25})
        return path.read_bytes()


TENSORS = _tensors_file()


@fuzz_settings()
@given(data=mutated(TENSORS, header=8 + int.from_bytes(TENSORS[:8], "little")))
def test_fuzz_load_tensors(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(data)
    with quickly():
        try:
            tensors, meta = load_tensors(path)
        except DeepCloakError:
            return
    assert isinstance(meta, dict)
    assert sum(t.numel() * t.element_size() for t in tensors.values()) <= len(data)
