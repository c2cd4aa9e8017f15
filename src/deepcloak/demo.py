"""The one-command demo: train a small ResNet on scikit-learn's digits, then harden it.

Everything runs on the CPU in well under a minute and needs no downloads: the digits data set
ships with scikit-learn. The numbers it prints are gray-box (the paper's threat model) unless a
column says white-box.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deepcloak.data.sets import load_dataset
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
        eps: FGSM budget in [0, 1]. Digits images have 17 grey levels (steps of 1/16), so 0.2
            moves each pixel by about three levels.
        ratio: fraction of features removed by the saved mask and cloaked model.
        epochs: training epochs of the ResNet.
        width: base width of the ResNet (its layer L has ``4 * width`` features).
        seed: seeds training, attacks and random masks.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``"fp32"`` or ``"bf16"`` for the sweep's forward-only passes (training, the
            fit and the attacks run in float32).
    """

    eps: float = 0.2
    ratio: float = 0.05
    epochs: int = 15
    width: int = 32
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"

    def harden_config(self) -> HardenConfig:
        """The settings of the hardening step (validates ``eps``, ``ratio`` and ``precision``)."""
        return HardenConfig(
            attack="fgsm", eps=self.eps, ratio=self.ratio, seed=self.seed, precision=self.precision
        )


@dataclass
class DemoResult:
    """What :func:`run_demo` produced; :func:`write_demo` saves it."""

    config: DemoConfig
    arch_kwargs: dict[str, int]
    training: TrainResult
    hardened: HardenResult
    seconds: float


def run_demo(config: DemoConfig, *, progress: ProgressFn | None = None) -> DemoResult:
    """Train a ResNet on digits, fit DeepCloak with FGSM on the training split, sweep on test."""
    start = time.perf_counter()
    harden_config = config.harden_config()  # validate before any work
    torch.manual_seed(config.seed)
    train_set = load_dataset("digits", split="train")
    test_set = load_dataset("digits", split="test")
    arch_kwargs = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": config.width}
    model = create_model("resnet", **arch_kwargs)
    training = train_model(
        model, train_set, epochs=config.epochs, batch_size=64, seed=config.seed,
        test_set=test_set, progress=progress, device=resolve_device(config.device),
    )  # fmt: skip
    share_weights(model)  # under torchrun: every process cloaks rank 0's trained model
    hardened = harden(model, train_set, test_set, harden_config, progress=progress)
    summary = {k: v for k, v in asdict(training).items() if k != "losses"}
    hardened.model_info = {"arch": "resnet", "arch_kwargs": arch_kwargs, "training": summary}
    hardened.data_info = {
        "data": "digits",
        "split": "sklearn digits, stratified 80/20, seed 0",
        "input_shape": [1, 8, 8],
    }
    return DemoResult(config, arch_kwargs, training, hardened, time.perf_counter() - start)


def write_demo(result: DemoResult, out: str | Path) -> dict[str, Path]:
    """Write the report, plot, mask and cloaked model under ``out`` (see :func:`write_harden`)."""
    title = f"DeepCloak demo: ResNet on digits, FGSM eps={result.config.eps:g}"
    return write_harden(result.hardened, out, title=title)
