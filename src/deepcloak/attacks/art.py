"""Attacks from the Adversarial Robustness Toolbox (ART), behind deepcloak's attack protocol.

An independent, well-kept library checks that our own attacks are not the weak link: AutoPGD
(Croce & Hein 2020: a step-size-free PGD, far harder to get wrong than hand-tuned PGD), the
Square attack (Andriushchenko et al. 2020: gradient-free, so it sees through gradient masking),
and ART's PGD (to cross-check the native one). Each is a small callable configured at
construction, like the native attacks: ``ArtAPGD(eps=8/255)(model, x, y) -> x_adv``.

The model is wrapped in ART's ``PyTorchClassifier`` (inputs in [0, 1], cross-entropy loss) on the
model's own device, in eval mode (restored afterwards). The model's parameters and their
``.grad`` fields are left as they were. ART draws its random numbers from numpy's global
generator; each call seeds it from ``seed`` and restores its previous state, so results are
reproducible and other code's randomness is untouched.

``art`` is imported only when an attack runs: install it with ``pip install 'deepcloak[art]'``.
Importing this module has no side effect; :mod:`deepcloak.attacks` registers the names
``"art-apgd"``, ``"square"`` and ``"art-pgd"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from deepcloak.attacks.base import (
    Norm,
    attack_batch,
    check_iterative,
    parse_norm,
    project,
    step_size_or_default,
)
from deepcloak.errors import DeepCloakError
from deepcloak.models.outputs import check_finite_logits, select_logits
from deepcloak.models.runtime import eval_mode, model_device
from deepcloak.validation import check_epsilon, check_labels

__all__ = [
    "ArtAPGD",
    "ArtPGD",
    "ArtSquare",
    "art_classifier",
    "art_version",
    "require_art",
]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'deepcloak[art]'"


def require_art() -> Any:
    """Import and return the ``art`` package, or raise a clear error saying how to install it.

    Raises:
        DeepCloakError: ART is not installed.
    """
    try:
        import art
    except ImportError as e:
        raise DeepCloakError(
            "this needs the Adversarial Robustness Toolbox (adversarial-robustness-toolbox), "
            f"which is not installed ({e}); install it with: {INSTALL_HINT}"
        ) from None
    return art


def art_version() -> str | None:
    """The installed ART version, or ``None`` when ART is not installed."""
    try:
        import art
    except ImportError:
        return None
    return str(art.__version__)


#: The largest batch a query attack sends through the model at once (the samples still
#: standing, up to this many, in one batch on the model's device).
QUERY_BATCH = 4096


class _PlainForward(nn.Module):
    """Calls the model as a whole. ART walks the children of an ``nn.Sequential`` instead of
    calling it, which would skip a subclass's own ``forward``; this wrapper prevents that."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return select_logits(self.model(x))


@contextlib.contextmanager
def _on_device(device: torch.device) -> Iterator[None]:
    """Make ``device`` CUDA's current device: ART always uses ``cuda:<current device>``."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            yield
    else:
        yield


@contextlib.contextmanager
def _frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Switch off parameter gradients (ART's backward pass would fill ``.grad``) and restore
    each parameter's ``requires_grad`` and ``.grad`` on exit."""
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    for p, _, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, requires_grad, grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad


@contextlib.contextmanager
def _numpy_seed(seed: int) -> Iterator[None]:
    """Seed numpy's and Python's global generators (ART draws from both: its L2 Square from
    Python's ``random``); restore them on exit."""
    state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)
        random.setstate(py_state)


def art_classifier(
    model: nn.Module,
    input_shape: tuple[int, ...],
    nb_classes: int,
    *,
    loss: nn.Module | None = None,
    memo_rows: int = 0,
) -> Any:
    """Wrap ``model`` in ART's ``PyTorchClassifier``: inputs in [0, 1], on the model's device.

    The loss defaults to the *summed* cross-entropy, so that gradients match the native attacks'
    exactly (a mean would scale them by ``1/batch``, which the sign step hides but float
    underflow need not).

    ``memo_rows > 0`` remembers the predictions of that many recent inputs (see
    :func:`_memo_classifier`): a query attack that asks again about an input it already asked
    about gets the answer without running the model.
    """
    require_art()
    from art.estimators.classification import PyTorchClassifier

    device = model_device(model)
    cls = _memo_classifier(PyTorchClassifier, memo_rows) if memo_rows > 0 else PyTorchClassifier
    with _on_device(device):
        return cls(
            model=_PlainForward(model),
            loss=loss if loss is not None else nn.CrossEntropyLoss(reduction="sum"),
            input_shape=tuple(input_shape),
            nb_classes=int(nb_classes),
            clip_values=(0.0, 1.0),
            device_type="gpu" if device.type == "cuda" else "cpu",
        )


def _memo_classifier(base: type[Any], capacity: int) -> type[Any]:
    """A subclass of ART's classifier ``base`` whose ``predict`` remembers recent predictions.

    ART's Square attack predicts every sample at each iteration, including the ones already
    misclassified and unchanged, and evaluates the loss of its current point again although it
    was the previous iteration's candidate: most of its queries repeat an earlier one. A model
    in eval mode gives the same output for the same input, so those are answered from memory,
    keyed by a digest of the input's bytes; only new inputs run through the model, in one batch.
    The ``capacity`` most recently used inputs are kept (their logits only).
    """

    class MemoClassifier(base):  # type: ignore[misc]
        def predict(
            self, x: np.ndarray, batch_size: int = 128, training_mode: bool = False, **kw: Any
        ) -> np.ndarray:
            if training_mode:
                return np.asarray(super().predict(x, batch_size, training_mode, **kw))
            memo = self.__dict__.setdefault("_memo", OrderedDict())
            keys = [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in x]
            new = {k: i for i, k in enumerate(keys) if k not in memo}  # one query per new input
            if new:
                rows = list(new.values())
                out = np.asarray(super().predict(x[rows], batch_size, training_mode, **kw))
                memo.update(zip(new, out, strict=True))
            result = np.stack([memo[k] for k in keys])
            for k in keys:
                memo.move_to_end(k)
            while len(memo) > capacity:
                memo.popitem(last=False)
            return result

    return MemoClassifier


def _art_norm(norm: Norm) -> float | int:
    return np.inf if norm is Norm.LINF else 2


class _ArtAttack:
    """Shared plumbing: checks, ART classifier, seeding, numpy round trip, final projection."""

    eps: float
    norm: Norm
    seed: int

    def _validate(self) -> None:
        check_epsilon(self.eps)
        object.__setattr__(self, "norm", parse_norm(self.norm))

    def _generate(self, classifier: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    #: Attack only the samples the model still classifies correctly (the others are already
    #: adversarial and come back unchanged, as ART would return them), and answer repeated
    #: queries from memory: for query attacks, whose cost is their model queries.
    _standing_only: ClassVar[bool] = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = attack_batch(model, x, y)
        if self.eps == 0:
            return x.clone()
        with torch.no_grad(), eval_mode(model):
            logits = select_logits(model(x))  # (N, K)
        check_labels(y, logits.shape[-1])
        check_finite_logits(logits)
        if not self._standing_only:
            return self._attack(model, x, y, logits.shape[-1])
        standing = logits.argmax(-1) == y
        out = x.clone()
        if bool(standing.any()):
            out[standing] = self._attack(model, x[standing], y[standing], logits.shape[-1])
        return out

    def _attack(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, nb_classes: int
    ) -> torch.Tensor:
        """Run ART's attack on ``x`` (checked, in the model's dtype) and project the result."""
        memo_rows = 4 * len(x) if self._standing_only else 0  # see _memo_classifier
        with eval_mode(model), _frozen_parameters(model), _numpy_seed(self.seed):
            classifier = art_classifier(model, tuple(x.shape[1:]), nb_classes, memo_rows=memo_rows)
            # ART's L2 Square divides by zero-norm squares on small images (and then discards
            # them); the non-finite values it may leave are replaced below, so silence numpy.
            with _on_device(model_device(model)), np.errstate(divide="ignore", invalid="ignore"):
                x_np = x.cpu().numpy().astype(np.float32)
                y_np = y.cpu().numpy().astype(np.int64)
                x_adv = self._generate(classifier, x_np, y_np)
        out = torch.from_numpy(np.asarray(x_adv)).to(device=x.device, dtype=x.dtype)
        finite = torch.isfinite(out)
        if not bool(finite.all()):
            log.warning(
                "%s returned non-finite values; those pixels keep their clean value",
                type(self).__name__,
            )
            out = torch.where(finite, out, x)
        return project(out, x, self.eps, self.norm)

    def _params(self) -> dict[str, Any]:
        d: dict[str, Any] = asdict(self)  # type: ignore[call-overload]
        d["norm"] = self.norm.value
        return d


@dataclass(frozen=True, kw_only=True)
class ArtAPGD(_ArtAttack):
    """AutoPGD (Croce & Hein 2020, arXiv 2003.01690) from ART, cross-entropy or DLR loss.

    The step size adapts on its own (starting at ``2 * eps``); each restart starts at a random
    point of the ball, and a sample's perturbation is kept once it is misclassified.

    Args:
        eps: budget in the [0, 1] input scale (L-inf per pixel, or L2 norm).
        steps: iterations per restart (ART's ``max_iter``).
        norm: ``"linf"`` or ``"l2"``.
        restarts: random restarts (ART's ``nb_random_init``).
        loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (difference of logits ratio; needs at least
            3 classes).
        seed: seed of the random starts.
    """

    eps: float
    steps: int = 50
    norm: Norm = Norm.LINF
    restarts: int = 1
    loss: str = "ce"
    seed: int = 0

    def __post_init__(self) -> None:
        self._validate()
        check_iterative(self.steps, self.restarts)
        if self.loss not in ("ce", "dlr"):
            raise DeepCloakError(f"APGD loss must be 'ce' or 'dlr', got {self.loss!r}")

    def _generate(self, classifier: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from art.attacks.evasion import AutoProjectedGradientDescent

        if self.loss == "dlr" and classifier.nb_classes < 3:
            raise DeepCloakError("APGD's DLR loss needs at least 3 classes; use loss='ce'")
        attack = AutoProjectedGradientDescent(
            classifier,
            norm=_art_norm(self.norm),
            eps=self.eps,
            eps_step=2 * self.eps,
            max_iter=self.steps,
            nb_random_init=self.restarts,
            batch_size=len(x),
            loss_type=None if self.loss == "ce" else "difference_logits_ratio",
            verbose=False,
        )
        return np.asarray(attack.generate(x, y))

    def spec(self) -> dict[str, Any]:
        """``{"name": "art-apgd", "library": "art", ...}`` with every parameter."""
        return {"name": "art-apgd", "library": "art", **self._params()}


@dataclass(frozen=True, kw_only=True)
class ArtSquare(_ArtAttack):
    """Square attack (Andriushchenko et al. 2020, arXiv 1912.00049) from ART: gradient-free.

    It only queries the model's outputs, so a defence that merely hides gradients does not stop
    it. Needs image inputs ``(N, C, H, W)``.

    Args:
        eps: budget in the [0, 1] input scale.
        max_queries: iterations, i.e. model queries per sample (ART's ``max_iter``).
        norm: ``"linf"`` or ``"l2"``.
        restarts: ART's ``nb_restarts``.
        p_init: initial fraction of pixels changed per square.
        seed: seed of the random search.
    """

    eps: float
    max_queries: int = 300
    norm: Norm = Norm.LINF
    restarts: int = 1
    p_init: float = 0.8
    seed: int = 0

    _standing_only: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self._validate()
        check_iterative(self.max_queries, self.restarts, steps_name="max_queries")
        if not 0 < self.p_init <= 1:
            raise DeepCloakError(f"p_init must be in (0, 1], got {self.p_init}")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise DeepCloakError(
                f"the Square attack needs image inputs (N, C, H, W), got shape {tuple(x.shape)}"
            )
        return super().__call__(model, x, y)

    def _generate(self, classifier: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from art.attacks.evasion import SquareAttack

        attack = SquareAttack(
            classifier,
            norm=_art_norm(self.norm),
            max_iter=self.max_queries,
            eps=self.eps,
            p_init=self.p_init,
            nb_restarts=self.restarts,
            batch_size=min(len(x), QUERY_BATCH),
            verbose=False,
        )
        return np.asarray(attack.generate(x, y))

    def spec(self) -> dict[str, Any]:
        """``{"name": "square", "library": "art", ...}`` with every parameter."""
        return {"name": "square", "library": "art", **self._params()}


@dataclass(frozen=True, kw_only=True)
class ArtPGD(_ArtAttack):
    """ART's PGD (its PyTorch implementation), parametrised like :class:`deepcloak.PGD`.

    Used to cross-check the native PGD: with the same budget, steps and step size and no random
    start, both take the same steps.

    Args:
        eps: budget in the [0, 1] input scale.
        steps: gradient steps (ART's ``max_iter``).
        step_size: step length; ``None`` for ``2.5 * eps / steps`` (as the native PGD).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start from a random point of the ball (else from ``x``).
        restarts: random starts when ``random_start`` (ART keeps, per sample, a successful one).
        seed: seed of the random starts.
    """

    eps: float
    steps: int = 10
    step_size: float | None = None
    norm: Norm = Norm.LINF
    random_start: bool = True
    restarts: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        self._validate()
        check_iterative(self.steps, self.restarts, self.step_size)

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return step_size_or_default(self.step_size, self.eps, self.steps)

    def _generate(self, classifier: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from art.attacks.evasion import ProjectedGradientDescentPyTorch

        attack = ProjectedGradientDescentPyTorch(
            classifier,
            norm=_art_norm(self.norm),
            eps=self.eps,
            eps_step=self.alpha,
            max_iter=self.steps,
            num_random_init=self.restarts if self.random_start else 0,
            batch_size=len(x),
            verbose=False,
        )
        return np.asarray(attack.generate(x, y))

    def spec(self) -> dict[str, Any]:
        """``{"name": "art-pgd", "library": "art", ...}`` with the step size resolved."""
        d = self._params()
        d["step_size"] = self.alpha
        return {"name": "art-pgd", "library": "art", **d}


#: Attacks that query only the model's outputs (no gradients): the gradient-masking check.
GRADIENT_FREE = frozenset({"square"})

#: The registered names of the attacks in this module (they need ART installed).
ART_ATTACKS = frozenset({"art-apgd", "square", "art-pgd"})
