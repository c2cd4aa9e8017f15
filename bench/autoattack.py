"""deepcloak's evaluation levels against AutoAttack, sample by sample (issue 17).

For each zoo family on Fashion-MNIST (trained with :mod:`deepcloak.models.recipes` at a seed no
published figure uses, or loaded from ``--models``), it picks two L-inf budgets where accuracy is
mid-range, then runs on the same samples and budgets, on the unmasked model and a cloaked one:

- the peer: AutoAttack's standard version in Croce & Hein's own configuration (APGD-CE and
  APGD-T over 9 target classes, 100 iterations each; FAB-T over 9 targets, 100 iterations;
  Square-5000; each on the samples still standing), built from torchattacks' parts, a public
  implementation. Not ``torchattacks.AutoAttack`` itself: in 3.5.1 it leaves APGD, APGD-T and
  FAB at their 10-iteration defaults, a tenth of the reference's, and is measurably weaker;
- deepcloak's levels: the white-box worst case of the level's attacks, run as the evaluation
  runs them (:meth:`deepcloak.evaluation.crafted.CraftedSets.get_all`).

It writes, per model, variant, budget and level, the accuracies, the samples broken only by the
peer and only by deepcloak, the exact McNemar p-value of "the peer breaks more" and the cost
ratio (attack seconds) into ``--json``, after each measurement, so an interrupted run resumes
where it stopped; ``--render`` (or the end of a run) writes the table into
``docs/evaluation-levels.md`` (through ``bench/levels.py``, which renders the whole document).

The peer is an optional extra, never a runtime dependency. Install it with::

    pip install --no-deps torchattacks==3.5.1     # or: pip install 'deepcloak[peers]'

Run::

    python bench/autoattack.py --device cuda --json runs/autoattack/full.json   # 4 x 2 x 500
    python bench/autoattack.py --quick        # ResNet-8, 1 epoch, 200 samples: a CPU check
    python bench/autoattack.py --render --json runs/autoattack/full.json
    python bench/autoattack.py --render --json runs/autoattack/cpu-resnet.json \
        --and-json runs/autoattack/quick.json      # two runs' rows in one table
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from deepcloak.attacks import APGD, FGSM
from deepcloak.cloak.fit import Cloak, fit
from deepcloak.cloak.mask import masked
from deepcloak.data.sets import load_dataset
from deepcloak.evaluation.config import EvaluationConfig, EvaluationLevel, build_attack
from deepcloak.evaluation.crafted import CraftedSets, Samples, target
from deepcloak.evaluation.passes import worst_case
from deepcloak.evaluation.timings import Timings
from deepcloak.io import write_json_atomic
from deepcloak.models.checkpoint import load_model
from deepcloak.models.recipes import recipe, train_checkpoint
from deepcloak.stats import mcnemar_exact

ROOT = Path(__file__).resolve().parents[1]
DOCS_JSON = ROOT / "docs" / "autoattack.json"
MODELS = ROOT / "runs" / "autoattack"
INSTALL = "pip install --no-deps torchattacks==3.5.1  (or: pip install 'deepcloak[peers]')"
PEER = (
    "AutoAttack standard, reference settings, from torchattacks 3.5.1's parts "
    "(APGD-CE-100, APGD-T-100 x 9 targets, FAB-T-100 x 9 targets, Square-5000)"
)
#: The reference's iterations for APGD, APGD-T and FAB (torchattacks defaults to 10).
PEER_STEPS = 100

#: Budgets tried when picking the two where accuracy is mid-range (under APGD-CE-20).
EPS_CANDIDATES = (0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15)
#: The accuracies the two budgets aim at.
TARGET_ACCURACIES = (0.6, 0.3)
#: The cloaked variant's mask ratio (features removed at layer L).
RATIO = 0.1


def require_peer() -> Any:
    """Import torchattacks, or exit with how to install it."""
    try:
        import torchattacks
    except ImportError as e:
        sys.exit(f"the peer is not installed ({e}); install it with: {INSTALL}")
    return torchattacks


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall time, waiting for the device."""
    _sync(device)
    start = time.perf_counter()
    out = fn(*args)
    _sync(device)
    return out, time.perf_counter() - start


def model_for(family: str, args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """The family's model: loaded from ``--models``, or trained there first."""
    job = recipe(family, "fashion-mnist", seed=args.seed, epochs=args.epochs)
    path = Path(args.models) / f"{family}-seed{job.seed}-e{job.epochs}.safetensors"
    if not path.exists():
        print(f"training {path.name}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        train_checkpoint(job, path, device=args.device)
    model, meta = load_model(path, map_location=args.device)
    return model.eval(), meta


def correct(model: nn.Module, samples: Samples, x: torch.Tensor | None = None) -> torch.Tensor:
    return samples.correct(model, x)


def pick_eps(model: nn.Module, samples: Samples) -> list[float]:
    """Two budgets where APGD-CE-20 leaves accuracy nearest 60 % and 30 %."""
    acc = {}
    for eps in EPS_CANDIDATES:
        x_adv = samples.craft(APGD(eps=eps, steps=20), model)
        acc[eps] = float(correct(model, samples, x_adv).double().mean())
        if acc[eps] < min(TARGET_ACCURACIES) / 2:
            break
    picked: list[float] = []
    for aim in TARGET_ACCURACIES:
        rest = [e for e in acc if e not in picked]
        picked.append(min(rest, key=lambda e: abs(acc[e] - aim)))
    return sorted(picked)


def cloak_for(model: nn.Module, eps: float, args: argparse.Namespace) -> Cloak:
    """The paper's cloak (FGSM at ``eps``) fit on 2,000 training samples."""
    train = load_dataset("fashion-mnist", split="train", limit=2000, seed=args.seed)
    loader = DataLoader(train, batch_size=256)
    return fit(model, loader, attack=FGSM(eps=eps), seed=args.seed)


#: The pseudo-level ``before``: ``standard`` as it was before issue 17 (FGSM, PGD-20, ART's
#: APGD-CE-20, Square-300, each on every sample), for the before/after comparison.
BEFORE = "before"


def level_worst_case(
    model: nn.Module, samples: Samples, level: str, eps: float, on: Any
) -> torch.Tensor:
    """Per-sample correctness under the level's white-box worst case."""
    store = CraftedSets(Timings())
    if level == BEFORE:
        config = EvaluationConfig(
            eps=eps, attacks=("fgsm", "pgd", "art-apgd", "square"), steps=20, attack_params={},
            max_queries=300, batch_size=samples.batch_size,
        )  # fmt: skip
        sets = {
            n: store.get(build_attack(n, config), model, on, samples) for n in config.attack.attacks
        }
    else:
        config = EvaluationConfig.for_level(level, eps=eps, batch_size=samples.batch_size)
        attacks = {name: build_attack(name, config) for name in config.attack.attacks}
        sets = store.get_all(attacks, model, on, samples)
    return worst_case([correct(model, samples, x) for x in sets.values()])


def reference_autoattack(model: nn.Module, eps: float, n_classes: int = 10) -> Any:
    """AutoAttack's standard version with the reference's settings, from torchattacks' parts.

    As in Croce & Hein's ``AutoAttack(version="standard")``: APGD-CE (1 restart), APGD-T and
    FAB-T over the ``n_classes - 1`` other classes, 100 iterations each, and Square with 5,000
    queries, each run only on the samples the earlier ones left standing (``MultiAttack``).
    """
    ta = require_peer()
    common = {"norm": "Linf", "eps": eps, "seed": 0, "n_restarts": 1}
    return ta.MultiAttack([
        ta.APGD(model, loss="ce", steps=PEER_STEPS, **common),
        ta.APGDT(model, steps=PEER_STEPS, n_classes=n_classes, **common),
        ta.FAB(model, steps=PEER_STEPS, multi_targeted=True, n_classes=n_classes, **common),
        ta.Square(model, n_queries=5000, **common),
    ])  # fmt: skip


def peer_correct(model: nn.Module, samples: Samples, eps: float) -> torch.Tensor:
    """Per-sample correctness under the peer: :func:`reference_autoattack`."""
    device = next(model.parameters()).device
    attack = reference_autoattack(model, eps)
    out = []
    for start in range(0, len(samples.y), samples.batch_size):
        xb = samples.x[start : start + samples.batch_size].to(device)
        yb = samples.y[start : start + samples.batch_size].to(device)
        out.append(attack(xb, yb).detach().cpu())
    return correct(model, samples, torch.cat(out))


def _bits(t: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in t.tolist())


def _unbits(s: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in s])


def _row(
    *,
    key: str,
    model: str,
    variant: str,
    eps: float,
    level: str,
    first: int,
    clean: float,
    ours: torch.Tensor,
    peer: torch.Tensor,
    seconds: float,
    peer_seconds: float,
) -> dict[str, Any]:
    """One measurement: both sides' per-sample correctness on test samples ``first``... and
    the paired counts, test and cost drawn from them."""
    test_ = mcnemar_exact(ours, peer)  # ours right, the peer's wrong: a_only
    return {
        "key": key, "model": model, "variant": variant, "eps": eps, "level": level,
        "first": first, "n": len(peer), "clean": clean,
        "peer_accuracy": float(peer.double().mean()), "accuracy": float(ours.double().mean()),
        "only_peer": test_.a_only, "only_deepcloak": test_.b_only, "p_value": test_.p_greater,
        "seconds": seconds, "peer_seconds": peer_seconds, "cost_ratio": seconds / peer_seconds,
        "correct": _bits(ours), "peer_correct": _bits(peer),
    }  # fmt: skip


def join_ranges(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of one model, variant, budget and level measured on consecutive ranges of test
    samples (``--first``: a run extended by a later one) joined into one row over them all.

    The paired test is redone on the joined per-sample bits, not combined from the parts'
    p-values; rows whose ranges overlap or leave a gap (say a GPU run beside a CPU check on
    the same samples) stay apart.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["key"], row["level"]), []).append(row)
    out = []
    for parts in groups.values():
        parts = sorted(parts, key=lambda r: r.get("first", 0))
        chained = all(
            a.get("first", 0) + a["n"] == b.get("first", 0) for a, b in itertools.pairwise(parts)
        )
        if len(parts) == 1 or not chained or any("peer_correct" not in r for r in parts):
            out += parts
            continue
        n = sum(r["n"] for r in parts)
        out.append(_row(
            key=parts[0]["key"], model=parts[0]["model"], variant=parts[0]["variant"],
            eps=parts[0]["eps"], level=parts[0]["level"], first=parts[0].get("first", 0),
            clean=sum(r["clean"] * r["n"] for r in parts) / n,
            ours=torch.cat([_unbits(r["correct"]) for r in parts]),
            peer=torch.cat([_unbits(r["peer_correct"]) for r in parts]),
            seconds=sum(r["seconds"] for r in parts),
            peer_seconds=sum(r["peer_seconds"] for r in parts),
        ))  # fmt: skip
    return out


def measure(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """Every missing measurement, saved to ``--json`` as it is made."""
    device = torch.device(args.device)
    test = load_dataset("fashion-mnist", split="test")
    x, y = test.tensors()
    chosen = slice(args.first, args.first + args.samples)
    samples = Samples(x[chosen], y[chosen], batch_size=args.batch_size)
    picks = data.setdefault("eps", {})
    if args.eps_from is not None:  # a later range of samples keeps the earlier run's budgets
        for name, eps in json.loads(args.eps_from.read_text()).get("eps", {}).items():
            picks.setdefault(name, eps)
    for family in args.families.split(","):
        model, meta = model_for(family, args)
        name = f"{family} (seed {args.seed}, {meta['training']['epochs']} epochs)"
        if name not in picks:
            if args.first:
                sys.exit(f"{name}: no budgets picked; with --first, give --eps-from an earlier run")
            picks[name] = args.eps or pick_eps(model, samples)
            write_json_atomic(args.json, data)
        cloak = cloak_for(model, max(picks[name]), args)
        for variant in args.variants.split(","):
            for eps in args.eps or picks[name]:  # --eps: only these (e.g. to finish a part)
                key = f"{name}|{variant}|{eps:g}"
                cloaked = variant == "cloaked"
                on = target("cloaked", RATIO) if cloaked else target("unmasked")
                ctx: contextlib.AbstractContextManager[nn.Module] = (
                    masked(model, cloak.layer, cloak.mask(RATIO))
                    if cloaked
                    else contextlib.nullcontext(model)
                )
                with ctx as m:
                    peers = data.setdefault("peer", {})
                    if key not in peers:
                        print(f"{key}: AutoAttack", flush=True)
                        peer, seconds = timed(device, peer_correct, m, samples, eps)
                        peers[key] = {"correct": _bits(peer), "seconds": seconds}
                        write_json_atomic(args.json, data)
                    peer = _unbits(peers[key]["correct"])
                    clean = correct(m, samples)
                    for level in args.levels.split(","):
                        rows = data.setdefault("rows", [])
                        if any(r["key"] == key and r["level"] == level for r in rows):
                            continue
                        print(f"{key}: {level}", flush=True)
                        ours, seconds = timed(device, level_worst_case, m, samples, level, eps, on)
                        rows.append(_row(
                            key=key, model=name, variant=variant, eps=eps, level=level,
                            first=args.first, clean=float(clean.double().mean()), ours=ours,
                            peer=peer, seconds=seconds, peer_seconds=peers[key]["seconds"],
                        ))  # fmt: skip
                        write_json_atomic(args.json, data)
                        r = rows[-1]
                        print(
                            f"  peer {r['peer_accuracy']:.1%} ours {r['accuracy']:.1%} "
                            f"only peer {r['only_peer']} only ours {r['only_deepcloak']} "
                            f"p {r['p_value']:.3g} cost {r['cost_ratio']:.2f}",
                            flush=True,
                        )


def _row_order(rows: list[dict[str, Any]]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """Rows by model (first seen first), variant, budget, then level (``before`` first)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    levels = [BEFORE, *(level.value for level in EvaluationLevel)]  # quick, standard, thorough

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        level = levels.index(r["level"]) if r["level"] in levels else len(levels)
        return models.index(r["model"]), r["variant"] != "unmasked", r["eps"], level

    return key


def render(path: Path, *others: Path) -> None:
    """Copy the measurements (without per-sample bits) to the docs and re-render the doc.

    ``others``: more runs' JSON joined into one table (parallel parts of one run, or a CPU check
    beside a GPU run); their settings are listed after ``path``'s unless all are the same.
    """
    runs = [json.loads(p.read_text()) for p in (path, *others)]
    data = runs[0]
    settings = list(dict.fromkeys(r.get("run", {}).get("setting") for r in runs))
    setting = (
        settings[0]
        if len(settings) == 1  # one run, or parallel parts of one run
        else " ".join(f"({i}) {s}" for i, s in enumerate(settings, 1) if s)
    )
    run = {**data.get("run", {}), **({"setting": setting} if setting else {})}
    for d in runs:  # rows measured before the peer's bits were kept in them
        for r in d.get("rows", []):
            if "correct" in r and r["key"] in d.get("peer", {}):
                r.setdefault("peer_correct", d["peer"][r["key"]]["correct"])
    rows = [
        {k: v for k, v in r.items() if k not in ("correct", "peer_correct")}
        for r in join_ranges([r for d in runs for r in d.get("rows", [])])
    ]
    slim = {
        "run": run,
        "rows": sorted(rows, key=_row_order(rows)),  # parallel parts interleave: group per model
        "notes": data.get("notes", []),
    }
    if others or path.resolve() != DOCS_JSON.resolve():
        write_json_atomic(DOCS_JSON, slim)
    sys.path.insert(0, str(ROOT / "bench"))
    import levels  # bench/levels.py renders the whole document, this table included

    times = json.loads(levels.TIMES.read_text())
    levels.DOC.write_text(levels.markdown(times))
    print(f"wrote {levels.DOC}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--families", default="resnet,cnn,vgg,wrn")
    parser.add_argument("--samples", type=int, default=500, help="how many test samples")
    parser.add_argument(
        "--first", type=int, default=0,
        help="index of the first test sample (extend a run: its N, with --eps-from its JSON)",
    )  # fmt: skip
    parser.add_argument(
        "--eps-from", type=Path, default=None, help="take the budgets picked by an earlier run"
    )
    parser.add_argument(
        "--levels", default="standard,thorough", help=f"levels, and {BEFORE!r}: standard before"
    )
    parser.add_argument("--variants", default="unmasked,cloaked")
    parser.add_argument("--eps", default=None, help="comma-separated budgets (default: picked)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--seed", type=int, default=100, help="training seed (100+: unpublished)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 CPU, 500 CUDA")
    parser.add_argument("--models", default=str(MODELS), help="trained models are cached here")
    parser.add_argument("--json", type=Path, default=None, help="measurements (resumable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--setting", default=None, help="what it was measured on, for the docs")
    parser.add_argument("--quick", action="store_true", help="ResNet-8, 1 epoch, 200 samples")
    parser.add_argument("--render", action="store_true", help="only rewrite the docs from --json")
    parser.add_argument(
        "--and-json", type=Path, action="append", default=[],
        help="with --render: more runs' measurements, joined with --json's, rows grouped per model",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.families, args.epochs, args.samples = "resnet", args.epochs or 1, 200
    args.json = args.json or (MODELS / ("quick.json" if args.quick else "full.json"))
    if args.render:
        render(args.json, *args.and_json)
        return
    require_peer()
    if args.eps is not None:
        args.eps = sorted(float(e) for e in args.eps.split(","))
    args.batch_size = args.batch_size or (500 if args.device == "cuda" else 128)
    torch.set_num_threads(args.threads)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(args.json.read_text()) if args.json.exists() else {}
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    )
    data["run"] = {
        "peer": PEER,
        "setting": args.setting
        or (
            f"{args.families} on Fashion-MNIST, test samples {args.first}–"
            f"{args.first + args.samples - 1}, "
            f"{device_name}; cloaked: the paper's cloak at ratio {RATIO}."
        ),
    }
    data.setdefault("notes", [])
    measure(args, data)
    write_json_atomic(args.json, data)
    render(args.json)


if __name__ == "__main__":
    main()
