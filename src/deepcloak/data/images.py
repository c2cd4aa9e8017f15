"""Image folders: one sub-folder of images per class, decoded with Pillow, in bounded memory.

An image file may come from a stranger, and its header may claim any size: a few hundred
bytes of PNG can declare a 100,000 x 100,000 picture, which Pillow would allocate before it
finds the data missing (a "decompression bomb"). Before decoding, every image's declared size
is checked against :data:`MAX_IMAGE_PIXELS` (like Pillow's own guard, but an error rather than
a warning) and against what its bytes can hold (:data:`MAX_PIXELS_PER_BYTE`); whatever Pillow
raises on a corrupt file becomes a :class:`~deepcloak.errors.DataFormatError` naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from deepcloak.errors import DataFormatError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_IMAGE_PIXELS",
    "MAX_PIXELS_PER_BYTE",
    "decode_image",
    "image_mode_and_size",
    "list_image_folder",
    "read_images",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: The most pixels one image may declare (64 Mi, about 8192 x 8192; Pillow warns at 89 M).
MAX_IMAGE_PIXELS = 1 << 26
#: The most pixels one byte of image file can account for: deflate expands at most 1032x and a
#: one-colour bilevel PNG packs 8 pixels a byte; no format the folder reads compresses more.
MAX_PIXELS_PER_BYTE = 8 * 1032
# Modes that hold one grey channel; a folder of only these loads as one channel ("L").
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def list_image_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sub-folder names, sorted) and ``(file, class index)`` pairs under ``folder``,
    files sorted by name within each class.

    Files are listed with ``os.scandir`` and kept as ``str``: a million ``Path`` objects would
    take several times the memory, and ``scandir`` tells files from folders without a ``stat``
    per file on most file systems.

    Raises:
        DataFormatError: ``folder`` has no class sub-folders, or a class folder has no images.
    """
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataFormatError(
            f"{folder}: no class folders; expected one sub-folder per class holding images "
            f"({', '.join(IMAGE_SUFFIXES)})"
        )
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        with os.scandir(folder / name) as entries:
            files = sorted(
                (e.name, e.path)
                for e in entries
                if not e.name.startswith(".")
                and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                and e.is_file()
            )
        if not files:
            raise DataFormatError(
                f"{folder / name}: no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}"
            )
        samples += [(path, index) for _, path in files]
    return classes, samples


def image_mode_and_size(paths: Sequence[str | Path]) -> tuple[str, tuple[int, int] | None]:
    """``("L" or "RGB", the common (width, height) or None when sizes differ)``.

    Only headers are read.

    Raises:
        DataFormatError: Pillow cannot open a file, or it declares too many pixels; the message
            names the file.
    """
    grey, size, same = True, None, True  # not a set of sizes: memory stays flat in N
    for path in paths:
        with _open_image(path) as img:
            grey = grey and img.mode in _GREY_MODES
            size = img.size if size is None else size
            same = same and img.size == size
    return ("L" if grey else "RGB"), (size if same else None)


def read_images(paths: Sequence[str | Path], *, mode: str, size: tuple[int, int]) -> np.ndarray:
    """Load ``paths`` as ``uint8`` ``(N, C, H, W)`` in ``mode``, resized to ``size`` if needed.

    Raises:
        DataFormatError: a file cannot be decoded or declares too many pixels; the message
            names it.
    """
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = decode_image(path, mode=mode, size=size)
    return out


def decode_image(path: Path | str, *, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as ``uint8`` ``(C, H, W)``: converted to ``mode`` (``"L"`` or ``"RGB"``), then
    resized bilinearly to ``size`` = ``(width, height)`` if it differs.

    Raises:
        DataFormatError: the file cannot be decoded or declares too many pixels; the message
            names it.
    """
    path = Path(path)
    channels = 1 if mode == "L" else 3
    with _open_image(path) as img:
        try:
            img = img.convert(mode)
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)  # (H, W) or (H, W, C)
        except Exception as e:  # a corrupt file fails inside Pillow in many ways
            raise DataFormatError(f"{path}: cannot decode image ({e})") from None
    # A copy: Pillow's array is read-only and (H, W, C); torch wants writable (C, H, W).
    chw: np.ndarray = np.array(pixels.reshape(size[1], size[0], channels).transpose(2, 0, 1))
    return chw


def _open_image(path: str | Path) -> Image.Image:
    """Open ``path`` (header only) and check its declared size before anything is decoded."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard only warns below twice its limit; ours is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise DataFormatError(f"{path}: declares too many pixels ({e})") from None
    except Exception as e:  # UnidentifiedImageError, OSError, SyntaxError, struct.error, ...
        raise DataFormatError(f"{path}: not a readable image ({e})") from None
    try:
        _check_declared_size(img, path)
    except DataFormatError:
        img.close()
        raise
    return img


def _check_declared_size(img: Image.Image, path: Path) -> None:
    width, height = img.size
    pixels = width * height
    if pixels == 0:
        raise DataFormatError(f"{path}: declares an empty image ({width} x {height})")
    if pixels > MAX_IMAGE_PIXELS:
        raise DataFormatError(
            f"{path}: declares {width} x {height} = {pixels} pixels, more than the "
            f"{MAX_IMAGE_PIXELS} allowed (a decompression bomb, or an image far too large "
            "to classify); resize it first"
        )
    file_size = path.stat().st_size
    if pixels > MAX_PIXELS_PER_BYTE * file_size:
        raise DataFormatError(
            f"{path}: declares {width} x {height} = {pixels} pixels, more than its "
            f"{file_size} bytes can hold; the file is corrupt or crafted"
        )
