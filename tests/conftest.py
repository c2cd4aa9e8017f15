"""Tiny models of several shapes and tiny data, shared by the core tests.

Also the Hypothesis settings profiles of the property tests (the file fuzzers): ``default``, a
small bounded budget that keeps the suite fast and deterministic, and ``thorough``, a larger
opt-in budget: ``HYPOTHESIS_PROFILE=thorough make test``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 4

# derandomize: the same examples every run, so a failure reproduces and CI never flakes.
settings.register_profile(
    "default",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class TinyResNet(nn.Module):
    """ResNet-like: conv features, global average pool, flatten in forward, then ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        h = h + self.block(h)
        return self.fc(torch.flatten(self.pool(h), 1))


class TinyVGG(nn.Module):
    """VGG-like: ``features`` then ``classifier = Sequential(Linear, ReLU, Linear)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(4 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def tiny_sequential() -> nn.Sequential:
    """A plain ``Sequential`` MLP on 1x8x8 inputs."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, NUM_CLASSES))


MODEL_FACTORIES = {"resnet": TinyResNet, "vgg": TinyVGG, "sequential": tiny_sequential}
#: The default layer (input of the final nn.Linear) of each model above.
DEFAULT_LAYERS = {"resnet": "fc", "vgg": "classifier.2", "sequential": "3"}


@pytest.fixture(params=sorted(MODEL_FACTORIES))
def model_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model(model_name: str) -> nn.Module:
    torch.manual_seed(0)
    m = MODEL_FACTORIES[model_name]()
    # Non-trivial BatchNorm statistics, so eval vs train mode matters.
    with torch.no_grad():
        m.train()
        m(torch.rand(32, 1, 8, 8))
    return m.eval()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 8, 8, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (40,), generator=gen)
    return x, y


@pytest.fixture
def loader(data: tuple[torch.Tensor, torch.Tensor]) -> DataLoader:
    return DataLoader(TensorDataset(*data), batch_size=16)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Run every test on one torch thread.

    The test models are tiny: one thread is as fast as two, and unlike two it stays fast when
    other processes share the cores (oversubscribed OpenMP threads spin-wait).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
