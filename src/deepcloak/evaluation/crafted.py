"""One store of crafted adversarial sets, so that an evaluation runs each attack pass once.

A crafted set is determined by three things: the attack (its spec: name and every parameter,
seed included; native and ART attacks seed every call), the model it was crafted on, and the
split. :class:`CraftedSets` keys sets by exactly that, so any stage that needs samples another
stage already crafted gets them back instead of attacking again:

- gray-box samples are crafted once on the unmasked model and used by every defence, by the
  test ratio curve and by the accuracy-vs-eps curve at the evaluation's own budget;
- white-box samples crafted through a defence serve the ratio curve at that ratio, the eps curve
  and the sanity checks whenever the attack's settings match;
- a mask that removes no feature (ratio 0) is the unmasked model (``x * 1`` is exact), so the
  white-box attack at ratio 0 is the gray-box one;
- an attack with budget 0 returns its input (the only point of its ball), without running.

Attacks combined into a per-sample worst case run as AutoAttack runs them
(:meth:`CraftedSets.get_standing`): the first on every sample, each later one only on the
samples still standing (classified correctly under every attack before it). A later attack's set
holds its own point for the samples it attacked and, for the others, the point that broke them
earlier; its key names the attacks before it, so it is never mistaken for a set crafted alone.

The key assumes what holds in an evaluation: an attack's spec names everything that shapes its
output (attacks seed every call from their ``seed``), and every set is crafted in batches of the
same size (``config.batch_size``), since random starts are drawn per batch.

Every pass run is timed into :class:`~deepcloak.evaluation.timings.Timings`; a store given a
:class:`Saved` back end (``--resume``) saves each set as it is crafted and reads back the sets of
an interrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from deepcloak.attacks.base import Attack
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.passes import Stage, correct, craft
from deepcloak.evaluation.results import UNMASKED
from deepcloak.evaluation.timings import AttackPass, Timings, clock

__all__ = [
    "EVERY_SAMPLE",
    "SURROGATE",
    "CraftKey",
    "CraftedSets",
    "Replay",
    "Samples",
    "Saved",
    "Target",
    "TimedAttack",
    "standing_after",
    "target",
]

#: The model name of the transfer threat model's surrogate.
SURROGATE = "surrogate"

#: Attacks that run on every sample even in a worst case (:meth:`CraftedSets.get_all`): FGSM
#: costs one gradient, and the single-step sanity check compares it with the iterative attacks
#: on the same samples.
EVERY_SAMPLE = frozenset({"fgsm"})


def standing_after(attacks: Sequence[str]) -> dict[str, list[str]]:
    """Per attack name, the attacks it ran after on the samples still standing (
    :meth:`CraftedSets.get_all`'s order); empty for those that ran on every sample."""
    chained = [k for k in attacks if k not in EVERY_SAMPLE]
    return {k: chained[: chained.index(k)] if k in chained else [] for k in attacks}


@dataclass(frozen=True)
class Samples:
    """Samples of one split held in memory, and the batch size to pass them through a model."""

    x: torch.Tensor  # (N, C, H, W)
    y: torch.Tensor  # (N,)
    batch_size: int
    split: str = "test"

    def correct(self, model: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample correctness ``(N,)`` of ``model`` on ``x`` (default: the clean samples)."""
        return correct(model, self.x if x is None else x, self.y, self.batch_size)

    def craft(self, attack: Attack, model: nn.Module, stage: Stage | None = None) -> torch.Tensor:
        """Adversarial versions of the samples, crafted on ``model`` (no store: always runs)."""
        return craft(attack, model, self.x, self.y, batch_size=self.batch_size, stage=stage)


@dataclass(frozen=True)
class Target:
    """A model samples are crafted on, named for the store and the timings.

    Build it with :func:`target`.
    """

    key: str
    defense: str | None
    ratio: float | None
    threat_model: str | None


def target(defense: str, ratio: float | None = None, *, mask: int | None = None) -> Target:
    """The :class:`Target` of a defence (at its ratio; ``mask``: which random mask).

    ``"unmasked"`` and a mask at ratio 0 (which removes nothing) are the unmasked model, whose
    samples are the gray-box ones; ``"surrogate"`` is the transfer model; any other defence is
    attacked white-box.
    """
    if defense == SURROGATE:
        return Target(SURROGATE, None, None, "transfer")
    if defense == UNMASKED or ratio == 0:
        return Target(UNMASKED, UNMASKED, None, "gray-box")
    name = defense if mask is None else f"{defense}#{mask}"
    key = name if ratio is None else f"{name}@{ratio!r}"
    return Target(key, defense, ratio, "white-box")


@dataclass(frozen=True)
class CraftKey:
    """What determines a crafted set: the attack's spec, the model, the split."""

    attack: str  # the spec as canonical JSON
    model: str
    split: str

    @classmethod
    def of(cls, attack: Attack, model: str, split: str, after: tuple[Attack, ...] = ()) -> CraftKey:
        """The key of ``attack`` crafted on ``model`` over ``split`` (on the samples standing
        ``after`` those attacks, when given)."""
        spec = attack.spec()
        if after:
            spec = {**spec, "standing_after": [a.spec() for a in after]}
        return cls(json.dumps(spec, sort_keys=True), model, split)


class Saved(Protocol):
    """Where a store keeps its sets across runs
    (:class:`~deepcloak.evaluation.resume.EvaluationFolder`)."""

    def saved_passes(self) -> dict[CraftKey, AttackPass]:
        """The key and pass of every saved set."""
        ...

    def load_crafted(self, key: CraftKey) -> torch.Tensor | None:
        """The set saved under ``key``, or ``None``."""
        ...

    def save_crafted(self, key: CraftKey, x_adv: torch.Tensor, record: AttackPass) -> None:
        """Save a set as soon as it is crafted."""
        ...


class CraftedSets:
    """Crafted adversarial sets by (attack, model, split); each is crafted at most once.

    Args:
        timings: where each pass is recorded.
        saved: saves sets as they are crafted and reads back an interrupted run's (optional);
            the passes of its sets are recorded at once, marked ``resumed``.
    """

    def __init__(self, timings: Timings, saved: Saved | None = None) -> None:
        self.timings, self.saved = timings, saved
        self.stage = "evaluation"  # the stage now running, set by the runner
        self._sets: dict[CraftKey, torch.Tensor] = {}
        self._passes: dict[CraftKey, AttackPass] = {}
        self.crafted: list[CraftKey] = []  # every set crafted in this process, in order
        self.outside: list[AttackPass] = []  # passes recorded with record()
        for key, record in (saved.saved_passes() if saved is not None else {}).items():
            record.resumed = True
            self._passes[key] = record
            timings.passes.append(record)

    def get(
        self,
        attack: Attack,
        model: nn.Module,
        on: Target,
        samples: Samples,
        progress: Stage | None = None,
    ) -> torch.Tensor:
        """The adversarial samples of ``attack`` on ``model`` (named ``on``): stored, or crafted.

        Args:
            attack: the attack.
            model: the model to attack (the defence in place, for a white-box target).
            on: what ``model`` is (:func:`target`).
            samples: the clean samples (their ``split`` is part of the key).
            progress: advanced by the samples, crafted or not.

        Raises:
            DeepCloakError: a saved set does not match the samples.
        """
        n = samples.y.numel()
        if attack.spec().get("eps") == 0:  # the ball of radius 0 holds only the input
            if progress is not None:
                progress.advance(n)
            return samples.x
        key = CraftKey.of(attack, on.key, samples.split)
        found = self._found(key, samples, progress)
        if found is not None:
            return found
        start = clock()
        x_adv = samples.craft(attack, model, progress)
        return self._keep(key, x_adv, attack, on, samples.split, n, clock() - start)

    def get_standing(
        self,
        attacks: tuple[Attack, ...],
        model: nn.Module,
        on: Target,
        samples: Samples,
        progress: Stage | None = None,
    ) -> list[torch.Tensor]:
        """The sets of ``attacks`` run in turn, each after the first on the samples standing.

        A sample stands while ``model`` classifies it correctly at the point of every attack
        before; the others keep, in each later set, the point that broke them. So the per-sample
        worst case over the sets is AutoAttack's, and each set's accuracy on ``model`` is the
        worst case of the attacks up to it. The first set is :meth:`get`'s (shared with any
        stage that runs that attack alone).

        Args:
            attacks: the attacks, in the order they run.
            model: the model to attack; ``on``, ``samples``, ``progress``: as in :meth:`get`.

        Returns:
            One set ``(N, ...)`` per attack, in order.
        """
        n = samples.y.numel()
        sets = [self.get(attacks[0], model, on, samples, progress)]
        for i, attack in enumerate(attacks[1:], start=1):
            key = CraftKey.of(attack, on.key, samples.split, after=attacks[:i])
            found = None if attack.spec().get("eps") == 0 else self._found(key, samples, progress)
            if found is not None:
                sets.append(found)
                continue
            start = clock()
            standing = samples.correct(model, sets[-1])  # (N,)
            x_adv = sets[-1].clone()
            if attack.spec().get("eps") != 0 and bool(standing.any()):
                rows = Samples(
                    samples.x[standing], samples.y[standing], samples.batch_size, samples.split
                )
                x_adv[standing] = rows.craft(attack, model, progress)
            if progress is not None:
                progress.advance(n - int(standing.sum()))
            attacked = int(standing.sum())
            sets.append(
                self._keep(key, x_adv, attack, on, samples.split, attacked, clock() - start)
            )
        return sets

    def get_all(
        self,
        attacks: Mapping[str, Attack],
        model: nn.Module,
        on: Target,
        samples: Samples,
        progress: Stage | None = None,
    ) -> dict[str, torch.Tensor]:
        """The sets of every attack (by name) for a per-sample worst case on ``model``.

        The attacks in :data:`EVERY_SAMPLE` run alone on every sample (:meth:`get`); the others
        in order, each after the first only on the samples still standing
        (:meth:`get_standing`).
        """
        alone = [k for k in attacks if k in EVERY_SAMPLE]
        chained = [k for k in attacks if k not in EVERY_SAMPLE]
        out = {k: self.get(attacks[k], model, on, samples, progress) for k in alone}
        if chained:
            sets = self.get_standing(
                tuple(attacks[k] for k in chained), model, on, samples, progress
            )
            out.update(zip(chained, sets, strict=True))
        return {k: out[k] for k in attacks}

    def _found(
        self, key: CraftKey, samples: Samples, progress: Stage | None
    ) -> torch.Tensor | None:
        found = self._find(key, samples)
        if found is not None:
            self._passes[key].uses += 1
            if progress is not None:
                progress.advance(samples.y.numel())
        return found

    def _keep(
        self,
        key: CraftKey,
        x_adv: torch.Tensor,
        attack: Attack,
        on: Target,
        split: str,
        attacked: int,
        seconds: float,
    ) -> torch.Tensor:
        record = AttackPass(
            json.loads(key.attack), on.key, on.defense, on.ratio, on.threat_model, split,
            self.stage, attacked, seconds,
        )  # fmt: skip
        self._sets[key], self._passes[key] = x_adv, record
        self.timings.passes.append(record)
        self.crafted.append(key)
        if self.saved is not None:
            self.saved.save_crafted(key, x_adv, record)
        return x_adv

    def record(self, record: AttackPass) -> None:
        """Record a pass run outside the store (the fit's attack)."""
        self.timings.passes.append(record)
        self.outside.append(record)

    def _find(self, key: CraftKey, samples: Samples) -> torch.Tensor | None:
        if key in self._sets:
            held = self._sets[key]
            if held.shape != samples.x.shape:  # the key names the split, not which rows
                raise DeepCloakError(
                    f"a crafted set of the {samples.split} split has shape {tuple(held.shape)} "
                    f"but these samples {tuple(samples.x.shape)}; expected the whole split"
                )
            return held
        if key not in self._passes or self.saved is None:
            return None
        x_adv = self.saved.load_crafted(key)
        if x_adv is None:
            return None
        if x_adv.shape != samples.x.shape or x_adv.dtype != samples.x.dtype:
            raise DeepCloakError(
                f"a saved crafted set has shape {tuple(x_adv.shape)} ({x_adv.dtype}) but the "
                f"{samples.split} samples {tuple(samples.x.shape)} ({samples.x.dtype}); "
                "delete the work folder to start afresh"
            )
        self._sets[key] = x_adv
        return x_adv


class TimedAttack:
    """``attack``, timed: seconds and samples of every call add up (the fit's attack pass)."""

    def __init__(self, attack: Attack) -> None:
        self.attack, self.seconds, self.samples = attack, 0.0, 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        start = clock()
        out = self.attack(model, x, y)
        if out.is_cuda:  # kernels run asynchronously: wait for them to count their time
            torch.cuda.synchronize(out.device)
        self.seconds += clock() - start
        self.samples += int(x.shape[0])
        return out

    def spec(self) -> dict[str, Any]:
        """The wrapped attack's spec."""
        return self.attack.spec()


class Replay:
    """An attack that returns samples crafted earlier, batch after batch, in loader order.

    It lets a function that crafts from a loader (the gray-box sweep) use a stored set.

    Args:
        attack: the attack that crafted them (its spec is reported).
        adversarial: the crafted samples ``(N, ...)``, in the order the loader yields them.
    """

    def __init__(self, attack: Attack, adversarial: torch.Tensor) -> None:
        self.attack, self.adversarial, self.done = attack, adversarial, 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        out = self.adversarial[self.done : self.done + n]
        if out.shape != x.shape:
            raise DeepCloakError(
                f"the precomputed adversarial samples ({tuple(self.adversarial.shape)}) do not "
                f"match the loader's batch {tuple(x.shape)} after {self.done} samples; expected "
                "one adversarial sample per loader sample, in loader order"
            )
        self.done += n
        return out.to(device=x.device, dtype=x.dtype)

    def spec(self) -> dict[str, Any]:
        """The spec of the attack that crafted the samples."""
        return self.attack.spec()

    def check_complete(self) -> None:
        """Refuse a set with more samples than the loader yielded.

        Raises:
            DeepCloakError: samples were left over.
        """
        if self.done != self.adversarial.shape[0]:
            raise DeepCloakError(
                f"the loader yielded {self.done} samples but {self.adversarial.shape[0]} "
                "precomputed adversarial samples were given; expected one per loader sample"
            )
