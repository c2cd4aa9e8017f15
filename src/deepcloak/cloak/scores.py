"""Feature scores: which features of layer L do adversarial examples move most?

A scorer is a reducible state in the torchmetrics style: :meth:`FeatureScore.update` adds a
batch of clean and adversarial features, :meth:`FeatureScore.compute` returns one score per
feature, and the state (a per-feature sum and a count) can be merged with another scorer's or
all-reduced across processes with ``torch.distributed``. Memory is O(number of features),
whatever the size of the data.

Scorers:
    ``deepcloak``: the paper's ``s_j = sum_samples |f_j(x_adv) - f_j(x)|``.
    ``random``: a seeded random score, the baseline a useful score must beat.
    ``activation``: activation-magnitude pruning (fine-pruning), a baseline that runs no attack.

Turning scores into a ranking and masks is :mod:`deepcloak.cloak.mask`'s job.
"""

from __future__ import annotations

import inspect

import torch

from deepcloak.errors import DeepCloakError
from deepcloak.registry import Registry
from deepcloak.validation import check_finite

__all__ = [
    "SCORERS",
    "ActivationScore",
    "DeepCloakScore",
    "FeatureScore",
    "RandomScore",
    "create_scorer",
    "deepcloak_score",
]


def _shift(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Per-sample absolute feature change ``|f(x_adv) - f(x)|``, checked. Shape ``(N, *F)``."""
    if clean.shape != adv.shape:
        raise DeepCloakError(
            f"clean and adversarial features differ in shape: {tuple(clean.shape)} vs "
            f"{tuple(adv.shape)}"
        )
    check_finite(clean, "clean features")
    check_finite(adv, "adversarial features")
    return (adv.double() - clean.double()).abs()


def deepcloak_score(clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """The paper's score: ``s_j = sum over samples of |f_j(x_adv) - f_j(x)|``.

    Args:
        clean: features of clean inputs, ``(N, *F)``.
        adv: features of their adversarial versions, ``(N, *F)``.

    Returns:
        Scores, float64, shape ``F``.
    """
    return _shift(clean, adv).sum(0)


class FeatureScore:
    """Streaming per-feature score: a float64 sum over samples plus a sample count.

    Subclasses define :meth:`_batch_sum` (the per-feature sum over one batch).
    """

    name: str = ""
    #: Whether :meth:`update` needs adversarial features (the fit skips the attack otherwise).
    needs_adversarial: bool = True

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None  # (*F), float64
        self.count = 0

    def _batch_sum(self, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, clean: torch.Tensor, adv: torch.Tensor) -> None:
        """Add one batch of clean and adversarial features, each ``(N, *F)``."""
        batch = self._batch_sum(clean, adv)
        if self.total is None:
            self.total = torch.zeros_like(batch)
        elif self.total.shape != batch.shape:
            raise DeepCloakError(
                f"feature shape changed between batches: {tuple(self.total.shape)} then "
                f"{tuple(batch.shape)}"
            )
        self.total += batch
        self.count += clean.shape[0]

    def merge(self, other: FeatureScore) -> None:
        """Add another scorer's state (e.g. from another shard of the data) into this one."""
        if type(other) is not type(self):
            raise DeepCloakError(
                f"cannot merge a {type(other).__name__} into a {type(self).__name__}"
            )
        if other.total is None:
            return
        if self.total is None:
            self.total = other.total.clone()
        else:
            self.total += other.total.to(self.total.device)
        self.count += other.count

    def all_reduce(self, group: object | None = None) -> None:
        """Sum the state across all processes of a ``torch.distributed`` group, in place.

        Every process must have called :meth:`update` at least once (so shapes agree).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.total is None:
            raise DeepCloakError("all_reduce() before any update(): every process needs data")
        count = torch.tensor([self.count], dtype=torch.float64, device=self.total.device)
        dist.all_reduce(self.total, group=group)
        dist.all_reduce(count, group=group)
        self.count = int(count.item())

    def compute(self) -> torch.Tensor:
        """The score of every feature, shape ``F``, float64."""
        if self.total is None or self.count == 0:
            raise DeepCloakError("no samples were scored: the data loader was empty")
        return self.total.clone()


class DeepCloakScore(FeatureScore):
    """The paper's score (see :func:`deepcloak_score`) as a streaming accumulator."""

    name = "deepcloak"

    def _batch_sum(self, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        return deepcloak_score(clean, adv)


class RandomScore(FeatureScore):
    """A random score (uniform, from ``seed``): the baseline ranking any real score must beat."""

    name = "random"
    needs_adversarial = False

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def _batch_sum(self, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        return torch.zeros(clean.shape[1:], dtype=torch.float64, device=clean.device)

    def compute(self) -> torch.Tensor:
        total = super().compute()
        gen = torch.Generator().manual_seed(self.seed)
        return torch.rand(total.shape, generator=gen, dtype=torch.float64).to(total.device)


class ActivationScore(FeatureScore):
    """Activation-magnitude pruning (fine-pruning, Liu et al. 2018, arXiv 1805.12185).

    ``s_j = -mean over clean samples of |f_j(x)|``: the least active features score highest and
    are removed first. It ignores adversarial features, so the fit runs no attack; it is the
    baseline that removes the same number of features without asking which ones attacks use.
    """

    name = "activation"
    needs_adversarial = False

    def _batch_sum(self, clean: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        check_finite(clean, "clean features")
        return -clean.double().abs().sum(0)

    def compute(self) -> torch.Tensor:
        return super().compute() / self.count


SCORERS: Registry[FeatureScore] = Registry("scorer")
SCORERS.register("deepcloak")(DeepCloakScore)
SCORERS.register("random")(RandomScore)
SCORERS.register("activation")(ActivationScore)


def create_scorer(name: str, *, seed: int = 0) -> FeatureScore:
    """Build a scorer by name; ``seed`` is used by scorers that draw random numbers."""
    factory = SCORERS.get(name)
    takes_seed = "seed" in inspect.signature(factory).parameters
    return factory(seed=seed) if takes_seed else factory()
