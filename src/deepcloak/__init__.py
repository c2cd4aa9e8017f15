"""deepcloak: harden a trained PyTorch classifier by masking the features attackers exploit.

DeepCloak (Gao, Wang, Qi et al., arXiv 1702.06763): score each feature of a layer by how much
adversarial examples move it, and insert a fixed 0/1 mask that removes the top-scoring ones.

Example:
    >>> import deepcloak
    >>> cloak = deepcloak.fit(model, train_loader, attack=deepcloak.FGSM(eps=8 / 255))
    >>> result = deepcloak.graybox_sweep(model, cloak, test_loader)
    >>> cloak.apply(model, ratio=0.01, fold=True)
"""

from __future__ import annotations

from deepcloak._version import __version__
from deepcloak.attacks.art import ArtAPGD, ArtPGD, ArtSquare  # also registers them by name
from deepcloak.attacks.native import ATTACKS, FGSM, PGD, Attack, Norm, create_attack
from deepcloak.cloak.fit import Cloak, fit
from deepcloak.cloak.mask import FeatureMask, find_masks, fold_mask, insert_mask, remove_mask
from deepcloak.cloak.scores import (
    SCORERS,
    ActivationScore,
    DeepCloakScore,
    RandomScore,
    deepcloak_score,
    rank_features,
)
from deepcloak.cloak.taps import LayerRef, Side, resolve_layer
from deepcloak.errors import DataFormatError, DeepCloakError, LayerError
from deepcloak.evaluation.baselines import PreprocessedModel, feature_squeezing, spatial_smoothing
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.ratio_choice import RatioChoice, choose_ratio
from deepcloak.evaluation.results import AccuracyResult, EvaluationReport, ThreatModel
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.sanity import CheckStatus, SanityCheck
from deepcloak.evaluation.stats import McNemarResult, mcnemar_exact, wilson_interval
from deepcloak.evaluation.sweep import (
    DEFAULT_RATIOS,
    SweepResult,
    SweepRow,
    cache_features,
    graybox_sweep,
    whitebox_accuracy,
)
from deepcloak.models.checkpoint import load_model, save_checkpoint
from deepcloak.models.train import TrainResult, accuracy, train_model
from deepcloak.models.zoo import create_model, list_models
from deepcloak.report.evaluation import write_evaluation
from deepcloak.report.tables import evaluation_tables

__all__ = [
    "ATTACKS",
    "DEFAULT_RATIOS",
    "FGSM",
    "PGD",
    "SCORERS",
    "AccuracyResult",
    "ActivationScore",
    "ArtAPGD",
    "ArtPGD",
    "ArtSquare",
    "Attack",
    "CheckStatus",
    "Cloak",
    "DataFormatError",
    "DeepCloakError",
    "DeepCloakScore",
    "EvaluationConfig",
    "EvaluationReport",
    "FeatureMask",
    "LayerError",
    "LayerRef",
    "McNemarResult",
    "Norm",
    "PreprocessedModel",
    "RandomScore",
    "RatioChoice",
    "SanityCheck",
    "Side",
    "SweepResult",
    "SweepRow",
    "ThreatModel",
    "TrainResult",
    "__version__",
    "accuracy",
    "cache_features",
    "choose_ratio",
    "create_attack",
    "create_model",
    "deepcloak_score",
    "evaluate_cloak",
    "evaluation_tables",
    "feature_squeezing",
    "find_masks",
    "fit",
    "fold_mask",
    "graybox_sweep",
    "insert_mask",
    "list_models",
    "load_model",
    "mcnemar_exact",
    "rank_features",
    "remove_mask",
    "resolve_layer",
    "save_checkpoint",
    "spatial_smoothing",
    "train_model",
    "whitebox_accuracy",
    "wilson_interval",
    "write_evaluation",
]
