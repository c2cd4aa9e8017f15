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

__version__ = "0.1.0"

from deepcloak.art_attacks import ArtAPGD, ArtPGD, ArtSquare  # also registers them by name
from deepcloak.attacks import ATTACKS, FGSM, PGD, Attack, Norm, create_attack
from deepcloak.checkpoint import load_model, save_checkpoint
from deepcloak.cloak import Cloak, fit
from deepcloak.defenses import PreprocessedModel, feature_squeezing, spatial_smoothing
from deepcloak.errors import DataFormatError, DeepCloakError, LayerError
from deepcloak.evaluate import (
    DEFAULT_RATIOS,
    SweepResult,
    SweepRow,
    cache_features,
    graybox_sweep,
    whitebox_accuracy,
)
from deepcloak.evaluation_config import EvaluationConfig
from deepcloak.evaluation_report import evaluation_tables, write_evaluation
from deepcloak.evaluation_results import AccuracyResult, EvaluationReport, ThreatModel
from deepcloak.mask import FeatureMask, find_masks, fold_mask, insert_mask, remove_mask
from deepcloak.models import create_model, list_models
from deepcloak.robustness import evaluate_cloak
from deepcloak.sanity import CheckStatus, SanityCheck
from deepcloak.scores import (
    SCORERS,
    ActivationScore,
    DeepCloakScore,
    RandomScore,
    deepcloak_score,
    rank_features,
)
from deepcloak.selection import RatioChoice, choose_ratio
from deepcloak.stats import McNemarResult, mcnemar_exact, wilson_interval
from deepcloak.taps import LayerRef, Side, resolve_layer
from deepcloak.train import TrainResult, accuracy, train_model

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
