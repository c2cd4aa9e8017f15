"""Accuracy results: per-sample correctness under one defence, threat model, attack and ratio.

An :class:`AccuracyResult` is the atom of the one result model
(:mod:`deepcloak.evaluation.results`): a boolean per-sample vector ``(N,)`` (or ``(k, N)``
for ``k`` random masks) from which the accuracy, its interval and McNemar's paired test
(:func:`compare`) are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError
from deepcloak.stats import McNemarResult, mcnemar_exact, mean_interval, wilson_interval

__all__ = [
    "ACTIVATION",
    "CLOAKED",
    "RANDOM",
    "SCHEMA",
    "SMOOTHING",
    "SQUEEZING",
    "THREAT_MODELS",
    "UNMASKED",
    "WORST_CASE",
    "AccuracyResult",
    "Comparison",
    "ThreatModel",
    "compare",
    "find_result",
]

#: Name and major version of the JSON layout of every document deepcloak writes
#: (``docs/schema.md``); each document's ``kind`` says which one it is.
SCHEMA = "deepcloak/2"

#: The pseudo-attack name of the per-sample worst case over all attacks run.
WORST_CASE = "worst-case"

#: Defence names, in the order reports show them.
UNMASKED, CLOAKED, RANDOM, ACTIVATION = "unmasked", "cloaked", "random-mask", "activation-pruning"
SQUEEZING, SMOOTHING = "feature-squeezing", "spatial-smoothing"


class ThreatModel(str, Enum):
    """What the attacker knows; every robust accuracy names one.

    Accepts its string: ``ThreatModel("gray-box") is ThreatModel.GRAYBOX``.
    """

    CLEAN = "clean"
    GRAYBOX = "gray-box"
    WHITEBOX = "white-box"
    TRANSFER = "transfer"

    @classmethod
    def parse(cls, value: ThreatModel | str) -> ThreatModel:
        """The threat model named ``value``; a clear error listing the names otherwise."""
        return parse_enum(cls, value, what="threat model")


#: One sentence per threat model, written into every JSON document.
THREAT_MODELS: dict[str, str] = {
    "clean": "no attack",
    "gray-box": "samples crafted on the unmasked model; the attacker does not know the mask "
    "(the DeepCloak paper's setting)",
    "white-box": "attacks run end to end through the defended model (adaptive); through the "
    "non-differentiable preprocessing baselines, gradients use BPDA (identity)",
    "transfer": "samples crafted on an independently trained surrogate model",
}


@dataclass(frozen=True)
class AccuracyResult:
    """One accuracy: a defence at a ratio, under a threat model, against an attack (or none).

    ``correct`` is boolean, ``(N,)`` over the test samples in order, or ``(k, N)`` for ``k``
    random masks of the same size evaluated on the same samples (then ``accuracy`` is the mean
    over the masks and ``interval`` the interval of that mean,
    :func:`~deepcloak.stats.mean_interval`).
    """

    defense: str
    threat_model: ThreatModel
    attack: dict[str, Any]
    correct: torch.Tensor = field(repr=False, compare=False)
    ratio: float | None = None
    confidence: float = 0.95
    note: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threat_model", ThreatModel.parse(self.threat_model))
        correct = torch.as_tensor(self.correct).detach().cpu()
        if correct.ndim not in (1, 2) or correct.dtype != torch.bool:
            raise DeepCloakError(
                f"per-sample correctness must be boolean (N,) or (k, N), got {correct.dtype} "
                f"{tuple(correct.shape)}"
            )
        object.__setattr__(self, "correct", correct)

    @property
    def per_mask(self) -> torch.Tensor:
        """Correctness as ``(k, N)`` (``k = 1`` for a single model)."""
        return self.correct if self.correct.ndim == 2 else self.correct[None]

    @property
    def n(self) -> int:
        """Samples evaluated."""
        return int(self.correct.shape[-1])

    @property
    def n_masks(self) -> int:
        """Random masks averaged (1 for a single model)."""
        return int(self.per_mask.shape[0])

    @property
    def n_correct(self) -> int:
        """Correct classifications, summed over the masks."""
        return int(self.correct.sum())

    @property
    def accuracy(self) -> float:
        """``n_correct / (n_masks * n)``: the accuracy, or its mean over the masks."""
        total = self.n * self.n_masks
        return self.n_correct / total if total else 0.0

    @property
    def per_mask_accuracy(self) -> list[float]:
        """The accuracy of each mask."""
        return [int(row.sum()) / self.n if self.n else 0.0 for row in self.per_mask]

    @property
    def std(self) -> float:
        """Standard deviation of the accuracy over the masks (0 for a single model)."""
        return torch.tensor(self.per_mask_accuracy, dtype=torch.float64).std(correction=0).item()

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson interval of the accuracy; for several masks, the interval of their mean."""
        if self.n_masks == 1:
            return wilson_interval(self.n_correct, self.n, self.confidence)
        return mean_interval(self.correct, self.confidence)

    @property
    def attack_name(self) -> str:
        """The attack's name (``"none"`` for clean accuracy, ``"worst-case"``)."""
        return str(self.attack["name"])

    def to_json(self, *, per_sample: bool = False) -> dict[str, Any]:
        """A JSON-able dict; ``per_sample`` adds one '0'/'1' string per mask."""
        lo, hi = self.interval
        method = "wilson" if self.n_masks == 1 else "mean-over-masks"
        d: dict[str, Any] = {
            "defense": self.defense,
            "threat_model": self.threat_model.value,
            "attack": self.attack,
            "ratio": self.ratio,
            "n": self.n,
            "masks": self.n_masks,
            "correct": self.n_correct,
            "per_mask_correct": [int(row.sum()) for row in self.per_mask],
            "accuracy": self.accuracy,
            "ci": {"low": lo, "high": hi, "confidence": self.confidence, "method": method},
            "note": self.note,
        }
        if per_sample:
            d["per_sample"] = [
                "".join("1" if c else "0" for c in r.tolist()) for r in self.per_mask
            ]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AccuracyResult:
        """The result back from :meth:`to_json` written with ``per_sample=True``.

        Raises:
            DeepCloakError: the dict holds no per-sample correctness.
        """
        if "per_sample" not in d:
            raise DeepCloakError("a result can be read back only when written with per_sample")
        rows = [torch.tensor([c == "1" for c in row], dtype=torch.bool) for row in d["per_sample"]]
        correct = rows[0] if d["masks"] == 1 else torch.stack(rows)
        return cls(
            d["defense"], ThreatModel.parse(d["threat_model"]), d["attack"], correct, d["ratio"],
            d["ci"]["confidence"], d["note"],
        )  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """McNemar's exact test of defence A against defence B on the same samples."""

    a: str
    b: str
    threat_model: ThreatModel
    attack: str
    ratio: float | None
    a_accuracy: float
    b_accuracy: float
    test: McNemarResult

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        return {
            "a": self.a,
            "b": self.b,
            "threat_model": self.threat_model.value,
            "attack": self.attack,
            "ratio": self.ratio,
            "a_accuracy": self.a_accuracy,
            "b_accuracy": self.b_accuracy,
            "test": "mcnemar-exact",
            **self.test.to_json(),
        }


def compare(a: AccuracyResult, b: AccuracyResult) -> Comparison:
    """McNemar's exact test of result ``a`` against ``b`` (single models, same samples)."""
    if a.n_masks != 1 or b.n_masks != 1:
        raise DeepCloakError("McNemar's test pairs two single models; got a mean over masks")
    return Comparison(
        a.defense,
        b.defense,
        a.threat_model,
        a.attack_name,
        a.ratio,
        a.accuracy,
        b.accuracy,
        mcnemar_exact(a.correct, b.correct),
    )


def find_result(
    results: Sequence[AccuracyResult],
    defense: str,
    threat_model: ThreatModel | str,
    attack: str = WORST_CASE,
) -> AccuracyResult | None:
    """The result of ``defense`` under ``threat_model`` against ``attack`` (clean: no attack)."""
    tm = ThreatModel.parse(threat_model)
    name = "none" if tm is ThreatModel.CLEAN else attack
    return next(
        (
            r
            for r in results
            if r.defense == defense and r.threat_model is tm and r.attack_name == name
        ),
        None,
    )
