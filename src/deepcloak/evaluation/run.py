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

The stages (:mod:`deepcloak.evaluation.stages`) pass their results as return values;
:func:`evaluate_cloak` only chains them.
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
from torch.utils.data import Dataset

from deepcloak.cloak.fit import Cloak, model_device
from deepcloak.data.loader import BatchLoader, make_loader
from deepcloak.environment import environment
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig, in_config_precision
from deepcloak.evaluation.crafted import CraftedSets
from deepcloak.evaluation.inputs import (
    EvaluationSplits,
    describe_model,
    describe_splits,
    overlap_notes,
    prepare_splits,
)
from deepcloak.evaluation.results import EvaluationReport, RatioChoice
from deepcloak.evaluation.resume import EvaluationFolder, StageRunner, fingerprint
from deepcloak.evaluation.stages import Measured, comparisons, fit_and_choose, measure
from deepcloak.evaluation.timings import StageTime, Timings, clock
from deepcloak.models.precision import current_precision
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.sources import DataSource, ModelSource

__all__ = ["evaluate_cloak", "evaluate_sources"]

log = logging.getLogger(__name__)

NOTE_ALL_SAMPLES = "Robust accuracy counts over all evaluated samples, not only clean-correct ones."


@in_config_precision
def evaluate_cloak(
    model: nn.Module, train_loader_or_cloak: Iterable[Any] | Cloak, val_loader: Iterable[Any],
    test_loader: Iterable[Any], *, config: EvaluationConfig | None = None,
    surrogate: nn.Module | None = None, progress: ProgressFn | None = None,
    metadata: Mapping[str, Any] | None = None, work_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> EvaluationReport:  # fmt: skip
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
    started, prepare_start = _Started.now(), clock()
    splits = prepare_splits(model, val_loader, test_loader, surrogate, cfg)
    stages = _stage_runner(
        model, train_loader_or_cloak, splits, surrogate, cfg, metadata, work_dir, resume
    )
    stages.timings.stages.append(StageTime("prepare", clock() - prepare_start))
    cloak, choice = fit_and_choose(stages, model, train_loader_or_cloak, splits, cfg, report)
    log.info("evaluating at ratio %.4g (%s)", choice.ratio, choice.reason)
    found = measure(stages, model, cloak, choice.ratio, splits, surrogate, cfg, report)
    report_start = clock()
    loaders = (train_loader_or_cloak, val_loader, test_loader)
    out = _report(started, cfg, model, surrogate, splits, loaders, cloak, choice, found, metadata)
    out.timings = stages.timings
    stages.timings.stages.append(StageTime("report", clock() - report_start))
    return out


def _report(
    started: _Started, cfg: EvaluationConfig, model: nn.Module, surrogate: nn.Module | None,
    splits: EvaluationSplits, loaders: tuple[Any, Any, Any], cloak: Cloak, choice: RatioChoice,
    found: Measured, metadata: Mapping[str, Any] | None,
) -> EvaluationReport:  # fmt: skip
    """The report of what the stages found, with what was evaluated and where."""
    data = describe_splits(splits, *loaders)
    return EvaluationReport(
        run=started.record(cfg.runtime.seed, data, model, surrogate, cloak, metadata), config=cfg,
        cloak=cloak.metadata(choice.ratio), ratio_choice=choice,
        defenses={d.name: d.spec for d in found.defenses}, results=found.results,
        comparisons=comparisons(found.results), sanity=found.checks, eps_curve=found.eps_curve,
        ratio_curve=found.ratio_curve,
        notes=[NOTE_ALL_SAMPLES, *overlap_notes(splits.overlap), *found.notes],
        environment=environment(model_device(model), precision=current_precision().recorded),
    )  # fmt: skip


@dataclass(frozen=True)
class _Started:
    """When an evaluation started, on the wall clock and on the monotonic one."""

    at: datetime
    perf: float

    @classmethod
    def now(cls) -> _Started:
        return cls(datetime.now(timezone.utc), time.perf_counter())

    def record(
        self, seed: int, data: dict[str, Any], model: nn.Module, surrogate: nn.Module | None,
        cloak: Cloak, metadata: Mapping[str, Any] | None,
    ) -> dict[str, Any]:  # fmt: skip
        """The report's ``run``: seed, data, models, layer, times, the caller's metadata."""
        return {
            "seed": seed, "data": data, "model": describe_model(model),
            "surrogate": describe_model(surrogate) if surrogate is not None else None,
            "layer": cloak.layer.to_json(), "started_at": self.at.isoformat(),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "duration_s": round(time.perf_counter() - self.perf, 3),
            "metadata": dict(metadata or {}),
        }  # fmt: skip


def _stage_runner(
    model: nn.Module, train: Iterable[Any] | Cloak, splits: EvaluationSplits,
    surrogate: nn.Module | None, config: EvaluationConfig, metadata: Mapping[str, Any] | None,
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
        work = EvaluationFolder.open(work_dir, facts, resume=resume)
    timings = Timings()
    return StageRunner(timings, CraftedSets(timings, work), work)


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
