"""Fuzzing the data readers: mutated and truncated valid files raise only deepcloak's errors,
take memory bounded by the file's size, and finish quickly.

Memory is the peak tracemalloc sees while reading, which covers Python objects and numpy's
buffers (everything these readers allocate, except inside Pillow: for images the declared size
is checked against the file's instead). Budgets: ``tests/fuzz_settings.py``.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import given
from PIL import Image

from deepcloak.data import formats, images, pickles
from deepcloak.errors import DeepCloakError
from tests.data.test_sets import py2_style_pickle
from tests.fuzz_settings import fuzz_settings, mutated, quickly

T = TypeVar("T")
KIB = 1 << 10
RNG = np.random.default_rng(7)


def read_bounded(path: Path, data: bytes, read: Callable[[], T], *, limit: int) -> T | None:
    """Write ``data`` to ``path``, read it with ``read``; ``None`` when deepcloak refused it.

    Any exception other than a DeepCloakError fails the test, as does a peak of traced memory
    above ``limit`` bytes or an example slower than the time bound.
    """
    path.write_bytes(data)
    tracemalloc.start()
    try:
        with quickly():
            try:
                result: T | None = read()
            except DeepCloakError:
                result = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= limit, f"peak {peak} bytes reading {len(data)} bytes (limit {limit})"
    return result


# ----------------------------------------------------------------------------------------- IDX
IDX_IMAGES = (
    struct.pack(">IIII", 0x803, 4, 28, 28)
    + RNG.integers(0, 256, 4 * 784).astype(np.uint8).tobytes()
)
IDX_LABELS = struct.pack(">II", 0x801, 6) + bytes([3, 1, 4, 1, 5, 9])


@fuzz_settings()
@given(data=mutated(IDX_IMAGES, header=16))
def test_fuzz_idx_raw(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    read = lambda: formats.read_idx(path, magic=formats.IDX_IMAGES_MAGIC)  # noqa: E731
    images_read = read_bounded(path, data, read, limit=2 * len(data) + 64 * KIB)
    if images_read is not None:  # accepted: exactly what the header declares, all of the file
        assert 16 + images_read.size == len(data) and images_read.ndim == 3


@fuzz_settings()
@given(data=mutated(gzip.compress(IDX_IMAGES), header=32))
def test_fuzz_idx_gzip(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    read = lambda: formats.read_idx(path, magic=formats.IDX_IMAGES_MAGIC)  # noqa: E731
    # A gzip stream holds what it decompresses to; this one a few KB, which mutations barely
    # change. Never the megabytes or gigabytes a mutated header may declare.
    read_bounded(path, data, read, limit=4 * len(IDX_IMAGES) + 256 * KIB)


@fuzz_settings()
@given(content=mutated(IDX_IMAGES, header=16))
def test_fuzz_idx_gzip_content(tmp_path: Path, content: bytes) -> None:
    """A valid gzip stream of a mutated IDX file: the header's claims, not the stream, lie."""
    path = tmp_path / "train-images-idx3-ubyte.gz"
    read = lambda: formats.read_idx(path, magic=formats.IDX_IMAGES_MAGIC)  # noqa: E731
    images_read = read_bounded(
        path, gzip.compress(content), read, limit=2 * len(content) + 256 * KIB
    )
    if images_read is not None:
        assert 16 + images_read.size == len(content)


@fuzz_settings()
@given(data=mutated(IDX_LABELS, header=8))
def test_fuzz_idx_labels(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    read = lambda: formats.read_idx(path, magic=formats.IDX_LABELS_MAGIC)  # noqa: E731
    read_bounded(path, data, read, limit=2 * len(data) + 64 * KIB)


# ------------------------------------------------------------------------------------ CIFAR-10
CIFAR_BIN = (
    np.concatenate([RNG.integers(0, 10, (3, 1)), RNG.integers(0, 256, (3, 3072))], axis=1)
    .astype(np.uint8)
    .tobytes()
)


@fuzz_settings()
@given(data=mutated(CIFAR_BIN, header=4))
def test_fuzz_cifar_binary(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "test_batch.bin"
    result = read_bounded(
        path, data, lambda: formats.read_cifar_bin([path]), limit=4 * len(data) + 64 * KIB
    )
    if result is not None:
        assert len(result[0]) * 3073 == len(data) and int(result[1].max()) <= 9


def cifar_py_batches() -> list[bytes]:
    pixels = RNG.integers(0, 256, (2, 3072), dtype=np.uint8)
    batch = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [3, 8],
        b"data": pixels,
        b"filenames": [b"a.png", b"b.png"],
    }
    return [
        py2_style_pickle(batch),
        pickle.dumps({"data": pixels, "labels": [3, 8]}, protocol=5),
        pickle.dumps({"data": pixels, "labels": [3, 8]}, protocol=2),
    ]


@pytest.mark.parametrize("valid", cifar_py_batches(), ids=["py2", "protocol5", "protocol2"])
def test_fuzz_cifar_python(tmp_path: Path, valid: bytes) -> None:
    @fuzz_settings()
    @given(data=mutated(valid, header=256))
    def check(data: bytes) -> None:
        path = tmp_path / "test_batch"
        # MAX_EXPANSION bounds the objects; the raw bytes and one copy of the pixels come on top.
        limit = (pickles.MAX_EXPANSION + 4) * len(data) + pickles.EXPANSION_ALLOWANCE + 256 * KIB
        result = read_bounded(path, data, lambda: formats.read_cifar_py([path]), limit=limit)
        if result is not None:
            assert result[0].shape[1:] == (3, 32, 32) and len(result[0]) == len(result[1])

    check()


# -------------------------------------------------------------------------------------- images
def encoded(fmt: str, mode: str) -> bytes:
    pixels = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    img = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {
    "png-rgb": encoded("PNG", "RGB"),
    "png-grey": encoded("PNG", "L"),
    "png-palette": encoded("PNG", "P"),
    "png-bilevel": encoded("PNG", "1"),
    "jpeg": encoded("JPEG", "RGB"),
    "bmp": encoded("BMP", "RGB"),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_fuzz_image_files(tmp_path: Path, name: str) -> None:
    suffix = ".jpg" if name == "jpeg" else "." + name.split("-")[0]
    path = tmp_path / f"img{suffix}"

    @fuzz_settings()
    @given(data=mutated(IMAGES[name], header=40))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        with quickly():
            try:
                mode, size = images.image_mode_and_size([path])
                assert size is not None
                out = images.read_images([path], mode=mode, size=size)
            except DeepCloakError:
                return
        # Accepted: the declared size was believable for the file's bytes.
        assert out.shape[2] * out.shape[3] <= images.MAX_PIXELS_PER_BYTE * len(data)

    check()
