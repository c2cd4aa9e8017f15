"""What goes into an evaluation: samples collected and checked, models checked against data.

:func:`check_model_fits` is the one model-fits-data check (``harden``, ``evaluate`` and the
surrogate of the transfer threat model all use it); :func:`collect` gathers a loader's samples
into memory, checked; the ``describe_*`` functions record what was used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcloak.batches import unpack_batch
from deepcloak.cloak.fit import Cloak
from deepcloak.cloak.taps import tap
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.evaluation.sweep import check_cloak_features
from deepcloak.models.outputs import check_finite_logits, select_logits
from deepcloak.models.runtime import eval_mode, model_inputs
from deepcloak.validation import check_input_shape, check_labels

__all__ = [
    "SampleCap",
    "check_cloak_fits",
    "check_model_fits",
    "collect",
    "describe_data",
    "describe_model",
    "describe_train",
    "shared_samples",
]


@dataclass(frozen=True)
class SampleCap:
    """The cap on test and validation samples, and where it came from (made visible in reports).

    Attributes:
        max_samples: the cap (``None``: every sample is evaluated).
        source: ``"level"`` (the level's cap) or ``"setting"`` (set explicitly).
        level: the evaluation level the settings started from.
    """

    max_samples: int | None
    source: str
    level: str

    def describe(self, splits: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The cap, and which splits it shortened.

        Args:
            splits: split name -> :func:`describe_data` of it (``n_available``, ``n_used``).
        """
        capped = [
            name
            for name, d in splits.items()
            if self.max_samples is not None
            and (d["n_used"] < d["n_available"] if d["n_available"] is not None
                 else d["n_used"] >= self.max_samples)
        ]  # fmt: skip
        return {
            "max_samples": self.max_samples,
            "source": self.source,
            "level": self.level,
            "capped": capped,
        }


def collect(
    loader: Iterable[Any], split: str, max_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` of ``loader`` (up to ``max_samples``: the first ones) as CPU tensors, checked.

    Raises:
        DeepCloakError: an empty loader, invalid inputs or labels, or shapes that change.
    """
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    seen, cpu = 0, torch.device("cpu")
    for batch in loader:
        try:
            x, y = unpack_batch(batch, cpu)
        except DeepCloakError as e:
            raise DeepCloakError(f"{split} data: {e}") from None
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DeepCloakError(
                f"{split} data: expected one label per input, got inputs {tuple(x.shape)} and "
                f"labels {tuple(y.shape)}"
            )
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DeepCloakError(
                f"{split} data: input shape changed between batches: {tuple(xs[0].shape[1:])} "
                f"then {tuple(x.shape[1:])}"
            )
        xs.append(x)
        ys.append(y)
        seen += x.shape[0]
        if max_samples is not None and seen >= max_samples:
            break
    if not xs:
        raise DeepCloakError(f"the {split} loader yielded no samples; expected at least one batch")
    return torch.cat(xs)[:max_samples], torch.cat(ys)[:max_samples]


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
    outputs = int(logits.shape[-1])
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
    return outputs


def check_cloak_fits(model: nn.Module, cloak: Cloak, x: torch.Tensor) -> None:
    """Check that the cloak's layer exists in ``model`` and gives features of its shape.

    Raises:
        DeepCloakError: no such layer, or features of another shape (another model).
    """
    try:
        with torch.no_grad(), eval_mode(model), tap(model, cloak.layer) as t:
            model(model_inputs(model, x[:2]))
            feats = t.take()
    except (AttributeError, LayerError) as e:
        raise DeepCloakError(
            f"the cloak's layer ({cloak.layer}) is not usable in this model: {e}"
        ) from None
    check_cloak_features(cloak, tuple(feats.shape[1:]))


def shared_samples(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many samples of ``a`` are bit-identical to a sample of ``b`` (split leakage)."""
    seen = {row.tobytes() for row in b.flatten(1).numpy()}
    return sum(row.tobytes() in seen for row in a.flatten(1).numpy())


def describe_model(model: nn.Module) -> dict[str, Any]:
    """The model's class and parameter count, for reports."""
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _name(dataset: Any) -> str | None:
    if dataset is None:
        return None
    return getattr(dataset, "name", None) or type(dataset).__name__


def _len(obj: Any) -> int | None:
    try:
        return len(obj) if obj is not None else None
    except TypeError:
        return None


def describe_data(loader: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Name, size, samples used, input shape and class counts of one split."""
    dataset = getattr(loader, "dataset", None)
    return {
        "name": _name(dataset),
        "n_available": _len(dataset),
        "n_used": int(y.numel()),
        "input_shape": list(x.shape[1:]),
        "class_counts": torch.bincount(y).tolist(),
    }


def describe_train(train: Any) -> dict[str, Any]:
    """Where the cloak came from: given, or fit here on a named data set."""
    if isinstance(train, Cloak):
        return {"source": "given cloak", "n_samples": train.n_samples}
    dataset = getattr(train, "dataset", None)
    return {"source": "fit here", "name": _name(dataset), "n_available": _len(dataset)}
