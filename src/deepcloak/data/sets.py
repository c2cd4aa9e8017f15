"""Built-in and local image data sets, chosen by name.

Every data set yields ``(x, y)``: ``x`` a ``float32`` tensor ``(C, H, W)`` with values in
``[0, 1]`` and ``y`` an ``int64`` class index. Nothing is downloaded: ``digits`` ships with
scikit-learn, Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, and MNIST,
CIFAR-10 and image folders are read from a folder the user names.

Example:
    >>> train = load_dataset("fashion-mnist", split="train", limit=1000)
    >>> train.input_shape, train.num_classes
    ((1, 28, 28), 10)
    >>> x, y = train[0]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from deepcloak._moved import moved_names
from deepcloak.data import formats as _formats
from deepcloak.data import memory as _memory
from deepcloak.data.base import ImageSet
from deepcloak.data.folder import TEST_FRACTION, read_image_folder
from deepcloak.data.memory import ImageDataset as _ImageDataset
from deepcloak.enums import parse_enum
from deepcloak.errors import DataFormatError, DeepCloakError
from deepcloak.registry import Registry

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "FASHION_MNIST_ROOT",
    "ImageSet",
    "Split",
    "data_root",
    "fashion_mnist_root",
    "load_dataset",
]

log = logging.getLogger(__name__)

#: The environment variable naming the folder that holds the built-in data sets' folders
#: (``fashion-mnist/``); unset or empty means :data:`DEFAULT_DATA_ROOT`.
DATA_ROOT_ENV = "DEEPCLOAK_DATA_ROOT"
#: Where Debian's ``dataset-*`` packages install data sets.
DEFAULT_DATA_ROOT = Path("/usr/share/datasets")
#: Where Debian's ``dataset-fashion-mnist`` package installs the IDX files.
FASHION_MNIST_ROOT = DEFAULT_DATA_ROOT / "fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGIT_CLASSES = tuple(str(d) for d in range(10))


class Split(str, Enum):
    """Which part of a data set to load; the strings ``"train"`` and ``"test"`` also work."""

    TRAIN = "train"
    TEST = "test"

    @classmethod
    def parse(cls, value: str | Split) -> Split:
        """``value`` as a :class:`Split`.

        Raises:
            DeepCloakError: ``value`` is not a split; the message lists the choices.
        """
        return parse_enum(cls, value, what="split")


#: Loaders by name: ``loader(*, split, root, image_size) -> ImageSet``.
DATASETS: Registry[ImageSet] = Registry("data set")


def data_root() -> Path:
    """The folder holding the built-in data sets: ``$DEEPCLOAK_DATA_ROOT``, else
    :data:`DEFAULT_DATA_ROOT` (read at each call, so tests and CI can point it elsewhere)."""
    value = os.environ.get(DATA_ROOT_ENV, "")
    return Path(value).expanduser() if value else DEFAULT_DATA_ROOT


def fashion_mnist_root() -> Path:
    """Where ``fashion-mnist`` is read from when no root is given: ``data_root() /
    "fashion-mnist"`` (Debian's ``/usr/share/datasets/fashion-mnist`` by default)."""
    return data_root() / "fashion-mnist"


def load_dataset(
    name: str,
    *,
    split: str | Split = "train",
    root: str | Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> ImageSet:
    """Load the data set registered as ``name``.

    Args:
        name: one of ``DATASETS.names()``: ``cifar10``, ``digits``, ``fashion-mnist``,
            ``imagefolder``, ``mnist``.
        split: ``"train"`` or ``"test"``.
        root: the folder holding the files. Needed for ``mnist``, ``cifar10`` and
            ``imagefolder``; ``fashion-mnist`` defaults to :func:`fashion_mnist_root`;
            ``digits`` ignores it.
        limit: keep a random subset of this many samples (in their original order), chosen
            reproducibly from ``seed``; ``None`` or a number above the set's size keeps all.
        seed: seeds the choice of the ``limit`` subset.
        image_size: ``imagefolder`` only: resize every image to ``image_size x image_size``.
            Without it, all images must share one size.

    Returns:
        An in-memory :class:`~deepcloak.data.memory.ImageDataset`, or for ``imagefolder`` an
        :class:`~deepcloak.data.folder.ImageFolderDataset` that reads each image from disk when
        it is used (memory flat in the number of images). Batch either with
        :func:`deepcloak.data.loader.make_loader`.

    Raises:
        DeepCloakError: unknown name or split, a bad ``limit`` or ``image_size``, or no root.
        DataFormatError: a file is missing, truncated or malformed.
    """
    loader = DATASETS.get(name)
    parsed = Split.parse(split)
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise DeepCloakError(f"limit must be a positive number of samples or None, got {limit}")
    if image_size is not None and name != "imagefolder":
        raise DeepCloakError(
            f"image_size applies only to 'imagefolder', not {name!r}; leave it unset"
        )
    if image_size is not None and image_size < 1:
        raise DeepCloakError(f"image_size must be a positive number of pixels, got {image_size}")
    path = None if root is None else Path(root).expanduser()
    data = loader(split=parsed, root=path, image_size=image_size)
    if limit is not None and limit < len(data):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(data), generator=generator)[:limit].sort().values
        data = data.subset(keep)
    log.info("loaded %s (%s): %d samples of %s", name, parsed.value, len(data), data.input_shape)
    return data


def _from_numpy(
    images: np.ndarray, labels: np.ndarray, *, name: str, classes: Sequence[str], scale: int = 255
) -> _ImageDataset:
    return _ImageDataset(
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        name=name,
        classes=classes,
        scale=scale,
    )


def _require_root(root: Path | None, name: str, what: str) -> Path:
    if root is None:
        raise DeepCloakError(f"{name} needs root: pass the folder that holds {what}")
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such folder; expected the folder that holds {what}")
    return root


@DATASETS.register("digits")
def _digits(*, split: Split, root: Path | None, image_size: int | None) -> _ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, values 0..16), split 80/20 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # (1797, 1, 8, 8), exact: values are 0..16
    labels = bunch.target.astype(np.int64)
    train, test = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=0, stratify=labels
    )
    keep = np.sort(train if split is Split.TRAIN else test)
    return _from_numpy(images[keep], labels[keep], name="digits", classes=DIGIT_CLASSES, scale=16)


def _idx_dataset(name: str, folder: Path, split: Split, classes: Sequence[str]) -> _ImageDataset:
    prefix = "train" if split is Split.TRAIN else "t10k"
    expected = [
        f"{p}-{k}" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    ]
    images_path = _formats.find_file(folder, f"{prefix}-images-idx3-ubyte", expected)
    labels_path = _formats.find_file(folder, f"{prefix}-labels-idx1-ubyte", expected)
    images, labels = _formats.read_idx_pair(images_path, labels_path, num_classes=len(classes))
    return _from_numpy(images, labels, name=name, classes=classes)


@DATASETS.register("fashion-mnist")
def _fashion_mnist(*, split: Split, root: Path | None, image_size: int | None) -> _ImageDataset:
    """Fashion-MNIST (28x28 grey, 10 classes) from IDX files; root defaults to
    :func:`fashion_mnist_root` (Debian's copy, or under ``$DEEPCLOAK_DATA_ROOT``)."""
    default = fashion_mnist_root()
    if root is None and not default.is_dir():
        raise DataFormatError(
            f"{default}: no such folder; install Debian's dataset-fashion-mnist package, set "
            f"{DATA_ROOT_ENV} to the folder holding fashion-mnist/, or pass root= (CLI: --root) "
            "the folder holding Fashion-MNIST's IDX files"
        )
    folder = default if root is None else root
    folder = _require_root(folder, "fashion-mnist", "Fashion-MNIST's IDX files")
    return _idx_dataset("fashion-mnist", folder, split, FASHION_MNIST_CLASSES)


@DATASETS.register("mnist")
def _mnist(*, split: Split, root: Path | None, image_size: int | None) -> _ImageDataset:
    """MNIST (28x28 grey digits) from IDX files in ``root``."""
    folder = _require_root(root, "mnist", "MNIST's IDX files (train-images-idx3-ubyte etc.)")
    return _idx_dataset("mnist", folder, split, DIGIT_CLASSES)


@DATASETS.register("cifar10")
def _cifar10(*, split: Split, root: Path | None, image_size: int | None) -> _ImageDataset:
    """CIFAR-10 (32x32 RGB) from the binary or python version, extracted under ``root``."""
    what = "cifar-10-batches-bin or cifar-10-batches-py (or the folder itself)"
    folder, binary = _formats.find_cifar_dir(_require_root(root, "cifar10", what))
    stems = [f"data_batch_{i}" for i in range(1, 6)] if split is Split.TRAIN else ["test_batch"]
    if binary:
        images, labels = _formats.read_cifar_bin([folder / f"{s}.bin" for s in stems])
        classes = _formats.read_cifar_bin_classes(folder)
    else:
        images, labels = _formats.read_cifar_py([folder / s for s in stems])
        classes = _formats.read_cifar_py_classes(folder)
    return _from_numpy(images, labels, name="cifar10", classes=classes)


@DATASETS.register("imagefolder")
def _image_folder(*, split: Split, root: Path | None, image_size: int | None) -> ImageSet:
    """Images in ``root/<split>/<class>/`` or, without split folders, ``root/<class>/``, read
    from disk as they are used (see :mod:`deepcloak.data.folder`).

    Without ``train``/``test`` folders, each class is split 80/20 by a fixed shuffle. Images
    load as one grey channel when all of them are grey, else as RGB.
    """
    folder = _require_root(root, "imagefolder", "one sub-folder of images per class")
    return read_image_folder(folder, split=split.value, image_size=image_size)


# Moved after 0.1.0: ImageDataset has a module of its own (deepcloak.data.memory).
__getattr__ = moved_names(__name__, {"ImageDataset": _memory})
