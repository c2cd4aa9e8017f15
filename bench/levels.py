"""Wall time of ``deepcloak evaluate`` at each level, for a zoo ResNet-8 on Fashion-MNIST.

Runs the evaluation the command runs (:func:`deepcloak.evaluation.run.evaluate_sources`: the
validation split held out of the training data, the cloak fit on the rest) once per level, with
the thread count fixed and printed, and writes ``docs/evaluation-levels.md``: what each level
runs (from :data:`deepcloak.evaluation.config.LEVELS`, so the table cannot drift from the code)
and the measured wall time, with the time of each stage (first to last progress report).

Run::

    python bench/levels.py --model runs/resnet-fashion-mnist.safetensors --threads 2
    python bench/levels.py --model ... --levels thorough --max-samples 100   # a modest count

Without ``--model`` it trains the zoo ResNet-8 recipe first (``deepcloak train --model resnet
--data fashion-mnist``; about 4 minutes on 2 idle cores). Levels that are not run keep the
time already written in the document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from deepcloak.environment import environment
from deepcloak.evaluation.config import EvaluationConfig, EvaluationLevel, build_attack
from deepcloak.evaluation.levels import LEVELS
from deepcloak.evaluation.probes import curve_attack
from deepcloak.evaluation.run import evaluate_sources
from deepcloak.sources import DataSource, ModelSource

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "evaluation-levels.md"
TIMES = ROOT / "docs" / "evaluation-levels.json"
PEER = ROOT / "docs" / "autoattack.json"  # bench/autoattack.py: the levels against AutoAttack
TUNING = ROOT / "docs" / "tune-standard.json"  # bench/tune_standard.py: standard's last tuning
DEFAULT_MODEL = ROOT / "runs" / "resnet-fashion-mnist.safetensors"


class StageClock:
    """A progress callback recording when each task was first and last reported."""

    def __init__(self) -> None:
        self.spans: dict[str, list[float]] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        now = time.perf_counter()
        self.spans.setdefault(task, [now, now])[1] = now

    def seconds(self) -> dict[str, float]:
        return {task: round(end - start, 1) for task, (start, end) in self.spans.items()}


def _model(path: Path | None) -> Path:
    if path is not None:
        return path
    if not DEFAULT_MODEL.exists():
        from deepcloak.models.recipes import recipe, train_checkpoint

        print(f"training {DEFAULT_MODEL} (the zoo ResNet-8 recipe)", flush=True)
        train_checkpoint(recipe("resnet", "fashion-mnist"), DEFAULT_MODEL)
    return DEFAULT_MODEL


def run_level(
    level: EvaluationLevel,
    model: Path,
    max_samples: int | None,
    max_fit: int | None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate ``model`` at ``level`` on ``device``; ``max_samples``/``max_fit`` replace caps."""
    overrides: dict[str, Any] = {} if max_samples is None else {"max_samples": max_samples}
    if max_fit is not None:
        overrides["max_fit_samples"] = max_fit
    config = EvaluationConfig.for_level(level, **overrides)
    level_config = EvaluationConfig.for_level(level)
    clock = StageClock()
    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    report = evaluate_sources(
        ModelSource(spec=str(model), device=device),
        DataSource(name="fashion-mnist", val_samples=500, seed=0),
        config,
        progress=clock,
    )
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    data = report.run["data"]
    return {
        "level": level.value,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "test_samples": data["test"]["n_used"],
        "test_available": data["test"]["n_available"],
        "validation_samples": data["validation"]["n_used"],
        "fit_samples": config.samples.max_fit_samples or data["train"]["n_available"],
        "level_samples": min(
            level_config.samples.max_samples or 10**9, data["test"]["n_available"]
        ),
        "level_fit_samples": level_config.samples.max_fit_samples or data["train"]["n_available"],
        "sample_cap_overridden": max_samples is not None or max_fit is not None,
        "stages": clock.seconds(),
        "threads": torch.get_num_threads(),
        "cloaked_whitebox": report.result("cloaked", "white-box").accuracy,
        "device": environment(torch.device(device))["device_name"],
    }


def _grid(values: Any) -> str:
    return ", ".join(f"{v:g}" for v in values)


def level_rows() -> list[list[str]]:
    """What each level runs, one row per setting (from :data:`LEVELS`)."""
    levels = list(EvaluationLevel)
    cfgs = {lv: EvaluationConfig.for_level(lv) for lv in levels}

    def row(name: str, fn: Any) -> list[str]:
        return [name, *(fn(cfgs[lv]) for lv in levels)]

    def cap(value: int | None) -> str:
        return "all" if value is None else f"{value:,}"

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    def spec(c: EvaluationConfig, name: str, key: str) -> Any:
        return build_attack(name, c).spec()[key] if name in c.attack.attacks else None

    def apgd(c: EvaluationConfig) -> str:
        ce, t = spec(c, "apgd", "steps"), spec(c, "apgd-t", "steps")
        out = f"APGD-CE {ce} × {spec(c, 'apgd', 'restarts')}" if ce else ""
        if t:
            out += f"; APGD-T {t} × top-{spec(c, 'apgd-t', 'targets')} targets"
        return out or "–"

    return [
        row("attacks (each after FGSM and the first: on the samples still standing)",
            lambda c: ", ".join(c.attack.attacks)),
        row("APGD steps × restarts", apgd),
        row("PGD steps (ratio sweep) × restarts",
            lambda c: f"{c.attack.steps} × {c.attack.restarts}"),
        row("Square queries per sample",
            lambda c: str(c.attack.max_queries) if "square" in c.attack.attacks else "–"),
        row("random masks (baseline)", lambda c: str(c.compare.n_random)),
        row("eps curve (multiples of eps)", lambda c: _grid(c.attack.eps_factors)),
        row("white-box ratios of the ratio curve",
            lambda c: _grid(c.compare.whitebox_ratios) + " + chosen"),
        row("FeatureSqueezing, SpatialSmoothing", lambda c: yes(c.compare.preprocessing_baselines)),
        row("baselines attacked white-box", lambda c: yes(c.compare.whitebox_baselines)),
        row("sanity: more-steps probe", lambda c: (
            f"{curve_attack(c).upper()}-"
            f"{build_attack(curve_attack(c), c).spec()['steps'] * c.checks.more_steps_factor}")),
        row("sanity: unbounded probe, eps growth, gradient-free, FGSM", lambda c: "yes"),
        row("test samples (cap; the search's validation samples are not capped)",
            lambda c: cap(c.samples.max_samples)),
        row("fit samples (cap)", lambda c: cap(c.samples.max_fit_samples)),
    ]  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _at_level_caps(t: dict[str, Any]) -> str:
    """The measured time, or its linear scaling to the level's caps (marked ``≈``)."""
    if not t["sample_cap_overridden"]:
        return "as measured"
    fit = t["stages"].get("fit", 0.0)
    rest = t["seconds"] - fit
    estimate = fit * t["level_fit_samples"] / t["fit_samples"] + rest * t["level_samples"] / max(
        1, t["test_samples"]
    )
    return f"≈ {_duration(estimate)} ({t['level_samples']:,} test samples)"


def markdown(times: dict[str, dict[str, Any]]) -> str:
    """The document: the levels table and the measured times."""
    levels = [lv.value for lv in EvaluationLevel]
    head = ["setting", *(f"`{lv}`" for lv in levels)]
    lines = [
        "# Evaluation levels",
        "",
        "`deepcloak evaluate --level quick|standard|thorough` (default `standard`), like",
        "AutoAttack's versions, fixes the settings that decide what an evaluation costs; any",
        "option given explicitly (`--attacks`, `--steps`, `--restarts`, `--queries`,",
        "`--random-masks`, `--eps-grid`, `--max-samples`, `--fit-samples`,",
        "`--[no-]preprocessing-baselines`, `--[no-]whitebox-baselines`) overrides it. In Python:",
        '`EvaluationConfig.for_level("quick", steps=20)`. The report records the level',
        "(`config.level`) and the settings changed from it (`config.level_overrides`).",
        "",
        "Every level runs the same stages: the fit (FGSM at `--eps`), the ratio choice on the",
        "validation split (PGD gray-box sweep), every defence (unmasked, cloaked, random mask,",
        "activation pruning and, where listed, the preprocessing baselines) under every attack",
        "gray-box and white-box, the accuracy-vs-eps curve, the sanity checks and the test ratio",
        "curve. Within a worst case the attacks run as AutoAttack runs them: FGSM and the first",
        "attack on every sample, each later one only on the samples still standing. `quick` is",
        "a first look, not a result to publish (APGD-CE-10 on 100 samples, no gradient-free",
        "attack, so the gradient-masking check cannot pass); `standard` aims at AutoAttack's",
        "strength at a third of its cost or less, `thorough` at least at AutoAttack's standard",
        "version (see the comparison below).",
        "",
        "| " + " | ".join(head) + " |",
        "| " + " | ".join("---" for _ in head) + " |",
        *("| " + " | ".join(r) + " |" for r in level_rows()),
        "",
        "The sample cap takes the first samples of the test split (and of the validation samples",
        "when the paper's ratio is chosen on a PGD sweep; the default search's validation is one",
        'FGSM pass, uncapped); `deepcloak evaluate` prints it ("evaluating 500 of 5,000 test',
        "samples and all 5,000 validation samples (cap from --level standard; --max-samples all",
        'to lift)") and `evaluation.json` records it (`run.data.sample_cap`, and `n_available`',
        "and `n_used` of each split).",
        "",
        "## Measured wall time",
        "",
        "A zoo ResNet-8 (width 16, 5 epochs, 92% test accuracy) on Fashion-MNIST, CPU, measured",
        "by `python bench/levels.py` (stages: first to last progress report of each task).",
        "",
        "Wall time depends on what else runs on the machine, so the process's CPU time (all its",
        "threads) and the load average at start and end are recorded beside it.",
        "",
        "Where a run lowered the caps to finish on a shared machine, the last column scales it",
        "to the level's own caps, linearly: the fit by fit samples, every other stage by test",
        "samples (validation samples follow the same cap). That is an estimate, marked `≈`,",
        "and a pessimistic one: a small run passes batches smaller than 128 and pays per-call",
        "overheads (ART's wrappers, Square's bookkeeping) for few samples.",
        "",
        "| level | wall time | CPU time | load average | test / validation / fit samples "
        "| threads | slowest stages | at the level's caps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lv in levels:
        t = times.get(lv)
        if t is None:
            lines.append(f"| `{lv}` | not measured | | | | | | |")
            continue
        slow = sorted(t["stages"].items(), key=lambda kv: -kv[1])[:3]
        capped = " (cap lowered for this run)" if t["sample_cap_overridden"] else ""
        load = " → ".join(f"{v:g}" for v in t.get("load_average", []))
        lines.append(
            f"| `{lv}` | {_duration(t['seconds'])} | {_duration(t['cpu_seconds'])} | {load} | "
            f"{t['test_samples']:,}{capped} / "
            f"{t['validation_samples']:,} / {t['fit_samples']:,} | {t['threads']} | "
            + ", ".join(f"{k} {v:.0f} s" for k, v in slow)
            + f" | {_at_level_caps(t)} |"
        )
    notes = sorted({t.get("note", "") for t in times.values()} - {""})
    lines += ["", *notes] if notes else []
    if PEER.exists():
        lines += ["", *peer_section(json.loads(PEER.read_text()))]
    if TUNING.exists():
        lines += ["", *tuning_section(json.loads(TUNING.read_text()))]
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    return "–" if value is None else (f"{value:.2g}" if value >= 0.001 else f"{value:.0e}")


def _range(row: dict[str, Any]) -> str:
    """The test samples a row covers, as first–last index."""
    first = row.get("first", 0)
    return f"{first}–{first + row['n'] - 1}"


def peer_section(data: dict[str, Any]) -> list[str]:
    """The levels against AutoAttack, as ``bench/autoattack.py`` recorded them."""
    run = data.get("run", {})
    lines = [
        "<!-- autoattack:start (python bench/autoattack.py --render) -->",
        "## Measured strength against AutoAttack",
        "",
        f"{run.get('peer', 'AutoAttack')} against deepcloak's levels (white-box worst case of",
        "the level's attacks) on the same models, samples and budgets (L-inf), by",
        "`python bench/autoattack.py`. *Only peer / only deepcloak*: samples broken by one and",
        "not the other; *p*: exact McNemar test on those, one-sided (the peer breaks more);",
        "*cost*: deepcloak's attack seconds over the peer's. Measured on: "
        + run.get("setting", "(not recorded)"),
        "",
        "| model | variant | eps | samples | clean | AutoAttack | level | deepcloak "
        "| only peer / only deepcloak | p | cost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in data.get("rows", []):
        lines.append(
            f"| {row['model']} | {row['variant']} | {row['eps']:g} | {_range(row)} "
            f"| {row['clean']:.1%} "
            f"| {row['peer_accuracy']:.1%} | `{row['level']}` | {row['accuracy']:.1%} "
            f"| {row['only_peer']} / {row['only_deepcloak']} | {_p(row['p_value'])} "
            f"| {row['cost_ratio']:.2f} ({row['seconds']:.0f} s / {row['peer_seconds']:.0f} s) |"
        )
    lines += [
        "",
        "The peer is AutoAttack's standard version at the reference's settings, assembled from",
        "torchattacks' attacks (`reference_autoattack` in `bench/autoattack.py`).",
        '`torchattacks.AutoAttack(version="standard")` itself runs APGD, APGD-T and FAB with 10',
        "iterations, a tenth of the reference's 100; the first CPU checks compared against it and",
        "are withdrawn (on a ResNet-8, 200 samples, eps 0.02, `standard` broke 7 and 10 samples",
        "it missed, and it none that `standard` missed).",
        "",
        "Per level, over all rows above (*pooled p*: one-sided sign test of all rows' discordant",
        "samples together; rows share samples, so it screens for a systematic lean, no more):",
        "",
        *peer_summary(data.get("rows", [])),
    ]
    if any(row["level"] == "before" for row in data.get("rows", [])):
        lines += [
            "",
            "`before`: the `standard` level before issue 17 (FGSM, PGD-20, ART's APGD-CE-20,",
            "Square-300, each on every sample), on the same samples.",
        ]
    lines += ["", *data.get("notes", []), "<!-- autoattack:end -->"]
    return lines


def tuning_section(data: dict[str, Any]) -> list[str]:
    """How ``standard``'s APGD settings were chosen, as ``bench/tune_standard.py`` recorded it."""
    chosen = dict(LEVELS[EvaluationLevel.STANDARD]["attack_params"])
    lines = [
        "<!-- tuning:start (python bench/tune_standard.py --render) -->",
        "## How `standard`'s attacks were tuned",
        "",
        "Candidates: `standard`'s chain with one or two of its APGD settings changed, on models",
        "and samples the table above does not use: " + data.get("setting", "(not recorded)") + ".",
        "*Missed*: samples some other candidate breaks that the candidate leaves standing (the",
        "union of the candidates is the reference; no peer is involved, so the choice is not fit",
        "to AutoAttack's own random starts). *Cost*: attack seconds over those of `now` (the",
        "level before this tuning), mean over the rows. `python bench/tune_standard.py`.",
        "",
        "| candidate | samples missed (summed over rows) | rows missing any | cost vs `now` "
        "(range) | `standard` now |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in data.get("summary", []):
        lo, hi = s["cost_range"]
        mine = {k: dict(v) for k, v in s["settings"].items()} == {
            k: dict(v) for k, v in chosen.items()
        }
        lines.append(
            f"| {s['candidate']} | {s['missed']} | {s['rows_missing']} of {s['rows']} "
            f"| {s['cost_vs_now']:.2f} ({lo:.2f}–{hi:.2f}) | {'yes' if mine else ''} |"
        )
    return [*lines, "<!-- tuning:end -->"]


def _pooled_p(only_peer: int, only_ours: int) -> float:
    """One-sided sign test over all rows' discordant samples: does the peer break more?

    Pooling treats every row's samples as independent, though rows share samples (the same
    300 under two budgets and two variants): a screen for a systematic lean, not a proof.
    """
    from scipy.stats import binomtest

    n = only_peer + only_ours
    return 1.0 if n == 0 else float(binomtest(only_peer, n, 0.5, alternative="greater").pvalue)


def peer_summary(rows: list[dict[str, Any]]) -> list[str]:
    """Per level, over every model, variant and budget: how often and by how much AutoAttack
    was stronger, and the cost (all of the level's attack seconds over all of the peer's)."""
    lines = [
        "| level | measurements | AutoAttack significantly stronger (p < 0.05) "
        "| largest overstatement (deepcloak − AutoAttack) | only peer / only deepcloak, summed "
        "| pooled p | cost (summed seconds) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for level in dict.fromkeys(row["level"] for row in rows):
        mine = [row for row in rows if row["level"] == level]
        gap = max(row["accuracy"] - row["peer_accuracy"] for row in mine)
        seconds = sum(row["seconds"] for row in mine)
        peer_seconds = sum(row["peer_seconds"] for row in mine)
        only_peer = sum(row["only_peer"] for row in mine)
        only_ours = sum(row["only_deepcloak"] for row in mine)
        lines.append(
            f"| `{level}` | {len(mine)} "
            f"| {sum(row['p_value'] < 0.05 for row in mine)} "
            f"| {gap * 100:+.1f} points | {only_peer} / {only_ours} "
            f"| {_p(_pooled_p(only_peer, only_ours))} "
            f"| {seconds / peer_seconds:.2f} ({seconds:.0f} s / {peer_seconds:.0f} s) |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--levels", default="quick,standard,thorough")
    parser.add_argument("--max-samples", type=int, default=None, help="replace the level's cap")
    parser.add_argument("--max-fit-samples", type=int, default=None, help="replace the fit cap")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--note", default="", help="a sentence on the machine's load")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--render", action="store_true", help="only rewrite the doc from JSON")
    args = parser.parse_args(argv)
    if args.render:
        DOC.write_text(markdown(json.loads(TIMES.read_text())))
        return
    torch.set_num_threads(args.threads)
    print(f"threads: {torch.get_num_threads()}", flush=True)
    model = _model(args.model)
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    for name in args.levels.split(","):
        level = EvaluationLevel.parse(name.strip())
        result = run_level(level, model, args.max_samples, args.max_fit_samples, args.device)
        result["note"] = args.note
        print(json.dumps(result), flush=True)
        times[level.value] = result
        if not args.no_write:
            TIMES.write_text(json.dumps(times, indent=2) + "\n")
            DOC.write_text(markdown(times))
    if not args.no_write:
        print(f"wrote {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
