"""The one-command demo: train a small ResNet on scikit-learn's digits, cloak it, sweep, report.

Everything runs on the CPU in well under a minute and needs no downloads: the digits data set
ships with scikit-learn. The numbers it prints are gray-box (the paper's threat model) unless a
column says white-box.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from deepcloak.attacks import FGSM
from deepcloak.checkpoint import save_checkpoint
from deepcloak.checks import check_epsilon, check_ratio
from deepcloak.cloak import Cloak, fit
from deepcloak.data import load_dataset
from deepcloak.evaluate import DEFAULT_RATIOS, SweepResult, graybox_sweep
from deepcloak.io import write_json_atomic
from deepcloak.models import create_model
from deepcloak.progress import ProgressFn
from deepcloak.report import environment, plot_sweep
from deepcloak.train import TrainResult, train_model

__all__ = ["DemoConfig", "DemoResult", "run_demo", "write_demo"]

#: Ratios at which the demo also runs the white-box attack (one attack pass each).
WHITEBOX_RATIOS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        eps: FGSM budget in [0, 1]. Digits images have 17 grey levels (steps of 1/16), so 0.2
            moves each pixel by about three levels.
        ratio: fraction of features removed by the saved mask and cloaked model.
        epochs: training epochs of the ResNet.
        width: base width of the ResNet (its layer L has ``4 * width`` features).
        n_random: random masks per ratio in the baseline.
        seed: seeds training, attacks and random masks.
    """

    eps: float = 0.2
    ratio: float = 0.05
    epochs: int = 15
    width: int = 32
    n_random: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        check_epsilon(self.eps)
        check_ratio(self.ratio)


@dataclass
class DemoResult:
    """What :func:`run_demo` produced; :func:`write_demo` saves it."""

    config: DemoConfig
    model: torch.nn.Module
    arch: dict[str, Any]
    training: TrainResult
    cloak: Cloak
    sweep: SweepResult
    seconds: float


def run_demo(config: DemoConfig, *, progress: ProgressFn | None = None) -> DemoResult:
    """Train, fit DeepCloak with FGSM on the training split, and sweep ratios on the test split."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    train_set = load_dataset("digits", split="train")
    test_set = load_dataset("digits", split="test")
    arch = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": config.width}
    model = create_model("resnet", **arch)
    training = train_model(
        model, train_set, epochs=config.epochs, batch_size=64, seed=config.seed,
        test_set=test_set, progress=progress,
    )  # fmt: skip
    model.eval()
    attack = FGSM(eps=config.eps)
    cloak = fit(
        model, DataLoader(train_set, batch_size=256), attack=attack, seed=config.seed,
        progress=progress,
    )  # fmt: skip
    ratios = sorted({*DEFAULT_RATIOS, config.ratio})
    sweep = graybox_sweep(
        model, cloak, DataLoader(test_set, batch_size=256), attack=attack, ratios=ratios,
        n_random=config.n_random, seed=config.seed, whitebox_attack=attack,
        whitebox_ratios=sorted({*WHITEBOX_RATIOS, config.ratio}), progress=progress,
    )  # fmt: skip
    return DemoResult(
        config=config,
        model=model,
        arch={"name": "resnet", **arch},
        training=training,
        cloak=cloak,
        sweep=sweep,
        seconds=time.perf_counter() - start,
    )


def write_demo(result: DemoResult, out: str | Path) -> dict[str, Path]:
    """Write ``report.json``, ``sweep.png``, ``mask.safetensors`` and ``cloaked_model.safetensors``.

    Every file is written atomically; nothing is written before all results exist.

    Returns:
        The paths written, by kind.
    """
    out = Path(out)
    paths = {
        "report": out / "report.json",
        "plot": out / "sweep.png",
        "mask": out / "mask.safetensors",
        "model": out / "cloaked_model.safetensors",
    }
    ratio = result.config.ratio
    cloaked = result.cloak.apply(copy.deepcopy(result.model), ratio, fold=True)
    arch = dict(result.arch)
    name = arch.pop("name")
    save_checkpoint(
        paths["model"], cloaked, arch=name, arch_kwargs=arch,
        metadata={"data": "digits", "input_shape": [1, 8, 8], "seed": result.config.seed,
                  "cloak": result.cloak.metadata(ratio)},
    )  # fmt: skip
    result.cloak.save(paths["mask"], ratio)
    plot_sweep(
        result.sweep, paths["plot"],
        title=f"DeepCloak demo: ResNet on digits, FGSM eps={result.config.eps:g}",
    )  # fmt: skip
    report = {
        "schema": "deepcloak-demo/1",
        "config": asdict(result.config),
        "data": {"name": "digits", "train": "sklearn digits, stratified 80/20 split, seed 0"},
        "model": {**result.arch, "test_accuracy": result.training.test_accuracy},
        "training": {k: v for k, v in asdict(result.training).items() if k != "losses"},
        "fit": result.cloak.metadata(ratio),
        "sweep": result.sweep.to_json(),
        "environment": environment("cpu"),
        "seconds": result.seconds,
        "files": {k: p.name for k, p in paths.items()},
    }
    write_json_atomic(paths["report"], report)
    return paths
