from __future__ import annotations

import torch

from deepcloak.data.sets import load_dataset
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.probes import UNBOUNDED_EPS, unbounded_probe
from deepcloak.evaluation.sanity import (
    CheckStatus,
    check_eps_growth,
    check_gradient_free,
    check_more_steps,
    check_single_step,
    check_transfer_vs_whitebox,
    check_whitebox_vs_graybox,
)
from deepcloak.models.train import train_model
from deepcloak.models.zoo import create_model
from tests.robust_toys import gradient_masked_mlp, quadrant_data

PASS, WARN = CheckStatus.PASS, CheckStatus.WARN


def test_more_steps() -> None:
    ok = check_more_steps(0.40, 0.38, steps=10, more_steps=40, n=1000, tolerance=0.01)
    assert ok.status is PASS and ok.values["accuracy_more_steps"] == 0.38
    bad = check_more_steps(0.40, 0.45, steps=10, more_steps=40, n=1000, tolerance=0.01)
    assert bad.status is WARN and "MORE samples correct" in bad.message
    # One sample's worth of noise (1/n = 2%) is tolerated on small test sets.
    assert check_more_steps(0.40, 0.42, steps=10, more_steps=40, n=50, tolerance=0.01).passed


def test_eps_growth() -> None:
    falling = [(0.0, 0.9), (0.03, 0.5), (0.06, 0.2)]
    args = {"unbounded_eps": 1.0, "max_unbounded_accuracy": 0.05, "n": 1000, "tolerance": 0.01}
    assert check_eps_growth(falling, unbounded_accuracy=0.0, **args).passed
    rising = [(0.0, 0.9), (0.06, 0.5), (0.03, 0.3)]  # order of the pairs does not matter
    bad = check_eps_growth(rising, unbounded_accuracy=0.0, **args)
    assert bad.status is WARN and "rises from 30.00% at eps=0.03" in bad.message
    stuck = check_eps_growth(falling, unbounded_accuracy=0.25, **args)
    assert stuck.status is WARN and "25.00%" in stuck.message
    assert stuck.values["unbounded_accuracy"] == 0.25


def _bools(bits: str) -> torch.Tensor:
    return torch.tensor([b == "1" for b in bits])


def test_gradient_free_not_stronger() -> None:
    grad = {"pgd": _bools("1100110000"), "fgsm": _bools("1110110000")}
    weaker_free = {"square": _bools("1110111100")}
    ok = check_gradient_free(grad, weaker_free, tolerance=0.0)
    assert ok.passed and ok.values["gradient_accuracy"] == 0.4
    stronger_free = {"square": _bools("0000000000")}
    bad = check_gradient_free(grad, stronger_free, tolerance=0.0)
    assert bad.status is WARN and "masked" in bad.message
    assert bad.values["broken_only_by_gradient_free"] == 4
    missing = check_gradient_free(grad, {}, tolerance=0.0)
    assert missing.status is WARN and "not tested" in missing.message


def test_single_step_whitebox_and_transfer_orderings() -> None:
    assert check_single_step(0.5, 0.3, n=1000, tolerance=0.01).passed
    assert check_single_step(0.3, 0.5, n=1000, tolerance=0.01).status is WARN
    assert check_whitebox_vs_graybox(0.3, 0.5, n=1000, tolerance=0.01).passed
    assert check_whitebox_vs_graybox(0.5, 0.3, n=1000, tolerance=0.01).status is WARN
    assert check_transfer_vs_whitebox(0.6, 0.3, n=1000, tolerance=0.01).passed
    warn = check_transfer_vs_whitebox(0.2, 0.3, n=1000, tolerance=0.01)
    assert warn.status is WARN and warn.to_json()["status"] == "warn"


# ------------------------------------------- the unbounded probe on models of known verdict
def _probe_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    config = EvaluationConfig(attacks=("pgd",), preprocessing_baselines=False, steps=10)
    probe = unbounded_probe(config)
    assert probe.eps == UNBOUNDED_EPS == 1.0 and not probe.random_start and probe.steps >= 20
    x_adv = probe(model, x, y)
    with torch.no_grad():
        return (model(x_adv).argmax(-1) == y).double().mean().item()


def _eps_growth(unbounded_accuracy: float) -> CheckStatus:
    return check_eps_growth(
        [(0.0, 0.9), (0.1, 0.3)], unbounded_eps=1.0, unbounded_accuracy=unbounded_accuracy,
        max_unbounded_accuracy=0.05, n=100, tolerance=0.01,
    ).status  # fmt: skip


def test_the_unbounded_probe_breaks_a_plain_resnet() -> None:
    """Pass case: an undefended, briefly trained ResNet falls to ~0% at L-inf eps = 1."""
    torch.manual_seed(0)
    model = create_model("resnet", in_channels=1, num_classes=10, input_size=8, width=8)
    train_model(model, load_dataset("digits", limit=600), epochs=3, batch_size=64, seed=0)
    x, y = load_dataset("digits", split="test", limit=100).tensors()
    with torch.no_grad():
        assert (model.eval()(x).argmax(-1) == y).double().mean() > 0.5  # it did learn
    accuracy = _probe_accuracy(model, x, y)
    assert accuracy <= 0.01
    assert _eps_growth(accuracy) is PASS


def test_the_unbounded_probe_flags_a_gradient_masked_model() -> None:
    """Warn case: behind a rounding layer (zero gradients) the probe cannot move the inputs."""
    x, y = quadrant_data(100, 5)
    accuracy = _probe_accuracy(gradient_masked_mlp(), x, y)
    assert accuracy > 0.5
    assert _eps_growth(accuracy) is WARN
