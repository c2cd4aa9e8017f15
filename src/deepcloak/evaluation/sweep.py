"""The gray-box ratio sweep (the paper's experiment), and white-box accuracy of a cloaked model.

Gray-box: adversarial test samples are crafted once, on the *unmasked* model; the attacker does
not know the mask. Their features at layer L are cached, so each ratio only re-runs the part of
the model after L (for the default L, the final ``nn.Linear``): 100 ratios cost about one
evaluation pass, not 100. Where that part cannot be isolated, the sweep falls back to full
forward passes through the masked model (same numbers, slower).

Robust accuracy counts over *all* evaluated samples, not only the clean-correct ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from deepcloak.attacks.native import Attack, create_attack, eval_mode
from deepcloak.cloak.fit import Cloak, layer_features, model_device, unpack_batch
from deepcloak.cloak.mask import FeatureMask, insert_mask, keep_mask, removal_count, remove_mask
from deepcloak.cloak.taps import LayerRef, Side, tap
from deepcloak.errors import DeepCloakError
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_labels, check_ratios

__all__ = [
    "DEFAULT_RATIOS",
    "FeatureCache",
    "SweepResult",
    "SweepRow",
    "attack_from_spec",
    "cache_features",
    "graybox_sweep",
    "whitebox_accuracy",
]

log = logging.getLogger(__name__)

#: 0 and the paper's grid 1%..99% in 1% steps.
DEFAULT_RATIOS: tuple[float, ...] = tuple(i / 100 for i in range(100))

_CHUNK = 4096  # samples per head evaluation: bounds memory for large feature maps


def attack_from_spec(spec: dict[str, Any]) -> Attack:
    """Rebuild a native attack from its :meth:`spec` (e.g. a cloak's ``attack`` field)."""
    params = dict(spec)
    return create_attack(params.pop("name"), **params)


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

    Raises:
        DeepCloakError: the loader is empty, or inputs or labels are invalid.
    """
    device = model_device(model)
    report = progress or no_progress
    total = len(getattr(loader, "dataset", ())) or None
    clean, adv, labels, inputs, adv_inputs = [], [], [], [], []
    head: nn.Module | None = None
    first = True
    with eval_mode(model):
        for batch in loader:
            x, y = unpack_batch(batch, device)
            x_adv = attack(model, x, y)
            f_clean, f_adv, logits = layer_features(model, layer, x, x_adv)
            check_labels(y, logits.shape[-1])
            if first:
                head, first = _find_head(model, layer, x[:16]), False
                if head is None:
                    log.warning("no separable head after %s: the sweep runs the full model", layer)
            clean.append(f_clean.cpu())
            adv.append(f_adv.cpu())
            labels.append(y.cpu())
            if head is None:
                inputs.append(x.cpu())
                adv_inputs.append(x_adv.cpu())
            report("attack test set", sum(t.numel() for t in labels), total)
    if not labels:
        raise DeepCloakError("the test loader yielded no samples; expected at least one batch")
    return FeatureCache(
        layer=layer,
        clean=torch.cat(clean),
        adv=torch.cat(adv),
        labels=torch.cat(labels),
        head=head,
        inputs=torch.cat(inputs) if inputs else None,
        adv_inputs=torch.cat(adv_inputs) if adv_inputs else None,
    )


@torch.no_grad()
def masked_predictions(
    model: nn.Module, cache: FeatureCache, keep: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes of the clean and adversarial cached samples under mask ``keep``."""
    device = model_device(model)
    with eval_mode(model):
        if cache.head is not None:
            m = keep.to(device=device, dtype=cache.clean.dtype)
            return tuple(  # type: ignore[return-value]
                torch.cat(
                    [
                        cache.head(chunk.to(device) * m).argmax(-1).cpu()  # (B, *F) -> (B,)
                        for chunk in feats.split(_CHUNK)
                    ]
                )
                for feats in (cache.clean, cache.adv)
            )
        if cache.inputs is None or cache.adv_inputs is None:
            raise DeepCloakError("feature cache holds neither a head nor the inputs")
        insert_mask(model, cache.layer, FeatureMask(keep))
        try:
            return tuple(  # type: ignore[return-value]
                torch.cat([model(c.to(device)).argmax(-1).cpu() for c in xs.split(_CHUNK)])
                for xs in (cache.inputs, cache.adv_inputs)
            )
        finally:
            remove_mask(model, cache.layer.name)


def _accuracies(model: nn.Module, cache: FeatureCache, keep: torch.Tensor) -> tuple[float, float]:
    pred_clean, pred_adv = masked_predictions(model, cache, keep)
    return (
        (pred_clean == cache.labels).double().mean().item(),
        (pred_adv == cache.labels).double().mean().item(),
    )


@dataclass(frozen=True)
class SweepRow:
    """Accuracies at one ratio. ``random_*`` are means over the random masks of the same size."""

    ratio: float
    n_removed: int
    clean_accuracy: float
    graybox_accuracy: float
    random_clean_accuracy: float | None
    random_graybox_accuracy: float | None
    random_graybox_std: float | None
    whitebox_accuracy: float | None = None


#: What each accuracy column means: the threat model it holds under.
THREAT_MODELS: dict[str, str] = {
    "clean_accuracy": "no attack",
    "graybox_accuracy": (
        "gray-box: samples crafted on the unmasked model (attacker unaware of the mask)"
    ),
    "random_graybox_accuracy": "gray-box, random mask of the same size (baseline)",
    "whitebox_accuracy": "white-box: attack run end to end through the cloaked model",
}


@dataclass
class SweepResult:
    """The ratio sweep: one :class:`SweepRow` per ratio, plus what produced it."""

    rows: list[SweepRow]
    n_samples: int
    layer: LayerRef
    n_features: int
    score: str
    attack: dict[str, Any]
    whitebox_attack: dict[str, Any] | None
    n_random: int
    seed: int
    used_cached_head: bool
    threat_models: dict[str, str] = field(default_factory=lambda: dict(THREAT_MODELS))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of the whole result."""
        d = asdict(self)
        d["layer"] = self.layer.to_json()
        return d


def graybox_sweep(
    model: nn.Module,
    cloak: Cloak,
    loader: Iterable[Any],
    *,
    attack: Attack | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    n_random: int = 5,
    seed: int = 0,
    whitebox_attack: Attack | None = None,
    whitebox_ratios: Sequence[float] = (),
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Clean and gray-box adversarial accuracy of the cloaked model at each ratio.

    Args:
        model: the unmasked model the cloak was fit on (left unmodified).
        cloak: the fitted :class:`Cloak`.
        loader: held-out test data, ``(x, y)`` batches with x in [0, 1].
        attack: crafts the test samples on the unmasked model; default: the fit's attack.
        ratios: fractions of features removed.
        n_random: random masks of each size to average for the baseline (``0`` for none).
        seed: seed of the random masks.
        whitebox_attack: if given, also attack the cloaked model end to end at each ratio in
            ``whitebox_ratios`` (one attack pass per ratio).
        whitebox_ratios: the ratios for the white-box column (must be among ``ratios``).
        progress: ``progress(task, done, total)`` callback.

    Returns:
        A :class:`SweepResult`.
    """
    ratios = check_ratios(ratios)
    if n_random < 0:
        raise DeepCloakError(f"n_random must be >= 0, got {n_random}")
    if not set(whitebox_ratios) <= set(ratios):
        raise DeepCloakError("whitebox_ratios must be a subset of ratios")
    attack = attack if attack is not None else attack_from_spec(cloak.attack)
    report = progress or no_progress
    cache = cache_features(model, loader, cloak.layer, attack, progress=progress)
    if tuple(cache.clean.shape[1:]) != cloak.feature_shape:
        raise DeepCloakError(
            f"the cloak was fit on features of shape {cloak.feature_shape}, but {cloak.layer} "
            f"gives {tuple(cache.clean.shape[1:])}: is this the same model?"
        )
    gen = torch.Generator().manual_seed(seed)
    random_rankings = [torch.randperm(cloak.n_features, generator=gen) for _ in range(n_random)]
    whitebox = (
        whitebox_accuracy(model, cloak, loader, whitebox_attack, whitebox_ratios, progress=progress)
        if whitebox_attack is not None and whitebox_ratios
        else {}
    )
    rows = []
    for i, ratio in enumerate(ratios):
        clean_acc, gray_acc = _accuracies(
            model, cache, keep_mask(cloak.ranking, ratio, cloak.feature_shape)
        )
        rand = torch.tensor(
            [
                _accuracies(model, cache, keep_mask(r, ratio, cloak.feature_shape))
                for r in random_rankings
            ],
            dtype=torch.float64,
        ).view(-1, 2)  # (n_random, 2)
        has_random = rand.shape[0] > 0
        rows.append(
            SweepRow(
                ratio=ratio,
                n_removed=removal_count(ratio, cloak.n_features),
                clean_accuracy=clean_acc,
                graybox_accuracy=gray_acc,
                random_clean_accuracy=rand[:, 0].mean().item() if has_random else None,
                random_graybox_accuracy=rand[:, 1].mean().item() if has_random else None,
                random_graybox_std=rand[:, 1].std(correction=0).item() if has_random else None,
                whitebox_accuracy=whitebox.get(ratio),
            )
        )
        report("sweep ratios", i + 1, len(ratios))
    return SweepResult(
        rows=rows,
        n_samples=cache.n_samples,
        layer=cloak.layer,
        n_features=cloak.n_features,
        score=cloak.score_name,
        attack=attack.spec(),
        whitebox_attack=whitebox_attack.spec() if whitebox else None,
        n_random=n_random,
        seed=seed,
        used_cached_head=cache.head is not None,
    )


def whitebox_accuracy(
    model: nn.Module,
    cloak: Cloak,
    loader: Iterable[Any],
    attack: Attack,
    ratios: Sequence[float],
    *,
    progress: ProgressFn | None = None,
) -> dict[float, float]:
    """Accuracy under ``attack`` run end to end through the cloaked model, per ratio.

    The mask is inserted for each ratio and removed afterwards: ``model`` is left as it was.
    """
    device = model_device(model)
    report = progress or no_progress
    out: dict[float, float] = {}
    for i, ratio in enumerate(check_ratios(ratios)):
        cloak.apply(model, ratio)
        try:
            correct = seen = 0
            with eval_mode(model):
                for batch in loader:
                    x, y = unpack_batch(batch, device)
                    x_adv = attack(model, x, y)
                    with torch.no_grad():
                        correct += int((model(x_adv).argmax(-1) == y).sum())
                    seen += y.numel()
        finally:
            remove_mask(model, cloak.layer.name)
        if seen == 0:
            raise DeepCloakError("the test loader yielded no samples; expected at least one batch")
        out[ratio] = correct / seen
        report("white-box attack", i + 1, len(ratios))
    return out
