"""The precision of forward-only passes: float32, or bfloat16 autocast where it is safe.

Attacks always compute their gradients in float32: a gradient in bfloat16 (8 bits of mantissa)
changes which samples an attack breaks. Only passes that merely *predict* may run in bfloat16:
clean accuracy, predictions through a mask, and the forwards that cache features for a sweep.
Those call :func:`forward_autocast`, which reads the precision set by the innermost
:func:`forward_precision` block (float32 outside any): like ``torch.autocast`` itself, the
setting is scoped to a ``with`` block (a context variable), so an evaluation sets it once
instead of threading it through every stage, and code that computes gradients never sees it.

Example:
    >>> with forward_precision("bf16"):
    ...     report = evaluate_cloak(model, train, val, test)  # predictions in bf16
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
from collections.abc import Iterator

import torch

from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError

__all__ = [
    "Precision",
    "check_precision_supported",
    "current_precision",
    "forward_autocast",
    "forward_precision",
    "parse_precision",
]


class Precision(str, enum.Enum):
    """The precision of forward-only passes (``"fp32"`` or ``"bf16"``)."""

    FP32 = "fp32"
    BF16 = "bf16"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the forward passes' matrix products."""
        return torch.float32 if self is Precision.FP32 else torch.bfloat16

    @property
    def recorded(self) -> str:
        """The name a report records (the dtype's: ``"float32"`` or ``"bfloat16"``)."""
        return str(self.dtype).removeprefix("torch.")


_ALIASES = {
    "fp32": Precision.FP32,
    "float32": Precision.FP32,
    "bf16": Precision.BF16,
    "bfloat16": Precision.BF16,
}

_CURRENT: contextvars.ContextVar[Precision] = contextvars.ContextVar(
    "deepcloak_forward_precision", default=Precision.FP32
)


def parse_precision(value: Precision | str) -> Precision:
    """The :class:`Precision` named by ``value`` (``fp32``/``float32``, ``bf16``/``bfloat16``).

    Raises:
        DeepCloakError: an unknown name.
    """
    return parse_enum(Precision, value, what="precision", aliases=_ALIASES)


def current_precision() -> Precision:
    """The precision set by the innermost :func:`forward_precision` block (default float32)."""
    return _CURRENT.get()


@contextlib.contextmanager
def forward_precision(precision: Precision | str) -> Iterator[Precision]:
    """Run the forward-only passes inside the ``with`` block in ``precision``.

    Raises:
        DeepCloakError: an unknown precision.
    """
    token = _CURRENT.set(parse_precision(precision))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def check_precision_supported(precision: Precision | str, device: torch.device) -> Precision:
    """``precision``, checked to run on ``device``.

    Raises:
        DeepCloakError: bf16 on a CUDA device without bfloat16 support, or on a device type
            autocast does not cover.
    """
    p = parse_precision(precision)
    if p is Precision.BF16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeepCloakError(
                f"{torch.cuda.get_device_name(device)} has no bfloat16 support; "
                "use --precision fp32"
            )
        if device.type not in ("cpu", "cuda"):
            raise DeepCloakError(f"bf16 forward passes need a CPU or CUDA device, not {device}")
    return p


@contextlib.contextmanager
def forward_autocast(
    device: torch.device, precision: Precision | str | None = None
) -> Iterator[None]:
    """Autocast a forward-only pass on ``device`` to ``precision`` (default: the current one).

    float32 enters no autocast region at all, so its numbers are exactly those of plain
    PyTorch. Never wrap an attack in this: its gradients must stay float32.
    """
    p = current_precision() if precision is None else parse_precision(precision)
    if p is Precision.FP32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=p.dtype):
        yield
