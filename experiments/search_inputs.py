"""What the mask search is fed: attack, budgets, fit-set size, iterative cloaking, layer.

Issue 10, item 2. Same recipes, attack and validation rule as ``experiments/beyond_paper.py``
(whose helpers it reuses); only what the *selector* sees changes. Per family and seed:

- the validation samples (5000, held out of the test split) and the gray-box test samples (the
  other 5000) are always FGSM at eps 0.04 crafted on the unmasked model, the project's
  reference setting, so every variant is judged on the same samples by the same rule (the best
  validation gray-box accuracy whose upper 95% bound of the paired clean drop is within 1 point,
  ``deepcloak.cloak.search.choose_on_validation`` or the same rule for a non-linear head);
- the fit samples vary: FGSM 0.04 on 10k / 20k / 50k training samples; PGD-10 at 0.04; FGSM at
  0.02, 0.04 and 0.08 together; FGSM and PGD at 0.04 together; iterative cloaking (3 rounds,
  each crafting through the mask chosen so far); and masks at other layers (ResNet: every
  position of the last block's output, through the linear pool + ``fc``; VGG: the input of the
  first ``Linear`` of the head and every position of the last block's output, through the
  non-linear head by an exact greedy search written here).

Writes ``docs/search_inputs.md``, ``docs/search_inputs.json`` and
``docs/figures/search_inputs_gain_vs_cost.png`` (rendered by ``search_inputs_report.py``). The
published run did each family in its own process (CPU time shared with other jobs), then
merged them:

    python experiments/search_inputs.py --families resnet --seeds 0
    python experiments/search_inputs.py --families vgg --seeds 0 --docs runs/docs_vgg
    python experiments/search_inputs.py --render-only --merge-from runs/docs_vgg/search_inputs.json

In one go:

    python experiments/search_inputs.py --families resnet,vgg --seeds 0
    python experiments/search_inputs.py --quick  # smoke run (runs/paper/quick), not published
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from beyond_paper import FAMILIES, mask_figures, share, train_or_load, whitebox
from search_inputs_report import BUDGET, EPS, LARGE, N_RANDOM, PGD_STEPS, SPEND, render

from deepcloak import FGSM, PGD, mcnemar_exact
from deepcloak.attacks.native import Attack, eval_mode
from deepcloak.cloak.fit import layer_features
from deepcloak.cloak.head import (
    HeadFeatures,
    cache_head_features,
    cache_head_features_multi,
    concat_head_features,
    full_logits,
    margins,
)
from deepcloak.cloak.iterative import iterative_search
from deepcloak.cloak.search import choose_on_validation, pick_within_budget
from deepcloak.cloak.selectors import create_selector
from deepcloak.cloak.taps import LayerRef, Side, resolve_layer
from deepcloak.data.memory import ImageDataset
from deepcloak.data.sets import FASHION_MNIST_ROOT, load_dataset
from deepcloak.environment import environment
from deepcloak.io import write_json_atomic
from deepcloak.stats import paired_drop

log = logging.getLogger("search_inputs")

BATCH = 500
#: label -> (selector, settings): the two best selectors of beyond_paper.py.
SELECTORS: dict[str, tuple[str, dict[str, Any]]] = {
    "greedy-w2": ("greedy", {"clean_weight": 2.0}),
    "beam4-w2": ("beam", {"width": 4, "clean_weight": 2.0}),
}


@dataclass(frozen=True)
class Head:
    """What follows layer ``ref``: ``logits(f * keep)`` for flat features ``f`` ``(N, F)``.

    ``first`` ``(H, F)`` and ``first_bias`` are the first linear map after the layer (pooling
    folded in); ``tail`` maps its output to logits (``None``: the map gives the logits).
    """

    ref: LayerRef
    shape: tuple[int, ...]
    first: torch.Tensor
    first_bias: torch.Tensor
    tail: nn.Module | None

    def logits(self, f: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        pre = full_logits(f, self.first, self.first_bias, keep)  # (N, H)
        return pre if self.tail is None else self.tail(pre)

    def head_features(self, split: dict[str, torch.Tensor]) -> HeadFeatures:
        """The cached split as library ``HeadFeatures`` (linear heads only)."""
        return HeadFeatures(split["clean"], split["adv"], split["y"], self.first, self.first_bias)


def heads(model: nn.Module, family: str, example: torch.Tensor) -> dict[str, Head]:
    """The layers searched per family: the default one first, then the others."""
    default = resolve_layer(model, example=example)
    fc = model.get_submodule(default.name)
    assert isinstance(fc, nn.Linear)
    out = {"final Linear input": Head(default, (fc.in_features,), fc.weight.detach(),
                                      fc.bias.detach(), None)}  # fmt: skip
    with torch.no_grad():
        fmap = model.forward_features(example)  # type: ignore[operator]
    c, h, w = fmap.shape[1:]
    if family in ("resnet", "wrn"):  # pool + fc is linear in the block's output
        first = fc.weight.detach().repeat_interleave(h * w, dim=1) / (h * w)  # (K, C*h*w)
        name = "layer3" if family == "resnet" else "relu"
        out["last block output"] = Head(LayerRef(name, Side.OUTPUT), (c, h, w), first,
                                        fc.bias.detach(), None)  # fmt: skip
    elif family == "vgg":
        lin = model.classifier[1]  # type: ignore[index]
        tail = model.classifier[2:].eval()  # type: ignore[index]
        w1, b1 = lin.weight.detach(), lin.bias.detach()
        out["first head Linear input"] = Head(LayerRef("classifier.1", Side.INPUT), (c,), w1,
                                              b1, tail)  # fmt: skip
        first = w1.repeat_interleave(h * w, dim=1) / (h * w)  # (H, C*h*w)
        out["last block output"] = Head(LayerRef("features", Side.OUTPUT), (c, h, w), first,
                                        b1, tail)  # fmt: skip
    return out


def craft(model: nn.Module, data: ImageDataset, attack: Attack) -> dict[str, torch.Tensor]:
    """Clean and adversarial inputs of ``data`` (crafted on the unmasked model)."""
    xs, advs, ys = [], [], []
    with eval_mode(model):
        for x, y in DataLoader(data, batch_size=BATCH):
            xs.append(x)
            advs.append(attack(model, x, y).detach())
            ys.append(y)
    return {"x": torch.cat(xs), "x_adv": torch.cat(advs), "y": torch.cat(ys)}


@torch.no_grad()
def features(model: nn.Module, ref: LayerRef, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Flat features at ``ref`` of the clean and adversarial inputs."""
    clean, adv = [], []
    with eval_mode(model):
        for s in range(0, inputs["y"].numel(), BATCH):
            f_clean, f_adv, _ = layer_features(
                model, ref, inputs["x"][s : s + BATCH], inputs["x_adv"][s : s + BATCH]
            )
            clean.append(f_clean.flatten(1))
            adv.append(f_adv.flatten(1))
    return {"clean": torch.cat(clean), "adv": torch.cat(adv), "y": inputs["y"]}


def correct(head: Head, split: dict[str, Any], keep: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-sample clean and gray-box correctness under ``keep``."""
    with torch.no_grad():
        return tuple(margins(head.logits(split[k], keep), split["y"]) > 0 for k in ("clean", "adv"))


def choose(head: Head, path: list[tuple[int, ...]], val: dict[str, Any]) -> tuple[int, list]:
    """The validation rule: the library's for a linear head, the same rule for another head."""
    if head.tail is None:
        index, cands = choose_on_validation(path, head.head_features(val), BUDGET)
        return index, [(c.drop.drop, c.adv_accuracy) for c in cands]
    n = head.first.shape[1]
    base = correct(head, val, torch.ones(n, dtype=torch.bool))[0]
    advs, drops = [], []
    for removed in [(), *path]:
        keep = torch.ones(n, dtype=torch.bool)
        keep[[int(j) for j in removed]] = False
        c, a = correct(head, val, keep)
        advs.append(a.double().mean().item())
        drops.append(paired_drop(base, c))
    index = pick_within_budget(advs, drops, BUDGET)
    return index, [(d.drop, a) for d, a in zip(drops, advs, strict=True)]


def mlp_greedy(head: Head, fit: dict[str, Any], clean_weight: float, max_removed: int) -> list:
    """Greedy removal through a non-linear head, every candidate recomputed exactly.

    The rule of the library's greedy selector: score = adversarial + ``clean_weight`` x clean
    fit samples correct, removals keeping the clean fit accuracy within ``SPEND`` budgets, ties
    to the larger adversarial margin sum then the lower index; stop when the score stops rising.
    """
    n, f = fit["y"].numel(), head.first.shape[1]
    keep = torch.ones(f, dtype=torch.bool)
    pre = {k: full_logits(fit[k], head.first, head.first_bias, keep) for k in ("clean", "adv")}
    base = correct(head, fit, keep)
    min_clean = int(base[0].sum()) - math.floor(SPEND * BUDGET * n + 1e-9)
    best = int(base[1].sum()) + clean_weight * int(base[0].sum())
    order: list[int] = []
    path = []
    while len(order) < max_removed:
        out = {k: _drop_each(head, fit[k], pre[k], keep, fit["y"]) for k in ("clean", "adv")}
        ok_clean, ok_adv, margin = out["clean"][0], out["adv"][0], out["adv"][1]
        score = ok_adv + clean_weight * ok_clean
        allowed = keep & (ok_clean >= min_clean)
        if not bool(allowed.any()):
            break
        cands = sorted(
            (-float(score[j]), -float(margin[j]), j) for j in allowed.nonzero()[:, 0].tolist()
        )
        if -cands[0][0] <= best:
            break
        best, j = -cands[0][0], cands[0][2]
        keep[j] = False
        for k in pre:
            pre[k] = pre[k] - fit[k][:, j : j + 1] * head.first[:, j]
        order.append(j)
        path.append(tuple(order))
    return path


@torch.no_grad()
def _drop_each(
    head: Head, f: torch.Tensor, pre: torch.Tensor, keep: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct count and margin sum ``(F,)`` after removing each kept feature in turn."""
    assert head.tail is not None
    n_f = f.shape[1]
    correct_n = torch.zeros(n_f)
    margin = torch.zeros(n_f, dtype=torch.float64)
    idx = keep.nonzero()[:, 0]
    step = max(1, (1 << 23) // (f.shape[0] * pre.shape[1]))
    for s in range(0, idx.numel(), step):
        js = idx[s : s + step]
        new = pre[:, None, :] - f[:, js, None] * head.first[:, js].T[None]  # (N, c, H)
        z = head.tail(new)  # (N, c, K)
        true = z.gather(2, y[:, None, None].expand(-1, js.numel(), 1)).squeeze(2)
        rival = z.scatter(2, y[:, None, None].expand(-1, js.numel(), 1), float("-inf"))
        m = true - rival.max(2).values  # (N, c)
        correct_n[js] = (m > 0).sum(0).float()
        margin[js] = m.double().sum(0)
    return correct_n, margin


def sliced(h: HeadFeatures, n: int) -> HeadFeatures:
    """The first ``n`` samples of a cache."""
    return HeadFeatures(h.clean[:n], h.adv[:n], h.labels[:n], h.weight, h.bias)


def fit_caches(
    model: nn.Module, head: Head, fit: ImageDataset, sizes: list[int], seed: int
) -> tuple[dict[str, HeadFeatures], dict[str, float]]:
    """The fit caches at the default layer, by variant, and how long each took to build."""
    loader = DataLoader(fit, batch_size=BATCH)
    small = DataLoader(fit.subset(range(sizes[0])), batch_size=BATCH)
    pgd = PGD(eps=EPS, steps=PGD_STEPS, step_size=EPS / 4, seed=seed)
    out, secs = {}, {}
    t = time.perf_counter()
    big = cache_head_features(model, loader, head.ref, FGSM(eps=EPS), max_samples=max(sizes))
    secs["fgsm"] = time.perf_counter() - t
    for n in sizes:
        out[f"FGSM 0.04, {n / 1000:g}k"] = sliced(big, n)
    t = time.perf_counter()
    multi = cache_head_features_multi(
        model, small, head.ref, [FGSM(eps=e) for e in (0.02, 0.04, 0.08)]
    )
    secs["multi"] = time.perf_counter() - t
    out[f"FGSM 0.02+0.04+0.08, {sizes[0] / 1000:g}k"] = multi
    t = time.perf_counter()
    pgd_cache = cache_head_features(model, small, head.ref, pgd)
    secs["pgd"] = time.perf_counter() - t
    out[f"PGD-10 0.04, {sizes[0] / 1000:g}k"] = pgd_cache
    out[f"FGSM+PGD 0.04, {sizes[0] / 1000:g}k"] = concat_head_features(
        [sliced(big, sizes[0]), pgd_cache]
    )
    return out, secs


def path_of(selector: str, fit: HeadFeatures) -> tuple[list[tuple[int, ...]], float]:
    """A selector's path on a cache (the fit budget: ``SPEND`` budgets), and its time."""
    name, settings = SELECTORS[selector]
    t = time.perf_counter()
    path = create_selector(name, **settings)(
        fit, fit_budget=SPEND * BUDGET, max_removed=fit.n_features
    )
    return path, time.perf_counter() - t


def evaluate(
    model: nn.Module, head: Head, keep: torch.Tensor, test: dict[str, Any],
    base: dict[str, torch.Tensor], wb_set: ImageDataset, attacks: dict[str, Attack], seed: int,
) -> dict[str, Any]:  # fmt: skip
    """Test figures of one chosen mask (``beyond_paper.mask_figures`` through ``head``)."""
    return mask_figures(
        keep, lambda k: correct(head, test, k),
        lambda attack: whitebox(model, head.ref, keep.view(head.shape), wb_set, attack),
        base, attacks, seed,
    )  # fmt: skip


class Study:
    """One family and seed: the cached splits, and every variant measured on test."""

    def __init__(self, model: nn.Module, family: str, sets: dict[str, ImageDataset], seed: int):
        self.model, self.sets, self.seed = model, sets, seed
        fgsm = FGSM(eps=EPS)
        self.attacks: dict[str, Attack] = {
            "fgsm": fgsm, "pgd": PGD(eps=EPS, steps=PGD_STEPS, step_size=EPS / 4, seed=seed)
        }  # fmt: skip
        self.heads = heads(model, family, sets["fit"][0][0][None])
        self.default = next(iter(self.heads))
        val_in, test_in = craft(model, sets["val"], fgsm), craft(model, sets["test"], fgsm)
        self.val = {k: features(model, h.ref, val_in) for k, h in self.heads.items()}
        self.test = {k: features(model, h.ref, test_in) for k, h in self.heads.items()}
        with torch.no_grad():
            want = model(val_in["x"][:200])
        for k, h in self.heads.items():  # each head must reproduce the model's logits
            got = h.logits(self.val[k]["clean"][:200], torch.ones(h.first.shape[1], dtype=bool))
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                raise SystemExit(f"the head after {h.ref} does not reproduce the model's logits")
        head = self.heads[self.default]
        all_kept = torch.ones(head.shape, dtype=torch.bool)
        self.wb_base = {
            k: whitebox(model, head.ref, all_kept, sets["whitebox"], a)
            for k, a in self.attacks.items()
        }
        self.variants: dict[str, Any] = {}
        self.reference: str | None = None  # the label the others are compared with, paired
        self.adv_ok: dict[str, torch.Tensor] = {}

    def unmasked(self) -> dict[str, Any]:
        """Test figures of the unmasked model."""
        clean, adv = self.base(self.default)
        return {"clean": share(clean), "graybox_fgsm": share(adv),
                **{f"whitebox_{k}": share(v) for k, v in self.wb_base.items()}}  # fmt: skip

    def base(self, layer: str) -> tuple[torch.Tensor, ...]:
        head = self.heads[layer]
        return correct(head, self.test[layer], torch.ones(head.first.shape[1], dtype=torch.bool))

    def record(
        self, label: str, layer: str, fed: str, selector: str, path: list[tuple[int, ...]],
        seconds: dict[str, float], extra: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Choose on validation, measure on test, and keep the row under ``label``."""
        head = self.heads[layer]
        index, cands = choose(head, path, self.val[layer])
        keep = torch.ones(head.first.shape[1], dtype=torch.bool)
        keep[list([(), *path][index])] = False
        clean, adv = self.base(layer)
        base = {"clean": clean, "adv": adv, **self.wb_base}
        row = evaluate(self.model, head, keep, self.test[layer], base, self.sets["whitebox"],
                       self.attacks, self.seed)  # fmt: skip
        removed = [(), *path][index]
        self.adv_ok[label] = correct(head, self.test[layer], keep)[1]
        if self.reference is not None and label != self.reference:
            ref = self.adv_ok[self.reference]
            row["vs_reference"] = {
                "p_better": mcnemar_exact(self.adv_ok[label], ref).p_greater,
                "p_worse": mcnemar_exact(ref, self.adv_ok[label]).p_greater,
            }
        self.variants[label] = {
            "removed": [int(j) for j in removed],
            "layer": layer, "ref": str(head.ref), "n_features": head.first.shape[1],
            "fed": fed, "selector": selector, "path_length": len(path),
            "validation": [{"drop": d, "adv_accuracy": a} for d, a in cands],
            "chosen_index": index, "test": row, "seconds": seconds, **(extra or {}),
        }  # fmt: skip
        u = self.unmasked()
        log.info(
            "  %-44s removes %3d: gray-box %+.1f, clean %+.1f, wb PGD %+.1f (%.0f s)",
            label, row["n_removed"],
            100 * (row["graybox_fgsm"]["acc"] - u["graybox_fgsm"]["acc"]),
            -100 * row["clean_drop"]["drop"],
            100 * (row["whitebox_pgd"]["acc"] - u["whitebox_pgd"]["acc"]), sum(seconds.values()),
        )  # fmt: skip


def run_inputs(study: Study, sizes: list[int]) -> None:
    """The default layer fed different samples, and iterative cloaking."""
    head = study.heads[study.default]
    caches, cache_secs = fit_caches(study.model, head, study.sets["fit"], sizes, study.seed)
    reference = f"FGSM 0.04, {sizes[0] / 1000:g}k"
    for fed, cache in caches.items():
        for sel in ("beam4-w2", "greedy-w2") if fed == reference else ("beam4-w2",):
            path, secs = path_of(sel, cache)
            if study.reference is None:
                study.reference = f"{fed} / {sel}"
            study.record(f"{fed} / {sel}", study.default, fed, sel, path,
                         {"search": secs}, {"fit_rows": cache.n_samples})  # fmt: skip
    log.info("  caching: %s", {k: round(v) for k, v in cache_secs.items()})
    t = time.perf_counter()
    fit_small = study.sets["fit"].subset(range(sizes[0]))
    it = iterative_search(
        study.model, DataLoader(fit_small, batch_size=BATCH), head.head_features(
            study.val[study.default]), head.ref, FGSM(eps=EPS), rounds=3, selector="beam",
        clean_budget=BUDGET, fit_budget=SPEND * BUDGET, first=caches[reference], width=4,
        clean_weight=2.0,
    )  # fmt: skip
    rounds = [{"start": list(r.start), "proposed": len(r.path), "chosen": list(r.chosen)}
              for r in it.rounds]  # fmt: skip
    study.record(f"iterative x3, {reference} / beam4-w2", study.default,
                 f"iterative x3, {reference}", "beam4-w2", it.path,
                 {"search": time.perf_counter() - t}, {"rounds": rounds})  # fmt: skip


def run_layers(study: Study, n_fit: int, max_removed: int) -> None:
    """Masks at the other layers, searched with greedy-w2 on FGSM 0.04 fit samples.

    Per-position layers (over ``LARGE`` features) cost far more per step on one CPU thread:
    they get ``n_fit // 2`` fit samples and at most ``max_removed // 3`` removals.
    """
    fit_in = craft(study.model, study.sets["fit"].subset(range(n_fit)), FGSM(eps=EPS))
    for layer, head in study.heads.items():
        if layer == study.default:
            continue
        n_f = head.first.shape[1]
        n, cap = (n_fit // 2, max_removed // 3) if n_f > LARGE else (n_fit, max_removed)
        fit = features(study.model, head.ref, {k: v[:n] for k, v in fit_in.items()})
        t = time.perf_counter()
        if head.tail is None:
            path = create_selector("greedy", clean_weight=2.0, rivals=2)(
                head.head_features(fit), fit_budget=SPEND * BUDGET, max_removed=min(cap, n_f)
            )  # rivals only changes the speed: the outcomes are exact
        else:
            path = mlp_greedy(head, fit, 2.0, min(cap, n_f))
        study.record(f"{layer} ({head.ref}), FGSM 0.04, {n / 1000:g}k / greedy-w2", layer,
                     f"FGSM 0.04, {n / 1000:g}k", "greedy-w2", path,
                     {"search": time.perf_counter() - t}, {"max_removed": cap})  # fmt: skip


def make_sets(args: argparse.Namespace, seed: int) -> dict[str, ImageDataset]:
    """Fit (a seeded random order of the training split: sizes are nested prefixes), validation
    (held out of the test split, as beyond_paper's default), test and white-box (of test)."""
    train = load_dataset("fashion-mnist", split="train", root=args.root,
                         limit=3000 if args.quick else None)  # fmt: skip
    test = load_dataset("fashion-mnist", split="test", root=args.root,
                        limit=1000 if args.quick else None)  # fmt: skip
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    fit = train.subset(order[: max(args.fit_sizes)])
    test, val = test.split_off(min(args.val_samples, len(test) // 2), seed=seed + 2)
    test = test.subset(range(min(args.test_samples, len(test))))
    return {"fit": fit, "val": val, "test": test,
            "whitebox": test.subset(range(min(args.whitebox_samples, len(test))))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=FASHION_MNIST_ROOT)
    parser.add_argument("--families", default="resnet,vgg")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--fit-sizes", default="10000,20000,50000")
    parser.add_argument("--val-samples", type=int, default=5000)
    parser.add_argument("--test-samples", type=int, default=5000)
    parser.add_argument("--whitebox-samples", type=int, default=500)
    parser.add_argument("--layer-fit", type=int, default=10000)
    parser.add_argument("--layer-max-removed", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=Path("runs/paper"))
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--merge", action="store_true", help="add to the JSON's runs")
    parser.add_argument("--merge-from", type=Path, nargs="*", help="with --render-only: add "
                        "the runs of these JSON files")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    docs = args.runs / "quick" if args.quick else args.docs
    if args.render_only:
        results = json.loads((docs / "search_inputs.json").read_text())
        for other in args.merge_from or []:  # runs made elsewhere (e.g. in parallel)
            extra = json.loads(other.read_text())
            results["runs"] = {**results["runs"], **extra["runs"]}
            results["seconds"] += extra["seconds"]
        if args.merge_from:
            write_json_atomic(docs / "search_inputs.json", results)
        render(results, docs)
        return
    args.fit_sizes = [int(s) for s in args.fit_sizes.split(",")]
    if args.quick:
        args.fit_sizes, args.layer_fit = [500, 1000], 500
    device, start, runs = torch.device("cpu"), time.perf_counter(), {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        sets = make_sets(args, seed)
        for family in args.families.split(","):
            runs_dir = args.runs / "quick" if args.quick else args.runs
            model, meta = train_or_load(family, args.root, runs_dir, seed, device,
                                        quick=args.quick)  # fmt: skip
            log.info("%s seed %d (test accuracy %.4f):", family, seed, meta["test_accuracy"])
            t0 = time.perf_counter()
            study = Study(model, family, sets, seed)
            run_inputs(study, args.fit_sizes)
            run_layers(study, args.layer_fit, args.layer_max_removed)
            runs[f"{family}/{seed}"] = {
                "family": family, "label": FAMILIES[family], "seed": seed, "recipe": meta,
                "unmasked": study.unmasked(), "reference": study.reference,
                "variants": study.variants,
                "seconds": time.perf_counter() - t0,
            }  # fmt: skip
    results = {
        "schema": "deepcloak-search-inputs/1", "eps": EPS, "budget": BUDGET, "spend": SPEND,
        "pgd_steps": PGD_STEPS, "n_random": N_RANDOM, "quick": args.quick,
        "fit_sizes": args.fit_sizes, "layer_fit": args.layer_fit,
        "layer_max_removed": args.layer_max_removed, "val_samples": len(sets["val"]),
        "test_samples": len(sets["test"]), "whitebox_samples": len(sets["whitebox"]),
        "environment": environment(device), "device": str(device),
        "threads": torch.get_num_threads(), "seconds": time.perf_counter() - start, "runs": runs,
    }  # fmt: skip
    path = docs / "search_inputs.json"
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        results["runs"] = {**old["runs"], **runs}
        results["seconds"] += old["seconds"]
    write_json_atomic(path, results)
    render(results, docs)
    log.info("done in %.1f minutes", results["seconds"] / 60)


if __name__ == "__main__":
    main()
