"""Residual families of the zoo: ResNet (basic blocks) and Wide ResNet (pre-activation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from deepcloak.errors import DeepCloakError
from deepcloak.models.base import ZooModel, conv_bn

__all__ = ["BasicBlock", "PreActBlock", "ResNet", "WideResNet"]


class BasicBlock(nn.Module):
    """Residual block of He et al. 2016: conv-BN-ReLU-conv-BN, add the shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, *, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            # Option B of the ResNet paper: a 1x1 projection where the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c_out, H/s, W/s)
        h = self.relu(self.bn1(self.conv1(x)))
        out: torch.Tensor = self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))
        return out


def _residual_stages(
    block: Callable[..., nn.Module], c: int, widths: Sequence[int], n: int
) -> tuple[list[nn.Sequential], int]:
    """Three stages of ``n`` blocks with strides 1, 2, 2; returns them and the output width."""
    stages = []
    for width, stride in zip(widths, (1, 2, 2), strict=True):
        stages.append(
            nn.Sequential(
                *(
                    block(c if j == 0 else width, width, stride=stride if j == 0 else 1)
                    for j in range(n)
                )
            )
        )
        c = width
    return stages, c


class ResNet(ZooModel):
    """CIFAR-style ResNet (He et al. 2016, arXiv 1512.03385): 3 stages of basic blocks.

    ``depth = 6n + 2`` (8, 14, 20, ...); stage widths ``width, 2 width, 4 width`` with strides
    1, 2, 2; global average pooling, flatten, then ``self.fc``.

    Args:
        depth: ``6n + 2``.
        width: channels of the stem and first stage (16 in the paper).
        stem_stride: stride of the stem conv; 2 quarters the cost on 28x28 and larger inputs.
    """

    arch = "resnet"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        depth: int = 8,
        width: int = 16,
        stem_stride: int = 1,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if depth < 8 or (depth - 2) % 6 != 0 or width < 1 or stem_stride not in (1, 2):
            raise DeepCloakError(
                "resnet needs depth = 6n + 2 >= 8 (8, 14, 20, ...), width >= 1 and stem_stride "
                f"1 or 2; got depth={depth}, width={width}, stem_stride={stem_stride}"
            )
        self.stem = nn.Sequential(*conv_bn(in_channels, width, stride=stem_stride))
        widths = [width, 2 * width, 4 * width]
        stages, c = _residual_stages(BasicBlock, width, widths, (depth - 2) // 6)
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))  # (N, w, S, S)
        out: torch.Tensor = self.layer3(self.layer2(self.layer1(x)))  # (N, 4w, S/4, S/4)
        return out


class PreActBlock(nn.Module):
    """Wide-ResNet block (pre-activation): BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 + skip."""

    def __init__(self, c_in: int, c_out: int, *, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.shortcut: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, H, W) -> (N, c_out, H/s, W/s)
        o = self.relu(self.bn1(x))
        # As in the reference WRN code, a projection shortcut takes the pre-activated input.
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.dropout(self.relu(self.bn2(self.conv1(o))))
        out: torch.Tensor = self.conv2(o) + skip
        return out


class WideResNet(ZooModel):
    """Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016, arXiv 1605.07146).

    ``depth = 6n + 4`` (10, 16, 22, 28, ...); stage widths ``16k, 32k, 64k`` (for ``width=16``),
    pre-activation blocks, a final BN-ReLU, global average pooling, flatten, then ``self.fc``.

    Args:
        depth: ``6n + 4``.
        widen_factor: ``k``.
        width: channels of the stem (16 in the paper); stage ``i`` has ``width * 2**i * k``.
        dropout: dropout between the two convs of a block.
    """

    arch = "wrn"

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        input_size: int,
        depth: int = 10,
        widen_factor: int = 2,
        width: int = 16,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(locals())
        if depth < 10 or (depth - 4) % 6 != 0 or widen_factor < 1 or width < 1:
            raise DeepCloakError(
                "wrn needs depth = 6n + 4 >= 10 (10, 16, 22, 28, ...), widen_factor >= 1 and "
                f"width >= 1; got depth={depth}, widen_factor={widen_factor}, width={width}"
            )
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        widths = [width * widen_factor * 2**i for i in range(3)]
        block = partial(PreActBlock, dropout=dropout)
        stages, c = _residual_stages(block, width, widths, (depth - 4) // 6)
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.normalize(x))  # (N, w, S, S)
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 4wk, S/4, S/4)
        out: torch.Tensor = self.relu(self.bn(x))
        return out
