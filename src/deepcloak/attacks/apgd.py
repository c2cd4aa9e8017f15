"""Native AutoPGD (Croce & Hein 2020, arXiv 2003.01690): APGD-CE and the targeted APGD-DLR.

Written on plain torch beside the native PGD (:mod:`.native`), the hot path of an evaluation;
ART's AutoPGD (``"art-apgd"``) stays as the independent cross-check. Same protocol as every
attack: configured at construction, ``APGD(eps=0.03)(model, x, y) -> x_adv``, inputs in [0, 1],
the model in eval mode while attacked (its modes restored), only input gradients computed.

The algorithm, per restart and sample:

- start at a random point of the eps-ball; step size ``2 * eps``;
- step with momentum 0.75: ``z = P(x_k + eta * d(grad))``,
  ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))`` (the first step without it);
- at the checkpoints ``w_j = ceil(p_j * steps)``, ``p_0 = 0``, ``p_1 = 0.22``,
  ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, halve the step size and restart from the
  best point so far when the loss rose in fewer than 75 % of the steps since the last
  checkpoint, or when the step size was not halved at the last checkpoint and the best loss
  has not improved since;
- keep the best iterate: a sample once misclassified keeps its misclassifying point; one that
  never is keeps its highest-loss point.

Samples the model already misclassifies are returned unchanged (they are adversarial as they
are), and every later restart or target runs only on the samples still standing, as AutoAttack
does. Random starts are drawn per call (per batch) from a generator seeded with ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepcloak.attacks.base import (
    Norm,
    attack_batch,
    check_iterative,
    l2_norms,
    parse_norm,
    project,
)
from deepcloak.attacks.native import Forward, _attack_forward, _nhwc
from deepcloak.errors import DeepCloakError
from deepcloak.models.outputs import check_finite_logits, select_logits
from deepcloak.models.runtime import eval_mode
from deepcloak.validation import check_epsilon, check_labels

__all__ = ["APGD", "APGDT", "checkpoints", "dlr_targeted_loss"]

#: Momentum of the update (the paper's alpha).
MOMENTUM = 0.75
#: Fraction of the steps since the last checkpoint in which the loss must have risen (rho).
RHO = 0.75

#: A per-sample loss of ``(logits (B, K), labels (B,), targets (B,) or None) -> (B,)``.
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def checkpoints(steps: int) -> list[int]:
    """The iterations at which APGD may halve its step size, below ``steps``.

    The paper's ``w_j = ceil(p_j * steps)`` with ``p_1 = 0.22`` and gaps shrinking by ``0.03``
    down to ``0.06``, in the reference implementation's integer form: a first gap of
    ``int(0.22 * steps)``, each next one ``int(0.03 * steps)`` shorter, at least
    ``int(0.06 * steps)`` (each at least 1). For 100 steps: 22, 41, 57, 70, 80, 87, 93, 99.
    """
    gap, shrink, least = (max(int(f * steps), 1) for f in (0.22, 0.03, 0.06))
    out: list[int] = []
    w = gap
    while w < steps:
        out.append(w)
        gap = max(gap - shrink, least)
        w += gap
    return out


def dlr_targeted_loss(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    """The targeted difference-of-logits-ratio loss (Croce & Hein 2020), per sample.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, with ``z_pi1 >= z_pi2 >= ...`` the sorted
    logits: rising as the target class ``t`` overtakes the true class ``y``, and unchanged when
    the logits are shifted or scaled. Needs at least 4 classes.
    """
    if target is None:
        raise DeepCloakError("the targeted DLR loss needs target classes")
    z = logits.float()
    top = z.sort(dim=1, descending=True).values
    rows = torch.arange(z.shape[0], device=z.device)
    scale = top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12
    return -(z[rows, y] - z[rows, target]) / scale


def _ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def _loss_and_gradient(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    loss: Loss,
    validate: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample losses ``(B,)``, correctness ``(B,)`` and the input gradient of their sum."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = select_logits(forward(x))  # (B, K)
        if validate:
            check_labels(y, logits.shape[-1])
            check_finite_logits(logits)
        losses = loss(logits, y, target)
        (grad,) = torch.autograd.grad(losses.sum(), x)
    return losses.detach(), logits.detach().argmax(-1) == y, grad


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` shaped to broadcast against ``like``."""
    return v.view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class _Run:
    """One APGD run's settings (shared by APGD-CE and APGD-T)."""

    eps: float
    steps: int
    norm: Norm

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm is Norm.LINF:
            return grad.sign()
        return grad / l2_norms(grad).clamp_min(1e-12)

    def start(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.norm is Norm.LINF:
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            delta = (2 * u - 1) * self.eps
        else:  # uniform in the ball: a uniform direction times radius eps * U^(1/d)
            d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            r = torch.rand((x.shape[0],), generator=gen, device=x.device, dtype=x.dtype)
            radius = self.eps * r ** (1 / x[0].numel())
            delta = _per_sample(radius, x) * d / l2_norms(d).clamp_min(1e-12)
        return project(x + delta, x, self.eps, self.norm)

    def __call__(
        self,
        forward: Forward,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        loss: Loss,
        gen: torch.Generator,
        validate: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The best iterate per sample and whether it is misclassified (``(B,)``)."""
        n = x.shape[0]
        x_adv = self.start(x, gen)
        losses, right, grad = _loss_and_gradient(forward, x_adv, y, target, loss, validate)
        best_x, best_loss, best_grad = x_adv.clone(), losses.clone(), grad.clone()
        found_x, found = x_adv.clone(), ~right  # the point that broke a sample, kept for good
        eta = torch.full((n,), 2.0 * self.eps, device=x.device, dtype=x.dtype)
        checks = set(checkpoints(self.steps))
        rises = torch.zeros(n, device=x.device)  # steps since the last checkpoint that rose
        halved = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_at_check = best_loss.clone()
        x_prev, prev_loss = x_adv, losses
        for k in range(self.steps):
            with torch.no_grad():
                step = _per_sample(eta, x) * self.direction(grad)
                z = project(x_adv + step, x, self.eps, self.norm)
                if k > 0:
                    mixed = x_adv + MOMENTUM * (z - x_adv) + (1 - MOMENTUM) * (x_adv - x_prev)
                    z = project(mixed, x, self.eps, self.norm)
                x_prev, x_adv = x_adv, z
            losses, right, grad = _loss_and_gradient(forward, x_adv, y, target, loss, False)
            with torch.no_grad():
                newly = ~right & ~found
                found_x[newly] = x_adv[newly]
                found |= newly
                rises += losses > prev_loss
                prev_loss = losses
                better = losses > best_loss
                best_x[better], best_grad[better] = x_adv[better], grad[better]
                best_loss = torch.where(better, losses, best_loss)
                if k + 1 in checks:
                    since = (k + 1) - max([c for c in checks if c < k + 1], default=0)
                    oscillating = rises < RHO * since
                    stalled = ~halved & (best_at_check >= best_loss)
                    halve = oscillating | stalled
                    eta = torch.where(halve, eta / 2, eta)
                    x_adv[halve], grad[halve] = best_x[halve], best_grad[halve]
                    halved, best_at_check = halve, best_loss.clone()
                    rises.zero_()
        out = torch.where(_per_sample(found, x), found_x, best_x)
        return out.detach(), found


def _run_standing(
    run: _Run,
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Loss,
    gen: torch.Generator,
    targets: list[torch.Tensor | None],
    restarts: int,
    nhwc: bool,
) -> torch.Tensor:
    """Runs (each target, each restart) on the samples still standing; the best point each."""
    with torch.no_grad():
        logits = select_logits(forward(x))
    check_labels(y, logits.shape[-1])
    check_finite_logits(logits)
    out = x.clone()
    standing = logits.argmax(-1) == y  # already misclassified: adversarial as it is
    best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
    for target in targets:
        for _ in range(restarts):
            rows = standing.nonzero().flatten()
            if rows.numel() == 0:
                return out
            xs = x[rows]
            if nhwc:  # indexing loses the channels-last layout the fast forward wants
                xs = _nhwc(xs)
            t = None if target is None else target[rows]
            x_adv, broken = run(forward, xs, y[rows], t, loss, gen, False)
            with torch.no_grad():  # among points that break nothing, keep the highest CE loss
                ce = _ce_loss(select_logits(forward(x_adv)), y[rows], None)
            keep = broken | (ce > best_loss[rows])
            out[rows[keep]] = x_adv[keep]
            best_loss[rows[keep]] = ce[keep]
            standing[rows[broken]] = False
    return out


def _check(eps: float, norm: Norm | str, steps: int, restarts: int) -> Norm:
    check_epsilon(eps)
    check_iterative(steps, restarts)
    return parse_norm(norm)


@dataclass(frozen=True, kw_only=True)
class APGD:
    """APGD-CE: AutoPGD on the cross-entropy loss (Croce & Hein 2020), L-inf or L2.

    Args:
        eps: budget in the [0, 1] input scale (L-inf: per pixel; L2: Euclidean norm).
        steps: iterations per restart (AutoAttack uses 100).
        norm: ``"linf"`` or ``"l2"``.
        restarts: random restarts; each after the first runs only on the samples still standing.
        seed: seed of the random starts.

    Shape:
        ``x``: ``(N, C, H, W)`` (any shape with batch first), ``y``: ``(N,)`` -> ``(N, ...)``.
    """

    eps: float
    steps: int = 100
    norm: Norm = Norm.LINF
    restarts: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _check(self.eps, self.norm, self.steps, self.restarts))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _attack(self, model, x, y, _ce_loss, lambda forward, x: [None])

    def spec(self) -> dict[str, Any]:
        """``{"name": "apgd", ...}`` with every parameter."""
        return _spec("apgd", self)


@dataclass(frozen=True, kw_only=True)
class APGDT:
    """APGD-T: AutoPGD on the targeted DLR loss, over the ``targets`` most likely wrong classes.

    For each target class in turn (the second most likely class on the clean input, then the
    third, ...), APGD runs on the samples still standing with the loss
    :func:`dlr_targeted_loss`; AutoAttack's standard version uses 9 targets and 100 steps.

    Args:
        eps: budget in the [0, 1] input scale.
        steps: iterations per target and restart.
        norm: ``"linf"`` or ``"l2"``.
        targets: how many target classes (capped at the number of classes minus one).
        restarts: random restarts per target.
        seed: seed of the random starts.

    Raises:
        DeepCloakError: (when called) a model with fewer than 4 classes (the DLR loss needs 4).
    """

    eps: float
    steps: int = 100
    norm: Norm = Norm.LINF
    targets: int = 9
    restarts: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _check(self.eps, self.norm, self.steps, self.restarts))
        check_iterative(self.targets, 1, steps_name="targets")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _attack(self, model, x, y, dlr_targeted_loss, self._targets)

    def _targets(self, forward: Forward, x: torch.Tensor) -> list[torch.Tensor | None]:
        """The target classes, most likely wrong first: ranks 1, 2, ... of the clean logits."""
        with torch.no_grad():
            logits = select_logits(forward(x))
        classes = logits.shape[-1]
        if classes < 4:
            raise DeepCloakError(
                f"APGD-T's targeted DLR loss needs at least 4 classes, the model has "
                f"{classes}; use 'apgd' (cross-entropy) instead"
            )
        order = logits.argsort(dim=-1, descending=True)  # (B, K)
        # Rank 0 is the predicted (for standing samples: the true) class.
        return [order[:, i] for i in range(1, min(self.targets, classes - 1) + 1)]

    def spec(self) -> dict[str, Any]:
        """``{"name": "apgd-t", ...}`` with every parameter."""
        return _spec("apgd-t", self)


def _attack(
    attack: APGD | APGDT,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: Loss,
    targets: Callable[[Forward, torch.Tensor], list[torch.Tensor | None]],
) -> torch.Tensor:
    """Either APGD on ``(x, y)``: the runs of every target (``targets(forward, x)``, ``None``
    for an untargeted loss) and restart on the samples still standing."""
    x, y = attack_batch(model, x, y)
    if attack.eps == 0:
        return x.clone()
    gen = torch.Generator(device=x.device).manual_seed(attack.seed)
    with eval_mode(model):
        forward, x_fast = _attack_forward(model, x)
        run = _Run(attack.eps, attack.steps, attack.norm)
        out = _run_standing(
            run, forward, x_fast, y, loss, gen, targets(forward, x_fast), attack.restarts,
            x_fast is not x,
        )  # fmt: skip
    return out.contiguous()


def _spec(name: str, attack: APGD | APGDT) -> dict[str, Any]:
    d = asdict(attack)
    d["norm"] = attack.norm.value
    return {"name": name, **d}
