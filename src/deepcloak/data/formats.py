"""Readers for the on-disk image formats behind :mod:`deepcloak.data.sets`.

Each reader returns plain numpy arrays (images ``uint8`` ``(N, C, H, W)``, labels ``int64``
``(N,)``) and checks the file against what the format declares, so that a truncated download is
a :class:`~deepcloak.errors.DataFormatError` naming the file instead of a shape error later on.
Nothing here runs code from a data file: CIFAR-10's pickles go through an unpickler that only
knows how to rebuild numpy arrays.
"""

from __future__ import annotations

import gzip
import logging
import pickle
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deepcloak.errors import DataFormatError

log = logging.getLogger(__name__)

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)

CIFAR_PIXELS = 3 * 32 * 32
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
# Modes that hold one grey channel; a folder of only these loads as one channel ("L").
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


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


def _read_bytes(path: Path) -> bytes:
    """The bytes of ``path``, decompressed when its name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot read ({e}); the file may be truncated") from None


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (the MNIST format) into an array.

    The header is a big-endian 32-bit magic number (``0x0000 08 nd``: unsigned bytes, ``nd``
    dimensions) followed by ``nd`` big-endian 32-bit sizes; the data fills the rest.

    Args:
        path: the file, gzipped when its name ends in ``.gz``.
        magic: the magic number expected (:data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`).

    Returns:
        A writable ``uint8`` array with the declared dimensions.

    Raises:
        DataFormatError: wrong magic number, or a size that does not match the data.
    """
    raw = _read_bytes(path)
    kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
    if len(raw) < 4:
        raise DataFormatError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataFormatError(
            f"{path}: magic number 0x{found:08x}, expected 0x{magic:08x} (IDX {kind} file); "
            "is this the right file?"
        )
    ndim = magic & 0xFF
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataFormatError(f"{path}: header truncated ({len(raw)} of {start} bytes)")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims))
    if len(raw) - start != expected:
        raise DataFormatError(
            f"{path}: header declares {kind} of shape {dims}, i.e. {expected} bytes of data, "
            f"found {len(raw) - start}; the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=start).reshape(dims).copy()


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
    _check_labels(labels, num_classes, labels_path)
    return images[:, None], labels


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataFormatError(
            f"{path}: label {labels[bad[0]]} at record {bad[0]} is outside 0..{num_classes - 1}"
        )


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
        DataFormatError: a file is missing, not a whole number of records, or has a bad label.
    """
    images, labels = [], []
    record = 1 + CIFAR_PIXELS
    for path in paths:
        raw = _read_bytes(_existing(path))
        if not raw or len(raw) % record:
            raise DataFormatError(
                f"{path}: {len(raw)} bytes is not a whole number of {record}-byte records "
                "(1 label byte + 3072 pixel bytes); the file is truncated or corrupt"
            )
        rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)  # (n, 3073)
        _check_labels(rows[:, 0].astype(np.int64), len(CIFAR10_CLASSES), path)
        labels.append(rows[:, 0].astype(np.int64))
        images.append(rows[:, 1:].reshape(-1, 3, 32, 32))
    return np.concatenate(images), np.concatenate(labels)


def read_cifar_bin_classes(folder: Path) -> list[str]:
    """Class names from ``batches.meta.txt`` (one a line), or CIFAR-10's own when it is absent."""
    path = folder / "batches.meta.txt"
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return _check_cifar_classes([n for n in names if n], path)


def read_cifar_py(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 python batches (Python 2 pickles of ``{b"data": ..., b"labels": ...}``).

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` and ``int64`` ``(N,)``.

    Raises:
        DataFormatError: a file is missing or malformed, or holds an object that is not allowed.
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
        ):
            shape = getattr(data, "shape", type(data).__name__)
            raise DataFormatError(
                f"{path}: 'data' is {shape}, expected a uint8 array of shape (N, {CIFAR_PIXELS})"
            )
        if not isinstance(batch_labels, list) or len(batch_labels) != len(data):
            raise DataFormatError(
                f"{path}: expected 'labels' to be a list of {len(data)} ints, one per image"
            )
        array = np.asarray(batch_labels, dtype=np.int64)
        _check_labels(array, len(CIFAR10_CLASSES), path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(array)
    return np.concatenate(images), np.concatenate(labels)


def read_cifar_py_classes(folder: Path) -> list[str]:
    """Class names from the pickled ``batches.meta``, or CIFAR-10's own when it is absent."""
    path = folder / "batches.meta"
    if not path.is_file():
        return list(CIFAR10_CLASSES)
    names = _key(safe_unpickle(path), "label_names", path)
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise DataFormatError(f"{path}: expected 'label_names' to be a list of strings")
    return _check_cifar_classes([n.decode() if isinstance(n, bytes) else n for n in names], path)


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
    if isinstance(batch, dict):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
    raise DataFormatError(f"{path}: expected a dict with the key {key!r}")


def _numpy_rebuilders() -> dict[tuple[str, str], Callable[..., Any]]:
    """The globals a pickled numpy array needs, under numpy 1.x and 2.x module names."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        # Protocol-5 pickles of contiguous arrays rebuild through frombuffer + reshape.
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds builtin containers and numpy arrays, and refuses any other
    global, so that a crafted file cannot call ``os.system`` or any other function."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR's pickles come from Python 2
        self._path = path
        self._allowed = _numpy_rebuilders()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataFormatError(
                f"{self._path}: the pickle holds an object that is not allowed "
                f"({module}.{name}); only numpy arrays, dicts, lists, bytes, str and numbers "
                "are loaded. The file is not a CIFAR-10 batch, or has been tampered with"
            ) from None


def safe_unpickle(path: Path) -> Any:
    """Unpickle ``path`` allowing only builtin values and numpy arrays.

    Raises:
        DataFormatError: the file is not a valid pickle or holds any other object.
    """
    with path.open("rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, path).load()
        except DataFormatError:
            raise
        except Exception as e:  # a corrupt pickle can fail in many ways; all mean "bad file"
            raise DataFormatError(f"{path}: not a readable pickle ({e!r})") from None


# --------------------------------------------------------------------------------- imagefolder
def list_image_folder(folder: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Classes (sub-folder names, sorted) and ``(file, class index)`` pairs under ``folder``.

    Raises:
        DataFormatError: ``folder`` has no class sub-folders, or a class folder has no images.
    """
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataFormatError(
            f"{folder}: no class folders; expected one sub-folder per class holding images "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    samples = []
    for index, name in enumerate(classes):
        files = sorted(
            p
            for p in (folder / name).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            raise DataFormatError(
                f"{folder / name}: no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
            )
        samples += [(p, index) for p in files]
    return classes, samples


def image_mode_and_size(paths: Sequence[Path]) -> tuple[str, tuple[int, int] | None]:
    """``("L" or "RGB", the common (width, height) or None when sizes differ)``.

    Only headers are read. Raises :class:`DataFormatError` naming a file Pillow cannot open.
    """
    modes, sizes = set(), set()
    for path in paths:
        with _open_image(path) as img:
            modes.add(img.mode)
            sizes.add(img.size)
    return ("L" if modes <= _GREY_MODES else "RGB"), (sizes.pop() if len(sizes) == 1 else None)


def read_images(paths: Sequence[Path], *, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Load ``paths`` as ``uint8`` ``(N, C, H, W)`` in ``mode``, resized to ``size`` if needed.

    Raises:
        DataFormatError: a file cannot be decoded; the message names it.
    """
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(paths):
        with _open_image(path) as img:
            try:
                img = img.convert(mode)
                if img.size != size:
                    img = img.resize(size, Image.Resampling.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)  # (H, W) or (H, W, C)
            except (OSError, ValueError, SyntaxError) as e:
                raise DataFormatError(f"{path}: cannot decode image ({e})") from None
        out[i] = pixels.reshape(size[1], size[0], channels).transpose(2, 0, 1)
    return out


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataFormatError(f"{path}: not a readable image ({e})") from None
