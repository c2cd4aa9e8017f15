"""Where an evaluation's time goes: the wall time of every stage and of every attack pass.

An evaluation should cost about its attack passes (issue 9: at most 1.3x): everything else
(forward passes recording correctness, feature caches, ratio sweeps, statistics) is overhead.
:class:`Timings` records each stage and each attack pass (:class:`AttackPass`) so that the report
says, in seconds, what the evaluation spent and on what; ``overhead = total / attack_seconds``.

Stages and passes taken from an interrupted run (``--resume``) keep the seconds they took then
and are marked ``resumed``, so the totals describe the evaluation, not only its last piece.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AttackPass", "StageTime", "Timings", "clock", "use_clock"]

_clock: Callable[[], float] = time.perf_counter


def clock() -> float:
    """The time now, in seconds, on the clock of every timing (wall time by default)."""
    return _clock()


def use_clock(new: Callable[[], float]) -> Callable[[], float]:
    """Time with ``new`` from now on; returns the clock used before.

    ``bench/run.py`` uses the process's CPU time, so that other jobs on a shared machine do not
    skew its ratio of the evaluation to its attack passes.
    """
    global _clock
    old, _clock = _clock, new
    return old


@dataclass
class AttackPass:
    """One attack run over one split on one model, and what it cost.

    Attributes:
        attack: the attack's spec (name and every parameter).
        model: the model it was crafted on: ``"unmasked"``, ``"surrogate"``, or a defence
            (``"cloaked@0.1"``: the defence at its ratio; ``"random-mask#0@0.1"``: its first mask).
        defense: the defence name behind ``model`` (``None`` for the surrogate).
        ratio: the mask ratio of ``model`` (``None`` without a mask).
        threat_model: what the samples measure: ``gray-box`` (crafted on the unmasked model),
            ``white-box`` (on the defence itself), ``transfer`` (on the surrogate); ``None`` for
            the fit's attack, which scores features and is not evaluated.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        stage: the stage that ran it.
        samples: samples attacked.
        seconds: wall time of the pass.
        uses: how many times later stages took these samples instead of crafting them again.
        resumed: read back from an interrupted run (``seconds`` is the time it took then).
    """

    attack: dict[str, Any]
    model: str
    defense: str | None
    ratio: float | None
    threat_model: str | None
    split: str
    stage: str
    samples: int
    seconds: float
    uses: int = 0
    resumed: bool = False

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AttackPass:
        """The pass back from :meth:`to_json`."""
        return cls(**d)


@dataclass
class StageTime:
    """One stage of an evaluation and its wall time (attack passes included)."""

    name: str
    seconds: float
    resumed: bool = False


@dataclass
class Timings:
    """Every stage and attack pass of one evaluation."""

    stages: list[StageTime] = field(default_factory=list)
    passes: list[AttackPass] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        """The sum of the stages' times: the whole evaluation."""
        return sum(s.seconds for s in self.stages)

    @property
    def attack_seconds(self) -> float:
        """The sum of the attack passes' times."""
        return sum(p.seconds for p in self.passes)

    @property
    def overhead(self) -> float | None:
        """``total_seconds / attack_seconds`` (``None`` when no attack ran)."""
        attack = self.attack_seconds
        return self.total_seconds / attack if attack > 0 else None

    @property
    def reused(self) -> int:
        """Times a stage took crafted samples from the store instead of crafting them."""
        return sum(p.uses for p in self.passes)

    def stage_attack_seconds(self, stage: str) -> float:
        """Seconds of the attack passes that ``stage`` ran."""
        return sum(p.seconds for p in self.passes if p.stage == stage)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict: totals, stages and passes."""
        overhead = self.overhead
        return {
            "total_seconds": round(self.total_seconds, 6),
            "attack_seconds": round(self.attack_seconds, 6),
            "overhead": round(overhead, 6) if overhead is not None else None,
            "reused": self.reused,
            "stages": [
                {
                    **asdict(s),
                    "attack_seconds": round(self.stage_attack_seconds(s.name), 6),
                    "attack_passes": sum(p.stage == s.name for p in self.passes),
                }
                for s in self.stages
            ],
            "attack_passes": [p.to_json() for p in self.passes],
        }
