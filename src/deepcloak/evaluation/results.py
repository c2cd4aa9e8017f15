"""The one result model: per-sample correctness per defence, ratio, threat model and attack.

Every accuracy deepcloak reports, from ``deepcloak harden``, ``deepcloak evaluate`` and
``experiments/paper_sweep.py`` alike, is an :class:`AccuracyResult`: a boolean per-sample vector
``(N,)`` (or ``(k, N)`` for ``k`` random masks) with the defence, the threat model (one
:class:`ThreatModel` vocabulary), the attack and the ratio that produced it. Accuracies,
intervals and McNemar tests are computed from those vectors, never reconstructed from rounded
fractions. A ratio sweep is a :class:`SweepResult` of :class:`SweepRow`; the ratio chosen from
one a :class:`RatioChoice`; the careful evaluation an :class:`EvaluationReport`. Their JSON
follows one versioned layout, :data:`SCHEMA`, documented in ``docs/schema.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from deepcloak.cloak.taps import LayerRef
from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.sanity import SanityCheck
from deepcloak.evaluation.timings import Timings
from deepcloak.stats import McNemarResult, mcnemar_exact, mean_interval, wilson_interval

if TYPE_CHECKING:
    from deepcloak.evaluation.config import EvaluationConfig

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
    "EvaluationReport",
    "RatioCandidate",
    "RatioChoice",
    "SweepResult",
    "SweepRow",
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


@dataclass(frozen=True)
class SweepRow:
    """Every result at one ratio: the cloak's mask, random masks of the same size, white-box."""

    ratio: float
    n_removed: int
    clean: AccuracyResult
    graybox: AccuracyResult
    random_clean: AccuracyResult | None = None
    random_graybox: AccuracyResult | None = None
    whitebox: tuple[AccuracyResult, ...] = ()

    @property
    def clean_accuracy(self) -> float:
        """Clean accuracy of the cloaked model."""
        return self.clean.accuracy

    @property
    def graybox_accuracy(self) -> float:
        """Gray-box accuracy of the cloaked model."""
        return self.graybox.accuracy

    @property
    def random_clean_accuracy(self) -> float | None:
        """Mean clean accuracy over the random masks (``None`` without random masks)."""
        return None if self.random_clean is None else self.random_clean.accuracy

    @property
    def random_graybox_accuracy(self) -> float | None:
        """Mean gray-box accuracy over the random masks."""
        return None if self.random_graybox is None else self.random_graybox.accuracy

    @property
    def random_graybox_std(self) -> float | None:
        """Standard deviation of the gray-box accuracy over the random masks."""
        return None if self.random_graybox is None else self.random_graybox.std

    @property
    def whitebox_accuracy(self) -> float | None:
        """White-box accuracy under the first white-box attack, if it ran at this ratio."""
        return self.whitebox[0].accuracy if self.whitebox else None

    def whitebox_result(self, attack: str) -> AccuracyResult | None:
        """The white-box result against the attack named ``attack``, if it ran here."""
        return next((r for r in self.whitebox if r.attack_name == attack), None)

    def results(self) -> Iterator[AccuracyResult]:
        """Every result of the row."""
        yield self.clean
        yield self.graybox
        yield from (r for r in (self.random_clean, self.random_graybox) if r is not None)
        yield from self.whitebox


@dataclass
class SweepResult:
    """The ratio sweep: one :class:`SweepRow` per ratio, plus what produced it."""

    rows: list[SweepRow]
    layer: LayerRef
    n_features: int
    score: str
    attack: dict[str, Any]
    whitebox_attacks: list[dict[str, Any]]
    n_random: int
    seed: int
    used_cached_head: bool

    @property
    def n_samples(self) -> int:
        """Gray-box samples per ratio."""
        return self.rows[0].graybox.n if self.rows else 0

    @property
    def whitebox_attack(self) -> dict[str, Any] | None:
        """The first white-box attack's spec, if any ran."""
        return self.whitebox_attacks[0] if self.whitebox_attacks else None

    def row(self, ratio: float) -> SweepRow:
        """The row at ``ratio``.

        Raises:
            DeepCloakError: the sweep has no such ratio.
        """
        for r in self.rows:
            if abs(r.ratio - ratio) < 1e-9:
                return r
        raise DeepCloakError(
            f"the sweep has no ratio {ratio}; it has {[r.ratio for r in self.rows]}"
        )

    def comparisons(self) -> list[Comparison]:
        """Cloaked vs unmasked (ratio 0), gray-box, at every ratio: McNemar's exact test."""
        base = next((r for r in self.rows if r.ratio == 0), None)
        if base is None:
            return []
        return [compare(r.graybox, base.graybox) for r in self.rows]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SweepResult:
        """The sweep back from :meth:`to_json` written with ``per_sample=True`` (a saved run)."""
        results = [AccuracyResult.from_json(r) for r in d["results"]]
        rows = []
        for entry in d["ratios"]:
            at = [r for r in results if r.ratio == entry["ratio"]]

            def one(defense: str, tm: ThreatModel, found: list[AccuracyResult] = at) -> Any:
                return next(
                    (r for r in found if r.defense == defense and r.threat_model is tm), None
                )

            white = tuple(r for r in at if r.threat_model is ThreatModel.WHITEBOX)
            row = SweepRow(
                entry["ratio"], entry["n_removed"], one(CLOAKED, ThreatModel.CLEAN),
                one(CLOAKED, ThreatModel.GRAYBOX), one(RANDOM, ThreatModel.CLEAN),
                one(RANDOM, ThreatModel.GRAYBOX), white,
            )  # fmt: skip
            rows.append(row)
        return cls(
            rows, LayerRef.from_json(d["layer"]), d["n_features"], d["score"], d["attack"],
            d["whitebox_attacks"], d["n_random"], d["seed"], d["used_cached_head"],
        )  # fmt: skip

    def to_json(self, *, per_sample: bool = False) -> dict[str, Any]:
        """A JSON-able dict: what produced the sweep, each ratio, every result, the tests."""
        return {
            "layer": self.layer.to_json(),
            "n_features": self.n_features,
            "score": self.score,
            "attack": self.attack,
            "whitebox_attacks": self.whitebox_attacks,
            "n_random": self.n_random,
            "seed": self.seed,
            "used_cached_head": self.used_cached_head,
            "n_samples": self.n_samples,
            "ratios": [{"ratio": r.ratio, "n_removed": r.n_removed} for r in self.rows],
            "results": [
                res.to_json(per_sample=per_sample) for r in self.rows for res in r.results()
            ],
            "comparisons": [c.to_json() for c in self.comparisons()],
        }


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
