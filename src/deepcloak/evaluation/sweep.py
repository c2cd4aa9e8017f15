"""The gray-box ratio sweep (the paper's experiment), and white-box accuracy of a cloaked model.

Gray-box: adversarial test samples are crafted once, on the *unmasked* model; the attacker does
not know the mask. Their features at layer L are cached, so each ratio only re-runs the part of
the model after L (for the default L, the final ``nn.Linear``): 100 ratios cost about one
evaluation pass, not 100. Where that part cannot be isolated, the sweep falls back to full
forward passes through the masked model (same numbers, slower).

Every accuracy is an :class:`~deepcloak.evaluation.results.AccuracyResult` holding per-sample
correctness; random masks keep one row per mask. Robust accuracy counts over *all* evaluated
samples, not only the clean-correct ones.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
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
from deepcloak.evaluation.grids import DEFAULT_RATIOS
from deepcloak.evaluation.results import (
    CLOAKED,
    RANDOM,
    AccuracyResult,
    SweepResult,
    SweepRow,
    ThreatModel,
)
from deepcloak.models.runtime import eval_mode
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
    "check_cloak_features",
    "graybox_sweep",
    "masked_predictions",
    "random_rankings",
    "whitebox_accuracy",
    "whitebox_results",
]

log = logging.getLogger(__name__)


_CHUNK = 4096  # samples per head evaluation: bounds memory for large feature maps


@dataclass
class FeatureCache:
    """Features at layer L of clean and adversarial test samples, kept on the CPU.

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


def cache_features(
    model: nn.Module,
    loader: Iterable[Any],
    layer: LayerRef,
    attack: Attack,
    *,
    progress: ProgressFn | None = None,
) -> FeatureCache:
    """Craft adversarial samples on the unmasked ``model`` and cache features at ``layer``.

    Under ``torchrun`` each process attacks its batches of ``loader`` (the whole test data on
    every process) and the cache is gathered back in batch order on every process.

    Raises:
        DeepCloakError: the loader is empty, or inputs or labels are invalid.
    """
    device = model_device(model)
    report = progress or no_progress
    total = len(getattr(loader, "dataset", ())) or None
    ctx = Distributed.current()
    batches = iter_owned(loader, ctx)
    first = next(batches, None)
    # Whether a head can replace the model after L is decided on the first 16 samples of batch
    # 0 (rank 0's first), the same on every process.
    example = from_main(
        unpack_batch(first, device)[0][:16].cpu() if first is not None and ctx.is_main else None
    )
    if example is None:
        raise DeepCloakError("the test loader yielded no samples; expected at least one batch")
    with eval_mode(model):
        head = _find_head(model, layer, example.to(device))
        if head is None:
            log.warning("no separable head after %s: the sweep runs the full model", layer)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("clean", "adv", "y", "x", "x_adv")}
        for batch in itertools.chain([first] if first is not None else [], batches):
            x, y = unpack_batch(batch, device)
            x_adv = attack(model, x, y)
            f_clean, f_adv, logits = layer_features(model, layer, x, x_adv)
            check_labels(y, logits.shape[-1])
            parts["clean"].append(f_clean.cpu())
            parts["adv"].append(f_adv.cpu())
            parts["y"].append(y.cpu())
            if head is None:
                parts["x"].append(x.cpu())
                parts["x_adv"].append(x_adv.cpu())
            done = sum(t.numel() for t in parts["y"]) * ctx.world_size
            report("attack test set", min(done, total) if total else done, total)
    cached = {k: gather_batches(v, ctx) for k, v in parts.items()}
    return FeatureCache(
        layer=layer,
        clean=torch.cat(cached["clean"]),
        adv=torch.cat(cached["adv"]),
        labels=torch.cat(cached["y"]),
        head=head,
        inputs=torch.cat(cached["x"]) if head is None else None,
        adv_inputs=torch.cat(cached["x_adv"]) if head is None else None,
    )


@torch.no_grad()
def masked_predictions(
    model: nn.Module, cache: FeatureCache, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes ``(N,)`` of the clean and adversarial cached samples under ``keep``."""
    device = model_device(model)
    with eval_mode(model):
        if cache.head is not None:
            head, m = cache.head, keep.to(device=device, dtype=cache.clean.dtype)
            clean, adv = (
                torch.cat(
                    [head(c.to(device) * m).argmax(-1).cpu() for c in torch.split(feats, _CHUNK)]
                )
                for feats in (cache.clean, cache.adv)  # (B, *F) -> (B,)
            )
            return clean, adv
        if cache.inputs is None or cache.adv_inputs is None:
            raise DeepCloakError("feature cache holds neither a head nor the inputs")
        with masked(model, cache.layer, keep):
            clean, adv = (
                torch.cat([model(c.to(device)).argmax(-1).cpu() for c in torch.split(xs, _CHUNK)])
                for xs in (cache.inputs, cache.adv_inputs)
            )
            return clean, adv


def random_rankings(n_features: int, n_random: int, seed: int) -> list[torch.Tensor]:
    """``n_random`` random feature rankings (seeded): the random-mask baseline's masks."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randperm(n_features, generator=gen) for _ in range(n_random)]


def _random_results(
    model: nn.Module, cache: FeatureCache, cloak: Cloak, ratio: float, settings: _Settings
) -> tuple[AccuracyResult | None, AccuracyResult | None]:
    """Clean and gray-box results of the random masks at ``ratio`` (``(k, N)`` each)."""
    if not settings.rankings:
        return None, None
    preds = [
        masked_predictions(model, cache, keep_mask(r, ratio, cloak.feature_shape))
        for r in settings.rankings
    ]
    clean = torch.stack([p[0] == cache.labels for p in preds])  # (k, N)
    gray = torch.stack([p[1] == cache.labels for p in preds])
    return (
        AccuracyResult(RANDOM, ThreatModel.CLEAN, {"name": "none"}, clean, ratio, settings.conf),
        AccuracyResult(RANDOM, ThreatModel.GRAYBOX, settings.attack, gray, ratio, settings.conf),
    )


@dataclass(frozen=True)
class _Settings:
    attack: dict[str, Any]
    rankings: list[torch.Tensor]
    conf: float


def _sweep_row(
    model: nn.Module,
    cache: FeatureCache,
    cloak: Cloak,
    ratio: float,
    settings: _Settings,
    whitebox: tuple[AccuracyResult, ...],
) -> SweepRow:
    clean, adv = masked_predictions(
        model, cache, keep_mask(cloak.ranking, ratio, cloak.feature_shape)
    )
    random_clean, random_gray = _random_results(model, cache, cloak, ratio, settings)
    none, conf = {"name": "none"}, settings.conf
    return SweepRow(
        ratio=ratio,
        n_removed=removal_count(ratio, cloak.n_features),
        clean=AccuracyResult(CLOAKED, ThreatModel.CLEAN, none, clean == cache.labels, ratio, conf),
        graybox=AccuracyResult(
            CLOAKED, ThreatModel.GRAYBOX, settings.attack, adv == cache.labels, ratio, conf
        ),
        random_clean=random_clean,
        random_graybox=random_gray,
        whitebox=whitebox,
    )


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

    Returns:
        A :class:`~deepcloak.evaluation.results.SweepResult`.

    Raises:
        DeepCloakError: bad ratios, white-box ratios outside ``ratios``, an empty loader, or a
            cloak from another model.
    """
    ratios = _check_sweep(ratios, n_random, whitebox_ratios)
    attack = attack if attack is not None else attack_from_spec(cloak.attack)
    report = progress or no_progress
    cache = cache_features(model, loader, cloak.layer, attack, progress=progress)
    check_cloak_features(cloak, tuple(cache.clean.shape[1:]))
    white = whitebox_results(
        model, cloak, loader if whitebox_loader is None else whitebox_loader,
        whitebox_attacks, whitebox_ratios if whitebox_attacks else (),
        confidence=confidence, progress=progress,
    )  # fmt: skip
    settings = _Settings(
        attack.spec(), random_rankings(cloak.n_features, n_random, seed), confidence
    )
    rows = []
    for i, ratio in enumerate(ratios):
        rows.append(_sweep_row(model, cache, cloak, ratio, settings, white.get(ratio, ())))
        report("sweep ratios", i + 1, len(ratios))
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


def check_cloak_features(cloak: Cloak, feature_shape: tuple[int, ...]) -> None:
    """Refuse a cloak fit on features of another shape than the model gives at its layer."""
    if feature_shape != cloak.feature_shape:
        raise DeepCloakError(
            f"the cloak was fit on features of shape {cloak.feature_shape}, but {cloak.layer} "
            f"gives {feature_shape} here: is this the same model?"
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
                x, y = unpack_batch(batch, device)
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
