"""``deepcloak harden`` with no flags, before and after issue 14, on the same test samples.

Before: the paper's score at a fixed 1% (the old default, now ``--select deepcloak --ratio
0.01``). After: the searched mask the command now saves, read from the ``report.json`` that
``experiments/default_mask.py`` had the command write (``runs/default_mask/<family>-s<seed>``).
Both are measured on the test samples the new default reports on (the half of the test split
that validation leaves), so the two rows differ only by the mask:

    python experiments/default_mask.py --families resnet --seeds 0     # the CLI's run first
    python experiments/before_after.py --families resnet --seeds 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from deepcloak.harden import HardenConfig, harden
from deepcloak.models.checkpoint import load_model
from deepcloak.sources import DataSource

EPS = 0.04  # as experiments/default_mask.py


def before(checkpoint: Path, seed: int, device: str) -> dict[str, Any]:
    """The old default's figures (paper's score, 1%) on the new default's test samples."""
    splits = DataSource(name="fashion-mnist", seed=seed).splits()
    model, _ = load_model(str(checkpoint))
    config = HardenConfig(
        ratio=0.01, eps=EPS, ratios=(0.0, 0.01), whitebox_ratios=(0.0, 0.01), n_random=1,
        seed=seed,
    )  # fmt: skip
    result = harden(model.to(device), splits.fit, splits.test, config)
    return result.saved_mask()


def row(label: str, saved: dict[str, Any]) -> str:
    test = saved["test"]
    white = test["whitebox"][0] if test["whitebox"] else None
    return (
        f"| {label} | {saved['n_removed']} of {saved['n_features']} | "
        f"{-100 * test['clean_drop']:+.2f} | {100 * test['graybox_gain']:+.2f} | "
        + (f"{100 * white['gain']:+.2f}" if white else "-")
        + f" | {test['samples']:,} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="resnet")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| model, command | features removed | clean (points) | gray-box FGSM (points) | "
          "white-box FGSM (points) | test samples |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for family in args.families.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            name = f"{family}.safetensors" if seed == 0 else f"seed{seed}/{family}.safetensors"
            checkpoint = args.runs / "paper" / name
            report = args.runs / "default_mask" / f"{family}-s{seed}" / "report.json"
            after = json.loads(report.read_text())["saved_mask"]
            old = before(checkpoint, seed, args.device)
            print(row(f"{family} seed {seed}, before (paper's 1%)", old))
            print(row(f"{family} seed {seed}, after (no flags)", after))


if __name__ == "__main__":
    main()
