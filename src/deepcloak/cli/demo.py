"""``deepcloak demo``: train a small ResNet on digits, cloak it, and sweep mask ratios."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from deepcloak.cli.app import out, user_errors
from deepcloak.cli.options import (
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    DeviceOpt,
    PrecisionOpt,
    RatioOpt,
)
from deepcloak.cli.running import distributed_command, progress_bars, quiet_progress
from deepcloak.report.files import check_output_folder

__all__ = ["demo"]


@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the report, plot, mask and model.")] = Path("runs/demo"),
    eps: Annotated[float, typer.Option(help="FGSM budget in [0, 1] (digits have 1/16 grey steps).")] = 0.15,
    ratio: RatioOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed of training, attacks and random masks.")] = 0,
    device: DeviceOpt = DEFAULT_DEVICE,
    precision: PrecisionOpt = DEFAULT_PRECISION,
) -> None:  # fmt: skip
    """Train a small ResNet on scikit-learn's digits, cloak it, and sweep mask ratios."""
    check_output_folder(out_dir)
    from deepcloak.demo import DemoConfig, run_demo, write_demo
    from deepcloak.report.summary import paper_line, saved_mask_lines
    from deepcloak.report.tables import sweep_table

    with distributed_command(device) as (ctx, run_on):
        config = DemoConfig(
            eps=eps, ratio=ratio, epochs=epochs, seed=seed, device=run_on, precision=precision
        )
        with progress_bars() if ctx.is_main else quiet_progress() as progress:
            result = run_demo(config, progress=progress)
        if not ctx.is_main:  # every process trained the same model; rank 0 reports it
            return
        out.print(
            f"ResNet on digits: test accuracy {100 * (result.training.test_accuracy or 0):.1f}% "
            f"({result.training.epochs} epochs, {result.training.seconds:.1f} s)"
        )
        hardened = result.hardened
        out.print("\n".join(saved_mask_lines(hardened.saved_mask())), highlight=False)
        if result.paper is not None:
            out.print(paper_line(result.paper.saved_mask(), hardened.saved_mask()), highlight=False)
        out.print(
            sweep_table(hardened.sweep, saved=hardened.ratio, searched=hardened.search is not None)
        )
        paths = write_demo(result, out_dir)
        out.print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.seconds:.1f} s)")
