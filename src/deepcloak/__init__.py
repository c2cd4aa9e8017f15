"""deepcloak: harden a trained PyTorch classifier by masking the features attackers exploit.

DeepCloak (Gao, Wang, Qi et al., arXiv 1702.06763): score each feature of a layer by how much
adversarial examples move it, and insert a fixed 0/1 mask that removes the top-scoring ones.

This module is the public API: what a user calls. Everything else (registries, caches, default
grids, file helpers) lives in the sub-packages and may change between versions.

Example:
    >>> import deepcloak
    >>> cloak = deepcloak.fit(model, train_loader, attack=deepcloak.FGSM(eps=8 / 255))
    >>> result = deepcloak.graybox_sweep(model, cloak, test_loader)
    >>> cloak.apply(model, ratio=0.01, fold=True)
"""

from __future__ import annotations

from typing import Any

from deepcloak._version import __version__
from deepcloak.attacks import (
    FGSM,
    PGD,
    ArtAPGD,
    ArtPGD,
    ArtSquare,
    Attack,
    Norm,
    create_attack,
    list_attacks,
)
from deepcloak.cloak.fit import Cloak, fit
from deepcloak.cloak.mask import FeatureMask
from deepcloak.cloak.scores import DeepCloakScore
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.cloak.torchscript import cloakable
from deepcloak.data.sets import load_dataset
from deepcloak.errors import DataFormatError, DeepCloakError, LayerError
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.results import EvaluationReport, ThreatModel
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.sweep import SweepResult, graybox_sweep, whitebox_accuracy
from deepcloak.harden import HardenConfig, harden
from deepcloak.models.checkpoint import load_model, save_checkpoint
from deepcloak.models.outputs import SelectOutput
from deepcloak.models.train import TrainResult, train_model
from deepcloak.models.zoo import create_model, list_models
from deepcloak.stats import mcnemar_exact, wilson_interval

__all__ = [
    "FGSM",
    "PGD",
    "ArtAPGD",
    "ArtPGD",
    "ArtSquare",
    "Attack",
    "Cloak",
    "DataFormatError",
    "DeepCloakError",
    "DeepCloakScore",
    "EvaluationConfig",
    "EvaluationReport",
    "FeatureMask",
    "HardenConfig",
    "LayerError",
    "LayerRef",
    "Norm",
    "SelectOutput",
    "Side",
    "SweepResult",
    "ThreatModel",
    "TrainResult",
    "__version__",
    "cloakable",
    "create_attack",
    "create_model",
    "evaluate_cloak",
    "fit",
    "graybox_sweep",
    "harden",
    "list_attacks",
    "list_models",
    "load_dataset",
    "load_model",
    "mcnemar_exact",
    "save_checkpoint",
    "train_model",
    "whitebox_accuracy",
    "wilson_interval",
    "write_evaluation",
]

# Loaded on first use: it draws tables, and `import deepcloak` loads neither rich nor matplotlib.
_LAZY = {"write_evaluation": "deepcloak.report.evaluation"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepcloak' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
