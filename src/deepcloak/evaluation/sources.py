"""Models and data sets named on the command line: load them, split them, check them.

``deepcloak harden`` and ``deepcloak evaluate`` parse their options into a :class:`ModelSource`
and a :class:`DataSource`; everything from there (loading, the validation split, the
model-fits-data check, the TorchScript view) happens here, in the library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from deepcloak.cloak.torchscript import cloakable
from deepcloak.data.base import ImageSet
from deepcloak.data.sets import load_dataset
from deepcloak.devices import resolve_device
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.inputs import check_model_fits
from deepcloak.models.checkpoint import check_weights_given, load_model
from deepcloak.models.outputs import OutputKey
from deepcloak.models.runtime import model_device
from deepcloak.validation import check_input_shape

__all__ = ["DataSource", "LoadedModel", "ModelSource", "trained_input_shape"]


def trained_input_shape(model_info: dict[str, Any]) -> tuple[int, ...] | None:
    """The ``(C, H, W)`` a loaded model was trained on, from its checkpoint metadata if known.

    Raises:
        DeepCloakError: metadata that gives a shape, but not as positive integers.
    """
    if model_info.get("input_shape") is not None:
        return check_input_shape(model_info["input_shape"], "the model's metadata 'input_shape'")
    kwargs = model_info.get("arch_kwargs") or {}
    if "in_channels" in kwargs and "input_size" in kwargs:
        c, s = kwargs["in_channels"], kwargs["input_size"]
        return check_input_shape([c, s, s], "the model's 'in_channels' and 'input_size'")
    return None


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for deepcloak (a TorchScript model as its cloakable view) and its facts."""

    model: nn.Module
    info: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """A model named on the command line.

    Args:
        spec: a deepcloak checkpoint, a TorchScript file, ``package.module:factory`` (with
            ``weights``), or a ``torch.save`` file (with ``allow_pickle``).
        weights: a ``state_dict`` for a factory.
        allow_pickle: allow unpickling a full model (it can run code): trusted files only.
        output: index or key of the logits when the model returns a tuple or dict.
        device: where to run the model (``auto``: CUDA when present, else the CPU).
        random_weights: a factory without ``weights`` uses its own initialisation, seeded with
            ``seed`` (refused otherwise: a random model's numbers are noise).
        seed: seeds that initialisation.
    """

    spec: str
    weights: Path | None = None
    allow_pickle: bool = False
    output: OutputKey | None = None
    device: str = "cpu"
    random_weights: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        check_weights_given(self.spec, self.weights, random_weights=self.random_weights)

    def load_for(self, data: ImageSet, *, what: str = "model") -> LoadedModel:
        """Load the model, check that it fits ``data``, and make it cloakable.

        Raises:
            DeepCloakError: the model cannot be loaded, or does not fit the data.
        """
        model, info = load_model(
            self.spec, weights=self.weights, allow_pickle=self.allow_pickle,
            random_weights=self.random_weights, seed=self.seed,
        )  # fmt: skip
        model = model.to(resolve_device(self.device))
        x = data[0][0][None].to(model_device(model))
        if self.output is not None:  # pick the logits first: the checks need them
            model = cloakable(model, x, output=self.output)
        check_model_fits(
            model, x, data=f"the {data.name} data", what=what,
            input_shape=trained_input_shape(info), num_classes=data.num_classes,
        )  # fmt: skip
        return LoadedModel(model if self.output is not None else cloakable(model, x), info)


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """A data set named on the command line, and how much of it to use.

    Args:
        name: a registered data set (``digits``, ``fashion-mnist``, ``mnist``, ``cifar10``,
            ``imagefolder``).
        root: the folder of its files.
        fit_samples: training samples to load (a seeded random subset; ``None``: all), before
            the validation samples are held out of them.
        val_samples: samples held out from the training split for validation (0: none).
        test_samples: test samples to use (a seeded random subset; ``None``: all).
        seed: seeds the subsets and the validation split.
    """

    name: str = "digits"
    root: Path | None = None
    fit_samples: int | None = None
    val_samples: int = 0
    test_samples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for field_name in ("fit_samples", "test_samples"):
            value = getattr(self, field_name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise DeepCloakError(f"{field_name} must be a positive integer, got {value!r}")
        if isinstance(self.val_samples, bool) or self.val_samples < 0:
            raise DeepCloakError(f"val_samples must be >= 0, got {self.val_samples!r}")

    def train_and_validation(self) -> tuple[ImageSet, ImageSet | None]:
        """The training split, and the validation samples held out from it (if any)."""
        train = load_dataset(
            self.name, split="train", root=self.root, limit=self.fit_samples, seed=self.seed
        )
        if not self.val_samples:
            return train, None
        return train.split_off(self.val_samples, seed=self.seed)

    def test(self) -> ImageSet:
        """The test split (a seeded subset of ``test_samples``)."""
        return load_dataset(
            self.name, split="test", root=self.root, limit=self.test_samples, seed=self.seed
        )

    def describe(self, **sizes: Any) -> dict[str, Any]:
        """The data set's name, root and the sizes actually used."""
        return {"data": self.name, "root": str(self.root) if self.root else None, **sizes}
