"""Images held in memory as ``uint8`` and served as ``float32`` in ``[0, 1]``.

:class:`ImageDataset` is what every built-in data set loads into (:mod:`.sets`) and what an
image folder small enough to fit decodes into (:mod:`.folder`); :mod:`.loader` serves its batches
by slicing the held tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from deepcloak.data.base import ImageSet
from deepcloak.errors import DeepCloakError

__all__ = ["ImageDataset"]


class ImageDataset(ImageSet):
    """Images held as ``uint8`` and served as ``float32`` in ``[0, 1]``.

    Holding bytes keeps memory four times lower than floats (it matters for CIFAR-10). Pixels
    are divided by ``scale`` on the way out: 255 for 8-bit images, 16 for scikit-learn's digits
    (values 0..16), so that every value is exactly what the source holds.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)`` with values in ``0..scale``.
        labels: ``int64`` tensor ``(N,)`` of class indices in ``0..len(classes) - 1``.
        name: the data set's name, recorded in results.
        classes: class names, indexed by label.
        scale: the pixel value that means 1.0.

    Raises:
        DeepCloakError: the tensors have the wrong dtype or shape, or do not fit together.

    Shape:
        ``dataset[i]`` is ``(x, y)``: ``x`` ``(C, H, W)`` float32, ``y`` a 0-d int64 tensor.
        :meth:`tensors` gives ``(N, C, H, W)`` and ``(N,)``.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        name: str,
        classes: Sequence[str],
        scale: int = 255,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DeepCloakError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.shape != (len(images),):
            raise DeepCloakError(
                f"labels must be an int64 tensor ({len(images)},), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
            raise DeepCloakError(
                f"labels must lie in 0..{len(classes) - 1} ({len(classes)} classes)"
            )
        if not 0 < scale <= 255:
            raise DeepCloakError(f"scale must be in 1..255, got {scale}")
        self.images = images
        self.labels = labels
        self.name = name
        self.classes = list(classes)
        self.scale = scale
        c, h, w = images.shape[1:]
        self.input_shape: tuple[int, int, int] = (int(c), int(h), int(w))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index].float() / self.scale, self.labels[index]

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All samples at once, for small sets.

        Returns:
            ``(x, y)``: ``x`` float32 ``(N, C, H, W)`` in ``[0, 1]``, ``y`` int64 ``(N,)``.
        """
        return self.images.float() / self.scale, self.labels.clone()

    def subset(self, indices: Sequence[int] | Tensor) -> ImageDataset:
        """A new data set holding the samples at ``indices``, in that order (pixels are copied)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return ImageDataset(
            self.images[index],
            self.labels[index],
            name=self.name,
            classes=self.classes,
            scale=self.scale,
        )

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, samples={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )
