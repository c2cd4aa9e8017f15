"""Readers for the IDX and CIFAR-10 files behind :mod:`deepcloak.data.sets`.

Each reader returns plain numpy arrays (images ``uint8`` ``(N, C, H, W)``, labels ``int64``
``(N,)``) and checks the file against what the format declares, so that a truncated download is
a :class:`~deepcloak.errors.DataFormatError` naming the file instead of a shape error later on.

A file may come from a stranger (see ``docs/security.md``), so each reader checks what a header
declares against what the file can hold *before* allocating for it: a raw IDX file's declared
size must equal its real one, a gzipped one is decompressed as a stream that stops at the
declared size (and may not declare more than deflate can expand its bytes to), and CIFAR-10's
pickles go through :func:`deepcloak.data.pickles.safe_unpickle`, which runs no code and bounds
the memory a pickle can claim. Image folders are read by :mod:`deepcloak.data.images`.
"""

from __future__ import annotations

import gzip
import logging
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deepcloak.data.pickles import safe_unpickle
from deepcloak.errors import DataFormatError

log = logging.getLogger(__name__)

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
#: Deflate (gzip) expands a byte to at most about 1032 bytes; a gzipped IDX file declaring more
#: data than that is refused before anything is decompressed.
GZIP_MAX_RATIO = 1032
_CHUNK = 1 << 16  # gzipped data is decompressed this many bytes at a time

CIFAR_PIXELS = 3 * 32 * 32
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# ------------------------------------------------------------------------------------- checks
def check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    """Raise :class:`DataFormatError` naming ``path`` and the first label outside the classes."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataFormatError(
            f"{path}: label {labels[bad[0]]} at record {bad[0]} is outside 0..{num_classes - 1}"
        )


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path``.

    Raises:
        DataFormatError: the file cannot be read or is not UTF-8 (the message gives the offset).
    """
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from None
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
            "expected one class name a line, in UTF-8"
        ) from None


# ---------------------------------------------------------------------------------------- IDX
def find_file(folder: Path, base: str, expected: Sequence[str]) -> Path:
    """``folder/base`` or ``folder/base.gz``, whichever exists.

    Raises:
        DataFormatError: neither exists; the message names both and the files expected there.
    """
    for candidate in (folder / base, folder / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    raise DataFormatError(
        f"{folder / base}: no such file (nor {base}.gz); expected the files "
        f"{', '.join(expected)} (each optionally gzipped) in {folder}"
    )


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the MNIST format) into an array.

    The header is a big-endian 32-bit magic number (``0x0000 08 nd``: unsigned bytes, ``nd``
    dimensions) followed by ``nd`` big-endian 32-bit sizes; the data fills the rest. The data is
    read only after its declared size has been checked against the file (a raw file) or against
    what the compressed bytes can hold (a gzipped one, then read as a stream up to that size),
    so memory never exceeds what the file really holds.

    Args:
        path: the file, gzipped when its name ends in ``.gz``.
        magic: the magic number expected (:data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`).

    Returns:
        A writable ``uint8`` array with the declared dimensions (the first one at least 1).

    Raises:
        DataFormatError: wrong magic number, an empty data set, or a declared size that does
            not match the data; the message names the file and the field.
    """
    gzipped = path.suffix == ".gz"
    try:
        file_size = path.stat().st_size
        with gzip.open(path, "rb") if gzipped else path.open("rb") as f:
            dims = _read_idx_header(f, path, magic)
            expected = math.prod(dims)  # Python ints: no overflow, however large the header
            if gzipped:
                data = _read_gzip_data(f, path, dims, expected, file_size)
            else:
                found = file_size - 4 - 4 * len(dims)
                _check_idx_size(path, dims, expected, found)
                data = bytearray(expected)  # the file holds exactly this much: checked above
                _check_idx_size(path, dims, expected, f.readinto(data))
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot read ({e}); the file may be truncated") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _read_idx_header(f: _Readable, path: Path, magic: int) -> tuple[int, ...]:
    """The dimensions an IDX header declares, checked: magic number, and no empty dimension."""
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    head = f.read(4)
    if len(head) < 4:
        raise DataFormatError(f"{path}: {len(head)} bytes, too short for an IDX header")
    found = int.from_bytes(head, "big")
    if found != magic:
        raise DataFormatError(
            f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} (IDX {kind} file); "
            "is this the right file?"
        )
    ndim = magic & 0xFF
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise DataFormatError(
            f"{path}: header truncated ({4 + len(sizes)} of {4 + 4 * ndim} bytes)"
        )
    dims = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
    if dims[0] == 0:
        raise DataFormatError(f"{path}: the header declares 0 {kind}; expected at least one")
    if 0 in dims:
        raise DataFormatError(f"{path}: the header declares {kind} of shape {dims}, with a 0")
    return dims


def _check_idx_size(path: Path, dims: tuple[int, ...], expected: int, found: int) -> None:
    if found != expected:
        raise DataFormatError(
            f"{path}: header declares data of shape {dims}, i.e. {expected} bytes, found "
            f"{found}; the file is truncated or corrupt"
        )


def _read_gzip_data(
    f: _Readable, path: Path, dims: tuple[int, ...], expected: int, file_size: int
) -> bytearray:
    """Decompress at most ``expected`` bytes (plus one, to see that the data ends there)."""
    if expected > GZIP_MAX_RATIO * file_size:
        raise DataFormatError(
            f"{path}: header declares data of shape {dims}, i.e. {expected} bytes, more than "
            f"a {file_size}-byte gzip file can hold (deflate expands at most "
            f"{GZIP_MAX_RATIO}x); the file is corrupt"
        )
    data = bytearray()
    while len(data) < expected:
        chunk = f.read(min(_CHUNK, expected - len(data)))
        if not chunk:
            break
        data += chunk
    _check_idx_size(path, dims, expected, len(data))
    if f.read(1):  # also makes gzip check the stream's CRC and length
        raise DataFormatError(
            f"{path}: header declares data of shape {dims}, i.e. {expected} bytes, but the "
            "file holds more; the file is corrupt"
        )
    return data


def read_idx_pair(
    images_path: Path, labels_path: Path, *, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX images file and its labels file and check that they agree.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 1, H, W)`` and ``int64`` ``(N,)``.

    Raises:
        DataFormatError: a file is malformed, the counts differ, or a label is out of range.
    """
    images = read_idx(images_path, magic=IDX_IMAGES_MAGIC)  # (N, H, W)
    labels = read_idx(labels_path, magic=IDX_LABELS_MAGIC).astype(np.int64)  # (N,)
    if len(images) != len(labels):
        raise DataFormatError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; expected the same number (files from different sets?)"
        )
    check_labels(labels, num_classes, labels_path)
    return images[:, None], labels


# ------------------------------------------------------------------------------------ CIFAR-10
def find_cifar_dir(root: Path) -> tuple[Path, bool]:
    """The CIFAR-10 batch folder under ``root`` and whether it is the binary version.

    ``root`` may be the extracted folder itself or its parent; the binary version wins when both
    are present, as it needs no unpickling.

    Raises:
        DataFormatError: no CIFAR-10 batches are found; the message says what was looked for.
    """
    for folder in (root / "cifar-10-batches-bin", root / "cifar-10-batches-py", root):
        if (folder / "test_batch.bin").is_file():
            return folder, True
        if (folder / "test_batch").is_file():
            return folder, False
    raise DataFormatError(
        f"{root}: no CIFAR-10 batches found; expected the extracted cifar-10-batches-bin "
        "(data_batch_1.bin..data_batch_5.bin, test_batch.bin) or cifar-10-batches-py "
        "(data_batch_1..data_batch_5, test_batch) folder, or its parent"
    )


def read_cifar_bin(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 binary batches: records of 1 label byte then 3072 pixel bytes (R, G, B).

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` and ``int64`` ``(N,)``.

    Raises:
        DataFormatError: a file is missing, empty, not a whole number of records, or has a
            label outside the classes.
    """
    images, labels = [], []
    record = 1 + CIFAR_PIXELS
    for path in paths:
        try:
            raw = _existing(path).read_bytes()
        except OSError as e:
            raise DataFormatError(f"{path}: cannot read ({e})") from None
        if not raw or len(raw) % record:
            raise DataFormatError(
                f"{path}: {len(raw)} bytes is not a whole, non-zero number of {record}-byte "
                "records (1 label byte + 3072 pixel bytes); the file is truncated or corrupt"
            )
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)  # (n, 3073)
        check_labels(rows[:, 0].astype(np.int64), len(CIFAR10_CLASSES), path)
        labels.append(rows[:, 0].astype(np.int64))
        images.append(rows[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def read_cifar_bin_classes(folder: Path) -> list[str]:
    """Class names from ``batches.meta.txt`` (one a line, UTF-8), or CIFAR-10's own when it is
    absent.

    Raises:
        DataFormatError: the file is not UTF-8 or does not name 10 classes.
    """
    path = folder / "batches.meta.txt"
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    names = [line.strip() for line in read_text(path).splitlines()]
    return _check_cifar_classes([n for n in names if n], path)


def read_cifar_py(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 python batches (Python 2 pickles of ``{b"data": ..., b"labels": ...}``).

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` and ``int64`` ``(N,)``.

    Raises:
        DataFormatError: a file is missing or malformed, holds an object that is not allowed,
            or a field has the wrong type or size; the message names the file and the field.
    """
    images, labels = [], []
    for path in paths:
        batch = safe_unpickle(_existing(path))
        data, batch_labels = _key(batch, "data", path), _key(batch, "labels", path)
        if not (
            isinstance(data, np.ndarray)
            and data.dtype == np.uint8
            and data.ndim == 2
            and data.shape[1] == CIFAR_PIXELS
            and len(data) > 0
        ):
            shape = getattr(data, "shape", type(data).__name__)
            raise DataFormatError(
                f"{path}: 'data' is {shape}, expected a uint8 array of shape (N, {CIFAR_PIXELS}) "
                "with N >= 1"
            )
        array = _int_labels(batch_labels, len(data), path)
        check_labels(array, len(CIFAR10_CLASSES), path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(array)
    return np.concatenate(images), np.concatenate(labels)


def _int_labels(values: Any, n: int, path: Path) -> np.ndarray:
    """``values`` (a list of ints, or an integer array) as ``int64``; floats and bools are
    refused, never truncated."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iu" or values.shape != (n,):
            raise DataFormatError(
                f"{path}: 'labels' is a {values.dtype} array of shape {values.shape}, expected "
                f"{n} integers, one per image"
            )
        return values.astype(np.int64)
    if not isinstance(values, list) or len(values) != n:
        size = len(values) if isinstance(values, list) else type(values).__name__
        raise DataFormatError(
            f"{path}: 'labels' is {size}, expected a list of {n} ints, one per image"
        )
    for i, v in enumerate(values):
        if type(v) is not int:
            raise DataFormatError(
                f"{path}: 'labels'[{i}] is {v!r} ({type(v).__name__}), expected an int class index"
            )
        if not 0 <= v < len(CIFAR10_CLASSES):  # a Python int can exceed int64 (OverflowError)
            raise DataFormatError(
                f"{path}: label {v} at record {i} is outside 0..{len(CIFAR10_CLASSES) - 1}"
            )
    return np.array(values, dtype=np.int64)


def read_cifar_py_classes(folder: Path) -> list[str]:
    """Class names from the pickled ``batches.meta``, or CIFAR-10's own when it is absent.

    Raises:
        DataFormatError: the file is malformed, or ``label_names`` is not 10 UTF-8 strings.
    """
    path = folder / "batches.meta"
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    names = _key(safe_unpickle(path), "label_names", path)
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DataFormatError(f"{path}: expected 'label_names' to be a list of strings")
    try:
        decoded = [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: 'label_names' holds a name not in UTF-8 ({e})") from None
    return _check_cifar_classes(decoded, path)


def _check_cifar_classes(names: list[str], path: Path) -> list[str]:
    if len(names) != len(CIFAR10_CLASSES):
        raise DataFormatError(
            f"{path}: {len(names)} class names, expected {len(CIFAR10_CLASSES)} (CIFAR-10)"
        )
    return names


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(f"{path}: no such file; the CIFAR-10 folder is incomplete")
    return path


def _key(batch: Any, key: str, path: Path) -> Any:
    """``batch[key]`` for a dict with ``bytes`` (Python 2) or ``str`` keys."""
    if not isinstance(batch, dict):
        raise DataFormatError(
            f"{path}: holds a {type(batch).__name__}, expected a dict with the key {key!r}"
        )
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DataFormatError(f"{path}: expected a dict with the key {key!r}; it is missing")
