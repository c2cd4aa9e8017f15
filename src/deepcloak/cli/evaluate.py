"""``deepcloak evaluate``: a cloaked model under gray-box, white-box and transfer attacks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from deepcloak.cli.app import console, out, user_errors
from deepcloak.cli.options import (
    DEFAULT_BUDGET,
    DEFAULT_DATA,
    DEFAULT_DEVICE,
    DEFAULT_EPS,
    DEFAULT_PRECISION,
    DEFAULT_SCORE,
    DEFAULT_SEED,
    DEFAULT_WORKERS,
    BatchOpt,
    BudgetOpt,
    DataOpt,
    DeviceOpt,
    EpsOpt,
    LayerOpt,
    ModelArg,
    OutputOpt,
    PickleOpt,
    PrecisionOpt,
    RandomWeightsOpt,
    RatioOpt,
    RootOpt,
    ScoreOpt,
    SeedOpt,
    SelectOpt,
    SideOpt,
    ValFromOpt,
    ValRootOpt,
    ValSamplesOpt,
    WeightsOpt,
    WorkersOpt,
    parsed_into,
)
from deepcloak.cli.parsing import floats, given, method, output_key, sample_cap
from deepcloak.cli.running import distributed_command, progress_bars, quiet_progress
from deepcloak.errors import DeepCloakError
from deepcloak.report.files import check_output_folder

if TYPE_CHECKING:
    from deepcloak.evaluation.config import EvaluationConfig
    from deepcloak.evaluation.results import EvaluationReport
    from deepcloak.sources import DataSource, ModelSource

__all__ = ["EvaluateOptions", "evaluate"]


@dataclass(frozen=True)
class EvaluateOptions:
    """``deepcloak evaluate``'s options, in ``--help`` order."""

    # fmt: off
    model: ModelArg
    data: DataOpt = DEFAULT_DATA
    root: RootOpt = None
    weights: WeightsOpt = None
    random_weights: RandomWeightsOpt = False
    allow_pickle: PickleOpt = False
    cloak: Annotated[Path | None, typer.Option(help="A saved mask (.safetensors); default: fit one.")] = None
    surrogate: Annotated[str | None, typer.Option(help="Independently trained model for the transfer threat model.")] = None
    level: Annotated[str, typer.Option(help="quick (a first look), standard or thorough: fixes attacks, steps, restarts, queries, random masks, eps grid, white-box ratios, sanity probes and the sample cap; the options below override it.")] = "standard"
    max_samples: Annotated[str | None, typer.Option(help="Cap on test and validation samples: N or all (default: the level's).")] = None
    attacks: Annotated[str | None, typer.Option(help="Comma-separated: fgsm, pgd, apgd, apgd-t, square, art-apgd, art-pgd (default: the level's).")] = None
    eps: EpsOpt = DEFAULT_EPS
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf"
    steps: Annotated[int | None, typer.Option(help="Steps of PGD and APGD (default: the level's).")] = None
    restarts: Annotated[int | None, typer.Option(help="Random restarts of PGD and APGD (default: the level's).")] = None
    queries: Annotated[int | None, typer.Option(help="Queries per sample of the Square attack (default: the level's).")] = None
    select: SelectOpt = None
    ratio: RatioOpt = None
    clean_budget: BudgetOpt = DEFAULT_BUDGET
    random_masks: Annotated[int | None, typer.Option(help="Random masks of the chosen size (baseline; default: the level's).")] = None
    eps_grid: Annotated[str | None, typer.Option(help="Budgets of the accuracy-vs-eps curve, comma-separated (default: the level's multiples of --eps).")] = None
    layer: LayerOpt = None
    side: SideOpt = None
    score: ScoreOpt = DEFAULT_SCORE
    val_from: ValFromOpt = None
    val_samples: ValSamplesOpt = None
    val_root: ValRootOpt = None
    test_samples: Annotated[int | None, typer.Option(help="Draw a seeded random subset of this many test samples first (default: all; the cap then applies).")] = None
    fit_samples: Annotated[int | None, typer.Option(help="Training samples to fit on (default: the level's; validation counted apart).")] = None
    preprocessing_baselines: Annotated[bool | None, typer.Option("--preprocessing-baselines/--no-preprocessing-baselines", help="Compare with FeatureSqueezing and SpatialSmoothing (default: the level's).")] = None
    whitebox_baselines: Annotated[bool | None, typer.Option("--whitebox-baselines/--no-whitebox-baselines", help="Also attack the baselines end to end (default: the level's).")] = None
    per_sample: Annotated[bool, typer.Option(help="Keep per-sample correctness in the JSON.")] = True
    seed: SeedOpt = DEFAULT_SEED
    output: OutputOpt = None
    device: DeviceOpt = DEFAULT_DEVICE
    precision: PrecisionOpt = DEFAULT_PRECISION
    batch_size: BatchOpt = None
    workers: WorkersOpt = DEFAULT_WORKERS
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/evaluate")
    resume: Annotated[bool, typer.Option(help="Reuse the stages an interrupted run with this --out saved.")] = False
    # fmt: on


@user_errors
@parsed_into(EvaluateOptions)
def evaluate(o: EvaluateOptions) -> None:
    """Evaluate a cloaked model under gray-box, white-box and transfer attacks, with baselines."""
    check_output_folder(o.out_dir)
    from deepcloak.evaluation.resume import EvaluationFolder
    from deepcloak.evaluation.run import evaluate_sources
    from deepcloak.report.evaluation import write_evaluation
    from deepcloak.resume import work_folder_for
    from deepcloak.sources import DataSource

    config = _config(o)
    data_source = DataSource(
        name=o.data, root=o.root, test_samples=o.test_samples, seed=o.seed, val_from=o.val_from,
        val_samples=o.val_samples, val_root=o.val_root,
    )  # fmt: skip
    work = work_folder_for(o.out_dir)
    with distributed_command(o.device) as (ctx, run_on):
        if ctx.enabled and o.resume:
            raise DeepCloakError(
                "--resume works in one process: the saved stages are not shared between "
                "torchrun's processes; rerun without torchrun, or without --resume"
            )
        # Under torchrun no process saves stages: their writes would race on one folder.
        stages_at = None if ctx.enabled else work
        if ctx.is_main:
            out.print(_cap_line(config, data_source, o.cloak is not None), highlight=False)
        model, surrogate = _models(o, run_on)
        with (
            progress_bars() if ctx.is_main else quiet_progress() as progress,
            _keeps_stages(work) if stages_at else contextlib.nullcontext(),
        ):
            report = evaluate_sources(
                model, data_source, config, cloak_file=o.cloak, surrogate=surrogate,
                progress=progress, workers=o.workers, work_dir=stages_at, resume=o.resume,
            )  # fmt: skip
        if not ctx.is_main:  # rank 0 prints and writes the results, the same on every process
            return
        _show(report)
        paths = write_evaluation(report, o.out_dir, per_sample=o.per_sample)
        if stages_at:  # the outputs are written: the saved stages are no longer needed
            EvaluationFolder(stages_at).remove()
        out.print(f"wrote {', '.join(str(p) for p in paths.values())}")


def _config(o: EvaluateOptions) -> EvaluationConfig:
    """The evaluation's config: ``--level``'s settings, with the options given overriding."""
    from deepcloak.evaluation.config import EvaluationConfig

    attacks = tuple(a.strip() for a in o.attacks.split(",") if a.strip()) if o.attacks else None
    level_overrides = given(
        attacks=attacks, steps=o.steps, restarts=o.restarts, max_queries=o.queries,
        n_random=o.random_masks, eps_grid=floats(o.eps_grid),
        preprocessing_baselines=o.preprocessing_baselines,
        whitebox_baselines=o.whitebox_baselines, max_fit_samples=o.fit_samples,
    )  # fmt: skip
    if o.max_samples is not None:  # `all` is None: no cap, which overrides the level's too
        level_overrides["max_samples"] = sample_cap(o.max_samples)
    return EvaluationConfig.for_level(
        o.level, eps=o.eps, norm=o.norm, clean_budget=o.clean_budget, layer=o.layer,
        side=o.side, seed=o.seed, **method(o.select, o.ratio, o.score), precision=o.precision,
        **level_overrides, **given(batch_size=o.batch_size),
    )  # fmt: skip


def _models(o: EvaluateOptions, device: str) -> tuple[ModelSource, ModelSource | None]:
    """The model to evaluate and the transfer surrogate (``None`` without ``--surrogate``)."""
    from deepcloak.sources import ModelSource

    model = ModelSource(
        spec=o.model, weights=o.weights, allow_pickle=o.allow_pickle, output=output_key(o.output),
        device=device, random_weights=o.random_weights, seed=o.seed,
    )  # fmt: skip
    if not o.surrogate:
        return model, None
    return model, ModelSource(spec=o.surrogate, allow_pickle=o.allow_pickle, device=device)


def _show(report: EvaluationReport) -> None:
    """Print the report: the mask, the tables, and the sanity checks' warnings."""
    from deepcloak.report.summary import evaluation_mask_lines
    from deepcloak.report.tables import evaluation_tables

    out.print("\n".join(evaluation_mask_lines(report)), highlight=False)
    for table in evaluation_tables(report):
        out.print(table)
    for check in report.warnings:
        console.print(f"[bold yellow]warning:[/] {check.name}: {check.message}", highlight=False)


@contextlib.contextmanager
def _keeps_stages(work: Path) -> Iterator[None]:
    """Say where an evaluation that stops early left its finished stages."""
    try:
        yield
    except BaseException as e:
        from deepcloak.evaluation.resume import EvaluationFolder
        from deepcloak.resume import WorkFolderError

        if isinstance(e, WorkFolderError):  # an error about the folder itself: leave it as it is
            raise
        folder = EvaluationFolder(work)
        if not folder.held_here():  # stopped before this run opened it: whatever is there stays
            raise
        if folder.holds_work():
            folder.release()
            console.print(
                f"finished stages are saved in {work}: rerun the same command with --resume "
                "to continue", highlight=False,
            )  # fmt: skip
        else:
            folder.remove()  # nothing finished (bad input): leave nothing behind
        raise


def _cap_line(config: EvaluationConfig, data: DataSource, cloak_given: bool) -> str:
    """Which samples the evaluation will use: the validation source, and the visible cap."""
    splits = data.splits()
    n_test, n_val = len(splits.test), len(splits.val) if splits.val is not None else 0
    where = f"; validation: {splits.validation.description}" if splits.validation else ""
    searching = config.resolved(cloak_given=cloak_given).cloak.select is not None
    cap = config.samples.max_samples
    val_cap = None if searching else cap  # the search's validation is one FGSM pass: uncapped
    if cap is None:
        return f"evaluating all {n_test:,} test and {n_val:,} validation samples (no cap){where}"
    source = (
        f"--level {config.level_name}" if config.max_samples_source == "level" else "--max-samples"
    )
    if n_test <= cap and (val_cap is None or n_val <= val_cap):
        return (
            f"evaluating all {n_test:,} test and {n_val:,} validation samples (cap {cap:,} from "
            f"{source} not reached){where}"
        )
    line = f"evaluating {min(cap, n_test):,} of {n_test:,} test samples"
    if val_cap is not None and n_val > val_cap:
        line += f" and {val_cap:,} of {n_val:,} validation samples"
    else:
        line += f" and all {n_val:,} validation samples"
    return f"{line} (cap from {source}; --max-samples all to lift){where}"
