"""The results of an evaluation: threat models, accuracies with intervals, tests, curves.

:class:`EvaluationReport` is what :func:`deepcloak.evaluation.run.evaluate_cloak` returns; its
:meth:`~EvaluationReport.to_json` writes the versioned layout documented in
``docs/evaluation-schema.md`` (:data:`SCHEMA`). Rendering (tables, plots, files) lives in
:mod:`deepcloak.report.evaluation`.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deepcloak.attacks import art as art_attacks
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.ratio_choice import RatioChoice
from deepcloak.evaluation.sanity import SanityCheck
from deepcloak.evaluation.stats import McNemarResult, wilson_interval

if TYPE_CHECKING:
    from deepcloak.evaluation.config import EvaluationConfig

__all__ = [
    "SCHEMA",
    "THREAT_MODELS",
    "WORST_CASE",
    "AccuracyResult",
    "Comparison",
    "CurvePoint",
    "EvaluationReport",
    "ThreatModel",
    "library_versions",
]

#: Name and version of the JSON layout written by :meth:`EvaluationReport.to_json`
#: (documented in ``docs/evaluation-schema.md``).
SCHEMA = "deepcloak-evaluation/1"

#: The pseudo-attack name of the per-sample worst case over all attacks run.
WORST_CASE = "worst-case"


class ThreatModel(str, Enum):
    """What the attacker knows; every robust accuracy names one."""

    CLEAN = "clean"
    GRAYBOX = "gray-box"
    WHITEBOX = "white-box"
    TRANSFER = "transfer"


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
    """One accuracy: a defence, under a threat model, against an attack (or none).

    ``correct`` is a boolean per-sample vector ``(N,)`` over the test samples, in order.
    """

    defense: str
    threat_model: ThreatModel
    attack: dict[str, Any]
    correct: torch.Tensor = field(repr=False, compare=False)
    confidence: float = 0.95
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Samples evaluated."""
        return self.correct.numel()

    @property
    def n_correct(self) -> int:
        """Samples classified correctly."""
        return int(self.correct.sum())

    @property
    def accuracy(self) -> float:
        """``n_correct / n``."""
        return self.n_correct / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson interval of the accuracy."""
        return wilson_interval(self.n_correct, self.n, self.confidence)

    @property
    def attack_name(self) -> str:
        """The attack's name (``"none"`` for clean accuracy, ``"worst-case"``)."""
        return str(self.attack["name"])

    def to_json(self, *, per_sample: bool = True) -> dict[str, Any]:
        """A JSON-able dict; ``per_sample`` adds the correctness vector as a '0'/'1' string."""
        lo, hi = self.interval
        d: dict[str, Any] = {
            "defense": self.defense,
            "threat_model": self.threat_model.value,
            "attack": self.attack,
            "n": self.n,
            "correct": self.n_correct,
            "accuracy": self.accuracy,
            "ci": {"low": lo, "high": hi, "confidence": self.confidence, "method": "wilson"},
            "note": self.note,
            "extra": self.extra,
        }
        if per_sample:
            d["per_sample"] = "".join("1" if c else "0" for c in self.correct.tolist())
        return d


@dataclass(frozen=True)
class Comparison:
    """McNemar's exact test of defence A against defence B on the same samples."""

    a: str
    b: str
    threat_model: ThreatModel
    attack: str
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
            "a_accuracy": self.a_accuracy,
            "b_accuracy": self.b_accuracy,
            "test": "mcnemar-exact",
            **self.test.to_json(),
        }


@dataclass(frozen=True)
class CurvePoint:
    """One point of a curve (accuracy vs ratio, or vs epsilon) with its Wilson interval."""

    series: str
    x: float
    correct: int
    n: int
    confidence: float = 0.95

    @property
    def accuracy(self) -> float:
        """``correct / n``."""
        return self.correct / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson interval of the accuracy."""
        return wilson_interval(self.correct, self.n, self.confidence)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict."""
        lo, hi = self.interval
        return {
            "series": self.series,
            "x": self.x,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "ci": {"low": lo, "high": hi, "confidence": self.confidence, "method": "wilson"},
        }


@dataclass
class EvaluationReport:
    """Everything :func:`evaluate_cloak` measured, with what produced it.

    Render it with :mod:`deepcloak.report.evaluation` (table, JSON file, plots).
    """

    run: dict[str, Any]
    config: EvaluationConfig
    cloak: dict[str, Any]
    ratio_choice: RatioChoice
    defenses: dict[str, dict[str, Any]]
    results: list[AccuracyResult]
    comparisons: list[Comparison]
    sanity: list[SanityCheck]
    eps_curve: list[CurvePoint]
    ratio_curve: list[CurvePoint]
    notes: list[str]
    schema: str = SCHEMA

    @property
    def ratio(self) -> float:
        """The mask ratio evaluated."""
        return self.ratio_choice.ratio

    def result(
        self,
        defense: str,
        threat_model: ThreatModel | str,
        attack: str = WORST_CASE,
    ) -> AccuracyResult:
        """The result of ``defense`` under ``threat_model`` against ``attack``.

        Raises:
            DeepCloakError: no such result; the message lists what there is.
        """
        tm = ThreatModel(threat_model)
        name = "none" if tm is ThreatModel.CLEAN else attack
        for r in self.results:
            if r.defense == defense and r.threat_model is tm and r.attack_name == name:
                return r
        have = sorted({(r.defense, r.threat_model.value, r.attack_name) for r in self.results})
        raise DeepCloakError(
            f"no result for {defense!r} / {tm.value} / {name!r}; the report holds: {have}"
        )

    def threat_models(self) -> list[ThreatModel]:
        """The threat models evaluated, in canonical order."""
        present = {r.threat_model for r in self.results}
        return [t for t in ThreatModel if t in present]

    @property
    def warnings(self) -> list[SanityCheck]:
        """The sanity checks that did not pass."""
        return [c for c in self.sanity if not c.passed]

    def to_json(self, *, per_sample: bool = True) -> dict[str, Any]:
        """The whole report as JSON-able data, in the ``deepcloak-evaluation/1`` layout."""
        return {
            "schema": self.schema,
            "run": self.run,
            "config": self.config.to_json(),
            "threat_models": dict(THREAT_MODELS),
            "cloak": self.cloak,
            "ratio_choice": self.ratio_choice.to_json(),
            "defenses": self.defenses,
            "results": [r.to_json(per_sample=per_sample) for r in self.results],
            "comparisons": [c.to_json() for c in self.comparisons],
            "sanity_checks": [c.to_json() for c in self.sanity],
            "eps_curve": [p.to_json() for p in self.eps_curve],
            "ratio_curve": [p.to_json() for p in self.ratio_curve],
            "notes": list(self.notes),
        }


def library_versions() -> dict[str, str | None]:
    """Versions of everything that shapes the numbers: python, torch, numpy, ART, deepcloak."""
    from deepcloak._version import __version__

    try:
        import scipy

        scipy_version: str | None = scipy.__version__
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        scipy_version = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy_version,
        "art": art_attacks.art_version(),
        "deepcloak": __version__,
    }
