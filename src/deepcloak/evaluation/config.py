"""Settings of an evaluation, its levels, and building its attacks by name.

:class:`EvaluationConfig` is a frozen dataclass checked at construction, so a bad setting
(unknown attack, eps outside [0, 1], an L-inf-only attack under L2, ...) fails before any work
is done. The CLI only parses its options into one.

Levels (like AutoAttack's versions) fix the settings that decide an evaluation's cost:
:meth:`EvaluationConfig.for_level` starts from ``quick``, ``standard`` (the defaults) or
``thorough`` (:data:`LEVELS`) and lets explicit settings override them.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

from torch import nn

from deepcloak.attacks import ATTACKS
from deepcloak.attacks import art as art_attacks  # also registers "apgd", "square", "art-pgd"
from deepcloak.attacks.native import Attack, Norm, parse_norm
from deepcloak.cloak.fit import DEFAULT_EPS
from deepcloak.cloak.scores import SCORERS
from deepcloak.cloak.selectors import AUTO, DEFAULT_SELECTOR, SelectorChoice
from deepcloak.cloak.taps import Side
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.grids import DEFAULT_RATIOS, EVALUATION_WHITEBOX_RATIOS
from deepcloak.models.precision import (
    Precision,
    check_precision_supported,
    forward_precision,
    parse_precision,
)
from deepcloak.models.runtime import model_device
from deepcloak.validation import check_budget, check_epsilon, check_ratio, check_ratios

__all__ = ["LEVELS", "EvaluationConfig", "EvaluationLevel", "build_attack", "in_config_precision"]


class EvaluationLevel(str, enum.Enum):
    """How much an evaluation spends on its attacks (``quick``, ``standard``, ``thorough``)."""

    QUICK = "quick"
    STANDARD = "standard"
    THOROUGH = "thorough"

    @classmethod
    def parse(cls, value: EvaluationLevel | str) -> EvaluationLevel:
        """The level named ``value``.

        Raises:
            DeepCloakError: an unknown level (the message lists the known ones).
        """
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(level.value for level in cls)
            raise DeepCloakError(f"unknown level {value!r}; expected one of: {known}") from None


def _level(**settings: Any) -> Mapping[str, Any]:
    return MappingProxyType(settings)


#: The settings each level fixes; every other setting keeps its default. ``standard`` is the
#: dataclass defaults; ``quick`` is a first look in about a minute on a CPU (FGSM and APGD-CE-10
#: on 100 samples, no gradient-free attack: not a result to publish); ``standard`` is AutoAttack's
#: strength at a fraction of its cost (APGD-CE-100, then APGD-T over the top-3 targets and
#: Square-300 on the samples still standing; ``bench/autoattack.py`` measures it against
#: AutoAttack); ``thorough`` is at least AutoAttack's standard version (APGD-CE-100 with
#: restarts, APGD-T over the top-9 targets, Square-5000) with more masks and budgets, on every
#: sample. The sweep's PGD keeps ``steps``; APGD's steps and targets are ``attack_params``.
# fmt: off
LEVELS: Mapping[EvaluationLevel, Mapping[str, Any]] = MappingProxyType(
    {
        EvaluationLevel.QUICK: _level(
            attacks=("fgsm", "apgd"), steps=10, restarts=1, max_queries=100, n_random=2,
            attack_params=_level(apgd=_level(steps=10)),
            eps_factors=(0.5, 1.0, 2.0), whitebox_ratios=(0.0,),
            preprocessing_baselines=False, whitebox_baselines=False, more_steps_factor=2,
            max_samples=100, max_fit_samples=2000,
        ),
        EvaluationLevel.STANDARD: _level(
            attacks=("fgsm", "apgd", "apgd-t", "square"), steps=20, restarts=1, max_queries=300,
            attack_params=_level(
                apgd=_level(steps=100), **{"apgd-t": _level(steps=100, targets=3)}
            ),
            n_random=5, eps_factors=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0),
            whitebox_ratios=EVALUATION_WHITEBOX_RATIOS, preprocessing_baselines=True,
            whitebox_baselines=True, more_steps_factor=4, max_samples=500, max_fit_samples=None,
        ),
        EvaluationLevel.THOROUGH: _level(
            attacks=("fgsm", "apgd", "apgd-t", "square"), steps=50, restarts=3, max_queries=5000,
            attack_params=_level(
                apgd=_level(steps=100), **{"apgd-t": _level(steps=100, targets=9, restarts=1)}
            ),
            n_random=10, eps_factors=(0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0),
            whitebox_ratios=(0.0, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5),
            preprocessing_baselines=True, whitebox_baselines=True, more_steps_factor=4,
            max_samples=None, max_fit_samples=None,
        ),
    }
)
# fmt: on

_STANDARD = LEVELS[EvaluationLevel.STANDARD]


def _default_attacks() -> tuple[str, ...]:
    return tuple(_STANDARD["attacks"])


def _default_eps_factors() -> tuple[float, ...]:
    return tuple(_STANDARD["eps_factors"])


def _default_attack_params() -> Mapping[str, Mapping[str, Any]]:
    return {k: dict(v) for k, v in _STANDARD["attack_params"].items()}


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """Everything that defines an evaluation (the CLI only parses into this).

    Args:
        eps: attack budget in the [0, 1] input scale (8/255 ~ 0.031).
        norm: ``"linf"`` or ``"l2"`` for every attack (FGSM is L-inf only).
        attacks: attack names from :data:`deepcloak.attacks.ATTACKS`: ``"fgsm"``, ``"pgd"``,
            ``"apgd"``, ``"apgd-t"``, ``"square"``, ``"art-apgd"``, ``"art-pgd"``. In a worst
            case each after the first (FGSM aside) runs only on the samples still standing.
        steps: iterations of PGD, APGD and ART's PGD.
        restarts: random restarts of those attacks.
        max_queries: queries per sample of the Square attack.
        attack_params: per-attack overrides, e.g. ``{"apgd-t": {"targets": 9}}`` (the level's
            by default: APGD's steps and targets).
        fit_eps: FGSM budget of the fit when a train loader is given (default ``eps``).
        score: scorer of the fit when a train loader is given.
        layer: layer L for the fit (default: input of the final ``nn.Linear``).
        side: ``"input"`` or ``"output"`` of ``layer`` (default: input of an ``nn.Linear``,
            output of anything else).
        ratio: a fixed mask ratio; ``None`` to choose it on the validation split.
        ratios: candidate ratios (validation choice) and the test sweep's x axis.
        whitebox_ratios: ratios of the test sweep that also get a white-box PGD (costly).
        clean_budget: largest clean-accuracy drop allowed by the choice (0.01 = 1 point).
        select_attack: the attack crafting gray-box samples for the ratio choice and the sweep.
        n_random: random masks of the chosen size for the random baseline.
        eps_grid: budgets of the accuracy-vs-epsilon curve (default: ``eps`` times each of
            ``eps_factors``, capped at 1).
        eps_factors: multiples of ``eps`` forming the curve when ``eps_grid`` is not given.
        bit_depth: FeatureSqueezing's bit depth.
        window_size: SpatialSmoothing's median window.
        preprocessing_baselines: include FeatureSqueezing and SpatialSmoothing.
        whitebox_baselines: also attack the baselines end to end (else only gray-box/transfer).
        sanity_tolerance: accuracy slack of the sanity checks (at least one sample).
        more_steps_factor: the "more steps" check runs PGD with this many times the steps.
        max_unbounded_accuracy: accuracy allowed under the unbounded L-inf probe (eps = 1).
        max_samples: cap on test samples and on validation samples (``None``: all); the report
            records it and how many samples each split had and used.
        max_fit_samples: cap on training samples for the fit (``None``: all).
        batch_size: samples per attack batch.
        confidence: coverage of the Wilson intervals.
        seed: seeds the fit, the attacks' random starts and the random masks.
        precision: ``"fp32"`` or ``"bf16"``: the precision of the passes that only predict
            (clean accuracy, predictions through masks, the sweep's feature caching); attacks
            always compute their gradients in float32 (:mod:`deepcloak.models.precision`).
        select: a mask-search selector (:data:`~deepcloak.cloak.selectors.SELECTORS`:
            ``"greedy"``, ``"beam"``, ...) or ``None`` to rank features by ``score``. With one,
            the search runs on the training data and chooses the mask and its ratio on the
            validation samples within ``clean_budget``. Default ``"auto"``: beam search, unless
            a fixed ``ratio`` or a fitted cloak is given (:meth:`resolved`).
        select_params: the selector's settings (e.g. ``{"width": 8}`` for beam) and the
            search's (``fit_budget``, ``max_removed``), checked against their declared types and
            ranges (:data:`~deepcloak.cloak.selectors.SELECTOR_SETTINGS`) and held with every
            default filled in, so the report shows them
            (:attr:`selector_settings`; ``select_params`` stays as given).
        level: the level these settings started from (:meth:`for_level`); settings that differ
            from it are listed by :attr:`level_overrides`.
    """

    eps: float = DEFAULT_EPS
    norm: Norm | str = Norm.LINF
    attacks: tuple[str, ...] = field(default_factory=_default_attacks)
    steps: int = 20
    restarts: int = 1
    max_queries: int = 300
    attack_params: Mapping[str, Mapping[str, Any]] = field(default_factory=_default_attack_params)
    fit_eps: float | None = None
    score: str = "deepcloak"
    layer: str | None = None
    side: Side | str | None = None
    ratio: float | None = None
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    whitebox_ratios: tuple[float, ...] = EVALUATION_WHITEBOX_RATIOS
    clean_budget: float = 0.01
    select_attack: str = "pgd"
    n_random: int = 5
    eps_grid: tuple[float, ...] | None = None
    eps_factors: tuple[float, ...] = field(default_factory=_default_eps_factors)
    bit_depth: int = 4
    window_size: int = 2
    preprocessing_baselines: bool = True
    whitebox_baselines: bool = True
    sanity_tolerance: float = 0.01
    more_steps_factor: int = 4
    max_unbounded_accuracy: float = 0.05
    max_samples: int | None = 500
    max_fit_samples: int | None = None
    batch_size: int = 128
    confidence: float = 0.95
    seed: int = 0
    precision: Precision | str = Precision.FP32
    select: str | None = AUTO
    select_params: Mapping[str, Any] = field(default_factory=dict)
    #: ``select`` with ``select_params`` checked, every default of the selector and the search
    #: filled in (what the search runs with and the report shows); ``None`` without a search.
    selector: SelectorChoice | None = field(init=False, default=None)
    level: EvaluationLevel | str = EvaluationLevel.STANDARD

    @classmethod
    def for_level(
        cls, level: EvaluationLevel | str = EvaluationLevel.STANDARD, **overrides: Any
    ) -> EvaluationConfig:
        """The settings of ``level`` (:data:`LEVELS`), with ``overrides`` taking precedence.

        Example:
            >>> EvaluationConfig.for_level("quick", max_samples=None).attacks
            ('fgsm', 'pgd')

        Raises:
            DeepCloakError: an unknown level, or a bad setting.
        """
        parsed = EvaluationLevel.parse(level)
        settings = dict(LEVELS[parsed])
        if "steps" in overrides and "attack_params" not in overrides:
            # explicit steps are every iterative attack's, APGD's too (which the level sets apart)
            settings["attack_params"] = {
                name: {k: v for k, v in params.items() if k != "steps"}
                for name, params in settings["attack_params"].items()
            }
        return cls(**{**settings, **overrides, "level": parsed})

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", parse_precision(self.precision))
        object.__setattr__(self, "level", EvaluationLevel.parse(self.level))
        if self.select == AUTO and self.ratio is not None:
            object.__setattr__(self, "select", None)  # a fixed ratio: the paper's ranking
        if self.select is not None:
            # Checked by type and range before any work; recorded with the defaults filled in.
            name = DEFAULT_SELECTOR if self.select == AUTO else self.select
            object.__setattr__(self, "selector", SelectorChoice.of(name, self.select_params))
            if self.ratio is not None:
                raise DeepCloakError(
                    f"select={self.select!r} chooses the mask and its ratio on validation; "
                    f"drop the fixed ratio ({self.ratio}) or the selector"
                )
        check_epsilon(self.eps)
        if self.fit_eps is not None:
            check_epsilon(self.fit_eps, name="fit_eps")
        self._check_attacks()
        self._check_counts()
        self._check_grids()
        SCORERS.get(self.score)  # an unknown scorer is an error listing the known ones
        for name in ("sanity_tolerance", "max_unbounded_accuracy"):
            fraction = getattr(self, name)
            if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
                raise DeepCloakError(f"{name} must be a fraction in [0, 1], got {fraction!r}")
        if not 0 < self.confidence < 1:
            raise DeepCloakError(f"confidence must be in (0, 1), got {self.confidence}")

    def _check_attacks(self) -> None:
        set_ = object.__setattr__
        set_(self, "norm", parse_norm(self.norm))
        if self.side is not None:
            try:
                set_(self, "side", Side(self.side))
            except ValueError:
                raise DeepCloakError(
                    f"side must be 'input' or 'output', got {self.side!r}"
                ) from None
        if isinstance(self.attacks, str):
            set_(self, "attacks", (self.attacks,))
        set_(self, "attacks", tuple(self.attacks))
        if not self.attacks:
            raise DeepCloakError(
                f"expected at least one attack; choose from: {', '.join(ATTACKS.names())}"
            )
        if len(set(self.attacks)) != len(self.attacks):
            raise DeepCloakError(f"attacks must not repeat, got {list(self.attacks)}")
        # plain dicts: a level's read-only mappings cannot be copied by dataclasses.asdict
        set_(self, "attack_params", {k: dict(v) for k, v in self.attack_params.items()})
        for name in self.attack_params:
            ATTACKS.get(name)  # an unknown name is an error listing the known ones
        for name in (*self.attacks, self.select_attack):
            build_attack(name, self)  # unknown names and bad parameters fail here, not later

    def _check_counts(self) -> None:
        for name in ("steps", "restarts", "max_queries", "bit_depth", "window_size"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("more_steps_factor", self.more_steps_factor)
        if self.more_steps_factor < 2:
            raise DeepCloakError(f"more_steps_factor must be >= 2, got {self.more_steps_factor}")
        if isinstance(self.n_random, bool) or not isinstance(self.n_random, int):
            raise DeepCloakError(f"n_random must be an integer >= 1, got {self.n_random!r}")
        if self.n_random < 1:
            raise DeepCloakError(
                f"n_random must be >= 1 (the random-mask baseline), got {self.n_random}"
            )
        for name in ("max_samples", "max_fit_samples"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))

    def _check_grids(self) -> None:
        set_ = object.__setattr__
        set_(self, "ratios", tuple(check_ratios(self.ratios)))
        set_(self, "whitebox_ratios", tuple(check_ratios(self.whitebox_ratios or (0.0,))))
        if self.ratio is not None:
            set_(self, "ratio", check_ratio(self.ratio))
        elif 0.0 not in self.ratios:
            raise DeepCloakError(
                "ratios must include 0 (the unmasked model) to choose a ratio against it"
            )
        check_budget(self.clean_budget)
        if self.eps_grid is not None:
            grid = tuple(check_epsilon(e, name="eps_grid value") for e in self.eps_grid)
            if not grid:
                raise DeepCloakError("eps_grid must hold at least one budget")
            set_(self, "eps_grid", tuple(sorted(set(grid))))
        factors = tuple(self.eps_factors)
        if not factors or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f < float("inf")
            for f in factors
        ):
            raise DeepCloakError(
                f"eps_factors must be one or more finite multiples of eps >= 0, got {factors!r}"
            )
        set_(self, "eps_factors", tuple(float(f) for f in factors))

    @property
    def selector_settings(self) -> dict[str, Any]:
        """The checked settings of :attr:`selector` (empty without a search)."""
        return dict(self.selector.settings) if self.selector is not None else {}

    @property
    def uses_art(self) -> bool:
        """Whether the evaluation needs ART (its attacks, or the preprocessing baselines)."""
        names = {*self.attacks, self.select_attack}
        return self.preprocessing_baselines or bool(names & art_attacks.ART_ATTACKS)

    @property
    def resolved_eps_grid(self) -> tuple[float, ...]:
        """The budgets of the accuracy-vs-epsilon curve."""
        if self.eps_grid is not None:
            return self.eps_grid
        return tuple(sorted({min(1.0, self.eps * f) for f in self.eps_factors}))

    @property
    def level_overrides(self) -> tuple[str, ...]:
        """Settings of :data:`LEVELS` whose values here differ from the level's."""
        fixed = LEVELS[EvaluationLevel.parse(self.level)]
        return tuple(name for name, value in fixed.items() if getattr(self, name) != value)

    @property
    def level_name(self) -> str:
        """The level's name (``"quick"``, ``"standard"`` or ``"thorough"``)."""
        return EvaluationLevel.parse(self.level).value

    @property
    def max_samples_source(self) -> str:
        """Where the sample cap comes from: ``"level"`` or ``"setting"`` (an override)."""
        return "setting" if "max_samples" in self.level_overrides else "level"

    def resolved(self, *, cloak_given: bool) -> EvaluationConfig:
        """The config with ``select="auto"`` resolved: the default search
        (:data:`~deepcloak.cloak.selectors.DEFAULT_SELECTOR`), or none when a fitted cloak is
        evaluated as it is."""
        if self.select != AUTO:
            return self
        return replace(self, select=None if cloak_given else DEFAULT_SELECTOR)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of every setting."""
        d = dataclasses.asdict(self)
        d["selector"] = self.selector_settings  # recorded under its name of old, at its place
        d = {("selector_settings" if k == "selector" else k): v for k, v in d.items()}
        d["norm"] = parse_norm(self.norm).value
        d["side"] = Side(self.side).value if self.side is not None else None
        d["attacks"] = list(self.attacks)
        d["attack_params"] = {k: dict(v) for k, v in self.attack_params.items()}
        d["ratios"] = list(self.ratios)
        d["whitebox_ratios"] = list(self.whitebox_ratios)
        d["eps_grid"] = list(self.resolved_eps_grid)
        d["precision"] = parse_precision(self.precision).value
        d["eps_factors"] = list(self.eps_factors)
        d["select_params"] = dict(self.select_params)
        d["level"] = self.level_name
        d["level_overrides"] = list(self.level_overrides)
        return d


P = ParamSpec("P")
R = TypeVar("R")


def in_config_precision(evaluate: Callable[P, R]) -> Callable[P, R]:
    """Run ``evaluate(model, ..., config=...)`` with ``config.precision`` as forward precision.

    The precision is checked against the model's device first (bf16 needs a GPU that has it).
    """

    @functools.wraps(evaluate)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        config = kwargs.get("config")
        precision = config.precision if isinstance(config, EvaluationConfig) else Precision.FP32
        model = args[0] if args else kwargs.get("model")
        if isinstance(model, nn.Module):
            check_precision_supported(precision, model_device(model))
        with forward_precision(precision):
            return evaluate(*args, **kwargs)

    return wrapper


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeepCloakError(f"{name} must be an integer >= 1, got {value!r}")


def build_attack(
    name: str, config: EvaluationConfig, *, eps: float | None = None, steps: int | None = None
) -> Attack:
    """Build the registered attack ``name`` with the settings of ``config``.

    Each setting (``eps``, ``norm``, ``steps``, ``restarts``, ``max_queries``, ``seed``) goes to
    the attack if it has a parameter of that name; ``config.attack_params[name]`` overrides.

    Raises:
        DeepCloakError: unknown name, bad parameters, or an L-inf-only attack under ``l2``.
    """
    factory = ATTACKS.get(name)
    norm = parse_norm(config.norm)
    values = {
        "eps": config.eps if eps is None else eps,
        "norm": norm,
        "steps": config.steps if steps is None else steps,
        "restarts": config.restarts,
        "max_queries": config.max_queries,
        "seed": config.seed,
    }
    names = (
        {f.name for f in dataclasses.fields(factory)}
        if dataclasses.is_dataclass(factory)
        else {"eps"}
    )
    if "norm" not in names and norm is not Norm.LINF:
        raise DeepCloakError(
            f"attack {name!r} is L-inf only, but the evaluation uses norm={norm.value!r}; "
            "drop it from the attacks or use norm='linf'"
        )
    params = {k: v for k, v in values.items() if k in names}
    params.update(config.attack_params.get(name, {}))
    try:
        return factory(**params)
    except TypeError as e:
        raise DeepCloakError(f"bad parameters for attack {name!r}: {e}") from None
