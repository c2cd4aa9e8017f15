"""The honest evaluation of a cloak: threat models, strong attacks, baselines, statistics, checks.

:func:`evaluate_cloak` answers "how much does the cloak help, against whom, at what clean cost?"
the way a careful reviewer expects (Carlini et al. 2019, arXiv 1902.06705; Tramer et al. 2020,
arXiv 2002.08347):

- **Threat models**, named on every number: *gray-box* (samples crafted on the unmasked model,
  the paper's setting), *white-box* (attacks run end to end through the defended model) and
  *transfer* (samples crafted on an independently trained surrogate the caller gives).
- **Attacks**: native FGSM and PGD, and ART's AutoPGD and Square (gradient-free); per sample,
  the worst case over all attacks run.
- **Baselines at equal settings** (:mod:`deepcloak.evaluation.defenses`): the unmasked model,
  random masks and activation pruning removing as many features, and ART's FeatureSqueezing and
  SpatialSmoothing in front of the unmasked model.
- **Statistics**: a Wilson interval on every accuracy (an interval of the mean for the random
  masks); McNemar's exact paired test of the cloaked against the unmasked model.
- **Ratio**: chosen on a validation split (:func:`deepcloak.evaluation.ratio_choice.choose_ratio`),
  reported on the test split.
- **Sanity checks** (:mod:`deepcloak.evaluation.probes`, :mod:`deepcloak.evaluation.sanity`).

The stages below pass their results as return values; :func:`evaluate_cloak` only chains them.
:func:`evaluate_sources` is what ``deepcloak evaluate`` runs: it loads the model and data named
on the command line, then calls :func:`evaluate_cloak`.

Example:
    >>> config = EvaluationConfig(eps=8 / 255, attacks=("fgsm", "pgd", "apgd", "square"))
    >>> report = evaluate_cloak(model, train_loader, val_loader, test_loader, config=config)
    >>> report.result("cloaked", "white-box").accuracy
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, TensorDataset

from deepcloak.attacks import art as art_attacks
from deepcloak.attacks.native import FGSM, Attack
from deepcloak.cloak.fit import Cloak, fit, model_device
from deepcloak.cloak.mask import keep_mask, masked
from deepcloak.data.loader import BatchLoader, make_loader
from deepcloak.distributed import from_main
from deepcloak.environment import environment
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig, build_attack, in_config_precision
from deepcloak.evaluation.crafted import CraftedSets, Samples, TimedAttack, target
from deepcloak.evaluation.defenses import Defense, build_defenses, measure_defenses
from deepcloak.evaluation.inputs import (
    SampleCap,
    check_cloak_fits,
    check_model_fits,
    collect,
    describe_data,
    describe_model,
    describe_train,
    shared_samples,
)
from deepcloak.evaluation.passes import Stage, renamed
from deepcloak.evaluation.probes import eps_curve, sanity_checks
from deepcloak.evaluation.ratio_choice import choose_ratio
from deepcloak.evaluation.results import (
    CLOAKED,
    UNMASKED,
    AccuracyResult,
    Comparison,
    EvaluationReport,
    RatioChoice,
    SweepResult,
    ThreatModel,
    compare,
    find_result,
)
from deepcloak.evaluation.resume import (
    CHECKS,
    CURVE,
    MAYBE_SWEEP,
    RESULTS,
    SWEEP,
    Codec,
    StageRunner,
    WorkFolder,
    fingerprint,
)
from deepcloak.evaluation.sanity import SanityCheck
from deepcloak.evaluation.selection import search_choice, search_cloak
from deepcloak.evaluation.sources import DataSource, ModelSource
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.evaluation.timings import AttackPass, StageTime, Timings, clock
from deepcloak.models.precision import current_precision
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_ratios

__all__ = ["evaluate_cloak", "evaluate_sources"]

log = logging.getLogger(__name__)

NOTE_ALL_SAMPLES = "Robust accuracy counts over all evaluated samples, not only clean-correct ones."


@dataclass(frozen=True)
class _Splits:
    """The checked test and validation samples, and what the checks found."""

    test: Samples
    val: Samples
    num_classes: int
    overlap: int
    cap: SampleCap


def _prepare(
    model: nn.Module,
    val_loader: Iterable[Any],
    test_loader: Iterable[Any],
    surrogate: nn.Module | None,
    config: EvaluationConfig,
) -> _Splits:
    """Collect the test and validation samples and check them against the model(s)."""
    if config.uses_art:
        art_attacks.require_art()  # fail now, not after the fit
    x, y = collect(test_loader, "test", config.samples.max_samples)
    # The search's validation pass is one FGSM pass and its bound needs samples: the level's cap
    # applies to the validation samples only when the paper's ratio is chosen on a PGD sweep.
    val_cap = config.samples.max_samples if config.cloak.select is None else None
    x_val, y_val = collect(val_loader, "validation", val_cap)
    num_classes = check_model_fits(model, x, y, data="the test data")
    check_model_fits(model, x_val, y_val, data="the validation data")
    if x_val.shape[1:] != x.shape[1:]:
        raise DeepCloakError(
            f"validation inputs have shape {tuple(x_val.shape[1:])} but test inputs "
            f"{tuple(x.shape[1:])}; expected the same data set"
        )
    if surrogate is not None:
        k = check_model_fits(surrogate, x, y, data="the test data", what="surrogate model")
        if k != num_classes:
            raise DeepCloakError(
                f"the surrogate has {k} outputs but the model {num_classes}; a transfer "
                "attack needs a surrogate trained on the same classes"
            )
    bs = config.samples.batch_size
    overlap = shared_samples(x_val, x)
    test, val = Samples(x, y, bs, "test"), Samples(x_val, y_val, bs, "validation")
    cap = SampleCap(
        config.samples.max_samples, source=config.max_samples_source, level=config.level_name
    )
    return _Splits(test, val, num_classes, overlap, cap)


def _loader(samples: Samples) -> BatchLoader:
    return make_loader(TensorDataset(samples.x, samples.y), batch_size=samples.batch_size)


def _fit_or_use(
    model: nn.Module, train: Iterable[Any] | Cloak, splits: _Splits, config: EvaluationConfig,
    progress: ProgressFn, store: CraftedSets,
) -> Cloak:  # fmt: skip
    """The given cloak, or one fit on ``train`` with FGSM at ``fit_eps`` (its attack pass timed),
    or, with ``config.cloak.select``, the searched one
    (:func:`~deepcloak.evaluation.selection.search_cloak`); checked against the model (before a
    stage saves it)."""
    if isinstance(train, Cloak):
        if config.cloak.select is not None:
            raise DeepCloakError(
                f"select={config.cloak.select!r} searches a mask on training data, but a fitted "
                "cloak was given; pass training data (drop --cloak) or drop the selector"
            )
        check_cloak_fits(model, train, splits.test.x)
        return train
    if config.cloak.select is not None:
        searched = search_cloak(model, train, splits.val, config, progress)
        check_cloak_fits(model, searched, splits.test.x)
        return searched
    attack = TimedAttack(FGSM(eps=config.resolved_fit_eps))
    cloak = fit(
        model, train, attack=attack, layer=config.cloak.layer, side=config.cloak.side,
        score=config.cloak.score, max_samples=config.samples.max_fit_samples,
        seed=config.runtime.seed, progress=progress,
    )  # fmt: skip
    check_cloak_fits(model, cloak, splits.test.x)
    if attack.samples:
        on = target(UNMASKED)
        store.record(
            AttackPass(attack.spec(), on.key, on.defense, None, None, "train", store.stage,
                       attack.samples, attack.seconds)
        )  # fmt: skip
    return cloak


def _validation_sweep(
    model: nn.Module, cloak: Cloak, val: Samples, attack: Attack, config: EvaluationConfig,
    progress: ProgressFn, store: CraftedSets,
) -> SweepResult | None:  # fmt: skip
    """The gray-box sweep on the validation split that the ratio is chosen on (none if fixed)."""
    if config.cloak.ratio is not None:
        return None
    stage = Stage(renamed(progress, "validation: "), "gray-box attack", val.y.numel())
    return graybox_sweep(
        model, cloak, _loader(val), attack=attack, ratios=config.cloak.ratios, n_random=0,
        seed=config.runtime.seed, confidence=config.checks.confidence,
        progress=renamed(progress, "validation: "),
        adversarial=store.get(attack, model, target(UNMASKED), val, stage),
    )  # fmt: skip


def _choose(sweep: SweepResult | None, config: EvaluationConfig) -> RatioChoice:
    """The user's fixed ratio, or the one chosen on the validation sweep."""
    if sweep is None or config.cloak.ratio is not None:
        return RatioChoice(
            ratio=config.cloak.ratio or 0.0, clean_budget=config.cloak.clean_budget,
            baseline_clean_accuracy=None, baseline_graybox_accuracy=None, candidates=(),
            n_samples=0, attack={}, split="fixed",
            reason="ratio fixed by the user; no validation choice made",
        )  # fmt: skip
    return choose_ratio(sweep, config.cloak.clean_budget)


def _ratio_curve(
    model: nn.Module, cloak: Cloak, test: Samples, attack: Attack, ratio: float,
    config: EvaluationConfig, progress: ProgressFn, store: CraftedSets,
) -> SweepResult:  # fmt: skip
    """The gray-box sweep on the test split, with white-box points and random masks.

    Its gray-box samples and white-box attacks come from ``store``: the defences' stage crafted
    the gray-box set and the white-box one at the evaluated ratio (and ratio 0 is the unmasked
    model), so usually only the other white-box ratios are attacked here.
    """
    white_ratios = check_ratios(sorted({*config.compare.whitebox_ratios, ratio}))
    named = renamed(progress, "ratio sweep: ")
    stage = Stage(named, "white-box attack", (1 + len(white_ratios)) * test.y.numel())
    x_adv = store.get(attack, model, target(UNMASKED), test, stage)
    white = {}
    for r in white_ratios:
        with masked(model, cloak.layer, keep_mask(cloak.ranking, r, cloak.feature_shape)) as m:
            correct = test.correct(m, store.get(attack, m, target(CLOAKED, r), test, stage))
        spec = attack.spec()
        white[r] = (
            AccuracyResult(
                CLOAKED, ThreatModel.WHITEBOX, spec, correct, r, config.checks.confidence
            ),
        )
    return graybox_sweep(
        model, cloak, _loader(test), attack=attack,
        ratios=sorted({*config.cloak.ratios, *config.compare.whitebox_ratios, ratio}),
        n_random=config.compare.n_random,
        seed=config.runtime.seed, whitebox_attacks=[attack], whitebox_ratios=white_ratios,
        confidence=config.checks.confidence, progress=named, adversarial=x_adv, whitebox=white,
    )  # fmt: skip


def _defenses_at(
    model: nn.Module, cloak: Cloak, splits: _Splits, ratio: float, config: EvaluationConfig
) -> tuple[list[Defense], list[str]]:
    """The defences at ``ratio``; activation pruning measures activations on validation data."""
    activation = fit(
        model, _loader(splits.val), layer=cloak.layer.name, side=cloak.layer.side,
        score="activation", seed=config.runtime.seed,
    )  # fmt: skip
    return build_defenses(model, cloak, activation, ratio, config, images=splits.test.x.ndim == 4)


def _comparisons(results: list[Any]) -> list[Comparison]:
    """McNemar's exact test of cloaked vs unmasked under each threat model (worst case)."""
    out = []
    for tm in ThreatModel:
        a, b = find_result(results, CLOAKED, tm), find_result(results, UNMASKED, tm)
        if a is not None and b is not None:
            out.append(compare(a, b))
    return out


@in_config_precision
def evaluate_cloak(
    model: nn.Module,
    train_loader_or_cloak: Iterable[Any] | Cloak,
    val_loader: Iterable[Any],
    test_loader: Iterable[Any],
    *,
    config: EvaluationConfig | None = None,
    surrogate: nn.Module | None = None,
    progress: ProgressFn | None = None,
    metadata: Mapping[str, Any] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> EvaluationReport:
    """Evaluate DeepCloak on ``model`` honestly: threat models, attacks, baselines, statistics.

    The model is used in eval mode and left as it was (masks are inserted for each measurement
    and removed again; train/eval modes are restored). Each attack pass runs once: stages share
    the crafted sets (:mod:`deepcloak.evaluation.crafted`), and the report's ``timings`` say
    what each stage and pass cost.

    Args:
        model: the trained classifier, taking inputs in [0, 1].
        train_loader_or_cloak: a fitted :class:`~deepcloak.Cloak`, or training data to fit one on
            (FGSM at ``fit_eps``, with ``score``, ``layer`` and ``side``: ``config.cloak``).
        val_loader: validation data, held out from the test data: the ratio is chosen and the
            activation-pruning baseline measured here.
        test_loader: test data; every reported accuracy is measured here.
        config: the settings (default :class:`EvaluationConfig()`).
        surrogate: an independently trained model for the transfer threat model (optional).
        progress: ``progress(task, done, total)`` callback.
        metadata: free-form facts recorded in the report's ``run``.
        work_dir: save finished stages and crafted sets here as they finish
            (:mod:`deepcloak.evaluation.resume`); the caller removes it once the report is
            written. ``None``: save nothing.
        resume: reuse the stages an interrupted run saved in ``work_dir``.

    Returns:
        An :class:`~deepcloak.evaluation.results.EvaluationReport`.

    Raises:
        DeepCloakError: bad settings, empty loaders, inputs outside [0, 1], data that does not
            match the model (input shape or label range), a surrogate that does not match, a
            cloak from another model, ART missing for an ART attack, or a ``work_dir`` that
            holds another evaluation (or an interrupted one, without ``resume``).
    """
    cfg = (config if config is not None else EvaluationConfig()).resolved(
        cloak_given=isinstance(train_loader_or_cloak, Cloak)
    )
    report = progress or no_progress
    started, t0, prepare_start = datetime.now(timezone.utc), time.perf_counter(), clock()
    splits = _prepare(model, val_loader, test_loader, surrogate, cfg)
    stages = _stage_runner(
        model, train_loader_or_cloak, splits, surrogate, cfg, metadata, work_dir, resume
    )
    stages.timings.stages.append(StageTime("prepare", clock() - prepare_start))
    store, work = stages.store, stages.work
    # Under torchrun every decision that sets how many passes follow (the cloak, its ratio)
    # is rank 0's: a last-bit difference between ranks must not make them disagree and hang.
    cloak = from_main(stages.run(
        "fit", lambda: _fit_or_use(model, train_loader_or_cloak, splits, cfg, report, store),
        Codec(work.save_cloak, work.load_cloak) if work is not None else None,
    ))  # fmt: skip
    gray_attack = build_attack(cfg.attack.select_attack, cfg)
    choice = search_choice(cloak) if cfg.cloak.selector is not None else _choose(
        stages.run(
            "ratio choice",
            lambda: _validation_sweep(model, cloak, splits.val, gray_attack, cfg, report, store),
            MAYBE_SWEEP,
        ), cfg,
    )  # fmt: skip
    choice = from_main(choice)
    log.info("evaluating at ratio %.4g (%s)", choice.ratio, choice.reason)
    found = _measure(stages, model, cloak, choice.ratio, splits, surrogate, cfg, report)
    report_start = clock()
    data = _describe_splits(splits, train_loader_or_cloak, val_loader, test_loader)
    run = {
        "seed": cfg.runtime.seed, "data": data, "model": describe_model(model),
        "surrogate": describe_model(surrogate) if surrogate is not None else None,
        "layer": cloak.layer.to_json(), "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "duration_s": round(time.perf_counter() - t0, 3), "metadata": dict(metadata or {}),
    }  # fmt: skip
    out = EvaluationReport(
        run=run, config=cfg, cloak=cloak.metadata(choice.ratio), ratio_choice=choice,
        defenses={d.name: d.spec for d in found.defenses}, results=found.results,
        comparisons=_comparisons(found.results), sanity=found.checks, eps_curve=found.eps_curve,
        ratio_curve=found.ratio_curve,
        notes=[NOTE_ALL_SAMPLES, *_overlap_notes(splits.overlap), *found.notes],
        environment=environment(model_device(model), precision=current_precision().recorded),
        timings=stages.timings,
    )  # fmt: skip
    stages.timings.stages.append(StageTime("report", clock() - report_start))
    return out


def _stage_runner(
    model: nn.Module, train: Iterable[Any] | Cloak, splits: _Splits, surrogate: nn.Module | None,
    config: EvaluationConfig, metadata: Mapping[str, Any] | None,
    work_dir: str | os.PathLike[str] | None, resume: bool,
) -> StageRunner:  # fmt: skip
    """The runner of the stages: fresh timings, the crafted-set store, the work folder if any."""
    work = None
    if work_dir is not None:
        tensors = {
            "test inputs": splits.test.x, "test labels": splits.test.y,
            "validation inputs": splits.val.x, "validation labels": splits.val.y,
        }  # fmt: skip
        facts = fingerprint(model, train, tensors, surrogate, config.to_json(), metadata)
        work = WorkFolder.open(work_dir, facts, resume=resume)
    timings = Timings()
    return StageRunner(timings, CraftedSets(timings, work), work)


@dataclass(frozen=True)
class _Measured:
    """What the stages after the ratio choice measured."""

    defenses: list[Defense]
    notes: list[str]
    results: list[AccuracyResult]
    eps_curve: list[AccuracyResult]
    checks: list[SanityCheck]
    ratio_curve: SweepResult


def _measure(
    stages: StageRunner, model: nn.Module, cloak: Cloak, ratio: float, splits: _Splits,
    surrogate: nn.Module | None, cfg: EvaluationConfig, report: ProgressFn,
) -> _Measured:  # fmt: skip
    """The defences at ``ratio`` under every attack, the eps curve, the checks, the ratio curve."""
    store, test = stages.store, splits.test
    defenses, notes = stages.run("defenses", lambda: _defenses_at(model, cloak, splits, ratio, cfg))
    attacks = {name: build_attack(name, cfg) for name in cfg.attack.attacks}
    results = stages.run(
        "attacks",
        lambda: measure_defenses(
            defenses, attacks, test, model, cfg, ratio=ratio, surrogate=surrogate,
            progress=report, store=store,
        ),
        RESULTS,
    )  # fmt: skip
    cloaked = defenses[1].variants[0]
    curve, eps_check = stages.run(
        "eps curve",
        lambda: eps_curve(model, cloaked, test, cfg, ratio=ratio, progress=report, store=store),
        CURVE,
    )
    checks = stages.run(
        "sanity checks",
        lambda: sanity_checks(
            cloaked, test, cfg, results, attacks, report, ratio=ratio, store=store
        ),
        CHECKS,
    )
    gray_attack = build_attack(cfg.attack.select_attack, cfg)
    ratio_curve = stages.run(
        "ratio curve",
        lambda: _ratio_curve(model, cloak, test, gray_attack, ratio, cfg, report, store),
        SWEEP,
    )
    return _Measured(defenses, notes, results, curve, [*checks, eps_check], ratio_curve)


def _overlap_notes(overlap: int) -> list[str]:
    if not overlap:
        return []
    log.warning("%d validation samples also appear in the test split", overlap)
    return [
        f"{overlap} validation samples also appear in the test split: the ratio choice is not "
        "fully independent of the test numbers; hold out disjoint splits"
    ]


def _describe_splits(
    splits: _Splits, train: Any, val_loader: Any, test_loader: Any
) -> dict[str, Any]:
    test = describe_data(test_loader, splits.test.x, splits.test.y)
    validation = describe_data(val_loader, splits.val.x, splits.val.y)
    return {
        "test": test,
        "validation": validation,
        "sample_cap": splits.cap.describe({"test": test, "validation": validation}),
        "train": describe_train(train),
        "num_classes": splits.num_classes,
        "validation_test_overlap": splits.overlap,
    }


def evaluate_sources(
    model: ModelSource,
    data: DataSource,
    config: EvaluationConfig,
    *,
    cloak_file: Path | None = None,
    surrogate: ModelSource | None = None,
    progress: ProgressFn | None = None,
    work_dir: Path | None = None,
    resume: bool = False,
    workers: int = 0,
) -> EvaluationReport:
    """Load a model and a data set named on the command line, and evaluate (``deepcloak evaluate``).

    Validation samples come from where ``data`` says (by default a seeded part of the test
    split, the rest reported on; see :meth:`DataSource.splits`); the cloak is read from
    ``cloak_file`` or fit (searched, by default) on the training split; every loader is
    :func:`~deepcloak.data.loader.make_loader`'s with ``config.samples.batch_size`` (``workers``
    processes decode an image folder; in-memory sets need none). ``work_dir`` and ``resume``:
    as in :func:`evaluate_cloak`.

    Raises:
        DeepCloakError: as :func:`evaluate_cloak`, or files that cannot be loaded.
        DataFormatError: a malformed model, mask or data file.
    """
    if data.val_samples == 0:
        raise DeepCloakError("the evaluation needs validation samples (val_samples >= 1)")
    splits = data.splits()
    fit_set, test_set = splits.fit, splits.test
    val_set = splits.val
    if val_set is None:  # pragma: no cover - val_samples >= 1 was checked above
        raise DeepCloakError("no validation samples were held out")
    loaded = model.load_for(test_set)
    surrogate_net = (
        surrogate.load_for(test_set, what="surrogate model").model if surrogate else None
    )
    device = model_device(loaded.model)

    def loader(dataset: Dataset[Any]) -> BatchLoader:
        return make_loader(
            dataset, batch_size=config.samples.batch_size, workers=workers, device=device
        )

    train: Iterable[Any] | Cloak = Cloak.load(cloak_file)[0] if cloak_file else loader(fit_set)
    metadata = {
        "model": model.spec, "model_info": loaded.info, "output": model.output,
        "surrogate": surrogate.spec if surrogate else None,
        "surrogate_output": surrogate.output if surrogate else None, "data": data.name,
        "root": str(data.root) if data.root else None,
        "cloak_file": str(cloak_file) if cloak_file else None,
        "validation": splits.validation.to_json() if splits.validation else None,
    }  # fmt: skip
    return evaluate_cloak(
        loaded.model, train, loader(val_set), loader(test_set), config=config,
        surrogate=surrogate_net, progress=progress, metadata=metadata, work_dir=work_dir,
        resume=resume,
    )  # fmt: skip
