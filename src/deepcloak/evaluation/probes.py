"""The measurements behind the sanity checks: accuracy vs epsilon, an unbounded probe, more steps.

:mod:`deepcloak.evaluation.sanity` turns numbers into verdicts; this module runs the attacks
that produce them, on the cloaked model (where gradient masking would show).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from deepcloak.attacks import art as art_attacks
from deepcloak.attacks.native import PGD, Attack, Norm
from deepcloak.evaluation.config import EvaluationConfig, build_attack
from deepcloak.evaluation.crafted import EVERY_SAMPLE, CraftedSets, Samples, Target, target
from deepcloak.evaluation.defenses import Enter
from deepcloak.evaluation.passes import Stage, worst_case
from deepcloak.evaluation.results import (
    CLOAKED,
    UNMASKED,
    AccuracyResult,
    ThreatModel,
    find_result,
)
from deepcloak.evaluation.sanity import (
    SanityCheck,
    check_eps_growth,
    check_gradient_free,
    check_more_steps,
    check_single_step,
    check_transfer_vs_whitebox,
    check_whitebox_vs_graybox,
)
from deepcloak.progress import ProgressFn

__all__ = ["UNBOUNDED_EPS", "curve_attack", "eps_curve", "sanity_checks", "unbounded_probe"]

#: The L-inf budget of the unbounded probe: at eps = 1 any image in [0, 1] is reachable.
UNBOUNDED_EPS = 1.0


def unbounded_probe(config: EvaluationConfig) -> PGD:
    """The PGD run at L-inf eps = 1, where any model must fall to about 0% accuracy.

    It starts at the clean input, not at a random point: at eps = 1 a random start is a random
    image, on which an undefended classifier is often confidently wrong *and* saturated (its
    softmax gradient underflows), so PGD from there stays stuck on samples of the class that
    noise is assigned to (about 1 in 10 on Fashion-MNIST). Steps of 0.1 (at least 20 of them)
    reach any image in [0, 1] from any start.
    """
    return PGD(
        eps=UNBOUNDED_EPS,
        steps=max(config.attack.steps, 20),
        step_size=0.1,
        random_start=False,
        norm=Norm.LINF,
        seed=config.runtime.seed,
    )


def curve_attack(config: EvaluationConfig) -> str:
    """The attack of the accuracy-vs-eps curve and of the more-steps check: the first gradient
    attack of the worst case that runs on every sample (APGD-CE at ``standard``), else PGD.

    At the evaluation's budget its sets are the worst case's own (the store hands them back).
    """
    for name in config.attack.attacks:
        if name not in EVERY_SAMPLE and name not in art_attacks.GRADIENT_FREE:
            return name
    return "pgd"


def eps_curve(
    model: nn.Module,
    cloaked: Enter,
    samples: Samples,
    config: EvaluationConfig,
    *,
    ratio: float,
    progress: ProgressFn,
    store: CraftedSets,
) -> tuple[list[AccuracyResult], SanityCheck]:
    """Unmasked and cloaked (gray-box, white-box) accuracy at each budget of the grid, under
    :func:`curve_attack` (the worst case's strongest first attack; PGD when it has none).

    At the evaluation's own budget its samples are those the defences were measured on
    (same spec, same models): ``store`` hands them back instead of attacking again.

    Args:
        model: the unmasked model.
        cloaked: enters the cloaked model (the same model with the mask in place).
        samples: the test samples.
        config: the settings (grid, norm, steps, tolerance).
        ratio: the evaluated ratio (recorded on the cloaked results).
        progress: ``progress(task, done, total)`` callback.
        store: the crafted sets of the evaluation.

    Returns:
        The curve's results (each attack spec carries its ``eps``) and the ``eps-growth``
        check, which adds the unbounded probe (:func:`unbounded_probe`).
    """
    grid, conf = config.attack.resolved_eps_grid, config.checks.confidence
    stage = Stage(progress, "accuracy vs eps", (2 * len(grid) + 1) * samples.y.numel())
    points: list[AccuracyResult] = []
    white: list[tuple[float, float]] = []
    on_cloaked = target(CLOAKED, ratio)
    for eps in grid:
        attack = build_attack(curve_attack(config), config, eps=eps)
        spec = attack.spec()
        x_gray = store.get(attack, model, target(UNMASKED), samples, stage)
        points.append(
            AccuracyResult(UNMASKED, ThreatModel.GRAYBOX, spec, samples.correct(model, x_gray))
        )
        with cloaked() as m:
            gray = samples.correct(m, x_gray)
            whitebox = samples.correct(m, store.get(attack, m, on_cloaked, samples, stage))
        points.append(AccuracyResult(CLOAKED, ThreatModel.GRAYBOX, spec, gray, ratio, conf))
        points.append(AccuracyResult(CLOAKED, ThreatModel.WHITEBOX, spec, whitebox, ratio, conf))
        white.append((eps, whitebox.double().mean().item()))
    with cloaked() as m:
        x_probe = store.get(unbounded_probe(config), m, on_cloaked, samples, stage)
        probe = samples.correct(m, x_probe)
    check = check_eps_growth(
        white,
        unbounded_eps=UNBOUNDED_EPS,
        unbounded_accuracy=probe.double().mean().item(),
        max_unbounded_accuracy=config.checks.max_unbounded_accuracy,
        n=samples.y.numel(),
        tolerance=config.checks.sanity_tolerance,
    )
    return points, check


def _mean(correct: torch.Tensor) -> float:
    return correct.double().mean().item()


def _more_steps(
    cloaked: Enter,
    on: Target,
    samples: Samples,
    config: EvaluationConfig,
    store: CraftedSets,
    progress: ProgressFn,
) -> SanityCheck:
    name = curve_attack(config)
    base = build_attack(name, config)  # the defences' white-box first attack, when they ran it
    steps: int = getattr(base, "steps", config.attack.steps)  # attack_params may set its own
    more_steps = steps * config.checks.more_steps_factor
    more = dataclasses.replace(base, steps=more_steps)  # type: ignore[type-var]
    stage = Stage(progress, "sanity checks", 2 * samples.y.numel())
    with cloaked() as m:
        base_correct = samples.correct(m, store.get(base, m, on, samples, stage))
        more_correct = samples.correct(m, store.get(more, m, on, samples, stage))
    return check_more_steps(
        _mean(base_correct), _mean(more_correct), steps=steps, more_steps=more_steps,
        n=samples.y.numel(), tolerance=config.checks.sanity_tolerance, attack=name.upper(),
    )  # fmt: skip


def sanity_checks(
    cloaked: Enter,
    samples: Samples,
    config: EvaluationConfig,
    results: Sequence[AccuracyResult],
    attacks: Mapping[str, Attack],
    progress: ProgressFn,
    *,
    ratio: float,
    store: CraftedSets,
) -> list[SanityCheck]:
    """The checks on the cloaked model under white-box attacks (where masking would show).

    Reuses the white-box results already measured and the crafted sets in ``store``; runs
    :func:`curve_attack` once more with more steps. Attacks that ran only on the samples left
    standing report the worst case up to them: the gradient-free check then asks whether the
    gradient-free attack broke more samples than the tolerance that every gradient attack
    missed.
    """
    n, tol = samples.y.numel(), config.checks.sanity_tolerance
    whitebox = {
        r.attack_name: r.correct
        for r in results
        if r.defense == CLOAKED
        and r.threat_model is ThreatModel.WHITEBOX
        and r.attack_name in attacks
    }
    on = target(CLOAKED, ratio)
    checks = [_more_steps(cloaked, on, samples, config, store, progress)]
    free = {k: v for k, v in whitebox.items() if k in art_attacks.GRADIENT_FREE}
    grad = {k: v for k, v in whitebox.items() if k not in art_attacks.GRADIENT_FREE}
    checks.append(check_gradient_free(grad, free, tolerance=tol))
    iterative = [v for k, v in grad.items() if k != "fgsm"]
    if "fgsm" in grad and iterative:
        checks.append(
            check_single_step(_mean(grad["fgsm"]), _mean(worst_case(iterative)), n=n, tolerance=tol)
        )
    white = find_result(results, CLOAKED, ThreatModel.WHITEBOX)
    gray = find_result(results, CLOAKED, ThreatModel.GRAYBOX)
    transfer = find_result(results, CLOAKED, ThreatModel.TRANSFER)
    if white is not None and gray is not None:
        checks.append(check_whitebox_vs_graybox(white.accuracy, gray.accuracy, n=n, tolerance=tol))
    if white is not None and transfer is not None:
        checks.append(
            check_transfer_vs_whitebox(transfer.accuracy, white.accuracy, n=n, tolerance=tol)
        )
    return checks
