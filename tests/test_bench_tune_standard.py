"""``bench/tune_standard.py``: candidates share their common prefix, costs add up per stage, and
*missed* counts the samples another candidate breaks.

A tiny CNN on random 8x8 images stands in for the zoo's Fashion-MNIST models, so the script's
own code runs in seconds; no peer is needed.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from deepcloak.evaluation.crafted import CraftedSets, Samples, target
from deepcloak.evaluation.levels import STANDARD
from deepcloak.evaluation.timings import Timings
from deepcloak.models.zoo import create_model
from tests.scripts import load_script


def _script() -> ModuleType:
    return load_script("bench/tune_standard.py", "bench_tune_standard")


def test_a_candidate_changes_only_its_apgd_settings() -> None:
    script = _script()
    now = script.candidate_config("now", 0.03, 64)
    more = script.candidate_config("APGD-T 9 targets", 0.03, 64)
    assert now.attack.attacks == more.attack.attacks == STANDARD["attacks"]
    assert now.attack.max_queries == more.attack.max_queries == STANDARD["max_queries"]
    assert more.attack.attack_params["apgd-t"]["targets"] == 9
    assert now.attack.attack_params["apgd-t"]["targets"] == 3


def test_candidates_share_their_prefix_and_are_charged_for_it() -> None:
    script = _script()
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8, width=4).eval()
    gen = torch.Generator().manual_seed(1)
    samples = Samples(torch.rand(10, 1, 8, 8, generator=gen), torch.arange(10), batch_size=5)
    store = CraftedSets(Timings())
    seconds: dict[tuple[str, ...], float] = {}
    on = target("unmasked")
    ok_now, cost_now = script.run_candidate(
        store, script.candidate_config("now", 0.1, 5), model, on, samples, seconds
    )
    stages = len(seconds)  # FGSM, then APGD-CE, APGD-T, Square, each after the ones before
    assert stages == 4 and cost_now == pytest.approx(sum(seconds.values()))
    ok_t9, cost_t9 = script.run_candidate(
        store, script.candidate_config("APGD-T 9 targets", 0.1, 5), model, on, samples, seconds
    )
    assert len(seconds) == stages + 2  # shares FGSM and APGD-CE; its APGD-T and Square are new
    new = sum(v for k, v in seconds.items() if k not in list(seconds)[:stages])
    shared = sum(list(seconds.values())[:2])
    assert cost_t9 == pytest.approx(shared + new)
    assert ok_now.dtype == ok_t9.dtype == torch.bool and ok_now.shape == (10,)
    clean = samples.correct(model, samples.x)
    assert not (ok_now & ~clean).any()  # an attack never repairs a misclassified sample


def _row(bits: dict[str, str]) -> dict[str, object]:
    return {"candidates": {c: {"correct": b, "seconds": 1.0 + i} for i, (c, b) in
                           enumerate(bits.items())}}  # fmt: skip


def test_missed_counts_samples_another_candidate_breaks() -> None:
    script = _script()
    names = list(script.CANDIDATES)
    # sample 0: broken by all; 1: only the second candidate breaks it; 2: only the last one
    bits = {c: "011" for c in names}
    bits[names[1]] = "001"
    bits[names[-1]] = "010"
    summary = {s["candidate"]: s for s in script.summary([_row(bits), _row(bits)])}
    assert summary[names[0]]["missed"] == 4  # samples 1 and 2, in both rows
    assert summary[names[1]]["missed"] == 2  # sample 2
    assert summary[names[-1]]["missed"] == 2  # sample 1
    assert summary[names[0]]["rows_missing"] == 2
    assert summary[names[1]]["cost_vs_now"] == pytest.approx(2.0)
