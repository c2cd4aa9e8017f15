"""Choosing the device a command runs on.

``auto`` means CUDA when present, else the CPU. What a report records about the device lives in
:mod:`deepcloak.environment`.
"""

from __future__ import annotations

import torch

from deepcloak.errors import DeepCloakError

__all__ = ["resolve_device"]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` named by ``spec``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        DeepCloakError: an unknown name, or CUDA asked for where none is available.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeepCloakError(
            f"unknown device {spec!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeepCloakError(
                f"device {spec!r} asked for, but this machine has no CUDA GPU "
                "(torch.cuda.is_available() is False); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeepCloakError(
                f"device {spec!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
    elif device.type != "cpu":
        raise DeepCloakError(f"unsupported device {spec!r}; expected 'cpu' or 'cuda[:N]'")
    return device
