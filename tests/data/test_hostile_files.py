"""Hostile and malformed data files: each is refused with a DataFormatError naming the file and
the field, before memory is allocated for what its header claims.

Memory is measured with tracemalloc, which sees Python objects and numpy's buffers; every file
here is a few hundred bytes to a few KB while its header claims hundreds of MB or more.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.data import formats, images, pickles
from deepcloak.data.loader import make_loader
from deepcloak.data.sets import load_dataset
from deepcloak.errors import DataFormatError
from tests.data.test_sets import write_cifar_py, write_idx, write_mnist

MB = 1 << 20


def peak_bytes(fn: Callable[[], object]) -> int:
    """The peak traced memory while ``fn`` runs (it is expected to raise DataFormatError)."""
    tracemalloc.start()
    try:
        with pytest.raises(DataFormatError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------------------- IDX
def idx_header(magic: int, *dims: int) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims)


def test_gzipped_idx_declaring_more_than_deflate_can_hold_is_refused_unread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    # 60000 x 28 x 28 declared (47 MB), 100 bytes of data: refused from the header alone.
    path.write_bytes(gzip.compress(idx_header(0x803, 60000, 28, 28) + bytes(100)))
    read = lambda: formats.read_idx(path, magic=0x803)  # noqa: E731
    assert peak_bytes(read) < MB
    with pytest.raises(DataFormatError, match=r"idx3-ubyte.gz.*47040000 bytes.*deflate"):
        read()


def test_gzipped_idx_is_streamed_up_to_its_declared_size(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    # 4 MB declared (plausible for a 1 MB gzip file), but only 1 MB of it is present.
    noise = np.random.default_rng(0).integers(0, 256, MB, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(idx_header(0x803, 4096, 32, 32) + noise))
    read = lambda: formats.read_idx(path, magic=0x803)  # noqa: E731
    assert peak_bytes(read) < 1.5 * MB  # what is there (1 MB) plus a chunk, never 4 MB
    with pytest.raises(DataFormatError, match=r"4194304 bytes, found 1048576"):
        read()
    # More data than declared is as wrong as less.
    path.write_bytes(gzip.compress(idx_header(0x803, 2, 2, 2) + bytes(9)))
    with pytest.raises(DataFormatError, match=r"declares data of shape \(2, 2, 2\).*holds more"):
        formats.read_idx(path, magic=0x803)


def test_gzip_bomb_after_the_declared_data_is_never_decompressed(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    # 3 labels declared, then 64 MB of zeros that deflate packs into about 64 KB.
    stream = gzip.compress(idx_header(0x801, 3) + bytes(3 + 64 * MB), 9)
    path.write_bytes(stream)
    read = lambda: formats.read_idx(path, magic=0x801)  # noqa: E731
    assert len(stream) < MB and peak_bytes(read) < MB
    with pytest.raises(DataFormatError, match=r"declares data of shape \(3,\).*holds more"):
        read()


def test_corrupt_gzip_stream_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    raw = bytearray(gzip.compress(idx_header(0x801, 100) + bytes(range(100))))
    raw[-6] ^= 0xFF  # the CRC
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match=r"labels.gz: cannot read.*CRC"):
        formats.read_idx(path, magic=0x801)


def test_idx_sizes_that_overflow_64_bits_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "images"
    path.write_bytes(idx_header(0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(64))
    # (2**32 - 1)**3 overflows int64 (numpy's prod would wrap around); Python ints do not.
    with pytest.raises(DataFormatError, match=str((2**32 - 1) ** 3)):
        formats.read_idx(path, magic=0x803)


@pytest.mark.parametrize(
    ("dims", "message"),
    [((0, 28, 28), r"declares 0 images"), ((3, 0, 28), r"shape \(3, 0, 28\), with a 0")],
)
def test_empty_idx_sets_are_refused(tmp_path: Path, dims: tuple[int, ...], message: str) -> None:
    path = tmp_path / "images"
    path.write_bytes(idx_header(0x803, *dims))
    with pytest.raises(DataFormatError, match=message):
        formats.read_idx(path, magic=0x803)


def test_cli_shows_one_error_line_for_a_bad_data_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    result = CliRunner().invoke(
        app, ["train", "--data", "mnist", "--root", str(tmp_path), "--out", str(tmp_path / "m")]
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("error: ") and "declares 0 images" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------- CIFAR pickles
def cifar_py_folder(tmp_path: Path, test_batch: bytes) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder)
    (folder / "test_batch").write_bytes(test_batch)
    return folder / "test_batch"


def test_pickle_cannot_call_ndarray_to_allocate(tmp_path: Path) -> None:
    """The 391 KB pickle of the report became 200,000 images of uninitialised memory through
    ``numpy.ndarray((200000, 3072))``; this one asks for the same in 60 bytes."""
    evil = b"\x80\x02cnumpy\nndarray\nJ@\x0d\x03\x00M\x00\x0c\x86\x85R."
    path = cifar_py_folder(tmp_path, evil)
    assert peak_bytes(lambda: pickles.safe_unpickle(path)) < MB
    with pytest.raises(DataFormatError, match=r"test_batch: not a readable pickle.*ndarray"):
        load_dataset("cifar10", split="test", root=tmp_path)


def test_pickle_declaring_a_huge_bytes_object_is_refused_unallocated(tmp_path: Path) -> None:
    evil = b"\x80\x04\x8e" + (2**31).to_bytes(8, "little") + b"abc."  # BINBYTES8, 2 GB
    path = cifar_py_folder(tmp_path, evil)
    assert peak_bytes(lambda: pickles.safe_unpickle(path)) < MB


def test_pickle_of_many_small_objects_is_refused(tmp_path: Path) -> None:
    # 1 byte per EMPTY_DICT opcode, ~64 bytes per dict: bounded by MAX_EXPANSION.
    evil = b"\x80\x02(" + b"}" * (1 << 18) + b"l."
    path = cifar_py_folder(tmp_path, evil)
    with pytest.raises(DataFormatError, match=r"would build about \d+ bytes of objects"):
        pickles.safe_unpickle(path)


class _OddDtype:
    """Pickles as numpy's dtype does, with a state that makes a 1-byte dtype a 1000-item
    sub-array: an item size that disagrees with the layout."""

    def __reduce__(self) -> tuple[object, ...]:
        state = (3, "|", (np.dtype("u1"), (1000,)), None, None, -1, -1, 0)
        return np.dtype, ("u1", False, True), state


def test_pickle_cannot_give_a_dtype_an_odd_layout(tmp_path: Path) -> None:
    path = cifar_py_folder(tmp_path, pickle.dumps({b"data": _OddDtype()}, protocol=2))
    with pytest.raises(DataFormatError, match=r"not a readable pickle.*unexpected dtype state"):
        pickles.safe_unpickle(path)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1.0]}, r"'labels'\[1\] is 1.0"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, True]}, r"'labels'\[1\] is True"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, r"'labels' is 1, expected"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"label 10 at record 1"),
        (  # once an OverflowError from numpy (issue 15)
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [2**70, 0]},
            rf"label {2**70} at record 0 is outside 0\.\.9",
        ),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}, r"label -1 at record 1"),
        (
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": np.array([0.0, 1.0])},
            r"'labels' is a float64 array",
        ),
        ({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, r"'data' is \(0, 3072\)"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"'data' is \(2, 3072\)"),
        ({b"labels": [0, 1]}, r"key 'data'; it is missing"),
        ([1, 2], r"holds a list, expected a dict"),
    ],
)
def test_cifar_python_fields_are_checked(tmp_path: Path, batch: object, message: str) -> None:
    cifar_py_folder(tmp_path, pickle.dumps(batch, protocol=2))
    with pytest.raises(DataFormatError, match=r"test_batch: .*" + message):
        load_dataset("cifar10", split="test", root=tmp_path)


def test_non_utf8_class_names_name_the_file_and_offset(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(bytes(3073))
    (folder / "batches.meta.txt").write_bytes(b"plane\ncar\xff\n")
    with pytest.raises(DataFormatError, match=r"batches.meta.txt: not UTF-8.*0xff at offset 9"):
        load_dataset("cifar10", split="test", root=tmp_path)


# -------------------------------------------------------------------------------------- images
def png_declaring(path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose header is patched to declare ``width x height`` (CRC fixed)."""
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)
    raw = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    raw[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    raw[ihdr + 13 : ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(raw[ihdr - 4 : ihdr + 13])))
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [
        (100_000, 100_000, r"declares too many pixels"),  # Pillow's own bomb error, translated
        (9_000, 9_000, r"declares 9000 x 9000 = 81000000 pixels, more than the 67108864 allowed"),
        (3_000, 3_000, r"declares 3000 x 3000 = 9000000 pixels, more than its \d+ bytes can hold"),
        (0, 4, r"not a readable image|declares an empty image"),
    ],
)
def test_image_headers_claiming_huge_sizes_are_refused(
    tmp_path: Path, width: int, height: int, message: str
) -> None:
    png = png_declaring(tmp_path / "bomb.png", width, height)
    with pytest.raises(DataFormatError, match=r"bomb.png: " + message):
        images.image_mode_and_size([png])


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    for name in ("a", "b"):
        path = tmp_path / name / "x.png"
        path.parent.mkdir()
        noise = np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)
        Image.fromarray(noise).save(path)
    broken = tmp_path / "b" / "x.png"
    broken.write_bytes(broken.read_bytes()[:200])
    # Headers are read when the folder is listed; pixels only when a sample is used, from
    # this process or from a DataLoader worker (whose error comes back as the same type).
    data = load_dataset("imagefolder", root=tmp_path)
    message = r"b/x.png: (cannot decode|not a readable) image"
    with pytest.raises(DataFormatError, match=message):
        data[1]
    with pytest.raises(DataFormatError, match=message):
        list(make_loader(data, batch_size=2, workers=1))
