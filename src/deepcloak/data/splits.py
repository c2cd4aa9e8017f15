"""Fit, validation and test samples: where the validation samples come from, and how many.

A mask (or a ratio) is *chosen* on validation samples and *reported* on test samples. Choosing
on samples the model was trained on is biased: a trained model is more accurate there (on
Fashion-MNIST 94.6-95.4% against 92.1-93.0% on test), so a clean-accuracy budget checked there
says little about new data. The default therefore takes the validation samples from the test
split, seeded and disjoint from the samples reported on:

- ``test`` (default): a seeded part of the test split; every test figure is on the rest.
- ``train``: held out of the training split (the fit never sees them, the model did), for users
  whose test split must stay untouched; the report warns that the choice is biased.
- ``folder``: a validation split of the user's (an image folder's ``val/``, or ``val_root``).

The default size is ``min(5000, half of the split drawn from)``: the 95% upper bound of a paired
clean-accuracy drop shrinks with the number of samples, and at 1,000 samples it is about one
point even at zero measured drop, so a 1-point budget then admits almost no mask (see
``docs/results.md``, "The best mask by default").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from deepcloak.data.base import ImageSet
from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError

__all__ = [
    "DEFAULT_MAX_VAL_SAMPLES",
    "DataSplits",
    "ValFrom",
    "ValidationInfo",
    "default_val_samples",
    "hold_out",
]

#: The default number of validation samples, at most (see :func:`default_val_samples`).
DEFAULT_MAX_VAL_SAMPLES = 5000


class ValFrom(str, enum.Enum):
    """Where the validation samples come from; the strings ``"test"``, ... also work."""

    TEST = "test"
    TRAIN = "train"
    FOLDER = "folder"

    @classmethod
    def parse(cls, value: ValFrom | str) -> ValFrom:
        """``value`` as a :class:`ValFrom`.

        Raises:
            DeepCloakError: not one of the sources; the message lists them.
        """
        return parse_enum(cls, value, what="validation source")


def default_val_samples(available: int) -> int:
    """``min(5000, available // 2)``: enough for a useful bound, and half left to report on."""
    return min(DEFAULT_MAX_VAL_SAMPLES, available // 2)


def hold_out(data: Dataset[Any], n: int, *, seed: int) -> tuple[Any, Any]:
    """``(rest, held_out)``: ``n`` samples drawn with ``seed``, disjoint, each in original order.

    An :class:`~deepcloak.data.base.ImageSet` splits itself (keeping its classes and shape);
    any other data set is split into two :class:`~torch.utils.data.Subset` views.

    Raises:
        DeepCloakError: ``n`` leaves nothing on either side.
    """
    size = len(data)  # type: ignore[arg-type]
    if not 0 < n < size:
        name = getattr(data, "name", "data")
        raise DeepCloakError(
            f"cannot hold out {n:,} of {size:,} {name} samples for validation; "
            f"expected between 1 and {size - 1:,} (--val-samples)"
        )
    if isinstance(data, ImageSet):
        return data.split_off(n, seed=seed)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return Subset(data, order[n:].sort().values.tolist()), Subset(
        data, order[:n].sort().values.tolist()
    )


@dataclass(frozen=True)
class ValidationInfo:
    """Where the validation samples came from, recorded in every report.

    Attributes:
        source: ``test``, ``train`` or ``folder``.
        samples: validation samples.
        available: samples of the split they were drawn from (before the draw).
        seed: seed of the draw (``None`` for a folder, used whole).
        biased: the model was trained on them (``source == "train"``).
        description: one line for the terminal and the report.
    """

    source: str
    samples: int
    available: int
    seed: int | None
    biased: bool
    description: str

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the fields."""
        return {
            "source": self.source,
            "samples": self.samples,
            "available": self.available,
            "seed": self.seed,
            "biased": self.biased,
            "description": self.description,
        }


@dataclass(frozen=True)
class DataSplits:
    """Fit, validation and test samples, disjoint, and where the validation ones came from.

    Attributes:
        fit: training samples the cloak is fit on (attacked to score or search features).
        val: samples the mask (or ratio) is chosen on; ``None`` when none were asked for.
        test: samples every reported figure is measured on.
        validation: where ``val`` came from (``None`` without validation samples).
    """

    fit: ImageSet
    val: ImageSet | None
    test: ImageSet
    validation: ValidationInfo | None

    @staticmethod
    def make(
        train: ImageSet,
        test: ImageSet,
        *,
        val_from: ValFrom | str = ValFrom.TEST,
        val_samples: int | None = None,
        val_set: ImageSet | None = None,
        seed: int = 0,
    ) -> DataSplits:
        """Split ``train`` and ``test`` into fit, validation and test samples.

        Args:
            train: the training split (all of it; the fit takes what is not held out).
            test: the test split.
            val_from: where validation samples come from (:class:`ValFrom`).
            val_samples: how many (``None``: :func:`default_val_samples` of the split drawn
                from; 0: none). A folder's validation set is used whole up to this count.
            val_set: the validation set, for ``val_from="folder"``.
            seed: seeds the draw.

        Raises:
            DeepCloakError: a count that leaves nothing to fit or report on, or a folder source
                without its set.
        """
        source = ValFrom.parse(val_from)
        if val_samples is not None and (isinstance(val_samples, bool) or val_samples < 0):
            raise DeepCloakError(f"val_samples must be >= 0 or None, got {val_samples!r}")
        if val_samples == 0:
            return DataSplits(train, None, test, None)
        if source is ValFrom.FOLDER:
            if val_set is None:
                raise DeepCloakError(
                    "validation from a folder needs the folder: an image folder's val/ split "
                    "or --val-root PATH"
                )
            n = len(val_set) if val_samples is None else min(val_samples, len(val_set))
            val = val_set if n == len(val_set) else val_set.subset(_first(len(val_set), n, seed))
            info = ValidationInfo(
                "folder", n, len(val_set), None if n == len(val_set) else seed, False,
                f"{n:,} samples of the user's validation folder",
            )  # fmt: skip
            return DataSplits(train, val, test, info)
        drawn_from = test if source is ValFrom.TEST else train
        n = default_val_samples(len(drawn_from)) if val_samples is None else val_samples
        rest, val = hold_out(drawn_from, n, seed=seed)
        if source is ValFrom.TEST:
            info = ValidationInfo(
                "test", n, len(drawn_from), seed, False,
                f"{n:,} of the {len(drawn_from):,} test samples (seed {seed}); the test "
                "figures are on the others",
            )  # fmt: skip
            return DataSplits(train, val, rest, info)
        info = ValidationInfo(
            "train", n, len(drawn_from), seed, True,
            f"{n:,} of the {len(drawn_from):,} training samples (seed {seed}), held out of the "
            "fit; the model was trained on them, so the choice is biased (--val-from test "
            "avoids it)",
        )  # fmt: skip
        return DataSplits(rest, val, test, info)

    def limited(
        self, *, fit: int | None = None, test: int | None = None, seed: int = 0
    ) -> DataSplits:
        """Seeded random subsets of ``fit`` and ``test`` samples (``None``: all), in order.

        Validation samples are counted apart: ``fit`` counts only the samples fit on.
        """
        return DataSplits(
            _limit(self.fit, fit, seed), self.val, _limit(self.test, test, seed), self.validation
        )


def _first(size: int, n: int, seed: int) -> torch.Tensor:
    """``n`` of ``size`` indices drawn with ``seed``, sorted."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:n].sort().values


def _limit(data: Any, n: int | None, seed: int) -> Any:
    if n is None or n >= len(data):
        return data
    if isinstance(n, bool) or n < 1:
        raise DeepCloakError(f"a sample count must be a positive integer, got {n!r}")
    if isinstance(data, ImageSet):
        return data.subset(_first(len(data), n, seed))
    return Subset(data, _first(len(data), n, seed).tolist())
