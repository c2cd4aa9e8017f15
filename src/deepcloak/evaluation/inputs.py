"""What goes into an evaluation: samples collected and checked, and what was used recorded.

:func:`prepare_splits` gathers the test and validation samples into memory (:func:`collect`)
and checks them against the model(s) (:func:`deepcloak.models.fits.check_model_fits`); the
``describe_*`` functions record what was used.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcloak._moved import moved_names
from deepcloak.attacks import art as art_attacks
from deepcloak.batches import unpack_batch
from deepcloak.cloak.fit import Cloak
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.crafted import Samples
from deepcloak.models import fits as _fits

__all__ = [
    "EvaluationSplits",
    "SampleCap",
    "collect",
    "describe_data",
    "describe_model",
    "describe_splits",
    "describe_train",
    "overlap_notes",
    "prepare_splits",
    "shared_samples",
]

log = logging.getLogger(__name__)

# Moved after 0.1.0: the model-fits-data check is the models' (harden uses it too).
__getattr__ = moved_names(__name__, {"check_model_fits": _fits})


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


def check_cloak_fits(model: nn.Module, cloak: Cloak, x: torch.Tensor) -> None:
    """Deprecated: ``cloak.check_fits(model, x)`` (:meth:`~deepcloak.Cloak.check_fits`).

    Kept for one version after 0.1.0; it warns and calls the method.
    """
    warnings.warn(
        f"{__name__}.check_cloak_fits(model, cloak, x) moved to "
        "deepcloak.cloak.fit.Cloak.check_fits: call cloak.check_fits(model, x) "
        f"({__name__} stops providing it in the next version)",
        DeprecationWarning,
        stacklevel=2,
    )
    cloak.check_fits(model, x)


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


@dataclass(frozen=True)
class EvaluationSplits:
    """The checked test and validation samples, and what the checks found."""

    test: Samples
    val: Samples
    num_classes: int
    overlap: int
    cap: SampleCap


def prepare_splits(
    model: nn.Module,
    val_loader: Iterable[Any],
    test_loader: Iterable[Any],
    surrogate: nn.Module | None,
    config: EvaluationConfig,
) -> EvaluationSplits:
    """Collect the test and validation samples and check them against the model(s).

    Raises:
        DeepCloakError: ART missing for an ART attack, empty loaders, invalid samples, data that
            does not fit the model, or a surrogate with other classes.
    """
    if config.uses_art:
        art_attacks.require_art()  # fail now, not after the fit
    x, y = collect(test_loader, "test", config.samples.max_samples)
    # The search's validation pass is one FGSM pass and its bound needs samples: the level's cap
    # applies to the validation samples only when the paper's ratio is chosen on a PGD sweep.
    val_cap = config.samples.max_samples if config.cloak.select is None else None
    x_val, y_val = collect(val_loader, "validation", val_cap)
    num_classes = _fits.check_model_fits(model, x, y, data="the test data")
    _fits.check_model_fits(model, x_val, y_val, data="the validation data")
    if x_val.shape[1:] != x.shape[1:]:
        raise DeepCloakError(
            f"validation inputs have shape {tuple(x_val.shape[1:])} but test inputs "
            f"{tuple(x.shape[1:])}; expected the same data set"
        )
    if surrogate is not None:
        k = _fits.check_model_fits(surrogate, x, y, data="the test data", what="surrogate model")
        if k != num_classes:
            raise DeepCloakError(
                f"the surrogate has {k} outputs but the model {num_classes}; a transfer "
                "attack needs a surrogate trained on the same classes"
            )
    bs = config.samples.batch_size
    overlap = shared_samples(x_val, x)
    test, val = Samples(x, y, bs, "test"), Samples(x_val, y_val, bs, "validation")
    cap = SampleCap(
        config.samples.max_samples, source=config.max_samples_source, level=config.level_name
    )
    return EvaluationSplits(test, val, num_classes, overlap, cap)


def overlap_notes(overlap: int) -> list[str]:
    """The report's note (and a logged warning) when validation samples are also test samples."""
    if not overlap:
        return []
    log.warning("%d validation samples also appear in the test split", overlap)
    return [
        f"{overlap} validation samples also appear in the test split: the ratio choice is not "
        "fully independent of the test numbers; hold out disjoint splits"
    ]


def describe_splits(
    splits: EvaluationSplits, train: Any, val_loader: Any, test_loader: Any
) -> dict[str, Any]:
    """What was evaluated: each split, the sample cap, where the cloak came from."""
    test = describe_data(test_loader, splits.test.x, splits.test.y)
    validation = describe_data(val_loader, splits.val.x, splits.val.y)
    return {
        "test": test,
        "validation": validation,
        "sample_cap": splits.cap.describe({"test": test, "validation": validation}),
        "train": describe_train(train),
        "num_classes": splits.num_classes,
        "validation_test_overlap": splits.overlap,
    }
