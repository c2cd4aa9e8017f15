"""Mask search speed: a whole search against one evaluation pass over the same fit samples.

1. ResNet-8 on Fashion-MNIST fit samples (a ``runs/paper`` checkpoint when there is one, else
   an untrained model on random inputs): the greedy and beam (width 4) searches on cached
   features, against one forward pass of the model over the same clean and adversarial samples
   (what evaluating a single mask costs without the cache). Target: a whole search costs a few
   evaluation passes, although it scores every feature at every step.
2. ``--large``: one search step at ImageNet scale (2048 features, 1000 classes), against one
   full-logit pass ``f W^T`` over the same cached features.

Timings are interleaved (each repeat runs every contender once) and the best of ``--repeats``
is kept; the thread count is fixed and printed.

Run: ``python bench/search.py`` (``--large --device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from deepcloak import FGSM
from deepcloak.cloak.head import HeadFeatures, cache_head_features, candidate_outcomes, full_logits
from deepcloak.cloak.selectors import create_selector
from deepcloak.cloak.taps import resolve_layer
from deepcloak.data.sets import FASHION_MNIST_ROOT, load_dataset
from deepcloak.models.checkpoint import load_model
from deepcloak.models.zoo import create_model


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, sync: bool) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, the functions interleaved."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def model_and_data(
    samples: int, device: torch.device
) -> tuple[torch.nn.Module, DataLoader[tuple[torch.Tensor, ...]], str]:
    """A trained ResNet-8 and Fashion-MNIST training samples if available, else stand-ins."""
    path = Path("runs/paper/resnet.safetensors")
    if path.exists():
        model, _ = load_model(str(path))
        what = f"ResNet-8 from {path}"
    else:
        torch.manual_seed(0)
        model = create_model("resnet", in_channels=1, num_classes=10, input_size=28, width=16)
        what = "untrained ResNet-8 (no runs/paper checkpoint)"
    try:
        data = load_dataset("fashion-mnist", split="train", root=FASHION_MNIST_ROOT, limit=samples)
        x, y = data.images.float() / data.scale, data.labels
        what += ", Fashion-MNIST training samples"
    except Exception:  # no data set on this machine: random inputs, same shapes
        x, y = torch.rand(samples, 1, 28, 28), torch.randint(0, 10, (samples,))
        what += ", random inputs"
    loader = DataLoader(TensorDataset(x.reshape(-1, 1, 28, 28), y), batch_size=500)
    return model.to(device).eval(), loader, what


def bench_model(args: argparse.Namespace, device: torch.device, sync: bool) -> None:
    model, loader, what = model_and_data(args.samples, device)
    attack = FGSM(eps=0.04)
    start = time.perf_counter()
    layer = resolve_layer(model, example=next(iter(loader))[0][:1].to(device))
    fit = cache_head_features(model, loader, layer, attack)
    cache_s = time.perf_counter() - start
    x_adv = [(attack(model, x.to(device), y.to(device)), x.to(device)) for x, y in loader]

    def evaluation_pass() -> None:
        with torch.no_grad():
            for adv, clean in x_adv:
                model(clean)
                model(adv)

    # clean_weight=0: the selector the published timings measured (beam's default is now 2)
    greedy, beam = create_selector("greedy"), create_selector("beam", width=4, clean_weight=0.0)
    paths: dict[str, int] = {}

    def run(name: str, selector: Callable[..., list[tuple[int, ...]]]) -> Callable[[], None]:
        def go() -> None:
            paths[name] = len(selector(fit, fit_budget=0.01, max_removed=fit.n_features))

        return go

    t = interleaved(
        {"eval": evaluation_pass, "greedy": run("greedy", greedy), "beam": run("beam", beam)},
        args.repeats,
        sync,
    )
    print(f"{what}; {fit.n_samples} fit samples, {fit.n_features} features, "
          f"{fit.weight.shape[0]} classes")  # fmt: skip
    print(f"  cache once (FGSM + features at L):      {cache_s:7.2f} s")
    print(f"  one evaluation pass (clean + adv):      {t['eval']:7.3f} s")
    for name in ("greedy", "beam"):
        steps = paths[name]
        print(f"  {name:6s} search, {steps:2d} steps:            {t[name]:7.3f} s   "
              f"= {t[name] / t['eval']:5.2f} evaluation passes "
              f"({t[name] / max(steps + 1, 1) / t['eval']:.2f} per step)")  # fmt: skip


def bench_large(args: argparse.Namespace, device: torch.device, sync: bool) -> None:
    n, f, k = args.large_samples, 2048, 1000
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(k, f, generator=gen) / f**0.5
    labels = torch.randint(0, k, (n,), generator=gen)
    feats = (torch.randn(n, f, generator=gen) + 3 * weight[labels]).relu()
    h = HeadFeatures(feats, feats, labels, weight, torch.zeros(k)).to(device)
    keep = torch.ones(f, dtype=torch.bool, device=device)
    logits = full_logits(h.clean, h.weight, h.bias, keep)
    t = interleaved(
        {
            "pass": lambda: full_logits(h.clean, h.weight, h.bias, keep).argmax(1),
            "step": lambda: candidate_outcomes(h.clean, h.labels, logits, h.weight, keep),
        },
        args.repeats,
        sync,
    )
    print(f"synthetic head, {n} samples, {f} features, {k} classes:")
    print(f"  one full-logit pass (f W^T + b):        {t['pass']:7.3f} s")
    print(f"  one search step (all {f} candidates):  {t['step']:7.3f} s   "
          f"= {t['step'] / t['pass']:5.2f} passes")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--large", action="store_true", help="also time the 2048x1000 head")
    parser.add_argument("--large-samples", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = device.type == "cuda"
    print(f"device {device}, torch threads {torch.get_num_threads()}, best of {args.repeats}")
    bench_model(args, device, sync)
    if args.large:
        bench_large(args, device, sync)


if __name__ == "__main__":
    main()
