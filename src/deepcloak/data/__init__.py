"""Data, first in the flow: image sets with pixels in [0, 1] and integer labels.

- :mod:`.sets`: data sets by name (:func:`load_dataset`), held in memory (:mod:`.memory`) or
  read from image folders (:mod:`.folder`, :mod:`.images`);
- :mod:`.formats`, :mod:`.pickles`: the files behind them, IDX and CIFAR-10 (CIFAR's pickles read
  without running code); every reader bounds its memory by what the file can hold
  (``docs/security.md``);
- :mod:`.splits`: the validation split (held out of training, for choosing a ratio);
- :mod:`.loader`: batches sliced from in-memory sets (:func:`make_loader`).

This ``__init__`` is the sub-package's face: the names callers outside it use. Modules inside
import their siblings directly, never through it.
"""

from __future__ import annotations

from deepcloak.data.base import ImageSet
from deepcloak.data.folder import ImageFolderDataset, read_class_folder, read_image_folder
from deepcloak.data.images import read_images
from deepcloak.data.loader import BatchLoader, TensorLoader, make_loader
from deepcloak.data.memory import ImageDataset
from deepcloak.data.sets import (
    DATA_ROOT_ENV,
    DATASETS,
    FASHION_MNIST_ROOT,
    Split,
    fashion_mnist_root,
    load_dataset,
)
from deepcloak.data.splits import DataSplits, ValFrom, ValidationInfo, default_val_samples

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "FASHION_MNIST_ROOT",
    "BatchLoader",
    "DataSplits",
    "ImageDataset",
    "ImageFolderDataset",
    "ImageSet",
    "Split",
    "TensorLoader",
    "ValFrom",
    "ValidationInfo",
    "default_val_samples",
    "fashion_mnist_root",
    "load_dataset",
    "make_loader",
    "read_class_folder",
    "read_image_folder",
    "read_images",
]
