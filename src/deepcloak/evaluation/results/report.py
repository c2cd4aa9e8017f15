"""What one careful evaluation found: the ratio it chose and why, and every result it measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.results.accuracy import (
    SCHEMA,
    THREAT_MODELS,
    WORST_CASE,
    AccuracyResult,
    Comparison,
    ThreatModel,
    find_result,
)
from deepcloak.evaluation.results.sweep import SweepResult
from deepcloak.evaluation.sanity import SanityCheck
from deepcloak.evaluation.timings import Timings

if TYPE_CHECKING:
    from deepcloak.evaluation.config import EvaluationConfig

__all__ = ["EvaluationReport", "RatioCandidate", "RatioChoice"]


@dataclass(frozen=True)
class RatioCandidate:
    """One ratio considered: its validation accuracies and whether it fits the budget."""

    ratio: float
    n_removed: int
    clean_accuracy: float
    graybox_accuracy: float
    graybox_gain: float
    clean_drop: float
    within_budget: bool
    clean_ci: tuple[float, float] = (0.0, 1.0)
    graybox_ci: tuple[float, float] = (0.0, 1.0)
    confidence: float = 0.95


@dataclass(frozen=True)
class RatioChoice:
    """The chosen ratio and everything that led to it.

    Attributes:
        ratio: the chosen fraction of features removed (0 when no ratio helps within budget).
        clean_budget: the largest clean-accuracy drop allowed, as a fraction (0.01 = 1 point).
        baseline_clean_accuracy: the unmasked model's clean accuracy on the validation split
            (``None`` for a fixed ratio).
        baseline_graybox_accuracy: the unmasked model's gray-box accuracy there.
        candidates: every ratio considered, in sweep order.
        n_samples: validation samples behind the choice.
        attack: the attack that crafted the validation samples (on the unmasked model).
        split: where the choice was made (``"validation"``, or ``"fixed"`` for a user's ratio).
        reason: one sentence on why this ratio was chosen.
    """

    ratio: float
    clean_budget: float
    baseline_clean_accuracy: float | None
    baseline_graybox_accuracy: float | None
    candidates: tuple[RatioCandidate, ...]
    n_samples: int
    attack: dict[str, Any]
    split: str
    reason: str

    @property
    def chosen(self) -> RatioCandidate | None:
        """The candidate row of the chosen ratio (``None`` for a fixed ratio)."""
        for c in self.candidates:
            if c.ratio == self.ratio:
                return c
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of all fields; each candidate's accuracies with a Wilson interval."""
        d = asdict(self)
        d["candidates"] = [
            {
                **asdict(c),
                "clean_ci": _ci(c.clean_ci, c.confidence),
                "graybox_ci": _ci(c.graybox_ci, c.confidence),
            }
            for c in self.candidates
        ]
        return d


def _ci(interval: tuple[float, float], confidence: float) -> dict[str, Any]:
    return {"low": interval[0], "high": interval[1], "confidence": confidence, "method": "wilson"}


@dataclass
class EvaluationReport:
    """Everything :func:`~deepcloak.evaluation.run.evaluate_cloak` measured, with its sources.

    Render it with :mod:`deepcloak.report` (tables, JSON file, figures).
    """

    run: dict[str, Any]
    config: EvaluationConfig
    cloak: dict[str, Any]
    ratio_choice: RatioChoice
    defenses: dict[str, dict[str, Any]]
    results: list[AccuracyResult]
    comparisons: list[Comparison]
    sanity: list[SanityCheck]
    eps_curve: list[AccuracyResult]
    ratio_curve: SweepResult
    notes: list[str]
    environment: dict[str, Any] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)

    @property
    def ratio(self) -> float:
        """The mask ratio evaluated."""
        return self.ratio_choice.ratio

    def result(
        self, defense: str, threat_model: ThreatModel | str, attack: str = WORST_CASE
    ) -> AccuracyResult:
        """The result of ``defense`` under ``threat_model`` against ``attack``.

        Raises:
            DeepCloakError: no such result; the message lists what there is.
        """
        tm = ThreatModel.parse(threat_model)
        found = find_result(self.results, defense, tm, attack)
        if found is None:
            have = sorted({(r.defense, r.threat_model.value, r.attack_name) for r in self.results})
            raise DeepCloakError(
                f"no result for {defense!r} / {tm.value} / {attack!r}; the report holds: {have}"
            )
        return found

    def threat_models(self) -> list[ThreatModel]:
        """The threat models evaluated, in canonical order."""
        present = {r.threat_model for r in self.results}
        return [t for t in ThreatModel if t in present]

    @property
    def warnings(self) -> list[SanityCheck]:
        """The sanity checks that did not pass."""
        return [c for c in self.sanity if not c.passed]

    def to_json(self, *, per_sample: bool = True) -> dict[str, Any]:
        """The whole report as JSON-able data (kind ``evaluation`` of :data:`SCHEMA`)."""
        return {
            "schema": SCHEMA,
            "kind": "evaluation",
            "run": self.run,
            "environment": self.environment,
            "config": self.config.to_json(),
            "threat_models": dict(THREAT_MODELS),
            "cloak": self.cloak,
            "ratio_choice": self.ratio_choice.to_json(),
            "defenses": self.defenses,
            "results": [r.to_json(per_sample=per_sample) for r in self.results],
            "comparisons": [c.to_json() for c in self.comparisons],
            "sanity_checks": [c.to_json() for c in self.sanity],
            "eps_curve": [r.to_json() for r in self.eps_curve],
            "ratio_curve": self.ratio_curve.to_json(),
            "notes": list(self.notes),
            "timings": self.timings.to_json(),
        }
