"""Tests for deepcloak.devices: device names, and what a report records."""

from __future__ import annotations

import pytest
import torch

from deepcloak.devices import resolve_device
from deepcloak.errors import DeepCloakError


def test_auto_is_cuda_when_present_else_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_cpu_by_name_and_by_object() -> None:
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "tpu:0", "cuda:x", ""])
def test_unknown_device_is_a_clear_error(spec: str) -> None:
    with pytest.raises(DeepCloakError, match="device"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeepCloakError, match="no CUDA GPU"):
        resolve_device("cuda:0")
