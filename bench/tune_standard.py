"""Tuning of ``standard``'s attacks against AutoAttack's last lean (issue 17).

Against the reference AutoAttack (``bench/autoattack.py``), ``standard`` was never significantly
weaker per row, but pooled over the rows AutoAttack alone broke 13 samples and deepcloak alone 5
(a lean of 0.17 points), and those samples looked like random-start luck at the margin. This
script decides where one more share of the budget goes, on models and samples the published
comparison does not use: the zoo's four families trained at seed **101** (the published table
uses seed 100), the **last** 300 Fashion-MNIST test samples (it uses the first), each family at
two mid-range budgets (picked as ``bench/autoattack.py`` picks them), unmasked and cloaked.

Each candidate is ``standard``'s chain as it was before this tuning (FGSM on every sample, then
APGD-CE-100, APGD-T-100 over the top-3 targets and Square-300, each on the samples still
standing) with one thing changed, the last with two. Per candidate it counts the samples that
some other candidate breaks but it leaves standing (*missed*: the weakness that more spend would
close) and its attack seconds; a candidate with fewer missed at a cost within a third of
AutoAttack's is the better ``standard``. The 2026-12-05 run chose the top-5 targets (6 missed
against 10, at 1.30x the seconds; the top-9 also missed 6, at 1.93x). No peer is needed: the
union of the candidates is the reference, so the choice is not fit to AutoAttack's own luck.

Run (two processes on a 2-core CPU, then one render)::

    python bench/tune_standard.py --families resnet,vgg --json runs/autoattack/tune-a.json
    python bench/tune_standard.py --families cnn,wrn --json runs/autoattack/tune-b.json
    python bench/tune_standard.py --render --json runs/autoattack/tune-a.json \
        --and-json runs/autoattack/tune-b.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import autoattack as aa

from deepcloak.cloak.mask import masked
from deepcloak.data.sets import load_dataset
from deepcloak.evaluation.config import EvaluationConfig, build_attack
from deepcloak.evaluation.crafted import CraftedSets, Samples, Target, target
from deepcloak.evaluation.levels import STANDARD
from deepcloak.evaluation.passes import worst_case
from deepcloak.evaluation.timings import Timings
from deepcloak.io import write_json_atomic

DOCS_JSON = aa.ROOT / "docs" / "tune-standard.json"


#: ``standard``'s APGD settings with one or two things changed; ``now`` is the level before tuning.
def _apgd(restarts: int = 1, targets: int = 3, t_restarts: int = 1) -> dict[str, dict[str, int]]:
    ce = {"steps": 100, **({"restarts": restarts} if restarts > 1 else {})}
    t = {"steps": 100, "targets": targets, **({"restarts": t_restarts} if t_restarts > 1 else {})}
    return {"apgd": ce, "apgd-t": t}


CANDIDATES: dict[str, dict[str, dict[str, int]]] = {
    "now": _apgd(),
    "APGD-CE 2 restarts": _apgd(restarts=2),
    "APGD-T 5 targets": _apgd(targets=5),
    "APGD-T 9 targets": _apgd(targets=9),
    "APGD-T 2 restarts": _apgd(t_restarts=2),
    "APGD-CE 2 restarts, APGD-T 9 targets": _apgd(restarts=2, targets=9),
}


def candidate_config(name: str, eps: float, batch_size: int) -> EvaluationConfig:
    """``standard`` with the candidate's APGD settings (the attack part given whole)."""
    return EvaluationConfig.for_level(
        "standard", eps=eps, batch_size=batch_size, attacks=STANDARD["attacks"],
        steps=STANDARD["steps"], restarts=STANDARD["restarts"],
        max_queries=STANDARD["max_queries"], attack_params=CANDIDATES[name],
    )  # fmt: skip


def run_candidate(
    store: CraftedSets,
    config: EvaluationConfig,
    model: nn.Module,
    on: Target,
    samples: Samples,
    stage_seconds: dict[tuple[str, ...], float],
) -> tuple[torch.Tensor, float]:
    """Per-sample correctness under the candidate's worst case, and its attack seconds.

    Chains sharing a prefix share its crafted sets (the store keys a set by the attacks before
    it), so each stage's seconds are measured once, when first crafted, and charged to every
    candidate whose chain holds it.
    """
    names = [n for n in config.attack.attacks if n != "fgsm"]
    chain = tuple(build_attack(n, config) for n in names)
    fgsm = build_attack("fgsm", config)
    spec = ("fgsm",)
    if spec not in stage_seconds:
        _, stage_seconds[spec] = aa.timed(model_device(model), store.get, fgsm, model, on, samples)
    cost = stage_seconds[spec]
    for k in range(1, len(chain) + 1):
        prefix = tuple(json.dumps(a.spec(), sort_keys=True) for a in chain[:k])
        if prefix not in stage_seconds:
            _, stage_seconds[prefix] = aa.timed(
                model_device(model), store.get_standing, chain[:k], model, on, samples
            )
        cost += stage_seconds[prefix]
    sets = [store.get(fgsm, model, on, samples), *store.get_standing(chain, model, on, samples)]
    return worst_case([samples.correct(model, x) for x in sets]), cost


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def measure(args: argparse.Namespace, data: dict[str, Any]) -> None:
    """Every missing row (all candidates of one model, variant and budget), saved as made."""
    x, y = load_dataset("fashion-mnist", split="test").tensors()
    samples = Samples(x[-args.samples :], y[-args.samples :], batch_size=args.batch_size)
    for family in args.families.split(","):
        model, meta = aa.model_for(family, args)
        name = f"{family} (seed {args.seed}, {meta['training']['epochs']} epochs)"
        picks = data.setdefault("eps", {})
        if name not in picks:
            print(f"{name}: picking budgets", flush=True)
            picks[name] = aa.pick_eps(model, samples)
            write_json_atomic(args.json, data)
        cloak = aa.cloak_for(model, max(picks[name]), args)
        for variant in ("unmasked", "cloaked"):
            cloaked = variant == "cloaked"
            on = target("cloaked", aa.RATIO) if cloaked else target("unmasked")
            for eps in picks[name]:
                key = f"{name}|{variant}|{eps:g}"
                rows = data.setdefault("rows", [])
                if any(r["key"] == key for r in rows):
                    continue
                ctx: contextlib.AbstractContextManager[nn.Module] = (
                    masked(model, cloak.layer, cloak.mask(aa.RATIO))
                    if cloaked
                    else contextlib.nullcontext(model)
                )
                with ctx as m:
                    store, stage_seconds = CraftedSets(Timings()), {}
                    row: dict[str, Any] = {
                        "key": key, "model": name, "variant": variant, "eps": eps,
                        "n": args.samples, "candidates": {},
                    }  # fmt: skip
                    for cand in CANDIDATES:
                        config = candidate_config(cand, eps, args.batch_size)
                        ok, seconds = run_candidate(store, config, m, on, samples, stage_seconds)
                        row["candidates"][cand] = {"correct": aa._bits(ok), "seconds": seconds}
                        print(f"{key}: {cand}: {ok.double().mean():.1%} in {seconds:.0f} s",
                              flush=True)  # fmt: skip
                rows.append(row)
                write_json_atomic(args.json, data)


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per candidate: missed samples (broken by another candidate, standing here), summed over
    the rows, the rows where it misses any, and its seconds relative to ``now``'s."""
    out = []
    for cand in CANDIDATES:
        missed = rows_missing = 0
        ratios = []
        for r in rows:
            bits = {c: aa._unbits(v["correct"]) for c, v in r["candidates"].items()}
            union = torch.stack(list(bits.values())).all(dim=0)  # correct under every candidate
            m = int((bits[cand] & ~union).sum())
            missed, rows_missing = missed + m, rows_missing + (m > 0)
            ratios.append(r["candidates"][cand]["seconds"] / r["candidates"]["now"]["seconds"])
        out.append({
            "candidate": cand, "missed": missed, "rows_missing": rows_missing, "rows": len(rows),
            "cost_vs_now": sum(ratios) / len(ratios), "cost_range": [min(ratios), max(ratios)],
            "settings": CANDIDATES[cand],
        })  # fmt: skip
    return out


def render(path: Path, *others: Path) -> dict[str, Any]:
    """The rows of the runs joined, their summary, written (without bits) to the docs' JSON."""
    runs = [json.loads(p.read_text()) for p in (path, *others)]
    rows = [r for d in runs for r in d.get("rows", [])]
    summ = summary(rows)
    slim_rows = [
        {**{k: v for k, v in r.items() if k != "candidates"},
         "accuracy": {c: aa._unbits(v["correct"]).double().mean().item()
                      for c, v in r["candidates"].items()},
         "seconds": {c: v["seconds"] for c, v in r["candidates"].items()}}
        for r in rows
    ]  # fmt: skip
    out = {"setting": runs[0].get("setting", ""), "summary": summ, "rows": slim_rows}
    write_json_atomic(DOCS_JSON, out)
    import levels  # bench/levels.py renders the whole document, this table included

    print("\n".join(levels.tuning_section(out)))
    levels.DOC.write_text(levels.markdown(json.loads(levels.TIMES.read_text())))
    print(f"wrote {DOCS_JSON} and {levels.DOC}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="resnet,cnn,vgg,wrn")
    parser.add_argument("--samples", type=int, default=300, help="the last N test samples")
    parser.add_argument("--seed", type=int, default=101, help="training seed (not 100: published)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--models", default=str(aa.MODELS), help="trained models are cached here")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", type=Path, default=aa.MODELS / "tune.json")
    parser.add_argument("--render", action="store_true", help="only summarize --json")
    parser.add_argument("--and-json", type=Path, action="append", default=[])
    args = parser.parse_args(argv)
    if args.render:
        render(args.json, *args.and_json)
        return
    torch.set_num_threads(args.threads)
    data = json.loads(args.json.read_text()) if args.json.exists() else {}
    data["setting"] = (
        f"zoo families trained at seed {args.seed}, Fashion-MNIST, the last {args.samples} test "
        f"samples, CPU {args.threads} thread(s) per process; cloaked: the paper's cloak at "
        f"ratio {aa.RATIO}"
    )
    measure(args, data)
    render(args.json)


if __name__ == "__main__":
    main()
