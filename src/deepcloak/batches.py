"""Batches of ``(inputs, labels)``: unpacked, checked and converted before they reach torch.

Inputs must be floating point in [0, 1]; another float dtype (``float64``, ``float16``) is
converted to the model's. Labels must be integer class indices; any integer width (``uint8``,
``int32``...) is converted to ``int64``, which torch's losses need. Anything else is refused with
a message saying what to do.
"""

from __future__ import annotations

from typing import Any

import torch

from deepcloak.errors import DeepCloakError
from deepcloak.validation import check_inputs

__all__ = ["as_inputs", "as_labels", "check_batch", "unpack_batch"]

_INTEGER_DTYPES = frozenset(
    {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64}
    | {getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)}
)


def as_inputs(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check that ``x`` is a non-empty float batch in [0, 1]; convert it to ``dtype`` if given.

    Raises:
        DeepCloakError: ``x`` is not a tensor, not floating point (e.g. ``uint8`` images), empty,
            non-finite or outside [0, 1].
    """
    if not isinstance(x, torch.Tensor):
        raise DeepCloakError(f"inputs must be a tensor, got {type(x).__name__}")
    check_inputs(x)
    return x if dtype is None or x.dtype == dtype else x.to(dtype)


def as_labels(y: torch.Tensor) -> torch.Tensor:
    """Check that ``y`` holds integer class indices and return them as ``int64``.

    Raises:
        DeepCloakError: ``y`` is not a tensor, or holds floats, booleans or complex numbers
            (a float label is refused, never truncated).
    """
    if not isinstance(y, torch.Tensor):
        raise DeepCloakError(f"labels must be a tensor, got {type(y).__name__}")
    if y.dtype not in _INTEGER_DTYPES:
        raise DeepCloakError(
            f"labels must be integer class indices, got dtype {y.dtype}; "
            "convert class labels with y.long() (float labels are never truncated)"
        )
    return y if y.dtype == torch.int64 else y.to(torch.int64)


def check_batch(
    x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch (inputs in [0, 1], one integer label per input) and convert its dtypes.

    Args:
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        dtype: the model's floating dtype (see :func:`deepcloak.models.runtime.model_dtype`);
            ``None`` keeps the inputs' own.

    Returns:
        ``(x, y)`` with ``x`` of ``dtype`` and ``y`` of ``int64``.

    Raises:
        DeepCloakError: see :func:`as_inputs` and :func:`as_labels`, or shapes that disagree.
    """
    x, y = as_inputs(x, dtype), as_labels(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DeepCloakError(
            f"expected one label per input: inputs {tuple(x.shape)}, labels {tuple(y.shape)}"
        )
    return x, y


def unpack_batch(
    batch: Any, device: torch.device, dtype: torch.dtype | None = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` from a DataLoader batch, moved to ``device`` and checked by :func:`check_batch`.

    ``dtype`` is the model's floating dtype (pass
    :func:`~deepcloak.models.runtime.model_dtype`); the default, ``float32``, is that of any
    model not converted with ``.double()`` or ``.half()``. ``None`` keeps the inputs' own.

    Raises:
        DeepCloakError: the batch is not an ``(inputs, labels)`` pair of tensors, or fails the
            checks of :func:`check_batch`.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DeepCloakError(
            f"each batch must be an (inputs, labels) pair, got {type(batch).__name__}"
        )
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DeepCloakError("each batch must hold tensors: (inputs, labels)")
    return check_batch(x.to(device), y.to(device), dtype)
