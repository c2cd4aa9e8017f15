"""Choosing the device a command runs on, and describing it for reports.

``auto`` means CUDA when present, else the CPU. A report records the device, its name and the
precision, so that a number can be traced to the hardware that produced it.
"""

from __future__ import annotations

import platform

import torch

from deepcloak.errors import DeepCloakError

__all__ = ["describe_device", "resolve_device"]


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


def describe_device(device: torch.device) -> dict[str, str | int]:
    """What a report records about ``device``: its name, and the CPU thread count."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine() or "cpu"
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads()}
