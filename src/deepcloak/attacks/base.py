"""What every attack shares, native or ART: the protocol, the norms, the checks of settings and
batches, the projection onto the eps-ball, and the per-sample worst case over attacks."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any, Protocol

import torch
from torch import nn

from deepcloak.batches import check_batch
from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError
from deepcloak.models.runtime import model_dtype
from deepcloak.validation import check_positive, check_positive_int

__all__ = [
    "Attack",
    "Norm",
    "attack_batch",
    "check_iterative",
    "l2_norms",
    "parse_norm",
    "project",
    "step_size_or_default",
    "worst_case",
]


class Norm(str, Enum):
    """The norm that bounds a perturbation."""

    LINF = "linf"
    L2 = "l2"


def parse_norm(value: Norm | str) -> Norm:
    """A :class:`Norm` from its name; a clear error for anything else."""
    return parse_enum(Norm, value, what="norm")


class Attack(Protocol):
    """Anything that maps ``(model, x, y)`` to adversarial inputs of the same shape in [0, 1]."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def spec(self) -> dict[str, Any]:
        """The attack's name and parameters, JSON-able, for reports and saved masks."""
        ...


def attack_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a batch before an attack and convert it to the model's dtype (labels to int64).

    Raises:
        DeepCloakError: inputs outside [0, 1] or not floating point, labels not integers, or
            not one label per input.
    """
    x, y = check_batch(x, y, model_dtype(model))
    return x.detach(), y


def check_iterative(
    steps: int, restarts: int, step_size: float | None = None, *, steps_name: str = "steps"
) -> None:
    """Check the settings of an iterative attack (native PGD and the ART attacks).

    Raises:
        DeepCloakError: ``steps`` or ``restarts`` is not an integer >= 1, or ``step_size`` is
            given and not a finite number > 0.
    """
    check_positive_int(steps, steps_name)
    check_positive_int(restarts, "restarts")
    if step_size is not None:
        check_positive(step_size, "step_size")


def step_size_or_default(step_size: float | None, eps: float, steps: int) -> float:
    """``step_size``, or Madry et al.'s rule ``2.5 * eps / steps`` when it is ``None``."""
    return step_size if step_size is not None else 2.5 * eps / steps


def l2_norms(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against ``t``: ``(B, 1, ..., 1)``."""
    norms: torch.Tensor = torch.linalg.vector_norm(t.flatten(1), dim=1)  # (B,)
    return norms.view(-1, *([1] * (t.ndim - 1)))


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``x_adv`` onto the ``eps``-ball of ``norm`` around ``x``, then onto [0, 1].

    The L-inf budget then holds exactly; the L2 budget to float precision.
    """
    delta = x_adv - x
    if norm is Norm.LINF:
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / l2_norms(delta).clamp_min(1e-12), max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def worst_case(correct: Iterable[torch.Tensor]) -> torch.Tensor:
    """Per-sample worst case over attacks: a sample counts as correct only if it is correct
    under every attack.

    Args:
        correct: one boolean ``(N,)`` tensor per attack.

    Returns:
        Boolean ``(N,)``, the logical AND of the inputs.

    Raises:
        DeepCloakError: no attack, or tensors of different shapes.
    """
    vectors = list(correct)
    if not vectors:
        raise DeepCloakError("the worst case needs at least one attack's results")
    out = vectors[0].clone()
    for v in vectors[1:]:
        if v.shape != out.shape:
            raise DeepCloakError(
                f"per-sample results differ in shape: {tuple(out.shape)} vs {tuple(v.shape)}"
            )
        out &= v
    return out
