"""The honest evaluation of a cloak: threat models, strong attacks, baselines, statistics, checks.

:func:`evaluate_cloak` answers "how much does the cloak help, against whom, at what clean cost?"
the way a careful reviewer expects (Carlini et al. 2019, arXiv 1902.06705; Tramer et al. 2020,
arXiv 2002.08347):

- **Threat models**, named on every number: *gray-box* (samples crafted on the unmasked model,
  the paper's setting), *white-box* (attacks run end to end through the defended model) and
  *transfer* (samples crafted on an independently trained surrogate the caller gives).
- **Attacks**: native FGSM and PGD, and ART's AutoPGD and Square (gradient-free); per sample,
  the worst case over all attacks run.
- **Baselines at equal settings**: the unmasked model, a random mask and activation pruning
  removing as many features, and ART's FeatureSqueezing and SpatialSmoothing in front of the
  unmasked model (white-box through them is BPDA; see :mod:`deepcloak.evaluation.baselines`).
- **Statistics**: a Wilson interval on every accuracy; McNemar's exact paired test of the cloaked
  against the unmasked model on the same samples.
- **Ratio**: chosen on a validation split (largest gray-box gain within a clean-accuracy budget,
  :func:`deepcloak.evaluation.ratio_choice.choose_ratio`), reported on the test split.
- **Sanity checks** (:mod:`deepcloak.evaluation.sanity`): more steps, growing epsilon,
  gradient-free vs gradient attacks, single-step vs iterative,
  white-box vs gray-box, transfer vs white-box.

Robust accuracy counts over *all* evaluated samples, not only the clean-correct ones.

Example:
    >>> config = EvaluationConfig(eps=8 / 255, attacks=("fgsm", "pgd", "apgd", "square"))
    >>> report = evaluate_cloak(model, train_loader, val_loader, test_loader, config=config)
    >>> report.result("cloaked", "white-box").accuracy
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks import art as art_attacks
from deepcloak.attacks.native import FGSM, PGD, Attack, Norm, eval_mode
from deepcloak.cloak.fit import Cloak, fit, model_device, unpack_batch
from deepcloak.cloak.mask import FeatureMask, insert_mask, keep_mask, remove_mask
from deepcloak.cloak.taps import tap
from deepcloak.errors import DeepCloakError, LayerError
from deepcloak.evaluation.baselines import feature_squeezing, spatial_smoothing
from deepcloak.evaluation.config import EvaluationConfig, build_attack
from deepcloak.evaluation.ratio_choice import RatioChoice, choose_ratio
from deepcloak.evaluation.results import (
    WORST_CASE,
    AccuracyResult,
    Comparison,
    CurvePoint,
    EvaluationReport,
    ThreatModel,
    library_versions,
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
from deepcloak.evaluation.stats import mcnemar_exact
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.progress import ProgressFn, no_progress
from deepcloak.validation import check_labels

__all__ = [
    "ACTIVATION",
    "CLOAKED",
    "RANDOM",
    "SMOOTHING",
    "SQUEEZING",
    "UNMASKED",
    "evaluate_cloak",
]

log = logging.getLogger(__name__)

#: The L-inf budget of the unbounded probe: at eps = 1 any image in [0, 1] is reachable.
UNBOUNDED_EPS = 1.0


#: Defence names, in the order reports show them.
UNMASKED, CLOAKED, RANDOM, ACTIVATION = "unmasked", "cloaked", "random-mask", "activation-pruning"
SQUEEZING, SMOOTHING = "feature-squeezing", "spatial-smoothing"


# --------------------------------------------------------------------------------- data checks
def _collect(
    loader: Iterable[Any], split: str, max_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` of ``loader`` (up to ``max_samples``) as CPU tensors, checked."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    seen = 0
    cpu = torch.device("cpu")
    for batch in loader:
        try:
            x, y = unpack_batch(batch, cpu)
        except DeepCloakError as e:
            raise DeepCloakError(f"{split} data: {e}") from None
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DeepCloakError(
                f"{split} data: expected one label per input, got inputs {tuple(x.shape)} and "
                f"labels {tuple(y.shape)}"
            )
        if xs and x.shape[1:] != xs[0].shape[1:]:
            raise DeepCloakError(
                f"{split} data: input shape changed between batches: {tuple(xs[0].shape[1:])} "
                f"then {tuple(x.shape[1:])}"
            )
        xs.append(x)
        ys.append(y)
        seen += x.shape[0]
        if max_samples is not None and seen >= max_samples:
            break
    if not xs:
        raise DeepCloakError(f"the {split} loader yielded no samples; expected at least one batch")
    x, y = torch.cat(xs), torch.cat(ys)
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    return x, y


def _check_model_accepts(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, split: str, what: str
) -> int:
    """Check that ``model`` runs on ``x`` and that ``y`` fits its outputs; returns #classes."""
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(x[:2].to(model_device(model)))
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DeepCloakError(
            f"the {what} does not accept the {split} inputs of shape {tuple(x.shape[1:])} "
            f"(C, H, W): {first}. Are the model and the data set meant for each other?"
        ) from None
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise DeepCloakError(
            f"the {what} must return logits of shape (N, num_classes), got {shape}"
        )
    try:
        check_labels(y, logits.shape[-1])
    except DeepCloakError as e:
        raise DeepCloakError(
            f"{split} labels do not match the {what}: {e}. Are the model and the data set meant "
            "for each other?"
        ) from None
    return int(logits.shape[-1])


def _check_cloak_fits(model: nn.Module, cloak: Cloak, x: torch.Tensor) -> None:
    try:
        with torch.no_grad(), eval_mode(model), tap(model, cloak.layer) as t:
            model(x[:2].to(model_device(model)))
            feats = t.take()
    except (AttributeError, LayerError) as e:
        raise DeepCloakError(
            f"the cloak's layer ({cloak.layer}) is not usable in this model: {e}"
        ) from None
    if tuple(feats.shape[1:]) != cloak.feature_shape:
        raise DeepCloakError(
            f"the cloak was fit on features of shape {cloak.feature_shape}, but {cloak.layer} "
            f"gives {tuple(feats.shape[1:])} here: is this the same model?"
        )


def _shared_samples(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many samples of ``a`` are bit-identical to a sample of ``b`` (split leakage)."""
    seen = {row.tobytes() for row in b.flatten(1).numpy()}
    return sum(row.tobytes() in seen for row in a.flatten(1).numpy())


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


# ------------------------------------------------------------------------------ batched passes
@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per-sample correctness ``(N,)`` of ``model`` on ``x``."""
    device = model_device(model)
    with eval_mode(model):
        preds = [
            model(xb.to(device)).argmax(-1).cpu()  # (B, K) -> (B,)
            for xb in x.split(batch_size)
        ]
    return torch.cat(preds) == y


class _Stage:
    """Progress of one task, counted in samples over several attack passes."""

    def __init__(self, progress: ProgressFn, task: str, total: int) -> None:
        self.progress, self.task, self.total, self.done = progress, task, total, 0
        progress(task, 0, total)

    def advance(self, k: int) -> None:
        self.done += k
        self.progress(self.task, self.done, self.total)


def _craft(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    stage: _Stage | None = None,
) -> torch.Tensor:
    """Adversarial versions of ``x`` (CPU), crafted batch by batch on the model's device."""
    device = model_device(model)
    out = []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        out.append(attack(model, xb, yb).detach().cpu())
        if stage is not None:
            stage.advance(xb.shape[0])
    return torch.cat(out)


@contextlib.contextmanager
def _masked(model: nn.Module, cloak: Cloak, keep: torch.Tensor) -> Iterator[nn.Module]:
    """``model`` with the mask ``keep`` at the cloak's layer, removed again on exit."""
    insert_mask(model, cloak.layer, FeatureMask(keep))
    try:
        yield model
    finally:
        remove_mask(model, cloak.layer.name)


@contextlib.contextmanager
def _as_is(model: nn.Module) -> Iterator[nn.Module]:
    yield model


@dataclass
class _Defense:
    name: str
    spec: dict[str, Any]
    enter: Callable[[], contextlib.AbstractContextManager[nn.Module]]
    whitebox: bool


def _worst(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    out = vectors[0].clone()
    for v in vectors[1:]:
        out &= v
    return out


# --------------------------------------------------------------------------------- entry point
def evaluate_cloak(
    model: nn.Module,
    train_loader_or_cloak: Iterable[Any] | Cloak,
    val_loader: Iterable[Any],
    test_loader: Iterable[Any],
    *,
    config: EvaluationConfig | None = None,
    surrogate: nn.Module | None = None,
    progress: ProgressFn | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> EvaluationReport:
    """Evaluate DeepCloak on ``model`` honestly: threat models, attacks, baselines, statistics.

    The model is used in eval mode and left as it was (masks are inserted for each measurement
    and removed again; train/eval modes are restored).

    Args:
        model: the trained classifier, taking inputs in [0, 1].
        train_loader_or_cloak: a fitted :class:`~deepcloak.Cloak`, or training data to fit one on
            (FGSM at ``config.fit_eps``, scorer ``config.score``, layer ``config.layer``).
        val_loader: validation data, held out from the test data: the ratio is chosen here, and
            the activation-pruning baseline measures activations here.
        test_loader: test data; every reported accuracy is measured here.
        config: the settings (default :class:`EvaluationConfig()`).
        surrogate: an independently trained model for the transfer threat model (optional).
        progress: ``progress(task, done, total)`` callback.
        metadata: free-form facts recorded in the report's ``run`` (e.g. ``{"model": "cnn",
            "data": "fashion-mnist", "checkpoint": "..."}``).

    Returns:
        An :class:`EvaluationReport`.

    Raises:
        DeepCloakError: bad settings (unknown attack, eps outside [0, 1], ...), empty loaders,
            inputs outside [0, 1], data that does not match the model (input shape or label
            range), a surrogate that does not match, or ART missing for an ART attack.
    """
    config = config if config is not None else EvaluationConfig()
    return _Evaluation(model, config, surrogate, progress or no_progress).run(
        train_loader_or_cloak, val_loader, test_loader, dict(metadata or {})
    )


class _Evaluation:
    """The state of one evaluation run (one job: keep :func:`evaluate_cloak` readable)."""

    def __init__(
        self,
        model: nn.Module,
        config: EvaluationConfig,
        surrogate: nn.Module | None,
        progress: ProgressFn,
    ) -> None:
        self.model = model
        self.config = config
        self.surrogate = surrogate
        self.progress = progress
        self.bs = config.batch_size
        self.results: list[AccuracyResult] = []
        self.notes: list[str] = [
            "Robust accuracy counts over all evaluated samples, not only clean-correct ones.",
        ]

    # ------------------------------------------------------------------------------ helpers
    def _add(
        self,
        defense: str,
        tm: ThreatModel,
        attack: dict[str, Any],
        correct: torch.Tensor,
        *,
        note: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> AccuracyResult:
        r = AccuracyResult(
            defense, tm, attack, correct.bool().cpu(), self.config.confidence, note, extra or {}
        )
        self.results.append(r)
        return r

    def _craft(self, attack: Attack, model: nn.Module, stage: _Stage) -> torch.Tensor:
        return _craft(attack, model, self.x, self.y, batch_size=self.bs, stage=stage)

    def _stage(self, task: str, passes: int) -> _Stage:
        return _Stage(self.progress, task, passes * self.y.numel())

    # ---------------------------------------------------------------------------------- run
    def run(
        self,
        train: Iterable[Any] | Cloak,
        val_loader: Iterable[Any],
        test_loader: Iterable[Any],
        metadata: dict[str, Any],
    ) -> EvaluationReport:
        cfg, model = self.config, self.model
        started, t0 = datetime.now(timezone.utc), time.perf_counter()
        if cfg.uses_art:
            art_attacks.require_art()  # fail now, not after the fit
        self.x, self.y = _collect(test_loader, "test", cfg.max_samples)
        x_val, y_val = _collect(val_loader, "validation", cfg.max_samples)
        num_classes = _check_model_accepts(model, self.x, self.y, "test", "model")
        _check_model_accepts(model, x_val, y_val, "validation", "model")
        if x_val.shape[1:] != self.x.shape[1:]:
            raise DeepCloakError(
                f"validation inputs have shape {tuple(x_val.shape[1:])} but test inputs "
                f"{tuple(self.x.shape[1:])}; expected the same data set"
            )
        if self.surrogate is not None:
            k = _check_model_accepts(self.surrogate, self.x, self.y, "test", "surrogate model")
            if k != num_classes:
                raise DeepCloakError(
                    f"the surrogate has {k} outputs but the model {num_classes}; a transfer "
                    "attack needs a surrogate trained on the same classes"
                )
        overlap = _shared_samples(x_val, self.x)
        if overlap:
            self.notes.append(
                f"{overlap} validation samples also appear in the test split: the ratio choice "
                "is not fully independent of the test numbers; hold out disjoint splits"
            )
            log.warning("%d validation samples also appear in the test split", overlap)
        cloak = self.cloak = self._cloak(train)
        _check_cloak_fits(model, cloak, self.x)
        val = _loader(x_val, y_val, self.bs)
        test = _loader(self.x, self.y, self.bs)
        select = build_attack(cfg.select_attack, cfg)

        choice = self._choose(cloak, val, select)
        ratio = choice.ratio
        log.info("evaluating at ratio %.4g (%s)", ratio, choice.reason)
        activation = fit(
            model,
            val,
            layer=cloak.layer.name,
            side=cloak.layer.side,
            score="activation",
            seed=cfg.seed,
        )
        defenses = self._defenses(cloak, activation, ratio)
        attacks = {name: build_attack(name, cfg) for name in cfg.attacks}
        self._evaluate_defenses(defenses, attacks)
        eps_curve, eps_checks = self._eps_curve(cloak, ratio)
        sanity = self._sanity(cloak, ratio, attacks) + eps_checks
        ratio_curve = self._ratio_curve(cloak, test, select, ratio)
        comparisons = self._comparisons()

        finished = datetime.now(timezone.utc)
        run_info = {
            "seed": cfg.seed,
            "data": {
                "test": _describe_data(test_loader, self.x, self.y),
                "validation": _describe_data(val_loader, x_val, y_val),
                "train": _describe_train(train),
                "num_classes": num_classes,
                "validation_test_overlap": overlap,
            },
            "model": _describe_model(model),
            "surrogate": _describe_model(self.surrogate) if self.surrogate is not None else None,
            "layer": cloak.layer.to_json(),
            "versions": library_versions(),
            "device": _describe_device(model),
            "started_at": started.isoformat(),
            "finished_at": finished.isoformat(),
            "duration_s": round(time.perf_counter() - t0, 3),
            "metadata": metadata,
        }
        return EvaluationReport(
            run=run_info,
            config=cfg,
            cloak=cloak.metadata(ratio),
            ratio_choice=choice,
            defenses={d.name: d.spec for d in defenses},
            results=self.results,
            comparisons=comparisons,
            sanity=sanity,
            eps_curve=eps_curve,
            ratio_curve=ratio_curve,
            notes=self.notes,
        )

    # ------------------------------------------------------------------------------- stages
    def _cloak(self, train: Iterable[Any] | Cloak) -> Cloak:
        if isinstance(train, Cloak):
            return train
        cfg = self.config
        return fit(
            self.model,
            train,
            attack=FGSM(eps=cfg.fit_eps if cfg.fit_eps is not None else cfg.eps),
            layer=cfg.layer,
            score=cfg.score,
            max_samples=cfg.max_fit_samples,
            seed=cfg.seed,
            progress=self.progress,
        )

    def _choose(self, cloak: Cloak, val: DataLoader, select: Attack) -> RatioChoice:
        cfg = self.config
        if cfg.ratio is not None:
            return RatioChoice(
                ratio=cfg.ratio,
                clean_budget=cfg.clean_budget,
                baseline_clean_accuracy=None,
                baseline_graybox_accuracy=None,
                candidates=(),
                n_samples=0,
                attack={},
                split="fixed",
                reason="ratio fixed by the user; no validation choice made",
            )
        sweep = graybox_sweep(
            self.model,
            cloak,
            val,
            attack=select,
            ratios=cfg.ratios,
            n_random=0,
            seed=cfg.seed,
            progress=_renamed(self.progress, "validation: "),
        )
        return choose_ratio(sweep, cfg.clean_budget)

    def _defenses(self, cloak: Cloak, activation: Cloak, ratio: float) -> list[_Defense]:
        cfg, model = self.config, self.model
        n_removed = cloak.n_removed(ratio)
        common = {"layer": cloak.layer.to_json(), "ratio": ratio, "n_removed": n_removed}
        gen = torch.Generator().manual_seed(cfg.seed)
        self.random_keeps = [
            keep_mask(torch.randperm(cloak.n_features, generator=gen), ratio, cloak.feature_shape)
            for _ in range(cfg.n_random)
        ]
        cloak_keep = keep_mask(cloak.ranking, ratio, cloak.feature_shape)
        act_keep = keep_mask(activation.ranking, ratio, cloak.feature_shape)
        defenses = [
            _Defense(UNMASKED, {"kind": "none"}, lambda: _as_is(model), False),
            _Defense(
                CLOAKED,
                {"kind": "mask", "score": cloak.score_name, **common},
                lambda: _masked(model, cloak, cloak_keep),
                True,
            ),
            _Defense(
                RANDOM,
                {
                    "kind": "mask",
                    "score": "random",
                    "n_random": len(self.random_keeps),
                    "seed": cfg.seed,
                    **common,
                },
                lambda: _masked(model, cloak, self.random_keeps[0]),
                cfg.whitebox_baselines,
            ),
            _Defense(
                ACTIVATION,
                {
                    "kind": "mask",
                    "score": "activation",
                    "fit_split": "validation",
                    "n_samples": activation.n_samples,
                    **common,
                },
                lambda: _masked(model, cloak, act_keep),
                cfg.whitebox_baselines,
            ),
        ]
        if cfg.preprocessing_baselines and self.x.ndim == 4:
            fs = feature_squeezing(model, bit_depth=cfg.bit_depth)
            ss = spatial_smoothing(model, window_size=cfg.window_size)
            for wrapped in (fs, ss):
                defenses.append(
                    _Defense(
                        wrapped.name,
                        {"kind": "preprocessor", **wrapped.spec()},
                        lambda w=wrapped: _as_is(w),  # type: ignore[misc]
                        cfg.whitebox_baselines,
                    )
                )
            self.notes.append(
                "FeatureSqueezing and SpatialSmoothing are not differentiable: their white-box "
                "numbers use BPDA (ART's identity gradient estimate); Square queries them "
                "directly. Gray-box samples for them are crafted on the undefended model."
            )
        elif cfg.preprocessing_baselines:
            self.notes.append(
                "FeatureSqueezing and SpatialSmoothing skipped: they need image inputs "
                "(N, C, H, W)."
            )
        return defenses

    def _evaluate_defenses(self, defenses: list[_Defense], attacks: dict[str, Attack]) -> None:
        model = self.model
        stage = self._stage("gray-box attacks", len(attacks))
        gray = {n: self._craft(a, model, stage) for n, a in attacks.items()}
        transfer: dict[str, torch.Tensor] = {}
        if self.surrogate is not None:
            stage = self._stage("transfer attacks", len(attacks))
            transfer = {n: self._craft(a, self.surrogate, stage) for n, a in attacks.items()}
        n_white = sum(d.whitebox for d in defenses)
        white_stage = self._stage("white-box attacks", len(attacks) * n_white)
        specs = {n: a.spec() for n, a in attacks.items()}
        worst_spec = {"name": WORST_CASE, "of": list(attacks)}
        self.whitebox_cloaked: dict[str, torch.Tensor] = {}
        for d in defenses:
            by_tm: dict[ThreatModel, dict[str, torch.Tensor]] = {}
            with d.enter() as m:
                clean = _correct(m, self.x, self.y, self.bs)
                self._add(d.name, ThreatModel.CLEAN, {"name": "none"}, clean)
                by_tm[ThreatModel.GRAYBOX] = {
                    n: _correct(m, xa, self.y, self.bs) for n, xa in gray.items()
                }
                if transfer:
                    by_tm[ThreatModel.TRANSFER] = {
                        n: _correct(m, xa, self.y, self.bs) for n, xa in transfer.items()
                    }
                if d.name == UNMASKED:
                    # Crafted on this very model: gray-box and white-box coincide.
                    by_tm[ThreatModel.WHITEBOX] = dict(by_tm[ThreatModel.GRAYBOX])
                elif d.whitebox:
                    by_tm[ThreatModel.WHITEBOX] = {
                        n: _correct(m, self._craft(a, m, white_stage), self.y, self.bs)
                        for n, a in attacks.items()
                    }
            if d.name == CLOAKED:
                self.whitebox_cloaked = by_tm.get(ThreatModel.WHITEBOX, {})
            extra_random = self._random_extras(gray, transfer) if d.name == RANDOM else {}
            for tm, per_attack in by_tm.items():
                note = None
                if d.name == UNMASKED and tm is ThreatModel.WHITEBOX:
                    note = "same samples as gray-box: for the unmasked model the two coincide"
                if d.name == RANDOM and tm is ThreatModel.WHITEBOX:
                    note = "first random mask only"
                for n, c in per_attack.items():
                    extra = extra_random.get((tm, n), {})
                    self._add(d.name, tm, specs[n], c, note=note, extra=extra)
                self._add(d.name, tm, worst_spec, _worst(list(per_attack.values())), note=note)
        log.info("evaluated %d defences under %d attacks", len(defenses), len(attacks))

    def _random_extras(
        self, gray: dict[str, torch.Tensor], transfer: dict[str, torch.Tensor]
    ) -> dict[tuple[ThreatModel, str], dict[str, Any]]:
        """Mean and spread of every random mask's accuracy (the per-sample vector is mask 0's)."""
        out: dict[tuple[ThreatModel, str], dict[str, Any]] = {}
        # The cloak's layer is the one every random mask is inserted at.
        for tm, crafted in ((ThreatModel.GRAYBOX, gray), (ThreatModel.TRANSFER, transfer)):
            for n, xa in crafted.items():
                accs = []
                for keep in self.random_keeps:
                    with _masked(self.model, self.cloak, keep) as m:
                        accs.append(_correct(m, xa, self.y, self.bs).double().mean().item())
                t = torch.tensor(accs, dtype=torch.float64)
                out[(tm, n)] = {
                    "random_masks": len(accs),
                    "mean_accuracy": t.mean().item(),
                    "std_accuracy": t.std(correction=0).item(),
                }
        return out

    def _eps_curve(self, cloak: Cloak, ratio: float) -> tuple[list[CurvePoint], list[SanityCheck]]:
        cfg, model = self.config, self.model
        points: list[CurvePoint] = []
        keep = keep_mask(cloak.ranking, ratio, cloak.feature_shape)
        conf = cfg.confidence
        grid = cfg.resolved_eps_grid
        white_curve: list[tuple[float, float]] = []
        stage = self._stage("accuracy vs eps", 2 * len(grid) + 1)
        for eps in grid:
            attack = build_attack("pgd", cfg, eps=eps)
            x_gray = self._craft(attack, model, stage)
            unmasked = _correct(model, x_gray, self.y, self.bs)
            with _masked(model, cloak, keep) as m:
                gray = _correct(m, x_gray, self.y, self.bs)
                x_white = self._craft(attack, m, stage)
                white = _correct(m, x_white, self.y, self.bs)
            n = self.y.numel()
            for series, c in (
                ("unmasked", unmasked),
                ("cloaked gray-box", gray),
                ("cloaked white-box", white),
            ):
                points.append(CurvePoint(series, eps, int(c.sum()), n, conf))
            white_curve.append((eps, white.double().mean().item()))
        probe = PGD(
            eps=UNBOUNDED_EPS,
            steps=cfg.steps,
            restarts=cfg.restarts,
            seed=cfg.seed,
            norm=Norm.LINF,
        )
        with _masked(model, cloak, keep) as m:
            x_probe = self._craft(probe, m, stage)
            probe_acc = _correct(m, x_probe, self.y, self.bs).double().mean().item()
        check = check_eps_growth(
            white_curve,
            unbounded_eps=UNBOUNDED_EPS,
            unbounded_accuracy=probe_acc,
            max_unbounded_accuracy=cfg.max_unbounded_accuracy,
            n=self.y.numel(),
            tolerance=cfg.sanity_tolerance,
        )
        return points, [check]

    def _sanity(self, cloak: Cloak, ratio: float, attacks: dict[str, Attack]) -> list[SanityCheck]:
        """Checks on the cloaked model under white-box attacks (where masking would show)."""
        cfg, model = self.config, self.model
        n, tol = self.y.numel(), cfg.sanity_tolerance
        keep = keep_mask(cloak.ranking, ratio, cloak.feature_shape)
        base = build_attack("pgd", cfg)
        more = build_attack("pgd", cfg, steps=cfg.steps * cfg.more_steps_factor)
        reuse = "pgd" in self.whitebox_cloaked and attacks["pgd"].spec() == base.spec()
        stage = self._stage("sanity checks", 1 if reuse else 2)
        with _masked(model, cloak, keep) as m:
            if reuse:
                base_correct = self.whitebox_cloaked["pgd"]
            else:
                base_correct = _correct(m, self._craft(base, m, stage), self.y, self.bs)
            more_correct = _correct(m, self._craft(more, m, stage), self.y, self.bs)
        checks = [
            check_more_steps(
                base_correct.double().mean().item(),
                more_correct.double().mean().item(),
                steps=cfg.steps,
                more_steps=cfg.steps * cfg.more_steps_factor,
                n=n,
                tolerance=tol,
            )
        ]
        wb = self.whitebox_cloaked
        free = {k: v for k, v in wb.items() if k in art_attacks.GRADIENT_FREE}
        grad = {k: v for k, v in wb.items() if k not in art_attacks.GRADIENT_FREE}
        checks.append(check_gradient_free(grad, free, tolerance=tol))
        iterative = {k: v for k, v in grad.items() if k != "fgsm"}
        if "fgsm" in grad and iterative:
            checks.append(
                check_single_step(
                    grad["fgsm"].double().mean().item(),
                    _worst(list(iterative.values())).double().mean().item(),
                    n=n,
                    tolerance=tol,
                )
            )
        white = self._find(CLOAKED, ThreatModel.WHITEBOX)
        gray = self._find(CLOAKED, ThreatModel.GRAYBOX)
        if white is not None and gray is not None:
            checks.append(
                check_whitebox_vs_graybox(white.accuracy, gray.accuracy, n=n, tolerance=tol)
            )
        transfer = self._find(CLOAKED, ThreatModel.TRANSFER)
        if white is not None and transfer is not None:
            checks.append(
                check_transfer_vs_whitebox(transfer.accuracy, white.accuracy, n=n, tolerance=tol)
            )
        return checks

    def _find(self, defense: str, tm: ThreatModel) -> AccuracyResult | None:
        """The worst-case result (the clean one for ``CLEAN``) of ``defense`` under ``tm``."""
        name = "none" if tm is ThreatModel.CLEAN else WORST_CASE
        for r in self.results:
            if r.defense == defense and r.threat_model is tm and r.attack_name == name:
                return r
        return None

    def _ratio_curve(
        self, cloak: Cloak, test: DataLoader, select: Attack, ratio: float
    ) -> list[CurvePoint]:
        cfg = self.config
        ratios = sorted({*cfg.ratios, *cfg.whitebox_ratios, ratio})
        white = sorted({*cfg.whitebox_ratios, ratio})
        sweep = graybox_sweep(
            self.model,
            cloak,
            test,
            attack=select,
            ratios=ratios,
            n_random=cfg.n_random,
            seed=cfg.seed,
            whitebox_attack=select,
            whitebox_ratios=white,
            progress=_renamed(self.progress, "ratio sweep: "),
        )
        n, conf = sweep.n_samples, cfg.confidence
        points = []
        for row in sweep.rows:
            for series, acc in (
                ("clean", row.clean_accuracy),
                ("gray-box", row.graybox_accuracy),
                ("white-box", row.whitebox_accuracy),
                ("random clean", row.random_clean_accuracy),
                ("random gray-box", row.random_graybox_accuracy),
            ):
                if acc is not None:
                    points.append(CurvePoint(series, row.ratio, round(acc * n), n, conf))
        return points

    def _comparisons(self) -> list[Comparison]:
        out = []
        for tm in ThreatModel:
            a, b = self._find(CLOAKED, tm), self._find(UNMASKED, tm)
            if a is None or b is None:
                continue
            out.append(
                Comparison(
                    CLOAKED,
                    UNMASKED,
                    tm,
                    a.attack_name,
                    a.accuracy,
                    b.accuracy,
                    mcnemar_exact(a.correct, b.correct),
                )
            )
        return out


def _renamed(progress: ProgressFn, prefix: str) -> ProgressFn:
    def report(task: str, done: int, total: int | None) -> None:
        progress(prefix + task, done, total)

    return report


# ------------------------------------------------------------------------------- descriptions
def _describe_device(model: nn.Module) -> dict[str, Any]:
    device = model_device(model)
    d: dict[str, Any] = {"type": device.type, "name": str(device)}
    if device.type == "cuda":
        d["gpu"] = torch.cuda.get_device_name(device)
    else:
        d["cpu"] = platform.processor() or platform.machine()
        d["threads"] = torch.get_num_threads()
    return d


def _describe_model(model: nn.Module) -> dict[str, Any]:
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _describe_data(loader: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    dataset = getattr(loader, "dataset", None)
    return {
        "name": getattr(dataset, "name", None)
        or (type(dataset).__name__ if dataset is not None else None),
        "n_available": _len(dataset),
        "n_used": int(y.numel()),
        "input_shape": list(x.shape[1:]),
        "class_counts": torch.bincount(y).tolist(),
    }


def _describe_train(train: Any) -> dict[str, Any]:
    if isinstance(train, Cloak):
        return {"source": "given cloak", "n_samples": train.n_samples}
    dataset = getattr(train, "dataset", None)
    return {
        "source": "fit here",
        "name": getattr(dataset, "name", None)
        or (type(dataset).__name__ if dataset is not None else None),
        "n_available": _len(dataset),
    }


def _len(obj: Any) -> int | None:
    try:
        return len(obj) if obj is not None else None
    except TypeError:
        return None
