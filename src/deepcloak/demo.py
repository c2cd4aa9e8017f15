"""The one-command demo: train a small ResNet on scikit-learn's digits, then harden it.

Everything runs on the CPU in well under a minute and needs no downloads: the digits data set
ships with scikit-learn. The numbers it prints are gray-box (the paper's threat model) unless a
column says white-box.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from deepcloak.data.sets import load_dataset
from deepcloak.data.splits import ValidationInfo
from deepcloak.devices import resolve_device
from deepcloak.distributed import share_weights
from deepcloak.harden import HardenConfig, HardenResult, harden, write_harden
from deepcloak.models.train import TrainResult, train_model
from deepcloak.models.zoo import create_model
from deepcloak.progress import ProgressFn

__all__ = ["DemoConfig", "DemoResult", "run_demo", "write_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo`.

    Attributes:
        eps: FGSM budget in [0, 1]. Digits images have 17 grey levels (steps of 1/16), so 0.15
            moves each pixel by between two and three levels.
        val_samples: training samples held out *before* training, that the mask is chosen on
            (the model never sees them; digits' 360 test samples are all reported on).
        ratio: a fixed fraction of features to remove by the paper's score (``None``: the mask
            is searched within ``clean_budget``, the default, and shown beside the paper's
            score chosen the same way).
        clean_budget: the largest clean-accuracy drop the saved mask may cost.
        epochs: training epochs of the ResNet.
        width: base width of the ResNet (its layer L has ``4 * width`` features).
        seed: seeds training, attacks and random masks.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``"fp32"`` or ``"bf16"`` for the sweep's forward-only passes (training, the
            fit and the attacks run in float32).
    """

    eps: float = 0.15
    val_samples: int = 500
    ratio: float | None = None
    clean_budget: float = 0.01
    epochs: int = 15
    width: int = 32
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def harden_config(self) -> HardenConfig:
        """The settings of the hardening step (validates ``eps``, ``ratio`` and ``precision``)."""
        return HardenConfig(
            attack="fgsm", eps=self.eps, ratio=self.ratio, seed=self.seed,
            clean_budget=self.clean_budget, precision=self.precision,
        )  # fmt: skip


@dataclass
class DemoResult:
    """What :func:`run_demo` produced; :func:`write_demo` saves it.

    ``paper`` is the paper's score with its size chosen the same way (same validation samples,
    same budget), for comparison; ``None`` when the demo ran the paper's method itself.
    """

    config: DemoConfig
    arch_kwargs: dict[str, int]
    training: TrainResult
    hardened: HardenResult
    seconds: float
    paper: HardenResult | None = None


def run_demo(config: DemoConfig, *, progress: ProgressFn | None = None) -> DemoResult:
    """Train a ResNet on digits, fit DeepCloak with FGSM on the training split, sweep on test."""
    start = time.perf_counter()
    harden_config = config.harden_config()  # validate before any work
    torch.manual_seed(config.seed)
    train_set, val_set = load_dataset("digits", split="train").split_off(
        config.val_samples, seed=config.seed
    )
    test_set = load_dataset("digits", split="test")
    validation = ValidationInfo(
        "holdout", config.val_samples, config.val_samples + len(train_set), config.seed, False,
        f"{config.val_samples} training samples held out before training (the model never "
        "saw them)",
    )  # fmt: skip
    arch_kwargs = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": config.width}
    model = create_model("resnet", **arch_kwargs)
    training = train_model(
        model, train_set, epochs=config.epochs, batch_size=64, seed=config.seed,
        test_set=test_set, progress=progress, device=resolve_device(config.device),
    )  # fmt: skip
    share_weights(model)  # under torchrun: every process cloaks rank 0's trained model
    hardened = harden(
        model, train_set, test_set, harden_config, val_set=val_set, validation=validation,
        progress=progress,
    )  # fmt: skip
    paper = None
    if harden_config.searches:  # the paper's score, its size chosen on the same samples
        paper_config = replace(harden_config, select="deepcloak", n_random=0, whitebox_ratios=())
        paper = harden(
            model, train_set, test_set, paper_config, val_set=val_set, validation=validation
        )
    summary = {k: v for k, v in asdict(training).items() if k != "losses"}
    hardened.model_info = {"arch": "resnet", "arch_kwargs": arch_kwargs, "training": summary}
    hardened.data_info = {
        "data": "digits",
        "split": "sklearn digits, stratified 80/20, seed 0; validation held out of train",
        "validation": validation.to_json(),
        "input_shape": [1, 8, 8],
    }
    return DemoResult(
        config, arch_kwargs, training, hardened, time.perf_counter() - start, paper=paper
    )


def write_demo(result: DemoResult, out: str | Path) -> dict[str, Path]:
    """Write the report, plot, mask and cloaked model under ``out`` (see :func:`write_harden`)."""
    title = f"DeepCloak demo: ResNet on digits, FGSM eps={result.config.eps:g}"
    return write_harden(result.hardened, out, title=title)
