"""Harden any model on any data set: fit DeepCloak on training data, sweep ratios on test data.

This is what ``deepcloak harden`` and the demo run. It checks that model and data fit each other
before any work, and writes its outputs (report, plot, mask, cloaked model) atomically, only
after every result exists.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from deepcloak._moved import moved_names
from deepcloak.attacks.native import Attack
from deepcloak.cloak.fit import Cloak, fit, model_device
from deepcloak.cloak.search import SearchResult, search_mask
from deepcloak.cloak.selectors import AUTO, DEFAULT_SELECTOR
from deepcloak.cloak.taps import LayerRef, resolve_layer
from deepcloak.cloak.torchscript import ScriptedClassifier, cloakable
from deepcloak.data.loader import BatchLoader, make_loader
from deepcloak.data.splits import DataSplits, ValidationInfo
from deepcloak.distributed import from_main
from deepcloak.environment import environment
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.evaluation.results import SCHEMA, THREAT_MODELS, SweepResult
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.harden_config import PAPER_RATIO, HardenConfig
from deepcloak.io import atomic_write, save_tensors, write_bytes_atomic, write_json_atomic
from deepcloak.models import fits as _fits
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.precision import check_precision_supported, parse_precision
from deepcloak.progress import ProgressFn
from deepcloak.report.files import write_folder
from deepcloak.report.summary import saved_mask_record
from deepcloak.sources import DataSource, ModelSource, trained_input_shape

__all__ = [
    "AUTO",
    "DEFAULT_SELECTOR",
    "PAPER_RATIO",
    "HardenConfig",
    "HardenResult",
    "harden",
    "harden_sources",
    "trained_input_shape",
    "write_harden",
]

log = logging.getLogger(__name__)

# Moved after 0.1.0: the model-fits-data checks are the models' (deepcloak.models.fits).
__getattr__ = moved_names(__name__, {"check_model_fits_data": _fits})


@dataclass
class HardenResult:
    """What :func:`harden` produced; :func:`write_harden` saves it.

    Attributes:
        ratio: the saved mask's ratio (the search's choice, or the configured ratio).
        search: the search that chose the mask (``None`` for the paper's method).
        validation: where the validation samples came from (``None`` without a search).
        model_info, data_info: the model and data for the report (filled by
            :func:`harden_sources`; the caller's own words otherwise).
    """

    config: HardenConfig
    model: nn.Module
    cloak: Cloak
    sweep: SweepResult
    seconds: float
    ratio: float = 0.0
    search: SearchResult | None = None
    validation: ValidationInfo | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    data_info: dict[str, Any] = field(default_factory=dict)

    def saved_mask(self) -> dict[str, Any]:
        """What was saved and what it bought: ``report.json``'s ``saved_mask`` (see
        :func:`deepcloak.report.summary.saved_mask_lines` for its one block of text)."""
        return saved_mask_record(
            self.sweep,
            ratio=self.ratio,
            layer=self.cloak.layer,
            search=self.search,
            validation=self.validation,
            score=self.config.score,
            clean_budget=self.config.clean_budget,
        )


def harden(
    model: nn.Module,
    train_set: Dataset[Any],
    test_set: Dataset[Any],
    config: HardenConfig,
    *,
    val_set: Dataset[Any] | None = None,
    validation: ValidationInfo | None = None,
    input_shape: Sequence[int] | None = None,
    progress: ProgressFn | None = None,
    workers: int = 0,
) -> HardenResult:
    """Find the mask on ``train_set`` (choosing it on validation samples) and sweep ratios on
    ``test_set`` (gray-box and white-box).

    With a search (the default), the mask is chosen on ``val_set``; when none is given,
    validation samples are drawn as ``config.val_from`` says — by default a seeded part of
    ``test_set``, which is then reported on the rest only (``result.validation`` says which).
    The fit samples are attacked once: the search's cached features also give the paper's
    score, which ranks the features the search kept (the sweep's rows past the saved mask).
    Without a search (``config.select=None``), the paper's method: features ranked by
    ``config.score`` at ``config.ratio``.

    ``input_shape``: the ``(C, H, W)`` the model was trained on, if known
    (:func:`~deepcloak.models.fits.check_model_fits_data`); ``workers``: processes decoding an
    image folder (:func:`~deepcloak.data.loader.make_loader`). Under ``torchrun`` the fit and
    the sweep's attacks are shared among the processes by batch, with the same results as one
    process.

    Raises:
        DeepCloakError: the model does not fit the data, or bad settings.
    """
    start = time.perf_counter()
    _check_inputs(model, config, train_set, test_set, val_set, input_shape)
    # fit and the sweeps use eval mode themselves and restore every module's own mode.
    model = cloakable(model, train_set[0][0][None].to(model_device(model)))
    attack = config.make_attack()
    device = model_device(model)

    def loader(data: Dataset[Any]) -> BatchLoader:
        return make_loader(data, batch_size=config.batch_size, workers=workers, device=device)

    search, cloak, ratio, test_set, validation = _find_mask(
        model, config, attack, loader, (train_set, test_set, val_set), validation, progress
    )
    sweep = graybox_sweep(
        model, cloak, loader(test_set), attack=attack,
        ratios=config.sweep_ratios(ratio), n_random=config.n_random, seed=config.seed,
        whitebox_attacks=[attack], whitebox_ratios=sorted({*config.whitebox_ratios, ratio}),
        progress=progress, precision=config.precision,
    )  # fmt: skip
    return HardenResult(
        config, model, cloak, sweep, time.perf_counter() - start, ratio=ratio, search=search,
        validation=validation,
    )  # fmt: skip


def _find_mask(
    model: nn.Module,
    config: HardenConfig,
    attack: Attack,
    loader: Callable[[Dataset[Any]], BatchLoader],
    sets: tuple[Dataset[Any], Dataset[Any], Dataset[Any] | None],
    validation: ValidationInfo | None,
    progress: ProgressFn | None,
) -> tuple[SearchResult | None, Cloak, float, Dataset[Any], ValidationInfo | None]:
    """The saved mask as a cloak and its ratio: searched, or the paper's ranking at
    ``config.ratio``; with the search and the test set and validation it leaves."""
    train_set, test_set, val_set = sets
    if config.selector is None:
        cloak = fit(
            model, loader(train_set), attack=attack, layer=config.layer, side=config.side,
            score=config.score, seed=config.seed, progress=progress,
        )  # fmt: skip
        return None, cloak, float(config.ratio or 0.0), test_set, validation
    train_set, val_set, test_set, validation = _held_out(
        config, train_set, test_set, val_set, validation
    )
    search = search_mask(
        model, loader(train_set), loader(val_set), layer=_layer(model, config, train_set),
        attack=attack, selector=config.selector, clean_budget=config.clean_budget,
        progress=progress,
    )  # fmt: skip
    # The search's removal order ranks the features, so the sweep shows its prefixes and
    # the saved mask (at the chosen ratio) is exactly the searched one.
    cloak, ratio = from_main(search.to_cloak(seed=config.seed))  # one choice on all ranks
    return search, cloak, ratio, test_set, validation


def _check_inputs(
    model: nn.Module,
    config: HardenConfig,
    train_set: Dataset[Any],
    test_set: Dataset[Any],
    val_set: Dataset[Any] | None,
    input_shape: Sequence[int] | None,
) -> None:
    """Model and data fit each other, and the precision the device: before any work."""
    _fits.check_model_fits_data(model, train_set, "the training data", input_shape=input_shape)
    _fits.check_model_fits_data(model, test_set, "the test data", input_shape=input_shape)
    if val_set is not None:
        _fits.check_model_fits_data(model, val_set, "the validation data", input_shape=input_shape)
    check_precision_supported(config.precision, model_device(model))


def _held_out(
    config: HardenConfig,
    train_set: Dataset[Any],
    test_set: Dataset[Any],
    val_set: Dataset[Any] | None,
    validation: ValidationInfo | None,
) -> tuple[Dataset[Any], Dataset[Any], Dataset[Any], ValidationInfo | None]:
    """``(fit, validation, test)`` sets for the search: ``val_set`` if given, else drawn as
    ``config.val_from`` says (and the validation's description with them)."""
    if val_set is not None:
        return train_set, val_set, test_set, validation
    splits = DataSplits.make(
        train_set, test_set, val_from=config.val_from,  # type: ignore[arg-type]
        val_samples=config.val_samples, seed=config.seed,
    )  # fmt: skip
    if splits.val is None:
        raise DeepCloakError("the search needs validation samples; val_samples=0 leaves none")
    return splits.fit, splits.val, splits.test, splits.validation


def _layer(model: nn.Module, config: HardenConfig, data: Dataset[Any]) -> LayerRef | None:
    """Layer L for the search: ``None`` (the input of the final ``nn.Linear``) unless named."""
    if config.layer is None and config.side is None:
        return None
    x = data[0][0][None].to(model_device(model))
    return resolve_layer(model, config.layer, config.side, example=x)


def harden_sources(
    model: ModelSource,
    data: DataSource,
    config: HardenConfig,
    *,
    progress: ProgressFn | None = None,
    workers: int = 0,
) -> HardenResult:
    """Load a model and a data set named on the command line, and :func:`harden` it
    (``workers``: processes decoding an image folder).

    Raises:
        DeepCloakError: files that cannot be loaded, a model that does not fit the data, or
            bad settings.
        DataFormatError: a malformed model or data file.
    """
    searching = config.selector is not None
    if not searching:  # the paper's method at a fixed ratio chooses nothing: no validation
        data = replace(data, val_samples=0, val_from=None, val_root=None)
    splits = data.splits()
    loaded = model.load_for(splits.test)
    if searching and splits.validation is not None:
        config = replace(
            config, val_from=splits.validation.source, val_samples=len(splits.val or ())
        )
    result = harden(
        loaded.model, splits.fit, splits.test, config, val_set=splits.val,
        validation=splits.validation, input_shape=trained_input_shape(loaded.info),
        progress=progress, workers=workers,
    )  # fmt: skip
    result.model_info = loaded.info
    result.data_info = data.describe(splits)
    return result


def _save_cloaked_model(result: HardenResult, out: Path, meta: dict[str, Any]) -> Path | None:
    """Save the model with the mask folded in, in the form it came in; ``None`` if not foldable."""
    cloaked = copy.deepcopy(result.model)
    try:
        result.cloak.apply(cloaked, result.ratio, fold=True)
    except LayerError as e:
        # The mask file is then the artefact: Cloak.load(path) and .apply(model) insert it.
        log.warning(
            "the mask cannot be folded into the model (%s); wrote the mask file only: apply it "
            "with deepcloak.Cloak.load(path) then cloak.apply(model, ratio)",
            e,
        )
        return None
    info = result.model_info
    if "arch" in info and "arch_kwargs" in info:
        path = out / "cloaked_model.safetensors"
        save_checkpoint(
            path, cloaked, arch=info["arch"], arch_kwargs=info["arch_kwargs"], metadata=meta
        )
    elif isinstance(cloaked, ScriptedClassifier):
        path = out / "cloaked_model.pt"  # TorchScript in, TorchScript out
        with atomic_write(path) as f:
            cloaked.save_scripted(f)
    else:
        path = out / "cloaked_state_dict.safetensors"
        state = {k: v.detach().clone() for k, v in cloaked.state_dict().items()}
        save_tensors(path, state, {"format": "deepcloak-state-dict/1", **meta})
    return path


def harden_document(result: HardenResult, files: dict[str, str]) -> dict[str, Any]:
    """The ``report.json`` document (kind ``harden`` of the shared schema, ``docs/schema.md``)."""
    return {
        "schema": SCHEMA,
        "kind": "harden",
        "config": result.config.to_json(),
        "data": result.data_info,
        "model": result.model_info,
        "fit": result.cloak.metadata(result.ratio),
        "saved_mask": result.saved_mask(),
        "search": result.search.to_json() if result.search is not None else None,
        "threat_models": dict(THREAT_MODELS),
        "sweep": result.sweep.to_json(),
        "environment": environment(
            model_device(result.model), precision=parse_precision(result.config.precision).recorded
        ),
        "seconds": result.seconds,
        "files": files,
    }


def write_harden(result: HardenResult, out: str | Path, *, title: str = "") -> dict[str, Path]:
    """Write ``report.json``, ``sweep.png``, ``mask.safetensors`` and the cloaked model.

    The cloaked model is saved with the mask folded into the final ``nn.Linear``: as a deepcloak
    checkpoint when ``result.model_info`` holds ``arch`` and ``arch_kwargs`` (a zoo model), as
    TorchScript for a TorchScript model, else as a ``state_dict`` in safetensors with the
    original keys (load it with the same factory). When L is not an ``nn.Linear``, the mask
    cannot be folded and only the mask file is written.

    The folder is replaced as a whole (:func:`~deepcloak.report.files.write_folder`): a failure
    or a kill at any moment leaves either the complete old set or the complete new one.

    Returns:
        The paths written, by kind.
    """
    return write_folder(out, lambda folder: _write_harden_files(result, folder, title))


def _write_harden_files(result: HardenResult, out: Path, title: str) -> dict[str, Path]:
    from deepcloak.report.figures import png, sweep_figure

    paths = {"report": out / "report.json", "plot": out / "sweep.png"}
    paths["mask"] = out / "mask.safetensors"
    meta = {**result.data_info, "cloak": result.cloak.metadata(result.ratio)}
    model_path = _save_cloaked_model(result, out, meta)
    if model_path is not None:
        paths["model"] = model_path
    result.cloak.save(paths["mask"], result.ratio)
    write_bytes_atomic(paths["plot"], png(sweep_figure(result.sweep, title=title)))
    document = harden_document(result, {k: p.name for k, p in paths.items()})
    write_json_atomic(paths["report"], document)
    return paths
