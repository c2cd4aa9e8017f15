"""Tiny *trained* models and data for the evaluation tests (attacks need a model worth attacking).

The task: 8x8 grey images whose class (4) is the quadrant that is brighter by ``signal``. A
small MLP learns it in a fraction of a second and PGD at eps 0.05 breaks about a fifth of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.results import EvaluationReport
from deepcloak.evaluation.run import evaluate_cloak

NUM_CLASSES = 4


def quadrant_data(n: int, seed: int, signal: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, 8, 8)`` in [0, 1] and their labels ``(n,)``."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    x = torch.rand(n, 1, 8, 8, generator=gen) * 0.6 + 0.1
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        x[y == k, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += signal
    return x.clamp(0, 1), y


def loader(n: int, seed: int, batch_size: int = 32) -> DataLoader:
    """A DataLoader over :func:`quadrant_data`."""
    return DataLoader(TensorDataset(*quadrant_data(n, seed)), batch_size=batch_size)


class Round(nn.Module):
    """Rounds inputs to {0, 1}: its gradient is zero everywhere (deliberate gradient masking)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)


def _train(model: nn.Module, seed: int, steps: int = 300) -> nn.Module:
    x, y = quadrant_data(512, 100 + seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@functools.cache
def _trained(seed: int, masked: bool) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [Round()] if masked else []
    layers += [nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES)]
    with single_thread():
        return _train(nn.Sequential(*layers), seed)


def trained_mlp(seed: int = 0) -> nn.Module:
    """A trained MLP (cached: do not modify it in a test; deep-copy it first)."""
    return _trained(seed, False)


def gradient_masked_mlp(seed: int = 0) -> nn.Module:
    """A trained MLP behind :class:`Round`: zero input gradients, still accurate."""
    return _trained(seed, True)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread, restoring the setting after.

    Tiny models are dominated by thread start-up and contention on shared CI machines.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: A small but complete evaluation setting (every attack, every baseline, all threat models).
TOY_CONFIG = EvaluationConfig(
    eps=0.05,
    attacks=("fgsm", "pgd", "apgd", "square"),
    steps=10,
    attack_params={},  # APGD at ``steps`` too (not the standard level's 100)
    max_queries=100,
    ratios=(0.0, 0.05, 0.1, 0.2, 0.3),
    whitebox_ratios=(0.0, 0.1),
    n_random=2,
    eps_grid=(0.0, 0.025, 0.05, 0.1),
    max_samples=60,
    select=None,  # the paper's ranking, its ratio chosen on a validation sweep
)


@functools.cache
def toy_report(ratio: float | None = None) -> EvaluationReport:
    """The evaluation of :func:`trained_mlp` with a surrogate (cached: one run per session)."""
    config = dataclasses.replace(TOY_CONFIG, ratio=ratio)
    with single_thread():
        return evaluate_cloak(
            trained_mlp(0),
            loader(200, 1),
            loader(60, 2),
            loader(60, 3),
            config=config,
            surrogate=trained_mlp(1),
            metadata={"model": "toy-mlp", "data": "quadrants"},
        )
