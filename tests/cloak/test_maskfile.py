"""Mask files from strangers: every malformed field is named, and no mutation escapes as
anything but deepcloak's own error."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save as st_save

from deepcloak.cloak.fit import Cloak
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DataFormatError, DeepCloakError

RATIO = 0.25


def _cloak() -> Cloak:
    scores = torch.tensor([[0.3, 2.0, 0.1], [1.5, 0.7, 0.9]], dtype=torch.float64)
    return Cloak(LayerRef("fc", Side.INPUT), scores, "deepcloak", {"name": "fgsm", "eps": 0.1}, 8)


def _parts() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    cloak = _cloak()
    keep = torch.ones(6, dtype=torch.bool)
    keep[cloak.ranking[: cloak.n_removed(RATIO)]] = False
    return {"mask": keep.view(2, 3).to(torch.uint8), "scores": cloak.scores}, cloak.metadata(RATIO)


def _write(path: Path, tensors: dict[str, torch.Tensor], meta: Any, raw: str | None = None) -> Path:
    text = raw if raw is not None else json.dumps(meta)
    path.write_bytes(st_save(tensors, metadata={"deepcloak": text}))
    return path


def test_a_valid_file_round_trips(tmp_path: Path) -> None:
    tensors, meta = _parts()
    cloak, ratio = Cloak.load(_write(tmp_path / "ok.safetensors", tensors, meta))
    assert ratio == RATIO and cloak.layer == LayerRef("fc", Side.INPUT)
    torch.testing.assert_close(cloak.scores, _cloak().scores)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.pop(key)


META_CASES: list[tuple[Callable[[dict[str, Any]], None], str]] = [
    *[(_drop(k), k) for k in ("format", "layer", "feature_shape", "score", "attack")],
    *[(_drop(k), k) for k in ("n_samples", "seed", "ratio", "n_removed")],
    (_set("format", "deepcloak-mask/9"), "format"),
    (_set("layer", "fc"), "layer"),
    (_set("layer", {"name": "fc", "side": "middle"}), "layer.side"),
    (_set("layer", {"name": 3, "side": "input"}), "layer.name"),
    (_set("feature_shape", "2x3"), "feature_shape"),
    (_set("feature_shape", [2, 0]), "feature_shape"),
    (_set("feature_shape", [3, 2]), "tensor 'scores'"),
    (_set("ratio", "0.25"), "ratio"),
    (_set("ratio", math.nan), "ratio"),
    (_set("ratio", 1.0), "ratio"),
    (_set("ratio", -0.1), "ratio"),
    (_set("ratio", True), "ratio"),
    (_set("ratio", 0.5), "n_removed"),
    (_set("n_removed", 3), "n_removed"),
    (_set("n_samples", 1.5), "n_samples"),
    (_set("n_samples", 0), "n_samples"),
    (_set("seed", "0"), "seed"),
    (_set("attack", ["fgsm"]), "attack"),
    (_set("score", None), "score"),
]


@pytest.mark.parametrize(("mutate", "field"), META_CASES)
def test_each_malformed_field_is_named(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], field: str
) -> None:
    tensors, meta = _parts()
    mutate(meta)
    path = _write(tmp_path / "bad.safetensors", tensors, meta)
    with pytest.raises(DataFormatError, match=rf"bad\.safetensors.*{field}"):
        Cloak.load(path)


def _tensor_case(name: str, value: torch.Tensor | None) -> Callable[[dict[str, Any]], None]:
    def mutate(tensors: dict[str, Any]) -> None:
        if value is None:
            tensors.pop(name)
        else:
            tensors[name] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (_tensor_case("scores", None), "'scores': missing"),
        (_tensor_case("mask", None), "'mask': missing"),
        (_tensor_case("scores", torch.zeros(6, dtype=torch.float64)), "'scores': shape"),
        (_tensor_case("scores", torch.ones(2, 3, dtype=torch.int64)), "floating point"),
        (_tensor_case("scores", torch.full((2, 3), math.inf)), "NaN or inf"),
        (_tensor_case("mask", torch.full((2, 3), 2, dtype=torch.uint8)), "0/1 values"),
        (_tensor_case("mask", torch.ones(2, 3, dtype=torch.uint8)), "is not the mask"),
    ],
)
def test_each_malformed_tensor_is_named(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], problem: str
) -> None:
    tensors, meta = _parts()
    mutate(tensors)
    with pytest.raises(DataFormatError, match=rf"bad\.safetensors.*{problem}"):
        Cloak.load(_write(tmp_path / "bad.safetensors", tensors, meta))


@pytest.mark.parametrize(
    ("raw", "problem"), [("{not json", "metadata"), ("[1, 2]", "metadata.*object")]
)
def test_metadata_that_is_not_a_json_object(tmp_path: Path, raw: str, problem: str) -> None:
    tensors, _ = _parts()
    with pytest.raises(DataFormatError, match=rf"bad\.safetensors.*{problem}"):
        Cloak.load(_write(tmp_path / "bad.safetensors", tensors, None, raw=raw))


def _valid_bytes() -> bytes:
    tensors, meta = _parts()
    return st_save(tensors, metadata={"deepcloak": json.dumps(meta)})


VALID = _valid_bytes()


def _load_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    start = time.perf_counter()
    with contextlib.suppress(DeepCloakError):  # the only error a stranger's file may cause
        Cloak.load(path)
    assert time.perf_counter() - start < 2.0


@given(cut=st.integers(0, len(VALID) - 1))
def test_truncated_files_raise_only_deepcloak_errors(tmp_path_factory: Any, cut: int) -> None:
    with pytest.raises(DeepCloakError):
        Cloak.load(_path(tmp_path_factory, VALID[:cut]))


@given(flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_files_raise_only_deepcloak_errors(
    tmp_path_factory: Any, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(VALID)
    for pos, byte in flips:
        data[pos] = byte
    _load_bytes(tmp_path_factory.mktemp("fuzz"), bytes(data))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@given(key=st.sampled_from([*sorted(_parts()[1]), "extra"]), value=JSON)
def test_mutated_metadata_raises_only_deepcloak_errors(
    tmp_path_factory: Any, key: str, value: Any
) -> None:
    tensors, meta = _parts()
    meta[key] = value
    _load_bytes(
        tmp_path_factory.mktemp("fuzz"), st_save(tensors, metadata={"deepcloak": json.dumps(meta)})
    )


def _path(tmp_path_factory: Any, data: bytes) -> Path:
    path: Path = tmp_path_factory.mktemp("fuzz") / "cut.safetensors"
    path.write_bytes(data)
    return path
