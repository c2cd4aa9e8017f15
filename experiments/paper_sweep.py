"""Reproduce the DeepCloak paper's sweep on Fashion-MNIST for the paper's four model families.

For each family (small CNN, VGG, ResNet, Wide ResNet): train with a fixed seed (or reuse the
checkpoint from an earlier run), fit DeepCloak with FGSM at eps = 0.04 (about the paper's 10/255)
on training data, then on held-out test data report, for ratios {0, 1, 2, 5, 10, 20, 30, 50}%:

- clean accuracy;
- gray-box FGSM accuracy (samples crafted on the unmasked model: the paper's threat model), with
  a 95% Wilson interval and a one-sided exact McNemar test against the unmasked model;
- gray-box FGSM accuracy with random masks of the same size (mean of 5);
- white-box FGSM and PGD accuracy (attacks run through the cloaked model).

Writes ``docs/results.md``, ``docs/results.json`` and ``docs/figures/paper_sweep_<family>.png``.
Every number in ``docs/results.md`` comes from this script:

    python experiments/paper_sweep.py            # about 30-45 minutes on 2 CPU cores
    python experiments/paper_sweep.py --quick    # a 2-minute smoke run on subsets (not published)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from deepcloak import FGSM, PGD, fit, mcnemar_exact, wilson_interval
from deepcloak.cloak.mask import keep_mask, removal_count
from deepcloak.data.sets import FASHION_MNIST_ROOT, ImageDataset, load_dataset
from deepcloak.evaluation.sweep import cache_features, masked_predictions, whitebox_accuracy
from deepcloak.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from deepcloak.models.checkpoint import load_model
from deepcloak.models.recipes import recipe, train_checkpoint
from deepcloak.report.sweep import environment

log = logging.getLogger("paper_sweep")

RATIOS = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20, 0.30, 0.50)
EPS = 0.04  # about the paper's 10/255 in the [0, 1] scale
PGD_STEPS = 10
N_RANDOM = 5


#: The paper's four families; each trains with the recipe ``deepcloak train`` uses
#: (``deepcloak.models.recipes.RECIPES``), so these checkpoints are what that command makes.
FAMILIES: dict[str, str] = {
    "cnn": "small CNN",
    "vgg": "VGG-style (BN)",
    "resnet": "ResNet-8",
    "wrn": "WRN-10-2",
}


def train_or_load(
    name: str, root: Path, runs: Path, seed: int, *, quick: bool
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the family's recipe (seeded), or reuse the checkpoint an identical run saved."""
    job = recipe(
        name, "fashion-mnist", root=root, seed=seed,
        epochs=1 if quick else None, limit=3000 if quick else None,
    )  # fmt: skip
    path = runs / f"{name}.safetensors"
    if path.exists():
        model, meta = load_model(str(path))
        if meta.get("training") == job.settings():
            log.info("%s: reusing %s (test accuracy %.4f)", name, path, meta["test_accuracy"])
            return model, meta
    model, result, meta = train_checkpoint(job, path)
    log.info(
        "%s: trained in %.0f s, test accuracy %.4f", name, result.seconds, result.test_accuracy
    )
    return model, meta


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``predictions`` equal to ``labels``."""
    return (predictions == labels).double().mean().item()


def evaluate_family(
    model: torch.nn.Module,
    fit_set: ImageDataset,
    test_set: ImageDataset,
    whitebox_set: ImageDataset,
    seed: int,
) -> dict[str, Any]:
    """Fit DeepCloak and measure every column of the results table."""
    fgsm = FGSM(eps=EPS)
    pgd = PGD(eps=EPS, steps=PGD_STEPS, step_size=EPS / 4, seed=seed)
    start = time.perf_counter()
    cloak = fit(model, DataLoader(fit_set, batch_size=256), attack=fgsm, seed=seed)
    cache = cache_features(model, DataLoader(test_set, batch_size=256), cloak.layer, fgsm)
    labels = cache.labels
    gen = torch.Generator().manual_seed(seed)
    random_rankings = [torch.randperm(cloak.n_features, generator=gen) for _ in range(N_RANDOM)]
    wb_loader = DataLoader(whitebox_set, batch_size=256)
    wb_fgsm = whitebox_accuracy(model, cloak, wb_loader, fgsm, RATIOS)
    wb_pgd = whitebox_accuracy(model, cloak, wb_loader, pgd, RATIOS)
    rows, unmasked_adv, shape = [], None, cloak.feature_shape
    for ratio in RATIOS:
        clean, adv = masked_predictions(
            model, cache, keep_mask(cloak.ranking, ratio, cloak.feature_shape)
        )
        clean_ok, adv_ok = clean == labels, adv == labels
        unmasked_adv = adv_ok if unmasked_adv is None else unmasked_adv
        random_adv = [
            accuracy(masked_predictions(model, cache, keep_mask(r, ratio, shape))[1], labels)
            for r in random_rankings
        ]
        test = mcnemar_exact(adv_ok, unmasked_adv)
        n = labels.numel()
        rows.append({
            "ratio": ratio,
            "n_removed": removal_count(ratio, cloak.n_features),
            "clean": clean_ok.double().mean().item(),
            "graybox_fgsm": adv_ok.double().mean().item(),
            "graybox_fgsm_ci95": wilson_interval(int(adv_ok.sum()), n),
            "graybox_vs_unmasked_p": test.p_greater,
            "random_graybox_fgsm": sum(random_adv) / len(random_adv),
            "whitebox_fgsm": wb_fgsm[ratio],
            "whitebox_pgd": wb_pgd[ratio],
        })  # fmt: skip
    return {
        "layer": str(cloak.layer),
        "n_features": cloak.n_features,
        "fit_samples": cloak.n_samples,
        "test_samples": labels.numel(),
        "whitebox_samples": len(whitebox_set),
        "attacks": {"fit_and_graybox": fgsm.spec(), "whitebox": [fgsm.spec(), pgd.spec()]},
        "rows": rows,
        "seconds": time.perf_counter() - start,
        "cloak": cloak.metadata(),
    }


def verdict(result: dict[str, Any]) -> str:
    """A plain sentence on the paper's claim (about +10 points of gray-box accuracy at 1%)."""
    rows = {round(r["ratio"], 2): r for r in result["rows"]}
    base, one = rows[0.0], rows[0.01]
    gain = 100 * (one["graybox_fgsm"] - base["graybox_fgsm"])
    rgain = 100 * (one["random_graybox_fgsm"] - base["graybox_fgsm"])
    wgain = 100 * (one["whitebox_fgsm"] - base["whitebox_fgsm"])
    budget = [r for r in result["rows"] if base["clean"] - r["clean"] <= 0.01]
    best = max(budget, key=lambda r: r["graybox_fgsm"])
    best_gain = 100 * (best["graybox_fgsm"] - base["graybox_fgsm"])
    significant = one["graybox_vs_unmasked_p"] < 0.05
    if gain >= 5 and significant:
        claim = "the paper's claim holds (gain of 5 points or more, significant)"
    elif gain > 0 and significant:
        claim = "the claim holds only weakly (a significant gain, but under 5 points)"
    else:
        claim = "the paper's claim does not hold here (no significant gain at 1%)"
    return (
        f"At 1% ({one['n_removed']} of {result['n_features']} features), gray-box FGSM accuracy "
        f"goes from {100 * base['graybox_fgsm']:.1f}% to {100 * one['graybox_fgsm']:.1f}% "
        f"({gain:+.1f} points, one-sided McNemar p = {one['graybox_vs_unmasked_p']:.2g}); a random "
        f"mask of the same size gives {rgain:+.1f}. The best ratio within a 1-point clean-accuracy "
        f"budget, picked on these test samples (so optimistic), gains {best_gain:+.1f} points at "
        f"{100 * best['ratio']:.0f}%. Under white-box FGSM the 1% mask "
        f"gives {wgain:+.1f} points. Verdict: {claim}."
    )


def summary(results: dict[str, Any]) -> list[str]:
    """The summary table and the conclusions that follow from it, as Markdown lines."""
    lines = [
        "## Summary",
        "",
        "| family | clean % | gray-box FGSM %, unmasked | at 1% | random mask at 1% | "
        "best gray-box gain (clean cost) | white-box PGD %, unmasked → 1% |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    best_pgd = (-1.0, "", 0.0)  # (gain over unmasked, family, ratio)
    gains_at_1 = []  # (family, gain, random-mask gain), in points
    for res in results["families"].values():
        rows = {round(r["ratio"], 2): r for r in res["rows"]}
        base, one = rows[0.0], rows[0.01]
        best = max(res["rows"], key=lambda r: r["graybox_fgsm"] - base["graybox_fgsm"])
        gains_at_1.append((
            res["label"],
            100 * (one["graybox_fgsm"] - base["graybox_fgsm"]),
            100 * (one["random_graybox_fgsm"] - base["graybox_fgsm"]),
        ))  # fmt: skip
        for r in res["rows"]:
            best_pgd = max(
                best_pgd, (r["whitebox_pgd"] - base["whitebox_pgd"], res["label"], r["ratio"])
            )
        lines.append(
            f"| {res['label']} | {100 * base['clean']:.1f} | {100 * base['graybox_fgsm']:.1f} | "
            f"{100 * one['graybox_fgsm']:.1f} | {100 * one['random_graybox_fgsm']:.1f} | "
            f"{100 * (best['graybox_fgsm'] - base['graybox_fgsm']):+.1f} at "
            f"{100 * best['ratio']:.0f}% ({100 * (best['clean'] - base['clean']):+.1f} clean) | "
            f"{100 * base['whitebox_pgd']:.1f} → {100 * one['whitebox_pgd']:.1f} |"
        )
    lines += [
        "",
        "What this shows (each sentence follows from the tables below):",
        "",
        "- **Gray-box (the paper's setting).** At 1%, the DeepCloak mask changes gray-box FGSM "
        "accuracy by "
        + ", ".join(f"{g:+.1f} ({label})" for label, g, _ in gains_at_1)
        + " points; a random mask of the same size by "
        + ", ".join(f"{rg:+.1f}" for _, _, rg in gains_at_1)
        + ". The paper reports about +10 points at 1% on ResNet: "
        + (
            "reproduced here."
            if any(g >= 5 for label, g, _ in gains_at_1 if label.startswith("ResNet"))
            else "not reproduced at that size here; larger masks gain more, at a clean cost "
            "(the best-gain column)."
        ),
        f"- **White-box.** Against PGD run through the cloaked model, the largest gain over the "
        f"unmasked model at any ratio is {100 * best_pgd[0]:+.1f} points ({best_pgd[1]} at "
        f"{100 * best_pgd[2]:.0f}%). "
        + (
            "The masks give no meaningful robustness against an attacker who knows them."
            if best_pgd[0] < 0.05
            else "Some white-box robustness remains; check its clean cost in the tables."
        )
        + " White-box FGSM gains that track the gray-box ones come from a single gradient "
        "step, which PGD removes.",
        "",
    ]
    return lines


def markdown(results: dict[str, Any], quick: bool) -> str:
    """``docs/results.md`` from the results."""
    lines = [
        "# Reproducing the DeepCloak sweep on Fashion-MNIST",
        "",
        "Generated by `python experiments/paper_sweep.py`"
        + (" **--quick (smoke run on subsets: not the published numbers)**" if quick else "")
        + f" on {results['environment']['platform']}, torch {results['environment']['torch']}, "
        f"device {results['environment']['device']}, in {results['seconds'] / 60:.1f} minutes.",
        "",
        f"Setting: FGSM at eps = {EPS} (about the paper's 10/255) crafts the samples that score "
        f"the features (on {results['fit_samples']} training samples) and the gray-box test "
        f"samples; layer L is the input of each model's final `nn.Linear`. White-box attacks "
        f"(FGSM, and PGD with {PGD_STEPS} steps of eps/4 and a random start) run through the "
        f"cloaked model on {results['whitebox_samples']} test samples. Accuracy counts all test "
        "samples. Random mask: mean of 5 random masks removing as many features.",
        "",
        "Threat models: **gray-box** = samples crafted on the unmasked model, the attacker does "
        "not know the mask (the paper's setting); **white-box** = the attack knows the mask.",
        "",
    ]
    lines += summary(results)
    for name, res in results["families"].items():
        lines += [
            f"## {res['label']} — test accuracy {100 * res['test_accuracy']:.2f}% "
            f"(trained in {res['recipe']['train_seconds']:.0f} s, "
            f"{res['recipe']['training']['epochs']} epochs)",
            "",
            f"{res['layer']}, {res['n_features']} features. " + verdict(res),
            "",
            "| ratio | removed | clean % | gray-box FGSM % (95% CI) | p vs unmasked | "
            "random mask, gray-box FGSM % | white-box FGSM % | white-box PGD % |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res["rows"]:
            lo, hi = r["graybox_fgsm_ci95"]
            lines.append(
                f"| {100 * r['ratio']:.0f}% | {r['n_removed']} | {100 * r['clean']:.1f} | "
                f"{100 * r['graybox_fgsm']:.1f} ({100 * lo:.1f}–{100 * hi:.1f}) | "
                f"{r['graybox_vs_unmasked_p']:.2g} | {100 * r['random_graybox_fgsm']:.1f} | "
                f"{100 * r['whitebox_fgsm']:.1f} | {100 * r['whitebox_pgd']:.1f} |"
            )
        lines += ["", f"![{name}](figures/paper_sweep_{name}.png)", ""]
    return "\n".join(lines)


def plot(name: str, res: dict[str, Any], path: Path) -> None:
    """Accuracy vs ratio for one family."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [100 * r["ratio"] for r in res["rows"]]
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=110)
    ax.plot(x, [r["clean"] for r in res["rows"]], "o-", color="black", label="clean")
    gray = [r["graybox_fgsm"] for r in res["rows"]]
    lo = [r["graybox_fgsm_ci95"][0] for r in res["rows"]]
    hi = [r["graybox_fgsm_ci95"][1] for r in res["rows"]]
    ax.plot(x, gray, "o-", color="C3", label="gray-box FGSM (deepcloak mask)")
    ax.fill_between(x, lo, hi, color="C3", alpha=0.15, lw=0)
    ax.plot(x, [r["random_graybox_fgsm"] for r in res["rows"]], "s--", color="C0",
            label="gray-box FGSM, random mask")  # fmt: skip
    ax.plot(x, [r["whitebox_fgsm"] for r in res["rows"]], "^-", color="C2", label="white-box FGSM")
    ax.plot(x, [r["whitebox_pgd"] for r in res["rows"]], "v-", color="C4", label="white-box PGD")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.set_xlabel("features removed (%)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{res['label']} on Fashion-MNIST, eps = {EPS}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def render(results: dict[str, Any], docs: Path, *, quick: bool) -> None:
    """Write ``results.md`` and the plots from the results."""
    for name, res in results["families"].items():
        plot(name, res, docs / "figures" / f"paper_sweep_{name}.png")
    write_text_atomic(docs / "results.md", markdown(results, quick))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=FASHION_MNIST_ROOT)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--fit-samples", type=int, default=10000)
    parser.add_argument("--whitebox-samples", type=int, default=2000)
    parser.add_argument("--runs", type=Path, default=Path("runs/paper"), help="checkpoints")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="subsets and 1 epoch: a smoke run")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite results.md and plots from results.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.render_only:
        results = json.loads((args.docs / "results.json").read_text())
        render(results, args.docs, quick=False)
        return
    start = time.perf_counter()
    limit = 3000 if args.quick else None
    train_set = load_dataset("fashion-mnist", split="train", root=args.root, limit=limit)
    test_set = load_dataset("fashion-mnist", split="test", root=args.root,
                            limit=1000 if args.quick else None)  # fmt: skip
    _, fit_set = train_set.split_off(min(args.fit_samples, len(train_set) - 1), seed=args.seed)
    n_wb = min(args.whitebox_samples, 300 if args.quick else len(test_set))
    whitebox_set = test_set.subset(range(n_wb))
    runs = args.runs / "quick" if args.quick else args.runs
    families: dict[str, Any] = {}
    for name in args.families.split(","):
        model, meta = train_or_load(name, args.root, runs, args.seed, quick=args.quick)
        log.info("%s: evaluating", name)
        res = evaluate_family(model, fit_set, test_set, whitebox_set, args.seed)
        res.update(label=FAMILIES[name], test_accuracy=meta["test_accuracy"], recipe=meta)
        families[name] = res
        log.info("%s: %s", name, verdict(res))
    docs = args.runs / "quick" if args.quick else args.docs  # a smoke run is never published
    results = {
        "schema": "deepcloak-paper-sweep/1",
        "eps": EPS, "ratios": list(RATIOS), "pgd_steps": PGD_STEPS, "n_random": N_RANDOM,
        "seed": args.seed, "fit_samples": len(fit_set), "whitebox_samples": n_wb,
        "families": families, "environment": environment("cpu"),
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    write_json_atomic(docs / "results.json", results)
    render(results, docs, quick=args.quick)
    log.info("wrote %s in %.1f minutes", docs / "results.md", results["seconds"] / 60)


if __name__ == "__main__":
    main()
