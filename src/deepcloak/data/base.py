"""What every labelled image data set offers, whether it holds its pixels or reads them on access.

:class:`~deepcloak.data.memory.ImageDataset` holds all pixels in memory;
:class:`~deepcloak.data.folder.ImageFolderDataset` holds only file names and labels and decodes
each image when it is asked for. Code that takes either (training, hardening, the loaders) uses
this interface: the labels, the classes, the input shape, subsets and held-out splits.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from deepcloak.errors import DeepCloakError

__all__ = ["ImageSet"]

_Set = TypeVar("_Set", bound="ImageSet")


class ImageSet(Dataset[tuple[Tensor, Tensor]]):
    """A labelled image data set: ``dataset[i]`` is ``(x, y)``, ``x`` float32 ``(C, H, W)`` in
    ``[0, 1]`` and ``y`` a 0-d int64 class index.

    Attributes:
        labels: int64 ``(N,)``, every sample's class index (held in memory by every data set).
        name: the data set's name, recorded in results.
        classes: class names, indexed by label.
        input_shape: ``(C, H, W)`` of every sample.
    """

    labels: Tensor
    name: str
    classes: list[str]
    input_shape: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        """The number of classes (labels are ``0..num_classes - 1``)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]: ...

    @abstractmethod
    def subset(self: _Set, indices: Sequence[int] | Tensor) -> _Set:
        """A new data set of the samples at ``indices``, in that order."""

    @abstractmethod
    def tensors(self) -> tuple[Tensor, Tensor]:
        """All samples at once, for small sets: ``x`` float32 ``(N, C, H, W)``, ``y`` ``(N,)``."""

    def split_off(self: _Set, n: int, *, seed: int = 0) -> tuple[_Set, _Set]:
        """Hold out ``n`` random samples (seeded): returns ``(rest, held_out)``, disjoint, each in
        the original order.

        Used to carve a validation split out of the training split, so that choices made on
        it (such as the mask ratio) never see the test data.

        Raises:
            DeepCloakError: ``n`` is not between 1 and ``len(self) - 1``.
        """
        if not 0 < n < len(self):
            raise DeepCloakError(
                f"cannot hold out {n} of {len(self)} samples; expected 0 < n < {len(self)}"
            )
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[n:].sort().values), self.subset(order[:n].sort().values)
