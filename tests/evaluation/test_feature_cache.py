"""Where the sweep's feature cache lives: the model's device when it fits, else host memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcloak.attacks.native import FGSM
from deepcloak.cloak.fit import fit
from deepcloak.evaluation import feature_cache
from deepcloak.evaluation.feature_cache import cache_device, cache_features

CUDA = torch.device("cuda:0")
GIB = 2**30


def test_cpu_caches_stay_in_host_memory() -> None:
    assert cache_device(torch.device("cpu"), None, 10**12) == torch.device("cpu")


def test_a_cuda_cache_stays_on_the_device_while_it_takes_its_share_of_free_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    free = 8 * GIB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 80 * GIB))
    per_sample = 2 * 512 * 4  # clean and adversarial float32 features of 512 values
    fits = int(feature_cache.DEVICE_SHARE * free) // per_sample
    assert cache_device(CUDA, fits, per_sample) == CUDA
    assert cache_device(CUDA, fits + 1, per_sample) == torch.device("cpu")
    assert cache_device(CUDA, None, per_sample) == torch.device("cpu")  # unknown size: host


def test_the_cache_is_built_where_cache_device_says(
    model: nn.Module, loader: DataLoader, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int | None, int]] = []

    def where(device: torch.device, n: int | None, per_sample: int) -> torch.device:
        asked.append((n, per_sample))
        return device

    monkeypatch.setattr(feature_cache, "cache_device", where)
    cloak = fit(model, loader, attack=FGSM(eps=0.1))
    cache = cache_features(model, loader, cloak.layer, FGSM(eps=0.1))
    per_sample = 2 * cache.clean[0].numel() * cache.clean.element_size() + 8  # + int64 label
    if cache.head is None:
        per_sample += 2 * 64 * 4  # the clean and adversarial inputs, 1x8x8 float32
    assert asked == [(40, per_sample)]
