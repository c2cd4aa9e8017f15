"""The ratio sweep's results: one :class:`SweepRow` of accuracy results per mask ratio."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deepcloak.cloak.taps import LayerRef
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.results.accuracy import (
    CLOAKED,
    RANDOM,
    AccuracyResult,
    Comparison,
    ThreatModel,
    compare,
)

__all__ = ["SweepResult", "SweepRow"]


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
