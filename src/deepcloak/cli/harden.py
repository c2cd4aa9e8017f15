"""``deepcloak harden``: find a mask within a clean budget, save the cloaked model, sweep ratios."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from deepcloak.cli.app import out, user_errors
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
    FitSamplesOpt,
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
from deepcloak.cli.parsing import given, method, output_key
from deepcloak.cli.running import distributed_command, progress_bars, quiet_progress
from deepcloak.report.files import check_output_folder

__all__ = ["HardenOptions", "harden"]


@dataclass(frozen=True)
class HardenOptions:
    """``deepcloak harden``'s options, in ``--help`` order."""

    # fmt: off
    model: ModelArg
    data: DataOpt = DEFAULT_DATA
    root: RootOpt = None
    weights: WeightsOpt = None
    random_weights: RandomWeightsOpt = False
    allow_pickle: PickleOpt = False
    attack: Annotated[str, typer.Option(help="Attack for the fit and the test: fgsm or pgd.")] = "fgsm"
    eps: EpsOpt = DEFAULT_EPS
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 10
    select: SelectOpt = None
    ratio: RatioOpt = None
    clean_budget: BudgetOpt = DEFAULT_BUDGET
    val_from: ValFromOpt = None
    val_samples: ValSamplesOpt = None
    val_root: ValRootOpt = None
    layer: LayerOpt = None
    side: SideOpt = None
    score: ScoreOpt = DEFAULT_SCORE
    fit_samples: FitSamplesOpt = None
    test_samples: Annotated[int | None, typer.Option(help="Test samples to report on (a seeded subset of what validation leaves).")] = None
    random_masks: Annotated[int, typer.Option(help="Random masks per ratio (baseline).")] = 5
    seed: SeedOpt = DEFAULT_SEED
    output: OutputOpt = None
    device: DeviceOpt = DEFAULT_DEVICE
    precision: PrecisionOpt = DEFAULT_PRECISION
    batch_size: BatchOpt = None
    workers: WorkersOpt = DEFAULT_WORKERS
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/harden")
    # fmt: on


@user_errors
@parsed_into(HardenOptions)
def harden(o: HardenOptions) -> None:
    """Find the mask that buys the most robustness within a clean budget, save the cloaked
    model, and sweep mask ratios on test data (gray-box, random masks, white-box)."""
    check_output_folder(o.out_dir)
    from deepcloak.harden import HardenConfig, harden_sources, write_harden
    from deepcloak.report.summary import saved_mask_lines
    from deepcloak.report.tables import sweep_table
    from deepcloak.sources import DataSource, ModelSource

    config = HardenConfig(
        attack=o.attack, eps=o.eps, steps=o.steps, layer=o.layer, side=o.side,
        n_random=o.random_masks, seed=o.seed, **method(o.select, o.ratio, o.score),
        clean_budget=o.clean_budget, precision=o.precision,
        **given(batch_size=o.batch_size, val_from=o.val_from, val_samples=o.val_samples),
    )  # fmt: skip
    data_source = DataSource(
        name=o.data, root=o.root, fit_samples=o.fit_samples, test_samples=o.test_samples,
        seed=o.seed, val_from=o.val_from, val_samples=o.val_samples, val_root=o.val_root,
    )  # fmt: skip
    with distributed_command(o.device) as (ctx, run_on):
        source = ModelSource(
            spec=o.model, weights=o.weights, allow_pickle=o.allow_pickle,
            output=output_key(o.output), device=run_on, random_weights=o.random_weights,
            seed=o.seed,
        )  # fmt: skip
        with progress_bars() if ctx.is_main else quiet_progress() as progress:
            result = harden_sources(
                source, data_source, config, progress=progress, workers=o.workers
            )
        if not ctx.is_main:  # rank 0 prints and writes the results, the same on every process
            return
        record = result.saved_mask()
        out.print("\n".join(saved_mask_lines(record)), highlight=False)
        out.print(sweep_table(result.sweep, saved=result.ratio, searched=result.search is not None))
        paths = write_harden(result, o.out_dir, title=f"DeepCloak: {o.model} on {o.data}")
        out.print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.seconds:.1f} s)")
