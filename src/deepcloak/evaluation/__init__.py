"""Evaluation, after the cloak: what masking buys, measured honestly.

- :mod:`.config`, :mod:`.grids`: the evaluation's settings and default ratio grids;
- :mod:`.sweep`, :mod:`.feature_cache`, :mod:`.mask_grid`: the gray-box / white-box sweep over
  ratios, on cached features;
- :mod:`.crafted`, :mod:`.passes`, :mod:`.probes`, :mod:`.baselines`: attacks crafted once and
  replayed, worst cases, unbounded probes, and baseline defenses;
- :mod:`.selection`, :mod:`.ratio_choice`: the cloak and its ratio, chosen on validation data;
- :mod:`.sanity`: sanity checks of the attacks' strength;
- :mod:`.run`, :mod:`.stages`, :mod:`.resume`, :mod:`.timings`: the orchestration
  (:func:`evaluate_cloak`), resumable, timed;
- :mod:`.results`: what it returns (:class:`EvaluationReport`, schema ``deepcloak/2``).

This ``__init__`` is the sub-package's face: the names callers outside it use. Modules inside
import their siblings directly, never through it.
"""

from __future__ import annotations

from deepcloak.evaluation.baselines import feature_squeezing, spatial_smoothing
from deepcloak.evaluation.config import SETTING_PARTS, EvaluationConfig, build_attack
from deepcloak.evaluation.crafted import (
    CraftedSets,
    CraftKey,
    Replay,
    Samples,
    standing_after,
    target,
)
from deepcloak.evaluation.feature_cache import cache_device, cache_features, masked_predictions
from deepcloak.evaluation.grids import DEFAULT_RATIOS, PAPER_RATIOS, SUMMARY_RATIOS, WHITEBOX_RATIOS
from deepcloak.evaluation.mask_grid import MaskGrid, head_outcomes, linear_of, model_outcomes
from deepcloak.evaluation.passes import correct, craft, worst_case
from deepcloak.evaluation.probes import UNBOUNDED_EPS, curve_attack, unbounded_probe
from deepcloak.evaluation.ratio_choice import choose_ratio
from deepcloak.evaluation.results import (
    CLOAKED,
    RANDOM,
    SCHEMA,
    THREAT_MODELS,
    UNMASKED,
    WORST_CASE,
    AccuracyResult,
    EvaluationReport,
    SweepResult,
    SweepRow,
    ThreatModel,
    compare,
    find_result,
)
from deepcloak.evaluation.resume import (
    CHECKS,
    CURVE,
    MAYBE_SWEEP,
    RESULTS,
    Codec,
    EvaluationFolder,
    StageRunner,
)
from deepcloak.evaluation.run import evaluate_cloak, evaluate_sources
from deepcloak.evaluation.sanity import (
    CheckStatus,
    SanityCheck,
    check_eps_growth,
    check_gradient_free,
    check_more_steps,
    check_single_step,
    check_transfer_vs_whitebox,
    check_whitebox_vs_graybox,
)
from deepcloak.evaluation.selection import search_choice, search_cloak
from deepcloak.evaluation.sweep import (
    graybox_sweep,
    random_rankings,
    whitebox_accuracy,
    whitebox_results,
)
from deepcloak.evaluation.timings import AttackPass, Timings

__all__ = [
    "CHECKS",
    "CLOAKED",
    "CURVE",
    "DEFAULT_RATIOS",
    "MAYBE_SWEEP",
    "PAPER_RATIOS",
    "RANDOM",
    "RESULTS",
    "SCHEMA",
    "SETTING_PARTS",
    "SUMMARY_RATIOS",
    "THREAT_MODELS",
    "UNBOUNDED_EPS",
    "UNMASKED",
    "WHITEBOX_RATIOS",
    "WORST_CASE",
    "AccuracyResult",
    "AttackPass",
    "CheckStatus",
    "Codec",
    "CraftKey",
    "CraftedSets",
    "EvaluationConfig",
    "EvaluationFolder",
    "EvaluationReport",
    "MaskGrid",
    "Replay",
    "Samples",
    "SanityCheck",
    "StageRunner",
    "SweepResult",
    "SweepRow",
    "ThreatModel",
    "Timings",
    "build_attack",
    "cache_device",
    "cache_features",
    "check_eps_growth",
    "check_gradient_free",
    "check_more_steps",
    "check_single_step",
    "check_transfer_vs_whitebox",
    "check_whitebox_vs_graybox",
    "choose_ratio",
    "compare",
    "correct",
    "craft",
    "curve_attack",
    "evaluate_cloak",
    "evaluate_sources",
    "feature_squeezing",
    "find_result",
    "graybox_sweep",
    "head_outcomes",
    "linear_of",
    "masked_predictions",
    "model_outcomes",
    "random_rankings",
    "search_choice",
    "search_cloak",
    "spatial_smoothing",
    "standing_after",
    "target",
    "unbounded_probe",
    "whitebox_accuracy",
    "whitebox_results",
    "worst_case",
]
