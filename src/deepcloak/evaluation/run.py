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
from deepcloak.data.loader import BatchLoader, make_loader
from deepcloak.environment import environment
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig, build_attack
from deepcloak.evaluation.defenses import Defense, Samples, build_defenses, measure_defenses
from deepcloak.evaluation.inputs import (
    check_cloak_fits,
    check_model_fits,
    collect,
    describe_data,
    describe_model,
    describe_train,
    shared_samples,
)
from deepcloak.evaluation.passes import renamed
from deepcloak.evaluation.probes import eps_curve, sanity_checks
from deepcloak.evaluation.ratio_choice import RatioChoice, choose_ratio
from deepcloak.evaluation.results import (
    CLOAKED,
    UNMASKED,
    Comparison,
    EvaluationReport,
    SweepResult,
    ThreatModel,
    compare,
    find_result,
)
from deepcloak.evaluation.sources import DataSource, ModelSource
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.progress import ProgressFn, no_progress

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
    x, y = collect(test_loader, "test", config.max_samples)
    x_val, y_val = collect(val_loader, "validation", config.max_samples)
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
    bs = config.batch_size
    overlap = shared_samples(x_val, x)
    return _Splits(Samples(x, y, bs), Samples(x_val, y_val, bs), num_classes, overlap)


def _loader(samples: Samples) -> BatchLoader:
    return make_loader(TensorDataset(samples.x, samples.y), batch_size=samples.batch_size)


def _fit_or_use(
    model: nn.Module, train: Iterable[Any] | Cloak, config: EvaluationConfig, progress: ProgressFn
) -> Cloak:
    """The given cloak, or one fit on ``train`` with FGSM at ``fit_eps``."""
    if isinstance(train, Cloak):
        return train
    return fit(
        model, train, attack=FGSM(eps=config.fit_eps if config.fit_eps is not None else config.eps),
        layer=config.layer, side=config.side, score=config.score,
        max_samples=config.max_fit_samples, seed=config.seed, progress=progress,
    )  # fmt: skip


def _choose(
    model: nn.Module, cloak: Cloak, val: Samples, select: Attack, config: EvaluationConfig,
    progress: ProgressFn,
) -> RatioChoice:  # fmt: skip
    """The user's fixed ratio, or the one chosen on the validation split."""
    if config.ratio is not None:
        return RatioChoice(
            ratio=config.ratio, clean_budget=config.clean_budget, baseline_clean_accuracy=None,
            baseline_graybox_accuracy=None, candidates=(), n_samples=0, attack={}, split="fixed",
            reason="ratio fixed by the user; no validation choice made",
        )  # fmt: skip
    sweep = graybox_sweep(
        model, cloak, _loader(val), attack=select, ratios=config.ratios, n_random=0,
        seed=config.seed, confidence=config.confidence,
        progress=renamed(progress, "validation: "),
    )  # fmt: skip
    return choose_ratio(sweep, config.clean_budget)


def _ratio_curve(
    model: nn.Module, cloak: Cloak, test: Samples, select: Attack, ratio: float,
    config: EvaluationConfig, progress: ProgressFn,
) -> SweepResult:  # fmt: skip
    """The gray-box sweep on the test split, with white-box points and random masks."""
    return graybox_sweep(
        model, cloak, _loader(test), attack=select,
        ratios=sorted({*config.ratios, *config.whitebox_ratios, ratio}), n_random=config.n_random,
        seed=config.seed, whitebox_attacks=[select],
        whitebox_ratios=sorted({*config.whitebox_ratios, ratio}), confidence=config.confidence,
        progress=renamed(progress, "ratio sweep: "),
    )  # fmt: skip


def _defenses_at(
    model: nn.Module, cloak: Cloak, splits: _Splits, ratio: float, config: EvaluationConfig
) -> tuple[list[Defense], list[str]]:
    """The defences at ``ratio``; activation pruning measures activations on validation data."""
    activation = fit(
        model, _loader(splits.val), layer=cloak.layer.name, side=cloak.layer.side,
        score="activation", seed=config.seed,
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
) -> EvaluationReport:
    """Evaluate DeepCloak on ``model`` honestly: threat models, attacks, baselines, statistics.

    The model is used in eval mode and left as it was (masks are inserted for each measurement
    and removed again; train/eval modes are restored).

    Args:
        model: the trained classifier, taking inputs in [0, 1].
        train_loader_or_cloak: a fitted :class:`~deepcloak.Cloak`, or training data to fit one on
            (FGSM at ``config.fit_eps``, ``config.score``, ``config.layer`` and ``side``).
        val_loader: validation data, held out from the test data: the ratio is chosen and the
            activation-pruning baseline measured here.
        test_loader: test data; every reported accuracy is measured here.
        config: the settings (default :class:`EvaluationConfig()`).
        surrogate: an independently trained model for the transfer threat model (optional).
        progress: ``progress(task, done, total)`` callback.
        metadata: free-form facts recorded in the report's ``run``.

    Returns:
        An :class:`~deepcloak.evaluation.results.EvaluationReport`.

    Raises:
        DeepCloakError: bad settings, empty loaders, inputs outside [0, 1], data that does not
            match the model (input shape or label range), a surrogate that does not match, a
            cloak from another model, or ART missing for an ART attack.
    """
    cfg, report = config if config is not None else EvaluationConfig(), progress or no_progress
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    splits = _prepare(model, val_loader, test_loader, surrogate, cfg)
    cloak = _fit_or_use(model, train_loader_or_cloak, cfg, report)
    check_cloak_fits(model, cloak, splits.test.x)
    select = build_attack(cfg.select_attack, cfg)
    choice = _choose(model, cloak, splits.val, select, cfg, report)
    log.info("evaluating at ratio %.4g (%s)", choice.ratio, choice.reason)
    defenses, notes = _defenses_at(model, cloak, splits, choice.ratio, cfg)
    attacks = {name: build_attack(name, cfg) for name in cfg.attacks}
    results = measure_defenses(
        defenses, attacks, splits.test, model, cfg, ratio=choice.ratio, surrogate=surrogate,
        progress=report,
    )  # fmt: skip
    cloaked = defenses[1].variants[0]
    curve, eps_check = eps_curve(
        model, cloaked, splits.test, cfg, ratio=choice.ratio, progress=report
    )
    checks = [*sanity_checks(cloaked, splits.test, cfg, results, attacks, report), eps_check]
    data = _describe_splits(splits, train_loader_or_cloak, val_loader, test_loader)
    run = {
        "seed": cfg.seed, "data": data, "model": describe_model(model),
        "surrogate": describe_model(surrogate) if surrogate is not None else None,
        "layer": cloak.layer.to_json(), "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "duration_s": round(time.perf_counter() - t0, 3), "metadata": dict(metadata or {}),
    }  # fmt: skip
    return EvaluationReport(
        run=run, config=cfg, cloak=cloak.metadata(choice.ratio), ratio_choice=choice,
        defenses={d.name: d.spec for d in defenses}, results=results,
        comparisons=_comparisons(results), sanity=checks, eps_curve=curve,
        ratio_curve=_ratio_curve(model, cloak, splits.test, select, choice.ratio, cfg, report),
        notes=[NOTE_ALL_SAMPLES, *_overlap_notes(splits.overlap), *notes],
        environment=environment(model_device(model)),
    )  # fmt: skip


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
    return {
        "test": describe_data(test_loader, splits.test.x, splits.test.y),
        "validation": describe_data(val_loader, splits.val.x, splits.val.y),
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
    workers: int = 0,
) -> EvaluationReport:
    """Load a model and a data set named on the command line, and evaluate (``deepcloak evaluate``).

    The validation split is held out of the training split (``data.val_samples``); the cloak is
    read from ``cloak_file`` or fit on the rest of the training split; every loader is
    :func:`~deepcloak.data.loader.make_loader`'s with ``config.batch_size`` (``workers``
    processes decode an image folder; in-memory sets need none).

    Raises:
        DeepCloakError: as :func:`evaluate_cloak`, or files that cannot be loaded.
        DataFormatError: a malformed model, mask or data file.
    """
    if not data.val_samples:
        raise DeepCloakError("the evaluation needs validation samples (val_samples >= 1)")
    test_set = data.test()
    loaded = model.load_for(test_set)
    surrogate_net = (
        surrogate.load_for(test_set, what="surrogate model").model if surrogate else None
    )
    fit_set, val_set = data.train_and_validation()
    if val_set is None:  # pragma: no cover - val_samples >= 1 was checked above
        raise DeepCloakError("no validation samples were held out")
    device = model_device(loaded.model)

    def loader(dataset: Dataset[Any]) -> BatchLoader:
        return make_loader(dataset, batch_size=config.batch_size, workers=workers, device=device)

    train: Iterable[Any] | Cloak = Cloak.load(cloak_file)[0] if cloak_file else loader(fit_set)
    metadata = {
        "model": model.spec, "model_info": loaded.info,
        "surrogate": surrogate.spec if surrogate else None, "data": data.name,
        "root": str(data.root) if data.root else None,
        "cloak_file": str(cloak_file) if cloak_file else None,
        "validation": f"{data.val_samples} samples held out from the training split "
        f"(seed {data.seed})",
    }  # fmt: skip
    return evaluate_cloak(
        loaded.model, train, loader(val_set), loader(test_set), config=config,
        surrogate=surrogate_net,
        progress=progress, metadata=metadata,
    )  # fmt: skip
