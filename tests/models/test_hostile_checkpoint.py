"""Hostile and malformed checkpoints: checked field by field, and against the tensors they hold,
before any tensor is allocated."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from deepcloak.errors import DataFormatError
from deepcloak.io import load_tensors, read_header
from deepcloak.models import checkpoint
from deepcloak.models.checkpoint import load_model, save_checkpoint
from deepcloak.models.zoo import create_model

SRC = Path(__file__).resolve().parents[2] / "src"


def small_checkpoint(path: Path) -> Path:
    """A real ResNet-8 checkpoint of width 2 on 1x8x8 inputs (about 6 KB)."""
    torch.manual_seed(0)
    model = create_model("resnet", in_channels=1, num_classes=3, input_size=8, width=2)
    save_checkpoint(path, model)
    return path


def with_kwargs(path: Path, **kwargs: Any) -> dict[str, Any]:
    """The checkpoint's ``arch_kwargs`` updated with ``kwargs``."""
    meta = read_header(path).metadata
    assert meta is not None
    return {**meta["arch_kwargs"], **kwargs}


def rewrite(path: Path, out: Path, *, header: dict[str, Any] | None = None, **meta: Any) -> Path:
    """Copy the safetensors file ``path`` to ``out`` with its header replaced by ``header`` or
    with deepcloak metadata fields updated by ``meta`` (a value ``...`` deletes the field)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    old = json.loads(raw[8 : 8 + n])
    if header is None:
        header = old
        fields = json.loads(header["__metadata__"]["deepcloak"])
        fields.update(meta)
        fields = {k: v for k, v in fields.items() if v is not ...}
        header["__metadata__"]["deepcloak"] = json.dumps(fields)
    text = json.dumps(header).encode()
    out.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    return out


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return small_checkpoint(tmp_path / "good.safetensors")


def test_huge_arch_kwargs_are_refused_on_the_meta_device(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices: list[str] = []

    def recording_create_model(*args: Any, **kwargs: Any) -> torch.nn.Module:
        devices.append(torch.empty(0).device.type)  # the device the model would be built on
        return create_model(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "create_model", recording_create_model)
    evil = rewrite(good, tmp_path / "evil.safetensors", arch_kwargs=with_kwargs(good, width=4096))
    with pytest.raises(DataFormatError, match=r"evil.safetensors.*with another shape"):
        load_model(evil)
    assert devices == ["meta"]
    load_model(good)
    assert devices == ["meta", "meta", "cpu"]


def test_a_small_checkpoint_never_costs_hundreds_of_mb(good: Path, tmp_path: Path) -> None:
    """Measured in a fresh process: the peak resident memory barely moves while loading."""
    evil = rewrite(good, tmp_path / "evil.safetensors", arch_kwargs=with_kwargs(good, width=512))
    assert evil.stat().st_size < 12_000
    script = textwrap.dedent(f"""
        import resource
        from deepcloak.errors import DataFormatError
        from deepcloak.models.checkpoint import load_model
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_model({str(evil)!r})
        except DataFormatError:
            pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    env = {"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    grown_kib = int(done.stdout.split()[-1])
    # Built for real, width 512 would take about 700 MB; checked first, it takes next to none.
    assert grown_kib < 50 * 1024, done.stdout


def test_layer_counts_are_bounded_by_the_tensors_stored(good: Path, tmp_path: Path) -> None:
    deep = with_kwargs(good, depth=6 * 10**6 + 2)
    evil = rewrite(good, tmp_path / "deep.safetensors", arch_kwargs=deep)
    with pytest.raises(DataFormatError, match=r"\{'depth': 6000002\} ask for more layers"):
        load_model(evil)
    vgg = {"in_channels": 1, "num_classes": 3, "input_size": 8, "stages": 9, "convs_per_stage": 9}
    evil = rewrite(good, tmp_path / "vgg.safetensors", arch="vgg", arch_kwargs=vgg)
    with pytest.raises(DataFormatError, match=r"ask for more layers than the \d+ tensors"):
        load_model(evil)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "deepcloak.cloak.mask"}, r"'format' is 'deepcloak.cloak.mask'"),
        ({"format": ...}, r"'format' is None"),
        ({"format_version": 2}, r"'format_version' is 2, expected an int <= 1"),
        ({"format_version": "1"}, r"'format_version' is '1'"),
        ({"arch": ...}, r"'arch' is None, expected one of: cnn"),
        ({"arch": 3}, r"'arch' is 3"),
        ({"arch": "resnet50"}, r"'arch' is 'resnet50'"),
        ({"arch_kwargs": ...}, r"'arch_kwargs' is None, expected an object"),
        ({"arch_kwargs": [1]}, r"'arch_kwargs' is \[1\]"),
        ({"arch_kwargs": {"width": {"a": 1}}}, r"'arch_kwargs'.width is \{'a': 1\}"),
        ({"arch_kwargs": {"width": -1}}, r"cannot rebuild the model.*width"),
        ({"arch_kwargs": {"width": 10**18}}, r"cannot rebuild the model"),
        ({"arch_kwargs": {"colour": 1}}, r"cannot rebuild the model.*no option colour"),
    ],
)
def test_every_metadata_field_is_checked(
    good: Path, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    if isinstance(fields.get("arch_kwargs"), dict):  # a change to a real model's options
        fields = {"arch_kwargs": with_kwargs(good, **fields["arch_kwargs"])}
    bad = rewrite(good, tmp_path / "bad.safetensors", **fields)
    with pytest.raises(DataFormatError, match=r"bad.safetensors: .*" + message):
        load_model(bad)


def header_of(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    return dict(json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")]))


def first_tensor(header: dict[str, Any]) -> str:
    return next(k for k in header if k != "__metadata__")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h, k: h.update({"__metadata__": {"deepcloak": "[1, 2]"}}), r"a JSON list"),
        (lambda h, k: h.update({"__metadata__": {"deepcloak": "{nope"}}), r"is not JSON"),
        (lambda h, k: h.update({"__metadata__": {"deepcloak": 3}}), r"map of strings"),
        (lambda h, k: h.update({"__metadata__": {"deepcloak": "[" * 10**5}}), r"is not JSON"),
        (lambda h, k: h[k].update(dtype="F128"), r"'dtype' is 'F128'"),
        (lambda h, k: h[k].update(dtype=["F32"]), r"'dtype' is \['F32'\]"),
        (lambda h, k: h[k].update(shape=[-1]), r"'shape' is \[-1\]"),
        (lambda h, k: h[k].update(shape=[2**40, 2**40]), r"needs \d+ bytes, 'data_offsets' give"),
        (lambda h, k: h[k].update(data_offsets=[0, 10**12]), r"'data_offsets' is \[0, \d+\]"),
        (lambda h, k: h[k].update(data_offsets=[8, 4]), r"'data_offsets' is \[8, 4\]"),
        (lambda h, k: h.update({k: [1]}), r"expected an object with dtype"),
    ],
)
def test_every_header_field_is_checked(
    good: Path, tmp_path: Path, change: Any, message: str
) -> None:
    header = header_of(good)
    change(header, first_tensor(header))
    bad = rewrite(good, tmp_path / "bad.safetensors", header=header)
    with pytest.raises(DataFormatError, match=r"bad.safetensors: .*" + message):
        read_header(bad)
    with pytest.raises(DataFormatError, match=r"bad.safetensors: .*" + message):
        load_model(bad)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", r"declare a -1-byte header in a 0-byte file"),
        (struct.pack("<Q", 10**9) + b"{}", r"declare a 1000000000-byte header"),
        (struct.pack("<Q", 4) + b"[1,]", r"header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", r"header is not a JSON object"),
        (struct.pack("<Q", 10**5) + b"[" * 10**5, r"header is not JSON.*recursion"),
        (struct.pack("<Q", 2) + b"\xff\xfe", r"header is not JSON"),
    ],
)
def test_garbage_is_not_a_readable_safetensors_file(
    tmp_path: Path, raw: bytes, message: str
) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(raw)
    with pytest.raises(
        DataFormatError, match=r"x.safetensors: not a readable safetensors.*" + message
    ):
        load_tensors(path)


def test_load_tensors_returns_what_the_header_declares(good: Path) -> None:
    header = read_header(good)
    tensors, meta = load_tensors(good)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        k: s.shape for k, s in header.tensors.items()
    }
    assert meta == header.metadata and meta["arch"] == "resnet"
    assert sum(t.numel() * t.element_size() for t in tensors.values()) < good.stat().st_size
