"""Native adversarial attacks: FGSM and PGD (L-inf and L2), batched, on the model's device.

Written on plain torch because this is the hot path of the fit and of every sweep. An attack is
a small callable configured at construction: ``FGSM(eps=0.03)(model, x, y) -> x_adv``. Inputs
are in [0, 1] and budgets in that scale. The model is put in eval mode while attacked and its
modes are restored afterwards. Only the gradient with respect to the input is computed: the
model's ``.grad`` fields are never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from deepcloak.attacks.base import (
    Attack,
    Norm,
    attack_batch,
    check_iterative,
    l2_norms,
    parse_norm,
    project,
    step_size_or_default,
)
from deepcloak.models.outputs import check_finite_logits, select_logits
from deepcloak.models.runtime import eval_mode
from deepcloak.validation import check_epsilon, check_labels

__all__ = ["FGSM", "PGD"]
# Re-exported for callers that import them from here; their home is given in each import above.
__all__ += ["Attack", "Norm", "eval_mode", "parse_norm"]


Forward = Callable[[torch.Tensor], Any]


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """``t`` (4-D) with channels-last strides, also when it has one channel (where
    ``contiguous(memory_format=...)`` keeps the ambiguous NCHW strides, and convolutions with
    them run NCHW)."""
    _, c, h, w = t.shape
    out = torch.empty_strided(t.shape, (c * h * w, 1, w * c, c), dtype=t.dtype, device=t.device)
    return out.copy_(t)


def _swappable(model: nn.Module) -> bool:
    """Whether ``functional_call`` can run ``model`` with other weights: not a TorchScript
    module (compiled code) nor a ``torch.compile`` wrapper (new weights would recompile it)."""
    return not isinstance(model, torch.jit.ScriptModule) and not hasattr(model, "_orig_mod")


def _attack_forward(model: nn.Module, x: torch.Tensor) -> tuple[Forward, torch.Tensor]:
    """The forward pass the attack differentiates, and ``x`` laid out for it.

    On CPU a conv net's forward and backward run markedly faster with inputs and convolution
    weights in channels-last (NHWC) layout, oneDNN's own (PGD 1.2x, FGSM 1.5x on bench/run.py's
    ResNet-8). The weights are copied in that layout and used through
    ``torch.func.functional_call``: the caller's model and its parameters are not changed.
    Float rounding differs from the NCHW pass in the last bits. Elsewhere (CUDA, inputs that
    are not images, models without convolutions) the model runs as it is.
    """
    if x.device.type != "cpu" or x.ndim != 4 or not _swappable(model):
        return model, x
    weights = {n: p for n, p in model.named_parameters() if p.ndim == 4}
    if not weights:
        return model, x
    nhwc = {n: p.detach().contiguous(memory_format=torch.channels_last) for n, p in weights.items()}
    return (lambda t: functional_call(model, nhwc, (t,))), _nhwc(x)


def _input_gradient(
    model: Forward, x: torch.Tensor, y: torch.Tensor, *, validate: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed cross-entropy w.r.t. ``x``, and the per-sample losses.

    The sum (not mean) makes each sample's gradient independent of the batch size.
    ``validate`` checks the labels and the logits; attacks do it on their first step only, as
    each check waits for the device.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = select_logits(model(x))  # (B, K)
        if validate:
            check_labels(y, logits.shape[-1])
            check_finite_logits(logits)
        losses = F.cross_entropy(logits, y, reduction="none")  # (B,)
        (grad,) = torch.autograd.grad(losses.sum(), x)
    return grad, losses.detach()


@dataclass(frozen=True, kw_only=True)
class FGSM:
    """Fast Gradient Sign Method (Goodfellow et al. 2015), the attack of the DeepCloak paper.

    ``x_adv = clip(x + eps * sign(grad_x loss), 0, 1)``.

    Args:
        eps: L-inf budget in the [0, 1] input scale, e.g. ``8/255``.

    Shape:
        ``x``: ``(N, C, H, W)`` (any shape with batch first), ``y``: ``(N,)`` -> ``(N, ...)``.
    """

    eps: float

    def __post_init__(self) -> None:
        check_epsilon(self.eps)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = attack_batch(model, x, y)
        with eval_mode(model):
            forward, x_fast = _attack_forward(model, x)
            grad, _ = _input_gradient(forward, x_fast, y)
        return (x + self.eps * grad.sign()).clamp_(0.0, 1.0).detach().contiguous()

    def spec(self) -> dict[str, Any]:
        """``{"name": "fgsm", "eps": ...}``."""
        return {"name": "fgsm", **asdict(self)}


@dataclass(frozen=True, kw_only=True)
class PGD:
    """Projected Gradient Descent (Madry et al. 2018), L-inf or L2, with random start and restarts.

    Each restart starts at a random point of the eps-ball, takes ``steps`` steps of size
    ``step_size`` (default ``2.5 * eps / steps``, Madry et al.'s rule) and projects back onto
    the ball and [0, 1]. Per sample, the restart with the highest final loss is returned,
    preferring ones that are misclassified.

    Args:
        eps: budget in the [0, 1] input scale (L-inf: per pixel; L2: Euclidean norm).
        steps: gradient steps per restart.
        step_size: step length; ``None`` for ``2.5 * eps / steps``.
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a random point of the ball (else from ``x``).
        restarts: independent runs; the worst case per sample is kept.
        seed: seed of the random starts, so results are reproducible.
    """

    eps: float
    steps: int = 10
    step_size: float | None = None
    norm: Norm = Norm.LINF
    random_start: bool = True
    restarts: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_epsilon(self.eps)
        object.__setattr__(self, "norm", parse_norm(self.norm))
        check_iterative(self.steps, self.restarts, self.step_size)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return step_size_or_default(self.step_size, self.eps, self.steps)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = attack_batch(model, x, y)
        gen = torch.Generator(device=x.device).manual_seed(self.seed)
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -torch.inf, device=x.device)
        best_wrong = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with eval_mode(model):
            forward, x_fast = _attack_forward(model, x)
            for _ in range(self.restarts):
                x_adv = self._run(forward, x_fast, y, gen)
                with torch.no_grad():
                    logits = select_logits(forward(x_adv))
                    loss = F.cross_entropy(logits, y, reduction="none")
                    wrong = logits.argmax(-1) != y
                # Misclassified beats correct; among equals, higher loss wins.
                better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
                best[better] = x_adv[better]
                best_loss = torch.where(better, loss, best_loss)
                best_wrong |= wrong
        return best

    def _run(
        self, model: Forward, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        if self.random_start:
            x_adv = (x + self._random_delta(x, gen)).clamp_(0.0, 1.0)
        else:
            x_adv = x.clone()
        for step in range(self.steps):
            grad, _ = _input_gradient(model, x_adv, y, validate=step == 0)
            with torch.no_grad():
                x_adv = x_adv + self.alpha * self._ascent_direction(grad)
                x_adv = project(x_adv, x, self.eps, self.norm)
        return x_adv.detach()

    def _random_delta(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.norm is Norm.LINF:
            u = torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype)
            return (2 * u - 1) * self.eps
        # Uniform in the L2 ball: a uniform direction times radius eps * U^(1/d).
        d = x[0].numel()
        direction = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        direction = direction / l2_norms(direction)
        r = torch.rand((x.shape[0],), generator=gen, device=x.device, dtype=x.dtype) ** (1 / d)
        return direction * (self.eps * r).view(-1, *([1] * (x.ndim - 1)))

    def _ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm is Norm.LINF:
            return grad.sign()
        return grad / l2_norms(grad).clamp_min(1e-12)

    def spec(self) -> dict[str, Any]:
        """The name ``"pgd"`` and every parameter, with the step size resolved."""
        d = asdict(self)
        d["norm"] = self.norm.value
        d["step_size"] = self.alpha
        return {"name": "pgd", **d}
