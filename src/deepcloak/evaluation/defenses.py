"""The defences an evaluation compares, and their accuracy under every threat model and attack.

At one ratio: the unmasked model, the cloak's mask, random masks and activation pruning of the
same size, and (for images) ART's FeatureSqueezing and SpatialSmoothing in front of the unmasked
model. Each is measured clean, gray-box (samples crafted once on the unmasked model), transfer
(crafted on a surrogate) and white-box (attacks run through the defence itself).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from deepcloak.attacks.native import Attack
from deepcloak.cloak.fit import Cloak
from deepcloak.cloak.mask import keep_mask, masked
from deepcloak.evaluation.baselines import feature_squeezing, spatial_smoothing
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.crafted import (
    SURROGATE,
    CraftedSets,
    Samples,
    Target,
    standing_after,
    target,
)
from deepcloak.evaluation.passes import Stage, worst_case
from deepcloak.evaluation.results import (
    ACTIVATION,
    CLOAKED,
    RANDOM,
    UNMASKED,
    WORST_CASE,
    AccuracyResult,
    ThreatModel,
)
from deepcloak.evaluation.sweep import random_rankings
from deepcloak.evaluation.timings import Timings
from deepcloak.progress import ProgressFn

__all__ = ["Defense", "Samples", "build_defenses", "measure_defenses"]

log = logging.getLogger(__name__)

Enter = Callable[[], contextlib.AbstractContextManager[nn.Module]]


@dataclass(frozen=True)
class Defense:
    """A defence: its name, its definition for reports, and how to put it in place.

    ``variants`` holds one context manager factory per model measured: one, or one per random
    mask. White-box attacks run on the first variant only (they cost one attack pass each).
    """

    name: str
    spec: dict[str, Any]
    variants: tuple[Enter, ...]
    whitebox: bool
    ratio: float | None = None  # of a mask; None without one

    def target(self, variant: int = 0) -> Target:
        """What the store names this defence (its ``variant``-th model) as."""
        mask = variant if len(self.variants) > 1 else None
        return target(self.name, self.ratio, mask=mask)


@contextlib.contextmanager
def _as_is(model: nn.Module) -> Iterator[nn.Module]:
    yield model


def _mask(model: nn.Module, cloak: Cloak, keep: torch.Tensor) -> Enter:
    return lambda: masked(model, cloak.layer, keep)


def build_defenses(
    model: nn.Module, cloak: Cloak, activation: Cloak, ratio: float, config: EvaluationConfig, *,
    images: bool,
) -> tuple[list[Defense], list[str]]:  # fmt: skip
    """The defences at ``ratio``, in report order, and the notes a reader must know.

    Args:
        model: the unmasked model.
        cloak: the fitted cloak (its ranking and layer).
        activation: the activation-pruning scores at the same layer (fit on validation data).
        ratio: the evaluated ratio: every mask removes as many features.
        config: the settings (random masks, baselines, seed).
        images: whether the inputs are images ``(N, C, H, W)`` (the preprocessing baselines
            need them).
    """
    shape, compare, seed = cloak.feature_shape, config.compare, config.runtime.seed
    common = {"layer": cloak.layer.to_json(), "ratio": ratio, "n_removed": cloak.n_removed(ratio)}
    randoms = random_rankings(cloak.n_features, compare.n_random, seed)
    mask_spec = {"kind": "mask", **common}
    defenses = [
        Defense(UNMASKED, {"kind": "none"}, (lambda: _as_is(model),), False),
        Defense(
            CLOAKED, {**mask_spec, "score": cloak.score_name},
            (_mask(model, cloak, keep_mask(cloak.ranking, ratio, shape)),), True, ratio,
        ),
        Defense(
            RANDOM,
            {**mask_spec, "score": "random", "n_random": compare.n_random, "seed": seed},
            tuple(_mask(model, cloak, keep_mask(r, ratio, shape)) for r in randoms),
            compare.whitebox_baselines, ratio,
        ),
        Defense(
            ACTIVATION,
            {**mask_spec, "score": "activation", "fit_split": "validation",
             "n_samples": activation.n_samples},
            (_mask(model, cloak, keep_mask(activation.ranking, ratio, shape)),),
            compare.whitebox_baselines, ratio,
        ),
    ]  # fmt: skip
    notes: list[str] = []
    if compare.preprocessing_baselines and images:
        for wrapped in (
            feature_squeezing(model, bit_depth=compare.bit_depth),
            spatial_smoothing(model, window_size=compare.window_size),
        ):
            spec = {"kind": "preprocessor", **wrapped.spec()}
            enter: Enter = lambda w=wrapped: _as_is(w)  # type: ignore[misc]  # noqa: E731
            defenses.append(Defense(wrapped.name, spec, (enter,), compare.whitebox_baselines))
        notes.append(
            "FeatureSqueezing and SpatialSmoothing are not differentiable: their white-box "
            "numbers use BPDA (ART's identity gradient estimate); Square queries them "
            "directly. Gray-box samples for them are crafted on the undefended model."
        )
    elif compare.preprocessing_baselines:
        notes.append(
            "FeatureSqueezing and SpatialSmoothing skipped: they need image inputs (N, C, H, W)."
        )
    return defenses, notes


def _under(
    defense: Defense, samples: Samples, crafted: Mapping[str, torch.Tensor] | None
) -> dict[str, torch.Tensor]:
    """Correctness of every variant (stacked ``(k, N)`` when there are several) per input set."""
    sets = {"none": samples.x} if crafted is None else dict(crafted)
    found: dict[str, list[torch.Tensor]] = {name: [] for name in sets}
    for enter in defense.variants:
        with enter() as m:
            for name, x in sets.items():
                found[name].append(samples.correct(m, x))
    return {n: v[0] if len(v) == 1 else torch.stack(v) for n, v in found.items()}


def _whitebox(
    defense: Defense,
    samples: Samples,
    attacks: Mapping[str, Attack],
    store: CraftedSets,
    stage: Stage,
) -> dict[str, torch.Tensor]:
    with defense.variants[0]() as m:
        sets = store.get_all(attacks, m, defense.target(), samples, stage)
        return {n: samples.correct(m, x) for n, x in sets.items()}


def _results(
    defense: Defense,
    tm: ThreatModel,
    per_attack: Mapping[str, torch.Tensor],
    specs: Mapping[str, dict[str, Any]],
    ratio: float | None,
    config: EvaluationConfig,
) -> list[AccuracyResult]:
    note = None
    if defense.name == UNMASKED and tm is ThreatModel.WHITEBOX:
        note = "same samples as gray-box: for the unmasked model the two coincide"
    elif defense.name == RANDOM and tm is ThreatModel.WHITEBOX:
        note = "first random mask only"
    conf = config.checks.confidence
    out = [
        AccuracyResult(defense.name, tm, specs[n], c, ratio, conf, note)
        for n, c in per_attack.items()
    ]
    if tm is not ThreatModel.CLEAN:
        worst = {"name": WORST_CASE, "of": list(per_attack)}
        out.append(
            AccuracyResult(
                defense.name, tm, worst, worst_case(list(per_attack.values())), ratio, conf, note
            )
        )
    return out


def measure_defenses(
    defenses: list[Defense],
    attacks: Mapping[str, Attack],
    samples: Samples,
    model: nn.Module,
    config: EvaluationConfig,
    *,
    ratio: float,
    surrogate: nn.Module | None,
    progress: ProgressFn,
    store: CraftedSets | None = None,
) -> list[AccuracyResult]:
    """Every defence, clean and under every threat model and attack, plus the worst case.

    Gray-box samples are crafted once on the unmasked ``model`` and transfer samples once on the
    ``surrogate``; white-box attacks run through each defence that allows it. On each model the
    attacks run as AutoAttack runs them, each after the first only on the samples still standing
    (:meth:`CraftedSets.get_all`). Every set comes from ``store`` (a fresh one by default),
    which crafts it only if no stage did before.
    """
    store = store if store is not None else CraftedSets(Timings())
    n = samples.y.numel()
    stage = Stage(progress, "gray-box attacks", len(attacks) * n)
    unmasked = target(UNMASKED)
    crafted = {ThreatModel.GRAYBOX: store.get_all(attacks, model, unmasked, samples, stage)}
    if surrogate is not None:
        stage = Stage(progress, "transfer attacks", len(attacks) * n)
        on = target(SURROGATE)
        crafted[ThreatModel.TRANSFER] = store.get_all(attacks, surrogate, on, samples, stage)
    n_white = sum(d.whitebox for d in defenses)
    white_stage = Stage(progress, "white-box attacks", len(attacks) * n_white * n)
    # An attack run after others only on the samples they left standing is reported as
    # such: its accuracy is the worst case of those attacks and itself.
    after = standing_after(list(attacks))
    specs: dict[str, dict[str, Any]] = {
        k: {**a.spec(), "standing_after": after[k]} if after[k] else a.spec()
        for k, a in attacks.items()
    }
    specs["none"] = {"name": "none"}
    results: list[AccuracyResult] = []
    for d in defenses:
        at = None if d.name == UNMASKED or d.spec["kind"] == "preprocessor" else ratio
        by_tm = {ThreatModel.CLEAN: _under(d, samples, None)}
        by_tm.update({tm: _under(d, samples, sets) for tm, sets in crafted.items()})
        if d.name == UNMASKED:  # crafted on this very model: gray-box and white-box coincide
            by_tm[ThreatModel.WHITEBOX] = dict(by_tm[ThreatModel.GRAYBOX])
        elif d.whitebox:
            by_tm[ThreatModel.WHITEBOX] = _whitebox(d, samples, attacks, store, white_stage)
        for tm in ThreatModel:
            if tm in by_tm:
                results += _results(d, tm, by_tm[tm], specs, at, config)
    log.info("evaluated %d defences under %d attacks", len(defenses), len(attacks))
    return results
