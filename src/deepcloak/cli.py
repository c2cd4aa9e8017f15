"""The ``deepcloak`` command: a thin layer that parses options, calls the API and renders.

No logic lives here: each command builds a config, calls one library function, and prints the
result with rich. Errors a user can cause (:class:`~deepcloak.errors.DeepCloakError`) are shown
as one readable line and exit with status 2.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from deepcloak.errors import DeepCloakError
from deepcloak.report.files import check_output_file, check_output_folder

if TYPE_CHECKING:
    from deepcloak.distributed import Distributed
    from deepcloak.evaluation.config import EvaluationConfig
    from deepcloak.progress import ProgressFn
    from deepcloak.sources import DataSource

app = typer.Typer(
    help="Harden a trained image classifier with DeepCloak (arXiv 1702.06763), and measure "
    "honestly what that buys.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


class RichProgress:
    """A :data:`~deepcloak.progress.ProgressFn` that draws one rich bar per task name."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task not in self._tasks:
            self._tasks[task] = self._progress.add_task(task, total=total)
        self._progress.update(self._tasks[task], completed=done, total=total)


@contextlib.contextmanager
def progress_bars() -> Iterator[RichProgress]:
    """Progress bars on stderr for the duration of a command."""
    with Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        yield RichProgress(bars)


@contextlib.contextmanager
def quiet_progress() -> Iterator[ProgressFn]:
    """No progress bars (the processes of ``torchrun`` other than rank 0 draw none)."""
    from deepcloak.progress import no_progress

    yield no_progress


@contextlib.contextmanager
def distributed_command(device: str) -> Iterator[tuple[Distributed, str]]:
    """Run one command in ``torchrun``'s process group, if any (see
    :func:`~deepcloak.distributed.distributed_run`); yields this process's place and device.

    Only rank 0 should print and write; the other processes log errors only.
    """
    from deepcloak.devices import resolve_device
    from deepcloak.distributed import distributed_run

    with distributed_run(resolve_device(device)) as (ctx, resolved):
        if not ctx.is_main:
            logging.getLogger().setLevel(logging.ERROR)
            warnings.simplefilter("ignore")  # rank 0 warns about the same data
        yield ctx, str(resolved)


def user_errors(command: F) -> F:
    """Show a :class:`DeepCloakError`, or the OS refusing a file (disk full, read-only,
    permissions), as one line on stderr and exit with status 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (DeepCloakError, OSError) as e:
            rank = os.environ.get("RANK", "0")  # torchrun's; the group may be gone by now
            where = f" (rank {rank})" if rank != "0" else ""
            console.print(f"[bold red]error{where}:[/] {_one_line(e)}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _one_line(e: Exception) -> str:
    """The error's message; for the OS's, the file and the reason (``EACCES``, ...)."""
    if isinstance(e, OSError) and not isinstance(e, DeepCloakError):
        code = errno.errorcode.get(e.errno or 0, "")
        path = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
        return f"{path}{e.strerror or e}" + (f" ({code})" if code else "")
    return str(e)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log details.")] = False,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Torch CPU threads (default: one per core; 1 is best on a busy machine)."
        ),
    ] = None,
) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


@app.command()
@user_errors
def demo(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Folder for the report, plot, mask and model.")
    ] = Path("runs/demo"),
    eps: Annotated[
        float, typer.Option(help="FGSM budget in [0, 1] (digits have 1/16 grey steps).")
    ] = 0.15,
    ratio: RatioOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    seed: Annotated[int, typer.Option(help="Seed of training, attacks and random masks.")] = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
) -> None:
    """Train a small ResNet on scikit-learn's digits, cloak it, and sweep mask ratios."""
    check_output_folder(out_dir)
    from deepcloak.demo import DemoConfig, run_demo, write_demo
    from deepcloak.report.tables import sweep_table

    with distributed_command(device) as (ctx, run_on):
        config = DemoConfig(
            eps=eps, ratio=ratio, epochs=epochs, seed=seed, device=run_on, precision=precision
        )
        from deepcloak.report.summary import paper_line, saved_mask_lines

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


@app.command()
@user_errors
def train(
    model: Annotated[str, typer.Option(help="Zoo model: cnn, vgg, resnet, wrn.")] = "resnet",
    data: Annotated[str, typer.Option(help="Data set: digits, fashion-mnist, mnist, cifar10, imagefolder.")] = "fashion-mnist",
    root: Annotated[Path | None, typer.Option(help="Folder of the data set files.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the recipe's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default: 0.1 SGD, 1e-3 Adam).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per step.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam.")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment", help="Random crops (and flips).")] = None,
    width: Annotated[int | None, typer.Option(help="Base width of the model.")] = None,
    depth: Annotated[int | None, typer.Option(help="Depth (resnet 6n+2, wrn 6n+4).")] = None,
    option: Annotated[list[str] | None, typer.Option(help="Other model option as key=value (JSON value), repeatable.")] = None,
    limit: Annotated[int | None, typer.Option(help="Train on a random subset of this many samples.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and shuffling.")] = 0,
    out_path: Annotated[Path | None, typer.Option("--out", help="Checkpoint file (default: runs/<model>-<data>.safetensors).")] = None,
    device: DeviceOpt = "auto",
) -> None:  # fmt: skip
    """Train a zoo model on a data set and save a checkpoint (safetensors + JSON metadata)."""
    check_output_file(out_path or Path("runs") / f"{model}-{data}.safetensors")
    from deepcloak.devices import resolve_device
    from deepcloak.models.recipes import recipe, train_checkpoint

    arch_kwargs = {"width": width, "depth": depth, **_key_values(option or [])}
    job = recipe(
        model, data, root=root, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer,
        augment=augment, limit=limit, seed=seed,
        arch_kwargs={k: v for k, v in arch_kwargs.items() if v is not None},
    )  # fmt: skip
    path = out_path or Path("runs") / f"{model}-{data}.safetensors"
    with progress_bars() as progress:
        _, result, meta = train_checkpoint(
            job, path, progress=progress, device=resolve_device(device)
        )
    out.print(
        f"{model} on {data}: test accuracy {100 * (result.test_accuracy or 0):.2f}% after "
        f"{result.epochs} epochs ({result.seconds:.0f} s); options {meta['arch_kwargs']}"
    )
    out.print(f"wrote {path}")


def _key_values(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` options; values are JSON (``3``, ``0.5``, ``"avg"``) or plain text."""
    import json

    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DeepCloakError(f"expected key=value, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


# Options shared by the commands that take a user's model and a data set.
ModelArg = Annotated[
    str,
    typer.Argument(
        help="A deepcloak checkpoint, package.module:factory (with --weights), "
        "or a torch.save file (with --allow-pickle)."
    ),
]
DataOpt = Annotated[
    str, typer.Option(help="Data set: digits, fashion-mnist, mnist, cifar10, imagefolder.")
]
RootOpt = Annotated[Path | None, typer.Option(help="Folder of the data set files.")]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        help="state_dict for a factory model (.pt, read with weights_only; .safetensors)."
    ),
]
RandomWeightsOpt = Annotated[
    bool,
    typer.Option(help="Use a factory's own initialisation, seeded with --seed, instead of --weights (a random model: to try things out)."),
]  # fmt: skip
PickleOpt = Annotated[
    bool, typer.Option(help="Allow unpickling a full model: it can run code; trusted files only.")
]
EpsOpt = Annotated[float, typer.Option(help="Attack budget in [0, 1], e.g. 0.031 for 8/255.")]
LayerOpt = Annotated[
    str | None, typer.Option(help="Module to cloak (default: input of the final nn.Linear).")
]
SideOpt = Annotated[str | None, typer.Option(help="input or output of --layer.")]
ScoreOpt = Annotated[str, typer.Option(help="Feature score: deepcloak, random or activation.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of subsets, attacks and random masks.")]
DeviceOpt = Annotated[
    str, typer.Option(help="Where to run: auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        help="Precision of the passes that only predict: fp32 or bf16 (attacks stay float32)."
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(help="Samples per attack batch (default 256 for harden, 128 for evaluate); "
                 "results depend on it, not on the number of processes."),
]  # fmt: skip
WorkersOpt = Annotated[
    int, typer.Option(help="Processes decoding an image folder (in-memory data sets need none).")
]
OutputOpt = Annotated[
    str | None,
    typer.Option(help="Index or key of the logits, for a model that returns a tuple or dict."),
]


def _output_key(text: str | None) -> int | str | None:
    """``--output 0`` is an index, ``--output logits`` a key."""
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _selector(spec: str | None) -> dict[str, Any]:
    """``--select beam:width=4,clean_weight=2`` as the config's ``select`` and ``select_params``."""
    if spec is None:
        return {"select": None}
    from deepcloak.cloak.selectors import parse_selector

    name, params = parse_selector(spec)
    return {"select": name, "select_params": params}


def _given(**options: Any) -> dict[str, Any]:
    """The options that were given (not ``None``): the others keep the config's default."""
    return {k: v for k, v in options.items() if v is not None}


def _floats(text: str | None) -> tuple[float, ...] | None:
    """Parse a comma-separated list of numbers (``"0.01,0.02"``)."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DeepCloakError(f"expected comma-separated numbers, got {text!r}") from None


SelectOpt = Annotated[
    str | None,
    typer.Option(
        help="How the mask is found. Default: beam search (width=4, clean_weight=2, "
        "fit_budget=0.03), its size chosen on validation samples within --clean-budget. Others: "
        "greedy, random, deepcloak (the paper's score, size chosen the same way). Settings after "
        "a colon: beam:width=8. The paper's exact method: --select deepcloak --ratio 0.01."
    ),
]
RatioOpt = Annotated[
    float | None,
    typer.Option(
        help="A fixed fraction of features to remove, ranked by --score: the paper's method "
        "(no search, no validation). Default: the search chooses."
    ),
]
BudgetOpt = Annotated[
    float,
    typer.Option(
        help="Largest clean-accuracy drop the saved mask may cost (0.01 = 1 point), held at "
        "95% confidence on the validation samples."
    ),
]
ValFromOpt = Annotated[
    str | None,
    typer.Option(
        help="Where the samples the mask is chosen on come from: test (default: a seeded part "
        "of the test split, every figure reported on the rest), train (held out of the "
        "training split: the model saw them, so the choice is biased), or folder (--val-root, "
        "or an image folder's val/)."
    ),
]
ValSamplesOpt = Annotated[
    int | None,
    typer.Option(help="Validation samples (default: 5,000 or half the split, whichever is fewer)."),
]
ValRootOpt = Annotated[
    Path | None,
    typer.Option(help="A validation folder of your own: one sub-folder per class."),
]
FitSamplesOpt = Annotated[
    int | None,
    typer.Option(help="Training samples to fit on (default: all; validation counted apart)."),
]


def _method(select: str | None, ratio: float | None, score: str) -> dict[str, Any]:
    """``--select``/``--ratio``/``--score`` as the config's ``select``, ``select_params``,
    ``ratio`` and ``score``: ``--select deepcloak --ratio R`` (or ``--ratio R`` alone) is the
    paper's method; any other ``--select`` searches."""
    from deepcloak.harden import AUTO

    if ratio is not None and (select is None or select.split(":")[0].strip() == "deepcloak"):
        if select is not None and ":" in select:
            raise DeepCloakError(
                f"--select {select} with --ratio: the paper's method at a fixed ratio takes no "
                "selector settings; drop them or the ratio"
            )
        return {"select": None, "ratio": ratio, "score": score}
    if select is None:
        return {"select": AUTO, "ratio": ratio, "score": score}
    return {**_selector(select), "ratio": ratio, "score": score}


@app.command()
@user_errors
def harden(
    model: ModelArg,
    data: DataOpt = "digits",
    root: RootOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    allow_pickle: PickleOpt = False,
    attack: Annotated[str, typer.Option(help="Attack for the fit and the test: fgsm or pgd.")] = "fgsm",
    eps: EpsOpt = 8 / 255,
    steps: Annotated[int, typer.Option(help="PGD steps.")] = 10,
    select: SelectOpt = None,
    ratio: RatioOpt = None,
    clean_budget: BudgetOpt = 0.01,
    val_from: ValFromOpt = None,
    val_samples: ValSamplesOpt = None,
    val_root: ValRootOpt = None,
    layer: LayerOpt = None,
    side: SideOpt = None,
    score: ScoreOpt = "deepcloak",
    fit_samples: FitSamplesOpt = None,
    test_samples: Annotated[int | None, typer.Option(help="Test samples to report on (a seeded subset of what validation leaves).")] = None,
    random_masks: Annotated[int, typer.Option(help="Random masks per ratio (baseline).")] = 5,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/harden"),
) -> None:  # fmt: skip
    """Find the mask that buys the most robustness within a clean budget, save the cloaked
    model, and sweep mask ratios on test data (gray-box, random masks, white-box)."""
    check_output_folder(out_dir)
    from deepcloak.harden import HardenConfig, harden_sources, write_harden
    from deepcloak.report.summary import saved_mask_lines
    from deepcloak.report.tables import sweep_table
    from deepcloak.sources import DataSource, ModelSource

    config = HardenConfig(
        attack=attack, eps=eps, steps=steps, layer=layer, side=side,
        n_random=random_masks, seed=seed, **_method(select, ratio, score),
        clean_budget=clean_budget, precision=precision,
        **_given(batch_size=batch_size, val_from=val_from, val_samples=val_samples),
    )  # fmt: skip
    data_source = DataSource(
        name=data, root=root, fit_samples=fit_samples, test_samples=test_samples, seed=seed,
        val_from=val_from, val_samples=val_samples, val_root=val_root,
    )  # fmt: skip
    with distributed_command(device) as (ctx, run_on):
        source = ModelSource(
            spec=model, weights=weights, allow_pickle=allow_pickle, output=_output_key(output),
            device=run_on, random_weights=random_weights, seed=seed,
        )  # fmt: skip
        with progress_bars() if ctx.is_main else quiet_progress() as progress:
            result = harden_sources(source, data_source, config, progress=progress, workers=workers)
        if not ctx.is_main:  # rank 0 prints and writes the results, the same on every process
            return
        record = result.saved_mask()
        out.print("\n".join(saved_mask_lines(record)), highlight=False)
        out.print(sweep_table(result.sweep, saved=result.ratio, searched=result.search is not None))
        paths = write_harden(result, out_dir, title=f"DeepCloak: {model} on {data}")
        out.print(f"wrote {', '.join(str(p) for p in paths.values())} ({result.seconds:.1f} s)")


@app.command()
@user_errors
def evaluate(
    model: ModelArg,
    data: DataOpt = "digits",
    root: RootOpt = None,
    weights: WeightsOpt = None,
    random_weights: RandomWeightsOpt = False,
    allow_pickle: PickleOpt = False,
    cloak: Annotated[Path | None, typer.Option(help="A saved mask (.safetensors); default: fit one.")] = None,
    surrogate: Annotated[str | None, typer.Option(help="Independently trained model for the transfer threat model.")] = None,
    level: Annotated[str, typer.Option(help="quick (a first look), standard or thorough: fixes attacks, steps, restarts, queries, random masks, eps grid, white-box ratios, sanity probes and the sample cap; the options below override it.")] = "standard",
    max_samples: Annotated[str | None, typer.Option(help="Cap on test and validation samples: N or all (default: the level's).")] = None,
    attacks: Annotated[str | None, typer.Option(help="Comma-separated: fgsm, pgd, apgd, apgd-t, square, art-apgd, art-pgd (default: the level's).")] = None,
    eps: EpsOpt = 8 / 255,
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "linf",
    steps: Annotated[int | None, typer.Option(help="Steps of PGD and APGD (default: the level's).")] = None,
    restarts: Annotated[int | None, typer.Option(help="Random restarts of PGD and APGD (default: the level's).")] = None,
    queries: Annotated[int | None, typer.Option(help="Queries per sample of the Square attack (default: the level's).")] = None,
    select: SelectOpt = None,
    ratio: RatioOpt = None,
    clean_budget: BudgetOpt = 0.01,
    random_masks: Annotated[int | None, typer.Option(help="Random masks of the chosen size (baseline; default: the level's).")] = None,
    eps_grid: Annotated[str | None, typer.Option(help="Budgets of the accuracy-vs-eps curve, comma-separated (default: the level's multiples of --eps).")] = None,
    layer: LayerOpt = None,
    side: SideOpt = None,
    score: ScoreOpt = "deepcloak",
    val_from: ValFromOpt = None,
    val_samples: ValSamplesOpt = None,
    val_root: ValRootOpt = None,
    test_samples: Annotated[int | None, typer.Option(help="Draw a seeded random subset of this many test samples first (default: all; the cap then applies).")] = None,
    fit_samples: Annotated[int | None, typer.Option(help="Training samples to fit on (default: the level's; validation counted apart).")] = None,
    preprocessing_baselines: Annotated[bool | None, typer.Option("--preprocessing-baselines/--no-preprocessing-baselines", help="Compare with FeatureSqueezing and SpatialSmoothing (default: the level's).")] = None,
    whitebox_baselines: Annotated[bool | None, typer.Option("--whitebox-baselines/--no-whitebox-baselines", help="Also attack the baselines end to end (default: the level's).")] = None,
    per_sample: Annotated[bool, typer.Option(help="Keep per-sample correctness in the JSON.")] = True,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = 0,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("runs/evaluate"),
    resume: Annotated[bool, typer.Option(help="Reuse the stages an interrupted run with this --out saved.")] = False,
) -> None:  # fmt: skip
    """Evaluate a cloaked model under gray-box, white-box and transfer attacks, with baselines."""
    check_output_folder(out_dir)
    from deepcloak.evaluation.config import EvaluationConfig
    from deepcloak.evaluation.resume import EvaluationFolder as WorkFolder
    from deepcloak.evaluation.run import evaluate_sources
    from deepcloak.report.evaluation import write_evaluation
    from deepcloak.report.summary import evaluation_mask_lines
    from deepcloak.report.tables import evaluation_tables
    from deepcloak.resume import work_folder_for
    from deepcloak.sources import DataSource, ModelSource

    level_overrides = {
        "attacks": tuple(a.strip() for a in attacks.split(",") if a.strip()) if attacks else None,
        "steps": steps, "restarts": restarts, "max_queries": queries, "n_random": random_masks,
        "eps_grid": _floats(eps_grid), "preprocessing_baselines": preprocessing_baselines,
        "whitebox_baselines": whitebox_baselines, "max_fit_samples": fit_samples,
    }  # fmt: skip
    if max_samples is not None:
        level_overrides["max_samples"] = _sample_cap(max_samples)
    config = EvaluationConfig.for_level(
        level, eps=eps, norm=norm, clean_budget=clean_budget, layer=layer,
        side=side, seed=seed, **_method(select, ratio, score), precision=precision,
        **{k: v for k, v in level_overrides.items() if v is not None or k == "max_samples"},
        **_given(batch_size=batch_size),
    )  # fmt: skip
    data_source = DataSource(
        name=data, root=root, test_samples=test_samples, seed=seed, val_from=val_from,
        val_samples=val_samples, val_root=val_root,
    )  # fmt: skip
    work = work_folder_for(out_dir)
    with distributed_command(device) as (ctx, run_on):
        if ctx.enabled and resume:
            raise DeepCloakError(
                "--resume works in one process: the saved stages are not shared between "
                "torchrun's processes; rerun without torchrun, or without --resume"
            )
        # Under torchrun no process saves stages: their writes would race on one folder.
        stages_at = None if ctx.enabled else work
        if ctx.is_main:
            out.print(_cap_line(config, data_source, cloak is not None), highlight=False)
        with (
            progress_bars() if ctx.is_main else quiet_progress() as progress,
            _keeps_stages(work) if stages_at else contextlib.nullcontext(),
        ):
            report = evaluate_sources(
                ModelSource(
                    spec=model, weights=weights, allow_pickle=allow_pickle,
                    output=_output_key(output), device=run_on, random_weights=random_weights,
                    seed=seed,
                ),
                data_source, config, cloak_file=cloak,
                surrogate=ModelSource(spec=surrogate, allow_pickle=allow_pickle, device=run_on)
                if surrogate else None,
                progress=progress, workers=workers, work_dir=stages_at, resume=resume,
            )  # fmt: skip
        if not ctx.is_main:  # rank 0 prints and writes the results, the same on every process
            return
        out.print("\n".join(evaluation_mask_lines(report)), highlight=False)
        for table in evaluation_tables(report):
            out.print(table)
        for check in report.warnings:
            console.print(
                f"[bold yellow]warning:[/] {check.name}: {check.message}", highlight=False
            )
        paths = write_evaluation(report, out_dir, per_sample=per_sample)
        if stages_at:  # the outputs are written: the saved stages are no longer needed
            WorkFolder(stages_at).remove()
        out.print(f"wrote {', '.join(str(p) for p in paths.values())}")


@contextlib.contextmanager
def _keeps_stages(work: Path) -> Iterator[None]:
    """Say where an evaluation that stops early left its finished stages."""
    try:
        yield
    except BaseException as e:
        from deepcloak.evaluation.resume import EvaluationFolder as WorkFolder
        from deepcloak.resume import WorkFolderError

        if isinstance(e, WorkFolderError):  # an error about the folder itself: leave it as it is
            raise
        folder = WorkFolder(work)
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


def _sample_cap(text: str) -> int | None:
    """``--max-samples``: a positive count, or ``all`` (no cap)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise DeepCloakError(f"--max-samples must be a positive count or 'all', got {text!r}")
    return value


def _cap_line(config: EvaluationConfig, data: DataSource, cloak_given: bool) -> str:
    """Which samples the evaluation will use: the validation source, and the visible cap."""
    splits = data.splits()
    n_test, n_val = len(splits.test), len(splits.val) if splits.val is not None else 0
    where = f"; validation: {splits.validation.description}" if splits.validation else ""
    searching = config.resolved(cloak_given=cloak_given).select is not None
    cap = config.max_samples
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


class Interrupted(BaseException):
    """Ctrl-C, raised past click (which would turn ``KeyboardInterrupt`` into "Aborted!", exit 1)."""


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: object) -> None:
    # DataLoader workers share the terminal's Ctrl-C; torch expects KeyboardInterrupt there.
    raise Interrupted if os.getpid() == _MAIN_PID else KeyboardInterrupt


def main() -> None:
    """Entry point of the ``deepcloak`` command; Ctrl-C stops it with one line and status 130."""
    import signal
    import sys

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not if SIGINT is ignored
        signal.signal(signal.SIGINT, _interrupt)
    try:
        app()
    except Interrupted:
        console.print("[bold red]interrupted[/] (Ctrl-C)", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
