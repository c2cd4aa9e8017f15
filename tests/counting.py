"""A model wrapper that counts the samples run through it (tests of how much work is done)."""

from __future__ import annotations

import torch
from torch import nn


class CountSamples(nn.Module):
    """Counts the samples that run through ``inner`` (every forward pass, any batch size)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.samples = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += x.shape[0]
        out: torch.Tensor = self.inner(x)
        return out
