"""Sanity checks on an evaluation, from the checklist of Carlini et al. 2019 (arXiv 1902.06705).

Each check turns numbers the evaluation already measured into a :class:`SanityCheck`: ``pass``,
or ``warn`` with the numbers behind it. A warning does not prove the evaluation wrong; it says
that the attacks may not have found what a stronger attacker would, typically because the
defence masks gradients (Athalye et al. 2018), so its robust accuracy is an over-estimate.

All comparisons allow a tolerance (``max(tolerance, 1 / n)``: at least one sample), so that the
noise of random starts does not raise false alarms.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import torch

__all__ = [
    "CheckStatus",
    "SanityCheck",
    "check_eps_growth",
    "check_gradient_free",
    "check_more_steps",
    "check_single_step",
    "check_transfer_vs_whitebox",
    "check_whitebox_vs_graybox",
]


class CheckStatus(str, Enum):
    """Outcome of a sanity check."""

    PASS = "pass"
    WARN = "warn"


@dataclass(frozen=True)
class SanityCheck:
    """One check: its name, outcome, a sentence for humans and the numbers behind it."""

    name: str
    status: CheckStatus
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether the check passed."""
        return self.status is CheckStatus.PASS

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SanityCheck:
        """The check back from :meth:`to_json`."""
        return cls(d["name"], CheckStatus(d["status"]), d["message"], dict(d["values"]))


def _verdict(
    name: str, *, warn: bool, warning: str, passing: str, values: dict[str, Any]
) -> SanityCheck:
    """The check ``name``: a warning with ``warning`` when ``warn``, else a pass."""
    if warn:
        return SanityCheck(name, CheckStatus.WARN, warning, values)
    return SanityCheck(name, CheckStatus.PASS, passing, values)


def _tol(tolerance: float, n: int) -> float:
    return max(tolerance, 1.0 / max(n, 1))


def _acc(correct: torch.Tensor) -> float:
    return correct.double().mean().item() if correct.numel() else 0.0


def check_more_steps(
    acc_steps: float,
    acc_more: float,
    *,
    steps: int,
    more_steps: int,
    n: int,
    tolerance: float,
    attack: str = "PGD",
) -> SanityCheck:
    """More steps of ``attack`` must not raise robust accuracy (else it had not converged)."""
    tol = _tol(tolerance, n)
    values = {
        "steps": steps,
        "more_steps": more_steps,
        "accuracy": acc_steps,
        "accuracy_more_steps": acc_more,
        "tolerance": tol,
    }
    return _verdict(
        "more-steps",
        warn=acc_more > acc_steps + tol,
        warning=(
            f"{attack} with {more_steps} steps leaves MORE samples correct ({acc_more:.2%}) "
            f"than with {steps} ({acc_steps:.2%}): the attack is unstable or gradients are masked"
        ),
        passing=(
            f"{more_steps} {attack} steps: {acc_more:.2%}, {steps} steps: {acc_steps:.2%} "
            "(not higher)"
        ),
        values=values,
    )


def check_eps_growth(
    curve: Sequence[tuple[float, float]],
    *,
    unbounded_eps: float,
    unbounded_accuracy: float,
    max_unbounded_accuracy: float,
    n: int,
    tolerance: float,
) -> SanityCheck:
    """Robust accuracy must fall as epsilon grows, towards 0 for an unbounded budget.

    Args:
        curve: ``(eps, accuracy)`` pairs, any order.
        unbounded_eps: the L-inf budget of the probe (1.0: the attacker may draw any image).
        unbounded_accuracy: accuracy under that probe.
        max_unbounded_accuracy: the largest accuracy accepted there.
    """
    tol = _tol(tolerance, n)
    points = sorted(curve)
    rises = [(e0, a0, e1, a1) for (e0, a0), (e1, a1) in itertools.pairwise(points) if a1 > a0 + tol]
    values = {
        "curve": [{"eps": e, "accuracy": a} for e, a in points],
        "unbounded_eps": unbounded_eps,
        "unbounded_accuracy": unbounded_accuracy,
        "max_unbounded_accuracy": max_unbounded_accuracy,
        "tolerance": tol,
    }
    problems = []
    if rises:
        e0, a0, e1, a1 = rises[0]
        problems.append(f"accuracy rises from {a0:.2%} at eps={e0:.4g} to {a1:.2%} at eps={e1:.4g}")
    if unbounded_accuracy > max_unbounded_accuracy:
        problems.append(
            f"at L-inf eps={unbounded_eps:g} (any image reachable) {unbounded_accuracy:.2%} of "
            f"samples stay correct, more than {max_unbounded_accuracy:.0%}"
        )
    return _verdict(
        "eps-growth",
        warn=bool(problems),
        warning=("; ".join(problems) + ": the attack is failing, not the model resisting"),
        passing=(
            f"accuracy falls with eps, to {unbounded_accuracy:.2%} at L-inf eps={unbounded_eps:g}"
        ),
        values=values,
    )


def _worst(correct: Mapping[str, torch.Tensor]) -> torch.Tensor:
    vectors = list(correct.values())
    out = vectors[0].clone()
    for v in vectors[1:]:
        out &= v
    return out


def check_gradient_free(
    gradient: Mapping[str, torch.Tensor],
    gradient_free: Mapping[str, torch.Tensor],
    *,
    tolerance: float,
) -> SanityCheck:
    """The gradient-free attack must not beat the gradient attacks (else: gradient masking).

    Args:
        gradient: per-sample correctness under each gradient attack (name -> bool ``(N,)``).
        gradient_free: the same under each gradient-free attack.
    """
    if not gradient_free or not gradient:
        missing = "gradient-free" if not gradient_free else "gradient"
        return SanityCheck(
            "gradient-free-not-stronger",
            CheckStatus.WARN,
            f"not tested: no {missing} attack was run (add 'square' and 'pgd' to the attacks)",
            {"gradient_attacks": sorted(gradient), "gradient_free_attacks": sorted(gradient_free)},
        )
    grad_worst = _worst(gradient)
    free_worst = _worst(gradient_free)
    n = grad_worst.numel()
    tol = _tol(tolerance, n)
    acc_grad, acc_free = _acc(grad_worst), _acc(free_worst)
    only_free = int((grad_worst & ~free_worst).sum())
    values = {
        "gradient_attacks": sorted(gradient),
        "gradient_free_attacks": sorted(gradient_free),
        "gradient_accuracy": acc_grad,
        "gradient_free_accuracy": acc_free,
        "broken_only_by_gradient_free": only_free,
        "n": n,
        "tolerance": tol,
    }
    return _verdict(
        "gradient-free-not-stronger",
        warn=acc_free < acc_grad - tol,
        warning=(
            f"the gradient-free attack is stronger ({acc_free:.2%} vs {acc_grad:.2%} robust "
            f"accuracy; {only_free} samples broken only without gradients): gradients are "
            "probably masked, so the gradient attacks under-estimate the attacker"
        ),
        passing=(
            f"gradient attacks {acc_grad:.2%}, gradient-free {acc_free:.2%} robust accuracy "
            f"({only_free} samples broken only without gradients)"
        ),
        values=values,
    )


def check_single_step(single: float, iterative: float, *, n: int, tolerance: float) -> SanityCheck:
    """Iterative attacks must be at least as strong as the single-step FGSM."""
    tol = _tol(tolerance, n)
    values = {"fgsm_accuracy": single, "iterative_accuracy": iterative, "tolerance": tol}
    return _verdict(
        "iterative-beats-single-step",
        warn=iterative > single + tol,
        warning=(
            f"iterative attacks leave more samples correct ({iterative:.2%}) than one FGSM step "
            f"({single:.2%}): the iterative attacks are misconfigured or gradients are masked"
        ),
        passing=f"iterative {iterative:.2%} <= FGSM {single:.2%}",
        values=values,
    )


def check_whitebox_vs_graybox(
    whitebox: float, graybox: float, *, n: int, tolerance: float
) -> SanityCheck:
    """Attacking the defended model itself must not be weaker than transferring from the
    undefended one (else the end-to-end attack is being fooled)."""
    tol = _tol(tolerance, n)
    values = {"whitebox_accuracy": whitebox, "graybox_accuracy": graybox, "tolerance": tol}
    return _verdict(
        "white-box-not-weaker",
        warn=whitebox > graybox + tol,
        warning=(
            f"white-box attacks on the cloaked model leave more samples correct ({whitebox:.2%}) "
            f"than samples crafted on the unmasked model ({graybox:.2%}): the mask may be "
            "masking gradients; trust the lower number"
        ),
        passing=f"white-box {whitebox:.2%} <= gray-box {graybox:.2%}",
        values=values,
    )


def check_transfer_vs_whitebox(
    transfer: float, whitebox: float, *, n: int, tolerance: float
) -> SanityCheck:
    """Samples transferred from a surrogate must not beat the white-box attack."""
    tol = _tol(tolerance, n)
    values = {"transfer_accuracy": transfer, "whitebox_accuracy": whitebox, "tolerance": tol}
    return _verdict(
        "transfer-not-stronger",
        warn=transfer < whitebox - tol,
        warning=(
            f"samples transferred from the surrogate are stronger ({transfer:.2%}) than the "
            f"white-box attack ({whitebox:.2%}): the white-box attack is being fooled"
        ),
        passing=f"transfer {transfer:.2%} >= white-box {whitebox:.2%}",
        values=values,
    )
