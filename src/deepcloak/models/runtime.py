"""How deepcloak runs a caller's model: on its own device and dtype, in eval mode, and leaving
it exactly as it came in.

Every stage (attacks, fit, sweeps, evaluation, hardening) uses these helpers, so "which device",
"which dtype" and "eval mode, then restore" are decided in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["eval_mode", "model_device", "model_dtype", "model_inputs"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating-point dtype inputs must have: that of the first floating parameter or
    buffer (``float32`` for a model without one)."""
    for t in (*model.parameters(), *model.buffers()):
        if torch.is_floating_point(t):
            return t.dtype
    return torch.float32


def model_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` on the model's device, in its floating dtype (float16, bfloat16, float64 models
    take inputs of their own dtype; data sets give float32)."""
    return x.to(device=model_device(model), dtype=model_dtype(model))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode; on exit restore each module's own mode.

    Restoring module by module (not ``model.train(was_training)``) matters: a caller may train a
    model while keeping some of its batch norms frozen in eval mode.

    Example:
        >>> with eval_mode(model):
        ...     logits = model(x)
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training
