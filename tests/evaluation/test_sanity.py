from __future__ import annotations

import torch

from deepcloak.evaluation.sanity import (
    CheckStatus,
    check_eps_growth,
    check_gradient_free,
    check_more_steps,
    check_single_step,
    check_transfer_vs_whitebox,
    check_whitebox_vs_graybox,
)

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
