"""What ``--precision bf16`` does to the numbers: the same sweeps in float32 and in bfloat16.

For each data set (scikit-learn's digits; Fashion-MNIST on a subset, where it is installed):
train a small zoo ResNet with a fixed seed, fit DeepCloak with FGSM (the fit always runs in
float32), then run the same gray-box sweeps (100 ratios, 5 random masks each, FGSM and PGD-10
samples crafted in float32) on the test split with the forward-only passes in float32 and in
bfloat16, and choose the ratio on a validation split held out of the training data, as
``deepcloak evaluate`` does. It reports clean and gray-box accuracy at a few ratios, the largest
difference over all ratios, the share of per-sample results (sample x mask x ratio) that
differ, whether the chosen ratio (so the saved mask) is the same, and the sweep's time in each
precision. The figures go into the ``precision`` section of ``docs/performance.md``.

Run: ``python bench/precision.py [--device cuda] [--threads 1] [--no-doc]`` (about a minute
on one CPU core).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from deepcloak import FGSM, PGD, fit, graybox_sweep
from deepcloak.attacks.native import Attack
from deepcloak.cloak.fit import Cloak
from deepcloak.data.memory import ImageDataset
from deepcloak.data.sets import fashion_mnist_root, load_dataset
from deepcloak.environment import environment
from deepcloak.evaluation.grids import DEFAULT_RATIOS
from deepcloak.evaluation.ratio_choice import choose_ratio
from deepcloak.evaluation.results import SweepResult
from deepcloak.models.train import train_model
from deepcloak.models.zoo import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import write_doc  # bench/run.py: the one writer of docs/performance.md

SHOWN = (0.0, 0.05, 0.1, 0.2, 0.5)  # ratios shown in the table


@dataclass(frozen=True)
class Setup:
    """One data set: its splits, the model's width and training, and the attack budget."""

    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    width: int
    epochs: int
    eps: float


def setups(fashion_train: int, fashion_test: int) -> list[Setup]:
    """Digits always; Fashion-MNIST (subsets) where its files are installed."""
    digits = load_dataset("digits", split="train")
    out = [
        Setup("digits", *_hold_out(digits, 300), load_dataset("digits", split="test"), 16, 15, 0.2)
    ]
    if fashion_mnist_root().is_dir():
        train = load_dataset("fashion-mnist", split="train", limit=fashion_train)
        test = load_dataset("fashion-mnist", split="test", limit=fashion_test)
        out.append(Setup("fashion-mnist", *_hold_out(train, 1000), test, 8, 3, 0.04))
    return out


def _hold_out(data: ImageDataset, n: int) -> tuple[ImageDataset, ImageDataset]:
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data.subset(order[n:].sort().values), data.subset(order[:n].sort().values)


def differing(a: SweepResult, b: SweepResult) -> tuple[int, int, float]:
    """Per-sample results that differ, all per-sample results, and the largest accuracy gap."""
    diff = total = 0
    gap = 0.0
    for ra, rb in zip(a.rows, b.rows, strict=True):
        for x, y in zip(ra.results(), rb.results(), strict=True):
            diff += int((x.correct != y.correct).sum())
            total += x.correct.numel()
            gap = max(gap, abs(x.accuracy - y.accuracy))
    return diff, total, gap


def measure(setup: Setup, device: torch.device) -> list[str]:
    """Table rows (markdown) comparing float32 and bfloat16 on one data set."""
    torch.manual_seed(0)
    c, size = setup.train.input_shape[0], setup.train.input_shape[1]
    model = create_model(
        "resnet", in_channels=c, num_classes=10, input_size=size, width=setup.width
    ).to(device)
    train_model(model, setup.train, epochs=setup.epochs, batch_size=64, seed=0, device=device)

    def loader(data: ImageDataset) -> DataLoader[Any]:
        return DataLoader(data, batch_size=256)

    cloak = fit(model, loader(setup.train), attack=FGSM(eps=setup.eps))
    rows = []
    for attack in (FGSM(eps=setup.eps), PGD(eps=setup.eps, steps=10)):
        rows.append(_compare(setup, model, cloak, attack, loader))
    return rows


def _compare(
    setup: Setup,
    model: torch.nn.Module,
    cloak: Cloak,
    attack: Attack,
    loader: Callable[[ImageDataset], DataLoader[Any]],
) -> str:
    """One table row: the sweeps and the validation choice of ``attack`` in both precisions."""
    sweeps: dict[str, SweepResult] = {}
    seconds: dict[str, float] = dict.fromkeys(("fp32", "bf16"), float("inf"))
    device = next(model.parameters()).device
    # One thread on CPU: the process's CPU time is the work's, whatever else the machine runs.
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    for p in ("fp32", "bf16", "fp32", "bf16"):  # interleaved, best of two: no warm-up bias
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        sweeps[p] = graybox_sweep(
            model, cloak, loader(setup.test), attack=attack, ratios=DEFAULT_RATIOS, n_random=5,
            precision=p,
        )  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[p] = min(seconds[p], clock() - start)
    choices = {
        p: choose_ratio(
            graybox_sweep(
                model, cloak, loader(setup.val), attack=attack, ratios=DEFAULT_RATIOS, n_random=0,
                precision=p,
            ),
            0.01,
        ).ratio
        for p in ("fp32", "bf16")
    }  # fmt: skip
    diff, total, gap = differing(sweeps["fp32"], sweeps["bf16"])
    by_ratio = {p: {r.ratio: r for r in s.rows} for p, s in sweeps.items()}
    shown = " ".join(
        f"{r:g}: {100 * by_ratio['fp32'][r].clean_accuracy:.1f}/"
        f"{100 * by_ratio['bf16'][r].clean_accuracy:.1f}, "
        f"{100 * by_ratio['fp32'][r].graybox_accuracy:.1f}/"
        f"{100 * by_ratio['bf16'][r].graybox_accuracy:.1f};"
        for r in SHOWN
    )
    same = "same" if choices["fp32"] == choices["bf16"] else "differs"
    return (
        f"| {setup.name} ({len(setup.test)} test) | {attack.spec()['name']} | {shown} | "
        f"{100 * gap:.2f} | {diff} of {total} ({100 * diff / total:.2f}%) | "
        f"{choices['fp32']:g} / {choices['bf16']:g} ({same}) | "
        f"{seconds['fp32']:.2f} / {seconds['bf16']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed)")
    parser.add_argument("--fashion-train", type=int, default=10_000, help="training subset")
    parser.add_argument("--fashion-test", type=int, default=2_000, help="test subset")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(device)
    lines = [
        f"## precision: float32 vs bfloat16 forward passes ({env['device']}: {env['device_name']})",
        "",
        f"torch {env['torch']}, {env['threads']} thread(s), deepcloak {env['deepcloak']}, "
        f"{env['time']}; command: `python bench/precision.py --device {args.device} "
        f"--threads {args.threads}`. Accuracies in % as float32/bfloat16 per ratio: clean, "
        "gray-box. The fit and every attack run in float32 in both columns, so the mask ranking "
        "is the same; bfloat16 changes only predictions (and the features the sweep caches). "
        "Sweep seconds (crafting included) are CPU time on CPU, wall time on CUDA.",
        "",
        "| data | gray-box attack | ratio: clean, gray-box (fp32/bf16) | largest gap (points) "
        "| per-sample results that differ | ratio (so mask) chosen on validation (fp32 / bf16) "
        "| sweep seconds, best of 2 (fp32 / bf16) |",
        "| --- | --- | --- | ---: | --- | --- | --- |",
    ]
    for setup in setups(args.fashion_train, args.fashion_test):
        for row in measure(setup, device):
            print(row, flush=True)
            lines.append(row)
    if not args.no_doc:
        write_doc("\n".join(lines) + "\n", "precision")


if __name__ == "__main__":
    main()
