"""Image folders streamed from disk: file names and labels in memory, each image decoded on access.

An ImageNet-sized folder (1.3 M images, 150 GB decoded at 224 x 224) cannot be held in memory.
:class:`ImageFolderDataset` keeps what it must to find a sample (its file name and label, a few
dozen bytes) and decodes the image in ``__getitem__``, with the checks of
:mod:`deepcloak.data.images` (declared size bounded, errors naming the file). Batches come from
a ``DataLoader`` whose worker processes decode in parallel (see
:func:`deepcloak.data.loader.make_loader`).

File names are packed into one byte array rather than a list of ``str``: worker processes
forked from the main one would otherwise touch every string's reference count, copying the
whole list into each worker page by page (pytorch/pytorch#13246).

Example:
    >>> train = read_image_folder(Path("photos"), split="train", image_size=64)
    >>> x, y = train[0]  # decoded now, from photos/train/<class>/<file>
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from deepcloak.data import images as _images
from deepcloak.data.base import ImageSet
from deepcloak.data.memory import ImageDataset
from deepcloak.errors import DataFormatError, DeepCloakError

__all__ = ["TEST_FRACTION", "ImageFolderDataset", "read_class_folder", "read_image_folder"]

TEST_FRACTION = 0.2  # held-out share of each class for folders without train/ and test/


class _PathTable:
    """File names packed into one ``uint8`` array with ``int64`` offsets (no Python objects)."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray) -> None:
        self.data, self.offsets = data, offsets  # name i is data[offsets[i]:offsets[i + 1]]

    @classmethod
    def pack(cls, paths: Sequence[str | Path]) -> _PathTable:
        encoded = [os.fsencode(p) for p in paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return os.fsdecode(self.data[start:stop].tobytes())

    def take(self, indices: np.ndarray) -> _PathTable:
        return _PathTable.pack([self[int(i)] for i in indices])


class ImageFolderDataset(ImageSet):
    """Images read from files on access, as ``float32`` in ``[0, 1]``.

    Each image is converted to ``mode`` and resized bilinearly to ``size`` when it differs, by
    :func:`deepcloak.data.images.decode_image`; pixels are divided by 255, so every sample
    equals what an in-memory :class:`~deepcloak.data.memory.ImageDataset` of the same decoded
    bytes gives, bit for bit.

    Args:
        paths: one image file per sample.
        labels: class indices, one per path.
        name: the data set's name, recorded in results.
        classes: class names, indexed by label.
        mode: ``"L"`` (one grey channel) or ``"RGB"``.
        size: ``(width, height)`` of every sample.

    Raises:
        DeepCloakError: paths and labels differ in number, a label is out of range, or the
            mode is neither ``"L"`` nor ``"RGB"``.

    Shape:
        ``dataset[i]`` is ``(x, y)``: ``x`` ``(C, H, W)`` float32, ``y`` a 0-d int64 tensor.
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | Tensor,
        *,
        name: str,
        classes: Sequence[str],
        mode: str,
        size: tuple[int, int],
    ) -> None:
        self._init(_PathTable.pack(paths), labels, name=name, classes=classes, mode=mode, size=size)

    def _init(
        self,
        paths: _PathTable,
        labels: Sequence[int] | Tensor,
        *,
        name: str,
        classes: Sequence[str],
        mode: str,
        size: tuple[int, int],
    ) -> None:
        label_tensor = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
        if len(label_tensor) != len(paths):
            raise DeepCloakError(f"{len(paths)} paths but {len(label_tensor)} labels")
        if len(label_tensor) and not 0 <= int(label_tensor.min()) <= int(label_tensor.max()) < len(
            classes
        ):
            raise DeepCloakError(
                f"labels must lie in 0..{len(classes) - 1} ({len(classes)} classes)"
            )
        if mode not in ("L", "RGB"):
            raise DeepCloakError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self._paths, self.labels = paths, label_tensor
        self.name, self.classes, self.mode, self.size = name, list(classes), mode, size
        self.input_shape = (1 if mode == "L" else 3, size[1], size[0])

    def path(self, index: int) -> Path:
        """The file sample ``index`` is read from."""
        return Path(self._paths[index])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        pixels = _images.decode_image(self._paths[index], mode=self.mode, size=self.size)
        # The same operation as ImageDataset.__getitem__ (uint8 -> float, / 255): equal values.
        return torch.from_numpy(pixels).float() / 255, self.labels[index]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """Every image decoded at once, for small sets (memory grows with the number of images).

        Returns:
            ``(x, y)``: ``x`` float32 ``(N, C, H, W)`` in ``[0, 1]``, ``y`` int64 ``(N,)``.
        """
        paths = [self._paths[i] for i in range(len(self))]
        pixels = _images.read_images(paths, mode=self.mode, size=self.size)
        return torch.from_numpy(pixels).float() / 255, self.labels.clone()

    def to_memory(self) -> ImageDataset:
        """Every image decoded once and held as ``uint8`` (``N x C x H x W`` bytes), for folders
        small enough to fit: each later pass slices tensors instead of decoding files again
        (measured on 2 busy CPU cores: 14,000 against 1,100 images a second for 64 x 64
        JPEGs). Same samples, same values, same order.
        """
        paths = [self._paths[i] for i in range(len(self))]
        pixels = _images.read_images(paths, mode=self.mode, size=self.size)
        return ImageDataset(
            torch.from_numpy(pixels), self.labels.clone(), name=self.name, classes=self.classes
        )

    def subset(self, indices: Sequence[int] | Tensor) -> ImageFolderDataset:
        """A new data set of the samples at ``indices``, in that order (nothing is decoded)."""
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        out = ImageFolderDataset.__new__(ImageFolderDataset)
        out._init(
            self._paths.take(index.numpy()),
            self.labels[index],
            name=self.name,
            classes=self.classes,
            mode=self.mode,
            size=self.size,
        )
        return out

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(name={self.name!r}, samples={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def read_image_folder(
    folder: Path, *, split: Literal["train", "test"], image_size: int | None
) -> ImageFolderDataset:
    """The ``split`` of the images in ``folder/<split>/<class>/`` or, without split folders,
    ``folder/<class>/`` (each class then split 80/20 by a fixed shuffle).

    Only file names and image headers are read here: every image's header is checked, and
    sets the mode (one grey channel when all images are grey, else RGB) and the common size.

    Args:
        folder: the folder holding the class (or ``train``/``test``) folders.
        split: which part to serve.
        image_size: resize every image to ``image_size x image_size``; without it, all images
            must share one size.

    Returns:
        The streaming data set, its samples in class order, files sorted by name.

    Raises:
        DataFormatError: no classes or images, test classes missing from train, an unreadable
            or oversized image header, or images of several sizes without ``image_size``.
    """
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        classes, train = _images.list_image_folder(folder / "train")
        test_classes, test = _images.list_image_folder(folder / "test")
        if not set(test_classes) <= set(classes):
            extra = sorted(set(test_classes) - set(classes))
            raise DataFormatError(
                f"{folder / 'test'}: classes {extra} have no folder in {folder / 'train'}; "
                "expected the same class folders in both"
            )
        remap = [classes.index(c) for c in test_classes]
        test = [(p, remap[i]) for p, i in test]
    else:
        classes, samples = _images.list_image_folder(folder)
        train, test = _split_per_class(samples)
    # Mode and size come from both splits, so that train and test always share a shape.
    mode, size = _images.image_mode_and_size([p for p, _ in train + test])
    if image_size is not None:
        size = (image_size, image_size)
    elif size is None:
        raise DataFormatError(
            f"{folder}: images differ in size; pass image_size to resize them all to one size"
        )
    chosen = train if split == "train" else test
    if not chosen:
        raise DataFormatError(f"{folder}: no images in the {split} split")
    return ImageFolderDataset(
        [p for p, _ in chosen],
        [i for _, i in chosen],
        name="imagefolder",
        classes=classes,
        mode=mode,
        size=size,
    )


def _split_per_class(
    samples: list[tuple[str, int]],
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Hold out ``TEST_FRACTION`` of each class (rounded up, none of a single image) by a fixed
    shuffle, so the split does not change between runs or machines."""
    rng = np.random.default_rng(0)
    by_class: dict[int, list[tuple[str, int]]] = {}
    for sample in samples:  # one pass: a thousand classes must not mean a thousand scans
        by_class.setdefault(sample[1], []).append(sample)
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
    for label in sorted(by_class):
        members = by_class[label]
        n_test = math.ceil(TEST_FRACTION * len(members)) if len(members) > 1 else 0
        held = set(rng.permutation(len(members))[:n_test].tolist())
        test += [s for j, s in enumerate(members) if j in held]
        train += [s for j, s in enumerate(members) if j not in held]
    return train, test


def read_class_folder(
    folder: Path, *, classes: Sequence[str], input_shape: tuple[int, int, int]
) -> ImageFolderDataset:
    """Every image in ``folder/<class>/``, labelled by ``classes`` and served in ``input_shape``.

    This reads a validation folder of the user's (``--val-from folder``): its class folders are
    matched to the training data's classes by name or, for data sets whose class names cannot
    be folder names, by index (folders ``0``, ``1``, ...). Images are converted to the training
    data's mode and size, so that the validation samples fit the model the training data fits.

    Raises:
        DataFormatError: no class folders or images, or a class folder that names no class.
    """
    names, samples = _images.list_image_folder(folder)
    by_name = {c: i for i, c in enumerate(classes)}
    if all(n in by_name for n in names):
        remap = [by_name[n] for n in names]
    elif all(n.isdigit() and int(n) < len(classes) for n in names):
        remap = [int(n) for n in names]
    else:
        unknown = sorted(n for n in names if n not in by_name)[:5]
        raise DataFormatError(
            f"{folder}: class folders {unknown} name no class of the data; expected folders "
            f"named after its classes ({', '.join(list(classes)[:5])}, ...) or "
            f"0..{len(classes) - 1}"
        )
    channels, height, width = input_shape
    return ImageFolderDataset(
        [p for p, _ in samples],
        [remap[i] for _, i in samples],
        name="validation folder",
        classes=list(classes),
        mode="L" if channels == 1 else "RGB",
        size=(width, height),
    )
