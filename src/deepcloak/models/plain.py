"""Plain convolutional families of the zoo: a small CNN and VGG (no skip connections)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from deepcloak.errors import DeepCloakError
from deepcloak.models.base import ZooModel, conv_bn

__all__ = ["CNN", "VGG"]


def _plain_stages(
    c: int, size: int, widths: Sequence[int], convs: int
) -> tuple[nn.Sequential, int, int]:
    """Stages of ``convs`` conv-BN-ReLU layers, each then a 2x2 max-pool while the map is larger
    than 1x1 (so 8x8 inputs work at any depth). Returns the stages, channels and map side."""
    layers: list[nn.Module] = []
    for width in widths:
        for _ in range(convs):
            layers += conv_bn(c, width)
            c = width
        if size > 1:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    return nn.Sequential(*layers), c, size


class CNN(ZooModel):
    """Small CNN: ``blocks`` x (conv-BN-ReLU, 2x2 max-pool), flatten, ``Linear-ReLU-Linear``.

    Takes the common arguments of :class:`ZooModel`, and:

    Args:
        width: channels of the first block; each later block doubles them.
        blocks: number of conv blocks; pooling stops once the map is 1x1.
        hidden: units of the hidden fully connected layer (the default masked feature).
    """

    arch = "cnn"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        width: int = 32,
        blocks: int = 2,
        hidden: int = 128,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if min(width, blocks, hidden) < 1:
            raise DeepCloakError(
                f"cnn needs width, blocks, hidden >= 1; got {width}, {blocks}, {hidden}"
            )
        widths = [width * 2**i for i in range(blocks)]
        self.features, c, size = _plain_stages(in_channels, input_size, widths, 1)
        self.pool = nn.Identity()
        self.classifier = nn.Sequential(
            nn.Linear(c * size * size, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        self._init_weights()


class VGG(ZooModel):
    """VGG-style network with batch norm (Simonyan & Zisserman 2015, arXiv 1409.1556).

    Stage ``i`` is ``convs_per_stage`` conv-BN-ReLU layers of ``min(width * 2**i, max_width)``
    channels, then a 2x2 max-pool while the map is larger than 1x1.

    Args:
        width: channels of the first stage.
        stages: number of stages (the depth).
        convs_per_stage: conv layers per stage.
        max_width: cap on the channel count.
        hidden: units of the classifier's hidden layer; ``0`` leaves a single ``nn.Linear``.
        pool: ``"avg"`` (global average pool) or ``"flatten"`` before the classifier.
        dropout: dropout before each classifier linear layer.
    """

    arch = "vgg"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        width: int = 16,
        stages: int = 3,
        convs_per_stage: int = 2,
        max_width: int = 512,
        hidden: int = 128,
        pool: str = "avg",
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if pool not in ("avg", "flatten"):
            raise DeepCloakError(f"vgg pool must be 'avg' or 'flatten'; got {pool!r}")
        if min(width, stages, convs_per_stage, max_width) < 1 or hidden < 0:
            raise DeepCloakError("vgg needs width, stages, convs_per_stage, max_width >= 1")
        widths = [min(width * 2**i, max_width) for i in range(stages)]
        self.features, c, size = _plain_stages(in_channels, input_size, widths, convs_per_stage)
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else nn.Identity()
        d = c if pool == "avg" else c * size * size
        head: list[nn.Module] = []
        if hidden > 0:
            head += [nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        self.classifier = nn.Sequential(*head, nn.Dropout(dropout), nn.Linear(d, num_classes))
        self._init_weights()
