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
from deepcloak.data.folder import read_class_folder
from deepcloak.data.sets import load_dataset
from deepcloak.data.splits import DataSplits, ValFrom
from deepcloak.devices import resolve_device
from deepcloak.errors import DeepCloakError
from deepcloak.models.checkpoint import check_weights_given, load_model
from deepcloak.models.fits import check_model_fits
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
    """A data set named on the command line, and which of its samples to fit, choose and report on.

    Args:
        name: a registered data set (``digits``, ``fashion-mnist``, ``mnist``, ``cifar10``,
            ``imagefolder``).
        root: the folder of its files.
        fit_samples: training samples to fit on (a seeded random subset; ``None``: all);
            validation samples are counted apart.
        val_from: where the validation samples come from (:class:`~deepcloak.data.splits.ValFrom`:
            ``test``, ``train`` or ``folder``); ``None``: ``folder`` when ``val_root`` is given
            or an image folder has a ``val/`` split, else ``test``.
        val_samples: validation samples (``None``: ``min(5000, half of the split drawn
            from)``; 0: none).
        val_root: a folder with one sub-folder per class, for ``val_from="folder"``.
        test_samples: test samples to report on (a seeded subset of what validation leaves;
            ``None``: all).
        seed: seeds the subsets and the validation draw.
    """

    name: str = "digits"
    root: Path | None = None
    fit_samples: int | None = None
    val_from: ValFrom | str | None = None
    val_samples: int | None = None
    val_root: Path | None = None
    test_samples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for field_name in ("fit_samples", "test_samples"):
            value = getattr(self, field_name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise DeepCloakError(f"{field_name} must be a positive integer, got {value!r}")
        if self.val_samples is not None and (
            isinstance(self.val_samples, bool) or self.val_samples < 0
        ):
            raise DeepCloakError(f"val_samples must be >= 0, got {self.val_samples!r}")
        if self.val_from is not None:
            source = ValFrom.parse(self.val_from)
            if self.val_root is not None and source is not ValFrom.FOLDER:
                raise DeepCloakError(
                    f"--val-root gives a validation folder, but --val-from is {source.value!r}; "
                    "drop one of them"
                )

    def source(self) -> ValFrom:
        """Where the validation samples come from, with ``None`` resolved."""
        if self.val_from is not None:
            return ValFrom.parse(self.val_from)
        if self.val_root is not None or self._image_folder_val() is not None:
            return ValFrom.FOLDER
        return ValFrom.TEST

    def _image_folder_val(self) -> Path | None:
        if self.name == "imagefolder" and self.root is not None and (self.root / "val").is_dir():
            return self.root / "val"
        return None

    def splits(self) -> DataSplits:
        """Load the data set and split it into fit, validation and test samples.

        Raises:
            DeepCloakError: unknown data set, counts that leave nothing to fit or report on,
                or a folder source without a folder.
            DataFormatError: malformed files.
        """
        source = self.source()
        train = load_dataset(self.name, split="train", root=self.root)
        test = load_dataset(self.name, split="test", root=self.root)
        val_set = None
        if source is ValFrom.FOLDER and self.val_samples != 0:
            folder = self.val_root or self._image_folder_val()
            if folder is None:
                raise DeepCloakError(
                    f"--val-from folder needs --val-root PATH (a folder of class folders); "
                    f"{self.name} has no val/ split of its own"
                )
            val_set = read_class_folder(
                Path(folder), classes=train.classes, input_shape=train.input_shape
            )
        splits = DataSplits.make(
            train, test, val_from=source, val_samples=self.val_samples, val_set=val_set,
            seed=self.seed,
        )  # fmt: skip
        return splits.limited(fit=self.fit_samples, test=self.test_samples, seed=self.seed)

    def describe(self, splits: DataSplits | None = None, **sizes: Any) -> dict[str, Any]:
        """The data set's name, root, the sizes actually used and the validation source."""
        info: dict[str, Any] = {"data": self.name, "root": str(self.root) if self.root else None}
        if splits is not None:
            info.update(
                train_samples=len(splits.fit),
                val_samples=len(splits.val) if splits.val is not None else 0,
                test_samples=len(splits.test),
                input_shape=list(splits.fit.input_shape),
                validation=splits.validation.to_json() if splits.validation else None,
            )
        return {**info, **sizes}
