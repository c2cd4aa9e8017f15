"""Harden any model on any data set: fit DeepCloak on training data, sweep ratios on test data.

This is what ``deepcloak harden`` and the demo run. It checks that model and data fit each other
before any work, and writes its outputs (report, plot, mask, cloaked model) atomically, only
after every result exists.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from deepcloak._moved import moved_names
from deepcloak.attacks import create_attack
from deepcloak.attacks.native import Attack
from deepcloak.cloak.fit import Cloak, fit, model_device
from deepcloak.cloak.search import SearchResult, search_mask
from deepcloak.cloak.selectors import AUTO, DEFAULT_SELECTOR, check_selector
from deepcloak.cloak.taps import LayerRef, parse_side, resolve_layer
from deepcloak.cloak.torchscript import ScriptedClassifier, cloakable
from deepcloak.data.loader import BatchLoader, make_loader
from deepcloak.data.splits import DataSplits, ValFrom, ValidationInfo
from deepcloak.distributed import from_main
from deepcloak.environment import environment
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.evaluation.grids import DEFAULT_RATIOS, WHITEBOX_RATIOS
from deepcloak.evaluation.results import SCHEMA, THREAT_MODELS, SweepResult
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.io import atomic_write, save_tensors, write_bytes_atomic, write_json_atomic
from deepcloak.models import fits as _fits
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.precision import Precision, check_precision_supported, parse_precision
from deepcloak.progress import ProgressFn
from deepcloak.report.files import write_folder
from deepcloak.report.summary import saved_mask_record
from deepcloak.sources import DataSource, ModelSource, trained_input_shape
from deepcloak.validation import (
    check_budget,
    check_epsilon,
    check_positive_int,
    check_ratio,
    check_ratios,
)

__all__ = [
    "AUTO",
    "DEFAULT_SELECTOR",
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

#: The paper's ratio when ``select=None`` and no ratio is given.
PAPER_RATIO = 0.01


@dataclass(frozen=True)
class HardenConfig:
    """Settings of :func:`harden`.

    With no arguments, the mask is *searched* (:data:`DEFAULT_SELECTOR`) and its size chosen on
    validation samples the model never trained on (a seeded part of the test split), within a
    1-point clean-accuracy budget held at 95% confidence. The paper's method is one setting
    away: ``ratio=0.01`` (or ``select=None``) ranks features by ``score`` and removes that
    fraction.

    Attributes:
        attack: ``"fgsm"`` (the paper's) or ``"pgd"``; used for the fit and the test samples.
        eps: attack budget in [0, 1].
        steps: PGD steps (ignored by FGSM).
        ratio: a fixed fraction of features to remove, ranked by ``score`` (the paper's method;
            ``None``: the search chooses, or 1% when ``select=None``).
        ratios: ratios of the sweep.
        whitebox_ratios: ratios at which the attack is also run through the cloaked model.
        layer, side: layer L (default: input of the final ``nn.Linear``).
        score: scorer of the paper's method.
        n_random: random masks per ratio in the baseline.
        batch_size: samples per batch.
        seed: seeds attacks, random masks and the validation draw.
        select: the search's selector (``"beam"``, ``"greedy"``, ``"deepcloak"``, ``"random"``;
            see :data:`deepcloak.cloak.selectors.SELECTORS`): it proposes masks on the fit
            samples and the saved one is chosen on the validation samples. ``None``: the paper's
            method at ``ratio``. Default :data:`AUTO`: beam, unless ``ratio`` is given.
        select_params: the selector's settings (``{"width": 8}`` for beam) and the search's
            own (``fit_budget``, ``max_removed``; see
            :func:`~deepcloak.cloak.search.search_cached`).
        clean_budget: with a search: the largest clean-accuracy drop the mask may cost, held
            at 95% confidence on the validation samples.
        val_from: with a search, when :func:`harden` is not given validation samples: where to
            draw them (``"test"``: a seeded part of the test split, every figure reported on
            the rest; ``"train"``: held out of the training split, biased).
        val_samples: how many (``None``: ``min(5000, half of the split drawn from)``).
        precision: ``"fp32"`` or ``"bf16"`` for the sweep's forward-only passes (feature
            caching, masked predictions); the fit and every attack run in float32.
    """

    attack: str = "fgsm"
    eps: float = 8 / 255
    steps: int = 10
    ratio: float | None = None
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    whitebox_ratios: tuple[float, ...] = WHITEBOX_RATIOS
    layer: str | None = None
    side: str | None = None
    score: str = "deepcloak"
    n_random: int = 5
    batch_size: int = 256
    seed: int = 0
    select: str | None = AUTO
    select_params: Mapping[str, Any] = field(default_factory=dict)
    #: ``select_params`` checked, with every default of the selector and the search filled in
    #: (what the search runs with and the report shows); empty without a search.
    selector_settings: dict[str, Any] = field(init=False, default_factory=dict)
    clean_budget: float = 0.01
    val_from: str = "test"
    val_samples: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    precision: Precision | str = Precision.FP32

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", parse_precision(self.precision))
        check_epsilon(self.eps)
        parse_side(self.side)  # before any work, with or without a layer
        if self.select == AUTO:
            object.__setattr__(self, "select", None if self.ratio is not None else DEFAULT_SELECTOR)
        if self.select is None:
            object.__setattr__(self, "ratio", PAPER_RATIO if self.ratio is None else self.ratio)
        else:
            self._check_search()
        check_ratio(self.ratio if self.ratio is not None else 0.0)
        check_ratios(self.ratios)
        check_ratios(self.whitebox_ratios or (0.0,))
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise DeepCloakError(f"batch_size must be >= 1, got {self.batch_size}")
        self.make_attack()  # an unknown attack or a bad setting fails here, before any work

    def _check_search(self) -> None:
        if self.ratio is not None:
            raise DeepCloakError(
                f"select={self.select!r} chooses the mask and its size on validation samples; "
                f"a fixed ratio ({self.ratio}) is the paper's method: drop the ratio, or rank by "
                "the paper's score at that ratio (--select deepcloak --ratio R; select=None)"
            )
        if self.score != "deepcloak":
            raise DeepCloakError(
                f"score={self.score!r} ranks features for the paper's method at a fixed ratio; "
                f"the search (select={self.select!r}) chooses its own: add a ratio (--ratio R) "
                "to rank by that score, or drop the score"
            )
        # Checked by type and range before any work; recorded with the defaults filled in.
        name = self.select or DEFAULT_SELECTOR
        object.__setattr__(self, "selector_settings", check_selector(name, self.select_params))
        check_budget(self.clean_budget)
        ValFrom.parse(self.val_from)
        if self.val_samples is not None:
            check_positive_int(self.val_samples, "val_samples")

    @property
    def searches(self) -> bool:
        """Whether the saved mask is searched (else: the paper's ranking at ``ratio``)."""
        return self.select is not None

    def make_attack(self) -> Attack:
        """The configured attack."""
        params: dict[str, Any] = {"eps": self.eps}
        if self.attack == "pgd":
            params.update(steps=self.steps, seed=self.seed)
        return create_attack(self.attack, **params)

    def sweep_ratios(self, saved: float | None = None) -> list[float]:
        """The sweep's ratios, with the saved ratio and the white-box ratios included."""
        chosen = [r for r in (saved, self.ratio) if r is not None]
        return sorted({*self.ratios, *chosen, *self.whitebox_ratios})


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

    ``input_shape``, if known, is the ``(C, H, W)`` the model was trained on; see
    :func:`~deepcloak.models.fits.check_model_fits_data`. Data sets are batched by
    :func:`~deepcloak.data.loader.make_loader` (``workers`` processes decode an image folder).
    Under ``torchrun`` the fit and the sweep's attacks are shared among the processes by batch,
    with the same results as one process.

    Raises:
        DeepCloakError: the model does not fit the data, or bad settings.
    """
    start = time.perf_counter()
    _fits.check_model_fits_data(model, train_set, "the training data", input_shape=input_shape)
    _fits.check_model_fits_data(model, test_set, "the test data", input_shape=input_shape)
    if val_set is not None:
        _fits.check_model_fits_data(model, val_set, "the validation data", input_shape=input_shape)
    check_precision_supported(config.precision, model_device(model))
    # fit and the sweeps use eval mode themselves and restore every module's own mode.
    model = cloakable(model, train_set[0][0][None].to(model_device(model)))
    attack = config.make_attack()
    device = model_device(model)

    def loader(data: Dataset[Any]) -> BatchLoader:
        return make_loader(data, batch_size=config.batch_size, workers=workers, device=device)

    search = None
    if config.select is None:
        cloak = fit(
            model, loader(train_set), attack=attack, layer=config.layer, side=config.side,
            score=config.score, seed=config.seed, progress=progress,
        )  # fmt: skip
        ratio = float(config.ratio or 0.0)
    else:
        if val_set is None:
            splits = DataSplits.make(
                train_set, test_set, val_from=config.val_from,  # type: ignore[arg-type]
                val_samples=config.val_samples, seed=config.seed,
            )  # fmt: skip
            train_set, val_set, test_set = splits.fit, splits.val, splits.test
            validation = splits.validation
        if val_set is None:
            raise DeepCloakError("the search needs validation samples; val_samples=0 leaves none")
        search = search_mask(
            model, loader(train_set), loader(val_set), layer=_layer(model, config, train_set),
            attack=attack, selector=config.select, clean_budget=config.clean_budget,
            progress=progress, **config.selector_settings,
        )  # fmt: skip
        # The search's removal order ranks the features, so the sweep shows its prefixes and
        # the saved mask (at the chosen ratio) is exactly the searched one.
        cloak, ratio = from_main(search.to_cloak(seed=config.seed))  # one choice on all ranks
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
    searching = config.select is not None
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
        "config": asdict(result.config),
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
