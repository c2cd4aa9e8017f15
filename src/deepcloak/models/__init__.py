"""Models, after data: the classifiers that get cloaked.

- :mod:`.zoo`: models by name (:func:`create_model`), built from :mod:`.plain` and
  :mod:`.residual`;
- :mod:`.train`, :mod:`.recipes`: training, and the recipes behind the published checkpoints;
- :mod:`.checkpoint`, :mod:`.weights`: safe checkpoints (:func:`save_checkpoint`,
  :func:`load_model`);
- :mod:`.outputs`, :mod:`.runtime`, :mod:`.precision`, :mod:`.fits`: which output is the logits,
  a model's device, dtype and mode, forward precision, and whether a model fits its data.

This ``__init__`` is the sub-package's face: the names callers outside it use. Modules inside
import their siblings directly, never through it.
"""

from __future__ import annotations

from deepcloak.models.checkpoint import CHECKPOINT_FORMAT, load_model, save_checkpoint
from deepcloak.models.fits import check_model_fits, check_model_fits_data
from deepcloak.models.outputs import (
    OutputKey,
    SelectOutput,
    check_finite_logits,
    correct,
    select_logits,
)
from deepcloak.models.precision import (
    Precision,
    check_precision_supported,
    current_precision,
    forward_autocast,
    forward_precision,
    parse_precision,
)
from deepcloak.models.recipes import RECIPES, recipe, train_checkpoint
from deepcloak.models.runtime import eval_mode, model_device, model_dtype, model_inputs
from deepcloak.models.train import (
    OptimizerName,
    Schedule,
    TrainResult,
    TrainSettings,
    accuracy,
    augment_batch,
    train_model,
)
from deepcloak.models.weights import read_weights
from deepcloak.models.zoo import MODELS, create_model, list_models

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODELS",
    "RECIPES",
    "OptimizerName",
    "OutputKey",
    "Precision",
    "Schedule",
    "SelectOutput",
    "TrainResult",
    "TrainSettings",
    "accuracy",
    "augment_batch",
    "check_finite_logits",
    "check_model_fits",
    "check_model_fits_data",
    "check_precision_supported",
    "correct",
    "create_model",
    "current_precision",
    "eval_mode",
    "forward_autocast",
    "forward_precision",
    "list_models",
    "load_model",
    "model_device",
    "model_dtype",
    "model_inputs",
    "parse_precision",
    "read_weights",
    "recipe",
    "save_checkpoint",
    "select_logits",
    "train_checkpoint",
    "train_model",
]
