"""Harden any model on any data set: fit DeepCloak on training data, sweep ratios on test data.

This is what ``deepcloak harden`` and the demo run. It checks that model and data fit each other
before any work, and writes its outputs (report, plot, mask, cloaked model) atomically, only
after every result exists.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from deepcloak.attacks.native import Attack, create_attack
from deepcloak.cloak.fit import Cloak, fit, model_device
from deepcloak.cloak.torchscript import ScriptedClassifier, cloakable
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.evaluation.sweep import DEFAULT_RATIOS, SweepResult, graybox_sweep
from deepcloak.io import atomic_write, save_tensors, write_json_atomic
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.runtime import eval_mode
from deepcloak.progress import ProgressFn
from deepcloak.report.sweep import environment, plot_sweep
from deepcloak.validation import check_epsilon, check_ratio, check_ratios

__all__ = [
    "HardenConfig",
    "HardenResult",
    "check_model_fits_data",
    "harden",
    "trained_input_shape",
    "write_harden",
]

#: Ratios at which ``harden`` also runs the white-box attack by default (one attack pass each).
WHITEBOX_RATIOS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class HardenConfig:
    """Settings of :func:`harden`.

    Attributes:
        attack: ``"fgsm"`` (the paper's) or ``"pgd"``; used for the fit and the test samples.
        eps: attack budget in [0, 1].
        steps: PGD steps (ignored by FGSM).
        ratio: fraction of features removed by the saved mask and cloaked model.
        ratios: ratios of the sweep.
        whitebox_ratios: ratios at which the attack is also run through the cloaked model.
        layer, side: layer L (default: input of the final ``nn.Linear``).
        score: scorer name.
        n_random: random masks per ratio in the baseline.
        batch_size: samples per batch.
        seed: seeds attacks and random masks.
    """

    attack: str = "fgsm"
    eps: float = 8 / 255
    steps: int = 10
    ratio: float = 0.01
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    whitebox_ratios: tuple[float, ...] = WHITEBOX_RATIOS
    layer: str | None = None
    side: str | None = None
    score: str = "deepcloak"
    n_random: int = 5
    batch_size: int = 256
    seed: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_epsilon(self.eps)
        check_ratio(self.ratio)
        check_ratios(self.ratios)
        check_ratios(self.whitebox_ratios or (0.0,))
        if self.batch_size < 1:
            raise DeepCloakError(f"batch_size must be >= 1, got {self.batch_size}")

    def make_attack(self) -> Attack:
        """The configured attack."""
        params: dict[str, Any] = {"eps": self.eps}
        if self.attack == "pgd":
            params.update(steps=self.steps, seed=self.seed)
        return create_attack(self.attack, **params)

    def sweep_ratios(self) -> list[float]:
        """The sweep's ratios, with the saved ratio and the white-box ratios included."""
        return sorted({*self.ratios, self.ratio, *self.whitebox_ratios})


@dataclass
class HardenResult:
    """What :func:`harden` produced; :func:`write_harden` saves it."""

    config: HardenConfig
    model: nn.Module
    cloak: Cloak
    sweep: SweepResult
    seconds: float


def check_model_fits_data(
    model: nn.Module,
    dataset: Dataset,
    name: str = "the data",
    *,
    input_shape: Sequence[int] | None = None,
) -> None:
    """Run the model on one sample and check that its inputs and classes fit ``dataset``.

    Args:
        model: the classifier.
        dataset: yields ``(x, y)``.
        name: how to call the data set in errors.
        input_shape: the ``(C, H, W)`` the model was trained on, if known (e.g. from its
            checkpoint): models with global pooling accept any size, so only this catches
            a model paired with the wrong data set.

    Raises:
        DeepCloakError: the model cannot take the data's input shape, was trained on another
            shape, or has fewer outputs than the data has classes.
    """
    x, _ = dataset[0]
    shape = tuple(x.shape)
    if input_shape is not None and tuple(input_shape) != shape:
        raise DeepCloakError(
            f"the model was trained on inputs of shape {tuple(input_shape)}, but {name} has "
            f"inputs of shape {shape}: is this the model for this data set?"
        )
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(x.unsqueeze(0).to(model_device(model)))
    except (RuntimeError, ValueError) as e:
        raise DeepCloakError(
            f"the model does not accept inputs of shape {shape} from {name}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    num_classes = getattr(dataset, "num_classes", None)
    if logits.ndim != 2:
        raise DeepCloakError(
            f"expected the model to return logits (N, classes), got {tuple(logits.shape)}"
        )
    if num_classes is not None and logits.shape[1] < num_classes:
        raise DeepCloakError(
            f"{name} has {num_classes} classes but the model has {logits.shape[1]} outputs"
        )


def trained_input_shape(model_info: dict[str, Any]) -> tuple[int, ...] | None:
    """The ``(C, H, W)`` a loaded model was trained on, from its checkpoint metadata if known."""
    if model_info.get("input_shape"):
        return tuple(int(v) for v in model_info["input_shape"])
    kwargs = model_info.get("arch_kwargs") or {}
    if "in_channels" in kwargs and "input_size" in kwargs:
        return (int(kwargs["in_channels"]), int(kwargs["input_size"]), int(kwargs["input_size"]))
    return None


def harden(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    config: HardenConfig,
    *,
    input_shape: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
) -> HardenResult:
    """Fit DeepCloak on ``train_set`` and sweep ratios on ``test_set`` (gray-box and white-box).

    ``input_shape``, if known, is the ``(C, H, W)`` the model was trained on; see
    :func:`check_model_fits_data`.
    """
    start = time.perf_counter()
    check_model_fits_data(model, train_set, "the training data", input_shape=input_shape)
    check_model_fits_data(model, test_set, "the test data", input_shape=input_shape)
    # fit and the sweeps use eval mode themselves and restore every module's own mode.
    model = cloakable(model, train_set[0][0].unsqueeze(0).to(model_device(model)))
    attack = config.make_attack()
    cloak = fit(
        model, DataLoader(train_set, batch_size=config.batch_size), attack=attack,
        layer=config.layer, side=config.side, score=config.score, seed=config.seed,
        progress=progress,
    )  # fmt: skip
    ratios = config.sweep_ratios()
    sweep = graybox_sweep(
        model, cloak, DataLoader(test_set, batch_size=config.batch_size), attack=attack,
        ratios=ratios, n_random=config.n_random, seed=config.seed, whitebox_attack=attack,
        whitebox_ratios=sorted({*config.whitebox_ratios, config.ratio}), progress=progress,
    )  # fmt: skip
    return HardenResult(config, model, cloak, sweep, time.perf_counter() - start)


def write_harden(
    result: HardenResult,
    out: str | Path,
    *,
    model_info: dict[str, Any],
    data_info: dict[str, Any],
    title: str = "",
) -> dict[str, Path]:
    """Write ``report.json``, ``sweep.png``, ``mask.safetensors`` and the cloaked model.

    The cloaked model is saved with the mask folded into the final ``nn.Linear``: as a deepcloak
    checkpoint when ``model_info`` holds ``arch`` and ``arch_kwargs`` (a zoo model), as
    TorchScript for a TorchScript model, else as a ``state_dict`` in safetensors with the
    original keys (load it with the same factory). When
    L is not an ``nn.Linear``, the mask cannot be folded and only the mask file is written.

    Returns:
        The paths written, by kind.
    """
    out = Path(out)
    ratio = result.config.ratio
    paths = {
        "report": out / "report.json",
        "plot": out / "sweep.png",
        "mask": out / "mask.safetensors",
    }
    cloaked = copy.deepcopy(result.model)
    try:
        result.cloak.apply(cloaked, ratio, fold=True)
    except LayerError:
        cloaked = None  # the mask layer cannot be folded; the mask file is the artefact
    meta = {**data_info, "cloak": result.cloak.metadata(ratio)}
    if cloaked is not None and "arch" in model_info and "arch_kwargs" in model_info:
        paths["model"] = out / "cloaked_model.safetensors"
        save_checkpoint(
            paths["model"], cloaked, arch=model_info["arch"],
            arch_kwargs=model_info["arch_kwargs"], metadata=meta,
        )  # fmt: skip
    elif isinstance(cloaked, ScriptedClassifier):
        paths["model"] = out / "cloaked_model.pt"  # TorchScript in, TorchScript out
        with atomic_write(paths["model"]) as f:
            cloaked.save_scripted(f)
    elif cloaked is not None:
        paths["model"] = out / "cloaked_state_dict.safetensors"
        state = {k: v.detach().clone() for k, v in cloaked.state_dict().items()}
        save_tensors(paths["model"], state, {"format": "deepcloak-state-dict/1", **meta})
    result.cloak.save(paths["mask"], ratio)
    plot_sweep(result.sweep, paths["plot"], title=title)
    report = {
        "schema": "deepcloak-harden/1",
        "config": asdict(result.config),
        "data": data_info,
        "model": model_info,
        "fit": result.cloak.metadata(ratio),
        "sweep": result.sweep.to_json(),
        "environment": environment(model_device(result.model)),
        "seconds": result.seconds,
        "files": {k: p.name for k, p in paths.items()},
    }
    write_json_atomic(paths["report"], report)
    return paths
