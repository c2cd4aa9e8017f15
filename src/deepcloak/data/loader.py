"""Batches of an in-memory data set, sliced as tensors.

A ``DataLoader`` over an in-memory :class:`~deepcloak.data.sets.ImageDataset` fetches every
sample through ``__getitem__`` and stacks them again in ``collate``: per batch of 256, 256
Python calls and 512 small tensors. :class:`TensorLoader` serves the same batches by slicing
(or, shuffled, indexing) the held ``uint8`` tensors once per batch, with the same values bit
for bit, and works wherever a ``DataLoader`` of ``(x, y)`` batches does.

Example:
    >>> train = load_dataset("digits")
    >>> for x, y in TensorLoader(train, batch_size=256):  # x float32 (B, C, H, W) in [0, 1]
    ...     pass
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from deepcloak.errors import DeepCloakError

if TYPE_CHECKING:
    from deepcloak.data.sets import ImageDataset

__all__ = ["TensorLoader"]


class TensorLoader:
    """Iterate over an :class:`ImageDataset` in batches, sliced from its tensors.

    Args:
        dataset: the in-memory data set.
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: a new random order every pass, drawn from ``generator``.
        generator: the random source of ``shuffle`` (seed it for a reproducible order).
        drop_last: leave out the last batch when it is smaller than ``batch_size``.

    Raises:
        DeepCloakError: ``batch_size`` is not a positive int.

    Shape:
        Each batch is ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` in ``[0, 1]``, equal to what
        ``DataLoader(dataset, batch_size)`` gives, and ``y`` int64 ``(B,)``.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        *,
        batch_size: int = 256,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DeepCloakError(f"batch_size must be a positive int, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        images, labels, scale = self.dataset.images, self.dataset.labels, self.dataset.scale
        n = len(labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else None
        for b in range(len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if order is None:
                x, y = images[start:stop], labels[start:stop]  # views: no copy until .float()
            else:
                index = order[start:stop]
                x, y = images[index], labels[index]
            # The same operation as ImageDataset.__getitem__, so values match bit for bit.
            yield x.float() / scale, y.clone()  # (B, C, H, W), (B,)
