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

from deepcloak.attacks import ATTACKS, FGSM, PGD, Attack, Norm, create_attack
from deepcloak.cloak import Cloak, fit
from deepcloak.errors import DataFormatError, DeepCloakError, LayerError
from deepcloak.evaluate import (
    DEFAULT_RATIOS,
    SweepResult,
    SweepRow,
    cache_features,
    graybox_sweep,
    whitebox_accuracy,
)
from deepcloak.mask import FeatureMask, find_masks, fold_mask, insert_mask, remove_mask
from deepcloak.scores import SCORERS, DeepCloakScore, RandomScore, deepcloak_score, rank_features
from deepcloak.taps import LayerRef, Side, resolve_layer

__all__ = [
    "ATTACKS",
    "DEFAULT_RATIOS",
    "FGSM",
    "PGD",
    "SCORERS",
    "Attack",
    "Cloak",
    "DataFormatError",
    "DeepCloakError",
    "DeepCloakScore",
    "FeatureMask",
    "LayerError",
    "LayerRef",
    "Norm",
    "RandomScore",
    "Side",
    "SweepResult",
    "SweepRow",
    "__version__",
    "cache_features",
    "create_attack",
    "deepcloak_score",
    "find_masks",
    "fit",
    "fold_mask",
    "graybox_sweep",
    "insert_mask",
    "rank_features",
    "remove_mask",
    "resolve_layer",
    "whitebox_accuracy",
]
