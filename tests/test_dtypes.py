"""Every public entry point on a model of each floating dtype, with nothing inside converting.

A float16, bfloat16 or float64 model takes inputs of its own dtype; the data sets give float32.
These once crashed with torch's raw dtype error (issue 15): the sweep cached its test batches
as float32, and the search and the checks fed float32 too. Each entry point runs here on each
dtype, a forward pre-hook records the dtype of every input the model saw, and the clean
accuracies are compared with the float32 run's.

Tolerances: float64 must agree with float32 to within one sample in 64; float16 and bfloat16
(8 bits of mantissa for bfloat16, computed on the CPU) to within 10 points, as they round the
logits of samples near the decision boundary differently.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from deepcloak.attacks.native import FGSM, PGD
from deepcloak.cloak.fit import fit
from deepcloak.cloak.search import search_mask
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.harden import HardenConfig, harden
from tests.robust_toys import loader, quadrant_data, trained_mlp

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
TOLERANCE = {torch.float32: 0.0, torch.float64: 1 / 64, torch.float16: 0.1, torch.bfloat16: 0.1}
SMALL = EvaluationConfig.for_level(
    "quick", eps=0.05, attacks=("fgsm", "pgd"), steps=3, ratios=(0.0, 0.1, 0.2),
    whitebox_ratios=(0.1,), eps_factors=(1.0,), n_random=1, max_samples=48,
    preprocessing_baselines=False, batch_size=16,
)  # fmt: skip


def _model(dtype: torch.dtype) -> tuple[nn.Module, set[torch.dtype]]:
    """The trained toy MLP in ``dtype``, and the set of input dtypes it is called with."""
    model = copy.deepcopy(trained_mlp(0)).to(dtype)
    seen: set[torch.dtype] = set()

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen.add(args[0].dtype)

    model.register_forward_pre_hook(record)
    return model, seen


@functools.cache
def _accuracies(dtype: torch.dtype) -> tuple[dict[str, float], set[torch.dtype]]:
    model, seen = _model(dtype)
    fit_data, val_data, test_data = loader(96, 1), loader(48, 2), loader(64, 3, batch_size=16)
    cloak = fit(model, fit_data, attack=FGSM(eps=0.1))
    sweep = graybox_sweep(
        model, cloak, test_data, attack=PGD(eps=0.1, steps=3), ratios=(0.0, 0.25), n_random=1,
        whitebox_attacks=[FGSM(eps=0.1)], whitebox_ratios=(0.25,),
    )  # fmt: skip
    found = search_mask(model, fit_data, val_data, selector="beam", clean_budget=0.1)
    train, test = TensorDataset(*quadrant_data(96, 1)), TensorDataset(*quadrant_data(64, 3))
    config = HardenConfig(
        eps=0.1, ratios=(0.0, 0.25), whitebox_ratios=(), n_random=1, select="greedy",
        val_samples=32, clean_budget=0.1,
    )  # fmt: skip
    hardened = harden(model, train, test, config)
    report = evaluate_cloak(model, fit_data, val_data, test_data, config=SMALL)
    return {
        "sweep": sweep.rows[0].clean_accuracy,
        "search": found.candidates[0].clean_accuracy,
        "harden": hardened.sweep.rows[0].clean_accuracy,
        "evaluate": report.result("unmasked", "clean").accuracy,
    }, seen


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_each_entry_point_runs_a_model_of_each_dtype_in_its_own_dtype(dtype: torch.dtype) -> None:
    accuracies, seen = _accuracies(dtype)
    assert seen == {dtype}  # every forward pass, attacks included, in the model's dtype
    reference, _ = _accuracies(torch.float32)
    for name, accuracy in accuracies.items():
        assert 0.5 < accuracy <= 1, (name, accuracy)  # the trained MLP gets most samples right
        assert abs(accuracy - reference[name]) <= TOLERANCE[dtype], (name, accuracy)
