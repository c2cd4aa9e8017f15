"""The gray-box ratio sweep (the paper's experiment), and white-box accuracy of a cloaked model.

Gray-box: adversarial test samples are crafted once, on the *unmasked* model; the attacker does
not know the mask. Their features at layer L are cached, so each ratio only re-runs the part of
the model after L (for the default L, the final ``nn.Linear``): 100 ratios cost about one
evaluation pass, not 100, and every mask of every ratio is evaluated in a few batched products
(:mod:`deepcloak.evaluation.mask_grid`). Where that part cannot be isolated, the sweep falls
back to full forward passes through the masked model (same numbers, slower). The cache is
:mod:`deepcloak.evaluation.feature_cache`'s.

Every accuracy is an :class:`~deepcloak.evaluation.results.AccuracyResult` holding per-sample
correctness; random masks keep one row per mask. Robust accuracy counts over *all* evaluated
samples, not only the clean-correct ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcloak._moved import moved_names
from deepcloak.attacks import Attack, attack_from_spec
from deepcloak.cloak.fit import Cloak, model_device, unpack_batch
from deepcloak.cloak.mask import keep_mask, masked, removal_count
from deepcloak.distributed import gather_batches, iter_owned
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation import feature_cache as _feature_cache
from deepcloak.evaluation.crafted import Replay
from deepcloak.evaluation.grids import DEFAULT_RATIOS
from deepcloak.evaluation.mask_grid import MaskGrid
from deepcloak.evaluation.results import (
    CLOAKED,
    RANDOM,
    AccuracyResult,
    SweepResult,
    SweepRow,
    ThreatModel,
)
from deepcloak.models.precision import (
    Precision,
    current_precision,
    parse_precision,
)
from deepcloak.models.runtime import eval_mode, model_dtype
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_ratios

# SweepResult and SweepRow live in deepcloak.evaluation.results (the one result model); they are
# re-exported here, beside the function that fills them.

__all__ = [
    "DEFAULT_RATIOS",
    "SweepResult",
    "SweepRow",
    "graybox_sweep",
    "random_rankings",
    "whitebox_accuracy",
    "whitebox_results",
]

log = logging.getLogger(__name__)

# Moved after 0.1.0: the feature cache is its own module; the cloak checks its own features.
__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(
            [
                "DEVICE_SHARE",
                "FeatureCache",
                "cache_device",
                "cache_features",
                "masked_predictions",
            ],
            _feature_cache,
        ),
        "check_cloak_features": (Cloak, "check_features"),
    },
)


def random_rankings(n_features: int, n_random: int, seed: int) -> list[torch.Tensor]:
    """``n_random`` random feature rankings (seeded): the random-mask baseline's masks."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_features, generator=gen) for _ in range(n_random)]


@dataclass(frozen=True)
class _Settings:
    attack: dict[str, Any]
    n_random: int
    conf: float


def _sweep_row(
    ratio: float,
    n_removed: int,
    clean: torch.Tensor,
    gray: torch.Tensor,
    settings: _Settings,
    whitebox: tuple[AccuracyResult, ...],
) -> SweepRow:
    """One ratio's row from the correctness ``(P, N)`` of the cloak's mask then the random ones."""
    none, conf, attack = {"name": "none"}, settings.conf, settings.attack
    randoms = settings.n_random > 0
    return SweepRow(
        ratio=ratio,
        n_removed=n_removed,
        clean=AccuracyResult(CLOAKED, ThreatModel.CLEAN, none, clean[0], ratio, conf),
        graybox=AccuracyResult(CLOAKED, ThreatModel.GRAYBOX, attack, gray[0], ratio, conf),
        random_clean=AccuracyResult(RANDOM, ThreatModel.CLEAN, none, clean[1:], ratio, conf)
        if randoms else None,
        random_graybox=AccuracyResult(RANDOM, ThreatModel.GRAYBOX, attack, gray[1:], ratio, conf)
        if randoms else None,
        whitebox=whitebox,
    )  # fmt: skip


def _sweep_outcomes(
    model: nn.Module,
    cache: _feature_cache.FeatureCache,
    cloak: Cloak,
    ratios: Sequence[float],
    n_random: int,
    seed: int,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correctness ``(R, P, N)`` on the CPU of clean and gray-box samples, per ratio and mask.

    Mask 0 is the cloak's, masks 1 to ``n_random`` the random ones: all ``R * P`` of them are
    evaluated together, and the result crosses to the host once.
    """
    device = model_device(model)
    counts = [removal_count(r, cloak.n_features) for r in ratios]
    for ratio, count in zip(ratios, counts, strict=True):
        if ratio > 0 and count == 0:
            keep_mask(cloak.ranking, ratio, cloak.feature_shape)  # logs why this mask is empty
    rankings = [cloak.ranking, *random_rankings(cloak.n_features, n_random, seed)]
    grid = MaskGrid.build(rankings, counts, cloak.feature_shape, device)
    labels = cache.labels.to(device)
    found = cache.outcomes(model, grid, labels, precision)
    p, r, n = grid.n_rankings, grid.n_ratios, labels.numel()
    clean, gray = (c.view(p, r, n).transpose(0, 1).contiguous().cpu() for c in found)
    return clean, gray


def _check_sweep(
    ratios: Sequence[float], n_random: int, whitebox_ratios: Sequence[float]
) -> list[float]:
    checked = check_ratios(ratios)
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise DeepCloakError(f"n_random must be an integer >= 0, got {n_random!r}")
    if not set(whitebox_ratios) <= set(checked):
        raise DeepCloakError("whitebox_ratios must be a subset of ratios")
    return checked


def graybox_sweep(
    model: nn.Module, cloak: Cloak, loader: Iterable[Any], *, attack: Attack | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS, n_random: int = 5, seed: int = 0,
    whitebox_attacks: Sequence[Attack] = (), whitebox_ratios: Sequence[float] = (),
    whitebox_loader: Iterable[Any] | None = None, confidence: float = 0.95,
    progress: ProgressFn | None = None, precision: Precision | str | None = None,
    adversarial: torch.Tensor | None = None,
    whitebox: Mapping[float, tuple[AccuracyResult, ...]] | None = None,
) -> SweepResult:  # fmt: skip
    """Clean and gray-box accuracy of the cloaked model at each ratio, with baselines.

    Args:
        model: the unmasked model the cloak was fit on (left unmodified).
        cloak: the fitted :class:`Cloak`.
        loader: held-out test data, ``(x, y)`` batches with x in [0, 1].
        attack: crafts the test samples on the unmasked model; default: the fit's attack.
        ratios: fractions of features removed.
        n_random: random masks of each size for the baseline (``0`` for none).
        seed: seed of the random masks.
        whitebox_attacks: attacks also run end to end through the cloaked model at each ratio in
            ``whitebox_ratios`` (one attack pass per attack and ratio).
        whitebox_ratios: the ratios of the white-box results (must be among ``ratios``).
        whitebox_loader: the samples of the white-box attacks (default: ``loader``).
        confidence: coverage of the intervals.
        progress: ``progress(task, done, total)`` callback.
        precision: of the forward-only passes (feature caching, masked predictions); attacks
            run in float32. Default: the current one (:mod:`deepcloak.models.precision`).
        adversarial: the gray-box samples, already crafted by ``attack`` on the unmasked model,
            one per loader sample in loader order: the sweep then crafts nothing.
        whitebox: the white-box results per ratio, already measured for ``whitebox_attacks``:
            the sweep then runs no white-box attack.

    Returns:
        A :class:`~deepcloak.evaluation.results.SweepResult`.

    Raises:
        DeepCloakError: bad ratios, white-box ratios outside ``ratios``, an empty loader, or
            a cloak from another model.
    """
    ratios = _check_sweep(ratios, n_random, whitebox_ratios)
    attack = attack if attack is not None else attack_from_spec(cloak.attack)
    precision = current_precision() if precision is None else parse_precision(precision)
    cache = _graybox_cache(model, cloak, loader, attack, adversarial, progress, precision)
    white = dict(whitebox) if whitebox is not None else whitebox_results(
        model, cloak, loader if whitebox_loader is None else whitebox_loader,
        whitebox_attacks, whitebox_ratios if whitebox_attacks else (),
        confidence=confidence, progress=progress,
    )  # fmt: skip
    settings = _Settings(attack.spec(), n_random, confidence)
    rows = _sweep_rows(model, cache, cloak, ratios, seed, settings, white, precision, progress)
    return SweepResult(
        rows=rows, layer=cloak.layer, n_features=cloak.n_features, score=cloak.score_name,
        attack=attack.spec(), n_random=n_random, seed=seed,
        whitebox_attacks=[a.spec() for a in whitebox_attacks] if white else [],
        used_cached_head=cache.head is not None,
    )  # fmt: skip


def _graybox_cache(
    model: nn.Module, cloak: Cloak, loader: Iterable[Any], attack: Attack,
    adversarial: torch.Tensor | None, progress: ProgressFn | None, precision: Precision,
) -> _feature_cache.FeatureCache:  # fmt: skip
    """The features of the gray-box samples: crafted by ``attack``, or replayed from
    ``adversarial``; checked against the cloak."""
    replay = Replay(attack, adversarial) if adversarial is not None else None
    cache = _feature_cache.cache_features(
        model, loader, cloak.layer, replay or attack, progress=progress, precision=precision,
        shard=replay is None,  # replaying costs no attack: nothing to share out
    )  # fmt: skip
    if replay is not None:
        replay.check_complete()
    cloak.check_features(tuple(cache.clean.shape[1:]))
    return cache


def _sweep_rows(
    model: nn.Module, cache: _feature_cache.FeatureCache, cloak: Cloak,
    ratios: Sequence[float], seed: int, settings: _Settings,
    white: Mapping[float, tuple[AccuracyResult, ...]], precision: Precision,
    progress: ProgressFn | None,
) -> list[SweepRow]:  # fmt: skip
    """One row per ratio: the cloak's mask and the random ones, all evaluated together."""
    report = progress or no_progress
    report("sweep ratios", 0, len(ratios))
    clean, gray = _sweep_outcomes(model, cache, cloak, ratios, settings.n_random, seed, precision)
    rows = [
        _sweep_row(ratio, cloak.n_removed(ratio), clean[i], gray[i], settings, white.get(ratio, ()))
        for i, ratio in enumerate(ratios)
    ]
    report("sweep ratios", len(ratios), len(ratios))
    return rows


def whitebox_results(
    model: nn.Module,
    cloak: Cloak,
    loader: Iterable[Any],
    attacks: Sequence[Attack],
    ratios: Sequence[float],
    *,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
) -> dict[float, tuple[AccuracyResult, ...]]:
    """Per ratio, one white-box result per attack run end to end through the cloaked model.

    The mask is inserted for each ratio and removed afterwards: ``model`` is left as it was.
    """
    device = model_device(model)
    report = progress or no_progress
    out: dict[float, tuple[AccuracyResult, ...]] = {}
    ratios = check_ratios(ratios) if ratios else []
    for i, ratio in enumerate(ratios):
        keep = keep_mask(cloak.ranking, ratio, cloak.feature_shape)
        per_attack: list[list[torch.Tensor]] = [[] for _ in attacks]
        with masked(model, cloak.layer, keep), eval_mode(model):
            for batch in iter_owned(loader):  # this process's batches, gathered below
                x, y = unpack_batch(batch, device, model_dtype(model))
                for got, attack in zip(per_attack, attacks, strict=True):
                    with torch.no_grad():
                        got.append((model(attack(model, x, y)).argmax(-1) == y).cpu())
        per_attack = [gather_batches(got) for got in per_attack]
        if not per_attack or not per_attack[0]:
            raise DeepCloakError("the test loader yielded no samples; expected at least one batch")
        out[ratio] = tuple(
            AccuracyResult(CLOAKED, ThreatModel.WHITEBOX, a.spec(), torch.cat(c), ratio, confidence)
            for a, c in zip(attacks, per_attack, strict=True)
        )
        report("white-box attack", i + 1, len(ratios))
    return out


def whitebox_accuracy(
    model: nn.Module,
    cloak: Cloak,
    loader: Iterable[Any],
    attack: Attack,
    ratios: Sequence[float],
    *,
    progress: ProgressFn | None = None,
) -> dict[float, float]:
    """Accuracy under ``attack`` run end to end through the cloaked model, per ratio."""
    results = whitebox_results(model, cloak, loader, [attack], ratios, progress=progress)
    return {ratio: r[0].accuracy for ratio, r in results.items()}
