"""The environment recorded with every result: library versions, device and thread count."""

from __future__ import annotations

import platform
import sys
from typing import Any

import torch

__all__ = ["environment"]


def environment(device: torch.device | str) -> dict[str, Any]:
    """Library versions and the device (with its thread count): recorded with every result."""
    import numpy as np

    from deepcloak._version import __version__
    from deepcloak.attacks.art import art_version

    try:
        import scipy

        scipy_version: str | None = scipy.__version__
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        scipy_version = None
    device = torch.device(device)
    described: dict[str, Any] = {"type": device.type, "name": str(device)}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    else:
        described["cpu"] = platform.processor() or platform.machine()
    described["threads"] = torch.get_num_threads()
    versions = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy_version,
        "art": art_version(),
        "deepcloak": __version__,
    }
    return {"versions": versions, "device": described}
