"""Does this model fit this data? One check for every command and every model it runs.

``harden``, ``evaluate``, the model sources (:mod:`deepcloak.sources`) and the surrogate of
the transfer threat model all call :func:`check_model_fits` before any work, so a model paired
with the wrong data set fails at once with one clear line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from deepcloak.errors import DeepCloakError
from deepcloak.models.outputs import check_finite_logits, select_logits
from deepcloak.models.runtime import eval_mode, model_inputs
from deepcloak.validation import check_input_shape, check_labels

__all__ = ["check_model_fits", "check_model_fits_data"]


def check_model_fits(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    data: str = "the data",
    what: str = "model",
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> int:
    """Run ``model`` on a few inputs and check that it fits the data; returns its outputs.

    The model's own train/eval modes are restored afterwards.

    Args:
        model: the classifier.
        x: a few inputs ``(B, C, H, W)`` of the data (only the first two are run).
        y: labels to check against the model's outputs (``None``: skip).
        data: how to name the data in errors, e.g. ``"the test data"``.
        what: how to name the model in errors, e.g. ``"surrogate model"``.
        input_shape: the ``(C, H, W)`` the model was trained on, if known (e.g. from its
            checkpoint): models with global pooling accept any size, so only this catches
            a model paired with the wrong data set.
        num_classes: the data set's number of classes, if known.

    Returns:
        The model's number of outputs (classes).

    Raises:
        DeepCloakError: the model cannot take the inputs, was trained on another shape, does not
            return ``(N, classes)`` logits, or has fewer outputs than the labels need.
    """
    shape = tuple(x.shape[1:])
    if input_shape is not None and check_input_shape(input_shape) != shape:
        raise DeepCloakError(
            f"the {what} was trained on inputs of shape {tuple(input_shape)}, but {data} has "
            f"inputs of shape {shape}: is this the model for this data set?"
        )
    outputs = _logits_on(model, x, data, what).shape[-1]
    if num_classes is not None and outputs < num_classes:
        raise DeepCloakError(
            f"{data} has {num_classes} classes but the {what} has {outputs} outputs"
        )
    if y is not None:
        try:
            check_labels(y, outputs)
        except DeepCloakError as e:
            raise DeepCloakError(
                f"labels of {data} do not match the {what}: {e}. Are the model and the data set "
                "meant for each other?"
            ) from None
    return int(outputs)


def check_model_fits_data(
    model: nn.Module,
    dataset: Dataset[Any],
    name: str = "the data",
    *,
    input_shape: Sequence[int] | None = None,
) -> None:
    """Run the model on the first sample of ``dataset`` and check that the two fit.

    See :func:`check_model_fits` (this reads the data set's first
    sample and its ``num_classes``, if it has one).

    Raises:
        DeepCloakError: the model cannot take the data's input shape, was trained on another
            shape, or has fewer outputs than the data has classes.
    """
    x, _ = dataset[0]
    num_classes = getattr(dataset, "num_classes", None)
    check_model_fits(model, x[None], data=name, input_shape=input_shape, num_classes=num_classes)


def _logits_on(model: nn.Module, x: torch.Tensor, data: str, what: str) -> torch.Tensor:
    """The model's ``(N, classes)`` logits on the first two inputs, checked finite.

    Raises:
        DeepCloakError: the model cannot take the inputs, or returns no such logits.
    """
    shape = tuple(x.shape[1:])
    try:
        with torch.no_grad(), eval_mode(model):
            output = model(model_inputs(model, x[:2]))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DeepCloakError(
            f"the {what} does not accept inputs of shape {shape} (C, H, W) from {data}: "
            f"{first}. Are the model and the data set meant for each other?"
        ) from None
    logits = select_logits(output)  # a tuple or dict: a clear error that names --output
    check_finite_logits(logits, f"the {what}'s logits on {data}")
    if logits.ndim != 2:
        raise DeepCloakError(
            f"the {what} must return logits of shape (N, num_classes), got {tuple(logits.shape)}"
        )
    return logits
