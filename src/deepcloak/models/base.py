"""The zoo models' common base: normalisation inside the model, and timm's head seam.

Every zoo model takes float inputs in [0, 1] of shape ``(N, C, H, W)``; an optional per-channel
``mean``/``std`` normalisation is its first module (:class:`Normalize`), so callers never
normalise. :class:`ZooModel` records the arguments that built it, JSON-able.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import torch
from torch import nn

from deepcloak.errors import DeepCloakError

__all__ = ["Normalize", "ZooModel", "conv_bn"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` (one value per channel, or one for all channels)."""

    mean: torch.Tensor  # (1, C, 1, 1)
    std: torch.Tensor  # (1, C, 1, 1)

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        # Buffers, not parameters: saved in the state_dict, never trained.
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, C, H, W)
        return (x - self.mean) / self.std


class ZooModel(nn.Module):
    """Base of the zoo models: ``forward_features``, then ``forward_head`` ending in a Linear.

    Mirrors timm's seam: ``forward_head(x, pre_logits=True)`` gives the vector fed to the final
    linear layer (the feature DeepCloak masks by default), ``get_classifier()`` that layer.
    Subclasses set ``pool``, either ``classifier`` (a Sequential ending in ``nn.Linear``) or
    ``fc``, and ``features`` or their own ``forward_features``.

    Every family takes ``in_channels``, ``num_classes`` and ``input_size`` (inputs are
    ``(N, in_channels, input_size, input_size)``), and optional per-channel ``mean`` and ``std``
    (one value, or one per channel) for normalisation inside the model.
    """

    arch: ClassVar[str]
    pool: nn.Module
    features: nn.Module  # CNN, VGG
    fc: nn.Linear  # ResNet, WRN

    def __init__(self, args: dict[str, Any]) -> None:
        super().__init__()
        config = {k: v for k, v in args.items() if k not in ("self", "__class__")}
        # mean/std as lists of floats: tuples and tensors would not round-trip through JSON.
        for key in ("mean", "std"):
            if config.get(key) is not None:
                config[key] = [float(v) for v in config[key]]
        c, k, s = config["in_channels"], config["num_classes"], config["input_size"]
        if c < 1 or k < 2 or s < 1:
            raise DeepCloakError(
                "expected in_channels >= 1, num_classes >= 2 and input_size >= 1; "
                f"got in_channels={c}, num_classes={k}, input_size={s}"
            )
        mean, std = config.get("mean"), config.get("std")
        self._arch_config = config
        self.normalize: nn.Module = nn.Identity()
        if mean is not None and std is not None:
            if len(mean) != len(std) or len(mean) not in (1, c) or min(std) <= 0:
                raise DeepCloakError(
                    f"mean and std need 1 or in_channels={c} values each, std > 0; "
                    f"got mean={mean}, std={std}"
                )
            self.normalize = Normalize(mean, std)
        elif mean is not None or std is not None:
            raise DeepCloakError("give both mean and std for normalisation, or neither")

    def arch_config(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this model with ``create_model(self.arch, ...)``."""
        return dict(self._arch_config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, ``(N, C, h, w)``."""
        out: torch.Tensor = self.features(self.normalize(x))
        return out

    def forward_head(self, x: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Logits from ``forward_features`` output, or the final linear layer's input."""
        x = self.pool(x).flatten(1)  # (N, d)
        classifier = getattr(self, "classifier", None)
        if classifier is None:
            return x if pre_logits else self.fc(x)
        # The whole Sequential is called for logits, so hooks on it fire as users expect.
        out: torch.Tensor = (
            classifier[:-1](x) if pre_logits else classifier(x)
        )  # (N, hidden) or (N, K)
        return out

    def get_classifier(self) -> nn.Linear:
        """The final ``nn.Linear`` (``classifier[-1]`` or ``fc``)."""
        classifier = getattr(self, "classifier", None)
        head = classifier[-1] if classifier is not None else self.fc
        return cast(nn.Linear, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) -> (N, num_classes)
        return self.forward_head(self.forward_features(x))

    def _init_weights(self) -> None:
        # He initialisation for convolutions (He et al. 2015), as in the ResNet and WRN papers.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def conv_bn(c_in: int, c_out: int, *, stride: int = 1) -> list[nn.Module]:
    # bias=False: the batch norm that follows has its own shift. ReLUs are never in-place, so
    # that forward hooks (taps, masks) see the tensors they were given.
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]
