"""The gray-box ratio sweep (the paper's experiment), and white-box accuracy of a cloaked model.

Gray-box: adversarial test samples are crafted once, on the *unmasked* model; the attacker does
not know the mask. Their features at layer L are cached, so each ratio only re-runs the part of
the model after L (for the default L, the final ``nn.Linear``): 100 ratios cost about one
evaluation pass, not 100, and every mask of every ratio is evaluated in a few batched products
(:mod:`deepcloak.evaluation.mask_grid`). Where that part cannot be isolated, the sweep falls
back to full forward passes through the masked model (same numbers, slower). The cache stays on
the model's device when it fits, else in host memory, moved to the device in chunks.

Every accuracy is an :class:`~deepcloak.evaluation.results.AccuracyResult` holding per-sample
correctness; random masks keep one row per mask. Robust accuracy counts over *all* evaluated
samples, not only the clean-correct ones.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcloak.attacks import Attack, attack_from_spec
from deepcloak.cloak.fit import Cloak, layer_features, model_device, unpack_batch
from deepcloak.cloak.mask import keep_mask, masked, removal_count
from deepcloak.cloak.taps import LayerRef, Side, tap
from deepcloak.distributed import Distributed, from_main, gather_batches, iter_owned
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.crafted import Replay
from deepcloak.evaluation.grids import DEFAULT_RATIOS
from deepcloak.evaluation.mask_grid import MaskGrid, head_outcomes, model_outcomes
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
    forward_autocast,
    parse_precision,
)
from deepcloak.models.runtime import eval_mode, model_dtype
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_labels, check_ratios

# SweepResult and SweepRow live in deepcloak.evaluation.results (the one result model); they are
# re-exported here, beside the function that fills them.

__all__ = [
    "DEFAULT_RATIOS",
    "FeatureCache",
    "SweepResult",
    "SweepRow",
    "cache_features",
    "graybox_sweep",
    "masked_predictions",
    "random_rankings",
    "whitebox_accuracy",
    "whitebox_results",
]

log = logging.getLogger(__name__)


#: Share of the device's free memory a feature cache may take: while the batches are joined, the
#: cache exists twice, and the rest of the memory is for the model and the attacks.
DEVICE_SHARE = 0.25


@dataclass
class FeatureCache:
    """Features at layer L of clean and adversarial test samples.

    The tensors live on the model's device when they fit (:func:`cache_device`), else in host
    memory.

    ``head`` maps features at L to the model's logits when that part of the model could be
    isolated and was checked to reproduce the model's output; otherwise the inputs are kept
    and every evaluation runs the whole (masked) model.
    """

    layer: LayerRef
    clean: torch.Tensor  # (N, *F)
    adv: torch.Tensor  # (N, *F)
    labels: torch.Tensor  # (N,)
    head: nn.Module | None
    inputs: torch.Tensor | None = None  # (N, C, H, W), only without a head
    adv_inputs: torch.Tensor | None = None

    @property
    def n_samples(self) -> int:
        """Number of cached samples."""
        return self.labels.numel()


def _find_head(model: nn.Module, ref: LayerRef, example: torch.Tensor) -> nn.Module | None:
    """The part of ``model`` after layer L, if it is one module we can call on features alone.

    Candidates: the module itself when L is its input (the default: the final ``nn.Linear``),
    or the rest of a top-level ``nn.Sequential``. A candidate is used only if it reproduces the
    model's logits on ``example``, so a model that does more after L falls back safely.
    """
    module = model.get_submodule(ref.name)
    candidate: nn.Module | None = None
    if ref.side is Side.INPUT:
        candidate = module
    elif isinstance(model, nn.Sequential) and "." not in ref.name:
        names = [n for n, _ in model.named_children()]
        rest = [m for n, m in model.named_children()][names.index(ref.name) + 1 :]
        candidate = nn.Sequential(*rest)
    if candidate is None:
        return None
    with torch.no_grad(), tap(model, ref) as t:
        expected = model(example)
        feats = t.take()
        try:
            got = candidate(feats)
        except Exception:  # the candidate needs more than the features: not a head
            return None
    reproduces = (
        isinstance(got, torch.Tensor)
        and got.shape == expected.shape
        and torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    )
    return candidate if reproduces else None


def cache_device(
    device: torch.device, n_samples: int | None, bytes_per_sample: int
) -> torch.device:
    """Where a feature cache lives: ``device`` if it fits, else host memory.

    On CUDA it fits when it takes at most :data:`DEVICE_SHARE` of the free device memory
    (``torch.cuda.mem_get_info``); an unknown number of samples goes to host memory.
    """
    if device.type == "cpu":
        return device
    if device.type == "cuda" and n_samples is not None:
        need = n_samples * bytes_per_sample
        if need <= DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]:
            return device
        log.info("feature cache (%.0f MiB) kept in host memory", need / 2**20)
    return torch.device("cpu")


def _bytes_per_sample(*examples: torch.Tensor) -> int:
    """Bytes one sample takes in each of ``examples`` (batches), added up."""
    return sum(t[0].numel() * t.element_size() for t in examples)


def cache_features(
    model: nn.Module,
    loader: Iterable[Any],
    layer: LayerRef,
    attack: Attack,
    *,
    progress: ProgressFn | None = None,
    precision: Precision | str | None = None,
    shard: bool = True,
) -> FeatureCache:
    """Craft adversarial samples on the unmasked ``model`` and cache features at ``layer``.

    The attack runs in float32; the forward pass that reads the features runs in ``precision``
    (default: the current forward precision, :mod:`deepcloak.models.precision`). Under
    ``torchrun`` each process attacks its batches of ``loader`` (the whole test data on every
    process) and the cache is gathered back in batch order on every process; ``shard=False``
    has every process read every batch (for an attack that only replays stored samples).

    Raises:
        DeepCloakError: the loader is empty, or inputs or labels are invalid.
    """
    device, dtype, store = model_device(model), model_dtype(model), None
    report = progress or no_progress
    total = len(getattr(loader, "dataset", ())) or None
    ctx = Distributed.current() if shard else Distributed()
    batches = iter_owned(loader, ctx)
    first = next(batches, None)
    # Whether a head can replace the model after L is decided on the first 16 samples of batch
    # 0 (rank 0's first), the same on every process.
    example = from_main(
        unpack_batch(first, device, dtype)[0][:16].cpu()
        if first is not None and ctx.is_main
        else None
    )
    if example is None:
        raise DeepCloakError("the test loader yielded no samples; expected at least one batch")
    with eval_mode(model):
        head = _find_head(model, layer, example.to(device))
        if head is None:
            log.warning("no separable head after %s: the sweep runs the full model", layer)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", "adv", "y", "x", "x_adv")}
        for batch in itertools.chain([first] if first is not None else [], batches):
            x, y = unpack_batch(batch, device, dtype)  # the model's dtype: cached x too
            x_adv = attack(model, x, y)
            with torch.no_grad(), forward_autocast(device, precision):
                f_clean, f_adv, logits = layer_features(model, layer, x, x_adv)
            check_labels(y, logits.shape[-1])
            if store is None:  # the first batch sizes the cache
                held = (f_clean, f_adv, y) if head is not None else (f_clean, f_adv, y, x, x_adv)
                store = cache_device(device, total, _bytes_per_sample(*held))
            parts["clean"].append(f_clean.to(store))
            parts["adv"].append(f_adv.to(store))
            parts["y"].append(y.to(store))
            if head is None:
                parts["x"].append(x.to(store))
                parts["x_adv"].append(x_adv.to(store))
            done = sum(t.numel() for t in parts["y"]) * ctx.world_size
            report("attack test set", min(done, total) if total else done, total)
    # Gathers travel through host memory; one process keeps its cache where it is.
    cached = (
        {k: [t.to(store) for t in gather_batches(v, ctx)] for k, v in parts.items()}
        if ctx.enabled
        else parts
    )
    return FeatureCache(
        layer=layer,
        clean=torch.cat(cached["clean"]),
        adv=torch.cat(cached["adv"]),
        labels=torch.cat(cached["y"]),
        head=head,
        inputs=torch.cat(cached["x"]) if head is None else None,
        adv_inputs=torch.cat(cached["x_adv"]) if head is None else None,
    )


def masked_predictions(
    model: nn.Module,
    cache: FeatureCache,
    keep: torch.Tensor,
    *,
    precision: Precision | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes ``(N,)`` of the clean and adversarial cached samples under ``keep``.

    The predictions are on the model's device.
    """
    grid = MaskGrid.of_keep(keep, model_device(model))
    clean, adv = _outcomes(model, cache, grid, None, precision)
    return clean[0], adv[0]


def _outcomes(
    model: nn.Module,
    cache: FeatureCache,
    grid: MaskGrid,
    labels: torch.Tensor | None,
    precision: Precision | str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (or correctness) ``(M, N)`` of clean and adversarial samples per mask."""
    if cache.head is not None:
        head = cache.head
        clean, adv = (
            head_outcomes(head, f, grid, labels, precision=precision)
            for f in (cache.clean, cache.adv)
        )
        return clean, adv
    if cache.inputs is None or cache.adv_inputs is None:
        raise DeepCloakError("feature cache holds neither a head nor the inputs")
    clean, adv = (
        model_outcomes(model, cache.layer, xs, grid, labels, precision=precision)
        for xs in (cache.inputs, cache.adv_inputs)
    )
    return clean, adv


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
    cache: FeatureCache,
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
    found = _outcomes(model, cache, grid, labels, precision)
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
    model: nn.Module,
    cloak: Cloak,
    loader: Iterable[Any],
    *,
    attack: Attack | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    n_random: int = 5,
    seed: int = 0,
    whitebox_attacks: Sequence[Attack] = (),
    whitebox_ratios: Sequence[float] = (),
    whitebox_loader: Iterable[Any] | None = None,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
    precision: Precision | str | None = None,
    adversarial: torch.Tensor | None = None,
    whitebox: Mapping[float, tuple[AccuracyResult, ...]] | None = None,
) -> SweepResult:
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
        DeepCloakError: bad ratios, white-box ratios outside ``ratios``, an empty loader, or a
            cloak from another model.
    """
    ratios = _check_sweep(ratios, n_random, whitebox_ratios)
    attack = attack if attack is not None else attack_from_spec(cloak.attack)
    report = progress or no_progress
    precision = current_precision() if precision is None else parse_precision(precision)
    replay = Replay(attack, adversarial) if adversarial is not None else None
    cache = cache_features(
        model, loader, cloak.layer, replay or attack, progress=progress, precision=precision,
        shard=replay is None,  # replaying costs no attack: nothing to share out
    )  # fmt: skip
    if replay is not None:
        replay.check_complete()
    cloak.check_features(tuple(cache.clean.shape[1:]))
    white = dict(whitebox) if whitebox is not None else whitebox_results(
        model, cloak, loader if whitebox_loader is None else whitebox_loader,
        whitebox_attacks, whitebox_ratios if whitebox_attacks else (),
        confidence=confidence, progress=progress,
    )  # fmt: skip
    settings = _Settings(attack.spec(), n_random, confidence)
    report("sweep ratios", 0, len(ratios))
    clean, gray = _sweep_outcomes(model, cache, cloak, ratios, n_random, seed, precision)
    rows = [
        _sweep_row(ratio, cloak.n_removed(ratio), clean[i], gray[i], settings, white.get(ratio, ()))
        for i, ratio in enumerate(ratios)
    ]
    report("sweep ratios", len(ratios), len(ratios))
    return SweepResult(
        rows=rows,
        layer=cloak.layer,
        n_features=cloak.n_features,
        score=cloak.score_name,
        attack=attack.spec(),
        whitebox_attacks=[a.spec() for a in whitebox_attacks] if white else [],
        n_random=n_random,
        seed=seed,
        used_cached_head=cache.head is not None,
    )


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
