"""The stages of an evaluation after its samples are prepared, each a function of what came before.

:func:`fit_and_choose`: the cloak (given, fit, or searched) and its ratio (fixed, chosen on a
validation sweep, or the search's); :func:`measure`: every defence under every attack at that
ratio, the eps curve, the sanity checks and the test ratio curve. Each stage runs through a
:class:`~deepcloak.evaluation.resume.StageRunner`, which times it and, with a work folder,
saves it or reads it back. :mod:`deepcloak.evaluation.run` chains them into a report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import TensorDataset

from deepcloak.attacks.native import FGSM, Attack
from deepcloak.cloak.fit import Cloak, fit
from deepcloak.cloak.mask import keep_mask, masked
from deepcloak.data.loader import BatchLoader, make_loader
from deepcloak.distributed import from_main
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig, build_attack
from deepcloak.evaluation.crafted import CraftedSets, Samples, TimedAttack, target
from deepcloak.evaluation.defenses import Defense, build_defenses, measure_defenses
from deepcloak.evaluation.inputs import EvaluationSplits
from deepcloak.evaluation.passes import Stage, renamed
from deepcloak.evaluation.probes import eps_curve, sanity_checks
from deepcloak.evaluation.ratio_choice import choose_ratio
from deepcloak.evaluation.results import (
    CLOAKED,
    UNMASKED,
    AccuracyResult,
    Comparison,
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
)
from deepcloak.evaluation.sanity import SanityCheck
from deepcloak.evaluation.selection import search_choice, search_cloak
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.evaluation.timings import AttackPass
from deepcloak.progress import ProgressFn
from deepcloak.validation import check_ratios

__all__ = ["Measured", "comparisons", "fit_and_choose", "measure"]


def fit_and_choose(
    stages: StageRunner, model: nn.Module, train: Iterable[Any] | Cloak,
    splits: EvaluationSplits, cfg: EvaluationConfig, report: ProgressFn,
) -> tuple[Cloak, RatioChoice]:  # fmt: skip
    """The stages ``fit`` and ``ratio choice``: the cloak and the ratio it is evaluated at."""
    store, work = stages.store, stages.work
    # Under torchrun every decision that sets how many passes follow (the cloak, its ratio)
    # is rank 0's: a last-bit difference between ranks must not make them disagree and hang.
    cloak = from_main(stages.run(
        "fit", lambda: _fit_or_use(model, train, splits, cfg, report, store),
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
    return cloak, from_main(choice)


def _loader(samples: Samples) -> BatchLoader:
    return make_loader(TensorDataset(samples.x, samples.y), batch_size=samples.batch_size)


def _fit_or_use(
    model: nn.Module, train: Iterable[Any] | Cloak, splits: EvaluationSplits,
    config: EvaluationConfig, progress: ProgressFn, store: CraftedSets,
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
        train.check_fits(model, splits.test.x)
        return train
    if config.cloak.select is not None:
        searched = search_cloak(model, train, splits.val, config, progress)
        searched.check_fits(model, splits.test.x)
        return searched
    attack = TimedAttack(FGSM(eps=config.resolved_fit_eps))
    cloak = fit(
        model, train, attack=attack, layer=config.cloak.layer, side=config.cloak.side,
        score=config.cloak.score, max_samples=config.samples.max_fit_samples,
        seed=config.runtime.seed, progress=progress,
    )  # fmt: skip
    cloak.check_fits(model, splits.test.x)
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
    model: nn.Module, cloak: Cloak, splits: EvaluationSplits, ratio: float, config: EvaluationConfig
) -> tuple[list[Defense], list[str]]:
    """The defences at ``ratio``; activation pruning measures activations on validation data."""
    activation = fit(
        model, _loader(splits.val), layer=cloak.layer.name, side=cloak.layer.side,
        score="activation", seed=config.runtime.seed,
    )  # fmt: skip
    return build_defenses(model, cloak, activation, ratio, config, images=splits.test.x.ndim == 4)


def comparisons(results: list[Any]) -> list[Comparison]:
    """McNemar's exact test of cloaked vs unmasked under each threat model (worst case)."""
    out = []
    for tm in ThreatModel:
        a, b = find_result(results, CLOAKED, tm), find_result(results, UNMASKED, tm)
        if a is not None and b is not None:
            out.append(compare(a, b))
    return out


@dataclass(frozen=True)
class Measured:
    """What the stages after the ratio choice measured."""

    defenses: list[Defense]
    notes: list[str]
    results: list[AccuracyResult]
    eps_curve: list[AccuracyResult]
    checks: list[SanityCheck]
    ratio_curve: SweepResult


def measure(
    stages: StageRunner, model: nn.Module, cloak: Cloak, ratio: float, splits: EvaluationSplits,
    surrogate: nn.Module | None, cfg: EvaluationConfig, report: ProgressFn,
) -> Measured:  # fmt: skip
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
    return Measured(defenses, notes, results, curve, [*checks, eps_check], ratio_curve)
