"""Speed benchmarks, reported as ratios against a baseline measured in the same run.

1. Gray-box sweep over 100 ratios: cached features at L (deepcloak) vs. the naive way, a full
   forward pass through the masked model for every ratio. Target: the cached sweep costs about
   one evaluation pass, so the speed-up approaches the number of ratios.
2. Inference of a cloaked model: mask layer and folded mask vs. the unmasked model. Target:
   folded = 1.0x (zero extra cost).

Run: ``make bench`` (or ``python bench/run.py --samples 2000``).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from deepcloak import FGSM, fit, graybox_sweep
from deepcloak.evaluation.sweep import DEFAULT_RATIOS
from deepcloak.models.zoo import create_model


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of ``repeats`` runs (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--size", type=int, default=28)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("resnet", in_channels=1, num_classes=10, input_size=args.size, width=16)
    model.eval()
    x = torch.rand(args.samples, 1, args.size, args.size)
    y = torch.randint(0, 10, (args.samples,))
    loader = DataLoader(TensorDataset(x, y), batch_size=250)
    attack = FGSM(eps=0.03)
    cloak = fit(model, loader, attack=attack)
    x_adv = torch.cat([attack(model, xb, yb) for xb, yb in loader])

    def naive_sweep() -> None:
        for ratio in DEFAULT_RATIOS:
            cloaked = cloak.apply(copy.deepcopy(model), ratio)
            with torch.no_grad():
                for xs in (x, x_adv):
                    for chunk in xs.split(250):
                        cloaked(chunk)

    def cached_sweep() -> None:
        graybox_sweep(model, cloak, loader, attack=attack, n_random=0)

    naive = best_of(naive_sweep, repeats=1)
    cached = best_of(cached_sweep, repeats=1)
    print(f"gray-box sweep, {len(DEFAULT_RATIOS)} ratios, {args.samples} samples "
          f"({args.size}x{args.size}, resnet-8):")  # fmt: skip
    print(f"  naive full forward per ratio: {naive:7.2f} s")
    print(f"  cached features (deepcloak):  {cached:7.2f} s   speed-up {naive / cached:5.1f}x")

    hooked = cloak.apply(copy.deepcopy(model), 0.1)
    folded = cloak.apply(copy.deepcopy(model), 0.1, fold=True)
    batch = x[:250]

    def infer(m: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for _ in range(20):
                    m(batch)

        return run

    base = best_of(infer(model), repeats=5)
    print("inference, 20 batches of 250 (time relative to the unmasked model):")
    print(f"  mask layer: {best_of(infer(hooked), repeats=5) / base:5.3f}x")
    print(f"  folded:     {best_of(infer(folded), repeats=5) / base:5.3f}x")


if __name__ == "__main__":
    main()
