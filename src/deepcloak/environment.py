"""What shapes the numbers: versions, device, precision and threads, recorded with every result.

One helper, used by every report, so that two results can be compared knowing what ran them.
Thread count matters on CPU: float sums are reduced in a different order with more threads, so
training (and the scores fitted on its model) can differ in the last bits across thread counts,
while runs with the same seed and the same thread count are identical.
"""

from __future__ import annotations

import platform
import time
from importlib import metadata
from typing import Any

import torch

from deepcloak._version import __version__

__all__ = ["device_name", "environment"]

# Distributions whose versions are recorded (a missing one is recorded as None).
_VERSIONED = ("numpy", "scipy", "safetensors", "adversarial-robustness-toolbox", "timm")


def environment(
    device: torch.device | str | None = None, *, precision: str = "float32"
) -> dict[str, Any]:
    """Versions, device, precision, thread counts and time of a result, as a JSON-ready dict.

    Args:
        device: the device the numbers were computed on (default: CPU).
        precision: the dtype of the forward passes (``"float32"`` unless a faster one was asked).

    Returns:
        A flat dict: ``deepcloak``, ``python``, ``platform``, ``torch`` and library versions,
        ``device``, ``device_name``, ``precision``, ``threads``, ``interop_threads``,
        ``deterministic_algorithms``, ``cuda``, ``cudnn`` and ``time`` (ISO 8601).

    Example:
        >>> report["environment"] = environment(model_device(model))
    """
    device = torch.device(device or "cpu")
    record: dict[str, Any] = {
        "deepcloak": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    for dist in _VERSIONED:
        try:
            record[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            record[dist] = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None  # type: ignore[no-untyped-call]
    return {
        **record,
        "device": str(device),
        "device_name": device_name(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def device_name(device: torch.device | str) -> str:
    """The hardware behind ``device``: the GPU's name, or the CPU's model where the OS says it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as info:
                for line in info:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return device.type
