"""Input-preprocessing defences from ART, as baselines in front of an unmasked model.

``FeatureSqueezing`` (Xu et al. 2018: reduce the colour bit depth) and ``SpatialSmoothing``
(a median filter) are the library's own implementations, called on numpy arrays. Wrapped as
:class:`PreprocessedModel`, they behave like any ``nn.Module``, so every attack can run through
them. Both are non-differentiable (rounding, a median); for gradient attacks the wrapper uses
BPDA (Athalye et al. 2018): the backward pass takes ART's own gradient estimate of the
preprocessor (``estimate_gradient``), which for these two is the identity. A white-box number
on these baselines is therefore a BPDA number; the gradient-free Square attack needs no
gradient and queries the defended model directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from deepcloak.attacks.art import require_art
from deepcloak.errors import DeepCloakError

__all__ = ["PreprocessedModel", "feature_squeezing", "spatial_smoothing"]


class _BPDA(torch.autograd.Function):
    """Forward: ART's preprocessor on numpy. Backward: its gradient estimate (BPDA)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, preprocessor: Any) -> torch.Tensor:
        x_np = x.detach().cpu().numpy()
        out, _ = preprocessor(x_np)
        ctx.preprocessor = preprocessor
        ctx.save_for_backward(x)
        return torch.as_tensor(np.asarray(out), dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        estimate = ctx.preprocessor.estimate_gradient(
            x.detach().cpu().numpy(), grad.detach().cpu().numpy()
        )
        return torch.as_tensor(np.asarray(estimate), dtype=grad.dtype, device=grad.device), None


class PreprocessedModel(nn.Module):
    """``model(preprocessor(x))``: an ART preprocessing defence in front of a model.

    Args:
        model: the classifier (inputs in [0, 1]).
        preprocessor: an ART ``Preprocessor`` (called as ``preprocessor(x_np) -> (x_np, y)``).
        name: the defence's name for reports, e.g. ``"feature-squeezing"``.
        params: its parameters, JSON-able, for reports.

    Shape:
        ``(N, C, H, W)`` -> ``(N, K)``.
    """

    def __init__(
        self, model: nn.Module, preprocessor: Any, *, name: str, params: dict[str, Any]
    ) -> None:
        super().__init__()
        self.model = model
        self.preprocessor = preprocessor
        self.name = name
        self.params = dict(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed: torch.Tensor = _BPDA.apply(x, self.preprocessor)  # type: ignore[no-untyped-call]
        out: torch.Tensor = self.model(squeezed)
        return out

    def spec(self) -> dict[str, Any]:
        """The defence's name, parameters, library and how gradients pass through it."""
        return {
            "name": self.name,
            "library": "art",
            **self.params,
            "gradient": "BPDA (identity, ART's estimate_gradient)",
        }

    def extra_repr(self) -> str:
        return f"name={self.name}, params={self.params}"


def feature_squeezing(model: nn.Module, *, bit_depth: int = 4) -> PreprocessedModel:
    """``model`` behind ART's ``FeatureSqueezing`` (inputs rounded to ``bit_depth`` bits).

    Raises:
        DeepCloakError: ``bit_depth`` outside 1..64, or ART is not installed.
    """
    if isinstance(bit_depth, bool) or not isinstance(bit_depth, int) or not 1 <= bit_depth <= 64:
        raise DeepCloakError(f"bit_depth must be an integer in 1..64, got {bit_depth!r}")
    require_art()
    from art.defences.preprocessor import FeatureSqueezing

    pre = FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=bit_depth)
    return PreprocessedModel(model, pre, name="feature-squeezing", params={"bit_depth": bit_depth})


def spatial_smoothing(model: nn.Module, *, window_size: int = 2) -> PreprocessedModel:
    """``model`` behind ART's ``SpatialSmoothing`` (a median filter over ``window_size``²).

    Raises:
        DeepCloakError: ``window_size`` below 1, or ART is not installed.
    """
    if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
        raise DeepCloakError(f"window_size must be a positive integer, got {window_size!r}")
    require_art()
    from art.defences.preprocessor import SpatialSmoothing

    pre = SpatialSmoothing(window_size=window_size, channels_first=True, clip_values=(0.0, 1.0))
    return PreprocessedModel(
        model, pre, name="spatial-smoothing", params={"window_size": window_size}
    )
