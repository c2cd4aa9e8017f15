"""Gray-box samples are crafted on the unmasked model: checked by identity, and recomputed.

Issue 15: with the gray-box samples crafted on the masked model, only the stored per-sample
results of ``tests/evaluation/data/toy_main.json`` noticed. Here every crafting call of an
evaluation is recorded with the model it ran on and the masks inside it at that moment, and the
cloak's gray-box correctness is recomputed independently from FGSM on the unmasked model.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from deepcloak.attacks.native import FGSM
from deepcloak.cloak.fit import fit
from deepcloak.cloak.mask import find_masks, keep_mask, masked
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.crafted import CraftedSets
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.sweep import graybox_sweep
from tests.robust_toys import loader, quadrant_data, trained_mlp

CONFIG = EvaluationConfig(
    eps=0.05, attacks=("fgsm",), select_attack="fgsm", ratio=0.1, ratios=(0.0, 0.1),
    whitebox_ratios=(0.1,), n_random=1, eps_grid=(0.05,), preprocessing_baselines=False,
    max_samples=None, batch_size=16,
)  # fmt: skip


def test_every_graybox_set_is_crafted_on_the_unmasked_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = copy.deepcopy(trained_mlp(0))
    calls: list[tuple[str | None, bool, int]] = []
    original = CraftedSets.get

    def recording(self: CraftedSets, attack: Any, on_model: nn.Module, on: Any, *a: Any,
                  **k: Any) -> torch.Tensor:  # fmt: skip
        calls.append((on.threat_model, on_model is model, len(find_masks(on_model))))
        return original(self, attack, on_model, on, *a, **k)

    monkeypatch.setattr(CraftedSets, "get", recording)
    cloak = fit(model, loader(96, 1), attack=FGSM(eps=0.05))
    report = evaluate_cloak(model, cloak, loader(48, 2), loader(48, 3, batch_size=16),
                            config=CONFIG)  # fmt: skip
    graybox = [c for c in calls if c[0] == "gray-box"]
    assert graybox and all(c[1:] == (True, 0) for c in graybox), calls  # the model, no mask
    assert all(c[0] == "white-box" for c in calls if c[2] > 0), calls  # masked: white-box only

    # Recomputed without the library's passes: FGSM on the unmasked model, read through the mask.
    x, y = quadrant_data(48, 3)
    x_adv = FGSM(eps=0.05)(model, x, y)
    with masked(model, cloak.layer, keep_mask(cloak.ranking, 0.1, cloak.feature_shape)) as m:
        expected = m(x_adv).argmax(-1) == y
    got = report.result("cloaked", "gray-box", "fgsm").correct
    assert torch.equal(got, expected)
    assert not find_masks(model)  # and the model is left as it came


def test_graybox_sweep_attacks_before_any_mask_is_inserted() -> None:
    model = copy.deepcopy(trained_mlp(0))
    seen: list[int] = []

    class Spy(FGSM):
        def __call__(self, m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            seen.append(len(find_masks(m)) if m is model else -1)
            return super().__call__(m, x, y)

    cloak = fit(model, loader(96, 1), attack=FGSM(eps=0.05))
    graybox_sweep(model, cloak, loader(48, 3), attack=Spy(eps=0.05), ratios=(0.0, 0.2),
                  n_random=1)  # fmt: skip
    assert seen and set(seen) == {0}
