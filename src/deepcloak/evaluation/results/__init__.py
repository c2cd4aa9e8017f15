"""The one result model: per-sample correctness per defence, ratio, threat model and attack.

Every accuracy deepcloak reports, from ``deepcloak harden``, ``deepcloak evaluate`` and
``experiments/paper_sweep.py`` alike, is an :class:`AccuracyResult`: a boolean per-sample vector
``(N,)`` (or ``(k, N)`` for ``k`` random masks) with the defence, the threat model (one
:class:`ThreatModel` vocabulary), the attack and the ratio that produced it. Accuracies,
intervals and McNemar tests are computed from those vectors, never reconstructed from rounded
fractions. A ratio sweep is a :class:`SweepResult` of :class:`SweepRow`; the ratio chosen from
one a :class:`RatioChoice`; the careful evaluation an :class:`EvaluationReport`. Their JSON
follows one versioned layout, :data:`SCHEMA`, documented in ``docs/schema.md``.

Modules: :mod:`.accuracy` (the atom, threat models, comparisons), :mod:`.sweep` (a ratio
sweep), :mod:`.report` (the ratio choice and the whole evaluation's report).
"""

from __future__ import annotations

from deepcloak.evaluation.results.accuracy import (
    ACTIVATION,
    CLOAKED,
    RANDOM,
    SCHEMA,
    SMOOTHING,
    SQUEEZING,
    THREAT_MODELS,
    UNMASKED,
    WORST_CASE,
    AccuracyResult,
    Comparison,
    ThreatModel,
    compare,
    find_result,
)
from deepcloak.evaluation.results.report import EvaluationReport, RatioCandidate, RatioChoice
from deepcloak.evaluation.results.sweep import SweepResult, SweepRow

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
