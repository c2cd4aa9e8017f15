"""The parts of an evaluation's settings, one per question a reader asks of it.

:class:`~deepcloak.evaluation.config.EvaluationConfig` holds one of each:

- :class:`AttackSettings` (``config.attack``): what to attack with, at which budgets;
- :class:`CloakSettings` (``config.cloak``): which mask is evaluated: how it is fit, searched
  or ranked, and how its ratio is chosen;
- :class:`ComparisonSettings` (``config.compare``): what the mask is compared against: random
  masks, preprocessing defences, and the ratios that also face a white-box attack;
- :class:`CheckSettings` (``config.checks``): how sure the figures are: interval coverage and
  the sanity checks' thresholds;
- :class:`SampleSettings` (``config.samples``): how many samples, in batches of how many;
- :class:`RuntimeSettings` (``config.runtime``): the seed and the forward precision.

Each part is a frozen dataclass that checks its own settings at construction, so a bad one
fails before any work is done.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deepcloak.attacks import ATTACKS
from deepcloak.attacks import art as art_attacks  # also registers "apgd", "square", "art-pgd"
from deepcloak.attacks.native import Attack, Norm, parse_norm
from deepcloak.cloak.fit import DEFAULT_EPS
from deepcloak.cloak.scores import SCORERS
from deepcloak.cloak.selectors import AUTO, DEFAULT_SELECTOR, SelectorChoice
from deepcloak.cloak.taps import Side
from deepcloak.enums import parse_enum
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.grids import DEFAULT_RATIOS, EVALUATION_WHITEBOX_RATIOS
from deepcloak.evaluation.levels import STANDARD
from deepcloak.models.precision import Precision, parse_precision
from deepcloak.validation import check_budget, check_epsilon, check_ratio, check_ratios

__all__ = [
    "AttackSettings",
    "CheckSettings",
    "CloakSettings",
    "ComparisonSettings",
    "RuntimeSettings",
    "SampleSettings",
]


def _default_attacks() -> tuple[str, ...]:
    return tuple(STANDARD["attacks"])


def _default_eps_factors() -> tuple[float, ...]:
    return tuple(STANDARD["eps_factors"])


def _default_attack_params() -> Mapping[str, Mapping[str, Any]]:
    return {k: dict(v) for k, v in STANDARD["attack_params"].items()}


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DeepCloakError(f"{name} must be an integer >= 1, got {value!r}")


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # a frozen part normalising its own input


@dataclass(frozen=True, kw_only=True)
class AttackSettings:
    """What to attack with, and at which budgets.

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
        select_attack: the attack crafting gray-box samples for the ratio choice and the sweep.
        eps_grid: budgets of the accuracy-vs-epsilon curve (default: ``eps`` times each of
            ``eps_factors``, capped at 1; :attr:`resolved_eps_grid`).
        eps_factors: multiples of ``eps`` forming the curve when ``eps_grid`` is not given.

    Raises:
        DeepCloakError: eps outside [0, 1], an unknown or repeated attack, bad attack
            parameters, an L-inf-only attack under ``l2``, or a bad count or grid.
    """

    eps: float = DEFAULT_EPS
    norm: Norm | str = Norm.LINF
    attacks: tuple[str, ...] = field(default_factory=_default_attacks)
    steps: int = 20
    restarts: int = 1
    max_queries: int = 300
    attack_params: Mapping[str, Mapping[str, Any]] = field(default_factory=_default_attack_params)
    select_attack: str = "pgd"
    eps_grid: tuple[float, ...] | None = None
    eps_factors: tuple[float, ...] = field(default_factory=_default_eps_factors)

    def __post_init__(self) -> None:
        check_epsilon(self.eps)
        _set(self, "norm", parse_norm(self.norm))
        attacks = (self.attacks,) if isinstance(self.attacks, str) else tuple(self.attacks)
        _set(self, "attacks", attacks)
        if not attacks:
            raise DeepCloakError(
                f"expected at least one attack; choose from: {', '.join(ATTACKS.names())}"
            )
        if len(set(attacks)) != len(attacks):
            raise DeepCloakError(f"attacks must not repeat, got {list(attacks)}")
        # plain dicts: a level's read-only mappings cannot be copied by dataclasses.asdict
        _set(self, "attack_params", {k: dict(v) for k, v in self.attack_params.items()})
        for name in self.attack_params:
            ATTACKS.get(name)  # an unknown name is an error listing the known ones
        for name in (*attacks, self.select_attack):
            self.build(name, seed=0)  # unknown names and bad parameters fail here, not later
        for name in ("steps", "restarts", "max_queries"):
            _check_positive_int(name, getattr(self, name))
        self._check_grids()

    def _check_grids(self) -> None:
        if self.eps_grid is not None:
            grid = tuple(check_epsilon(e, name="eps_grid value") for e in self.eps_grid)
            if not grid:
                raise DeepCloakError("eps_grid must hold at least one budget")
            _set(self, "eps_grid", tuple(sorted(set(grid))))
        factors = tuple(self.eps_factors)
        if not factors or not all(
            isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f < float("inf")
            for f in factors
        ):
            raise DeepCloakError(
                f"eps_factors must be one or more finite multiples of eps >= 0, got {factors!r}"
            )
        _set(self, "eps_factors", tuple(float(f) for f in factors))

    @property
    def uses_art(self) -> bool:
        """Whether any of these attacks (the selection's included) comes from ART."""
        return bool({*self.attacks, self.select_attack} & art_attacks.ART_ATTACKS)

    @property
    def resolved_eps_grid(self) -> tuple[float, ...]:
        """The budgets of the accuracy-vs-epsilon curve."""
        if self.eps_grid is not None:
            return self.eps_grid
        return tuple(sorted({min(1.0, self.eps * f) for f in self.eps_factors}))

    def build(
        self, name: str, *, seed: int, eps: float | None = None, steps: int | None = None
    ) -> Attack:
        """Build the registered attack ``name`` with these settings.

        Each setting (``eps``, ``norm``, ``steps``, ``restarts``, ``max_queries``, and
        ``seed``) goes to the attack if it has a parameter of that name;
        ``attack_params[name]`` overrides.

        Raises:
            DeepCloakError: unknown name, bad parameters, or an L-inf-only attack under ``l2``.
        """
        factory = ATTACKS.get(name)
        norm = parse_norm(self.norm)
        values = {
            "eps": self.eps if eps is None else eps,
            "norm": norm,
            "steps": self.steps if steps is None else steps,
            "restarts": self.restarts,
            "max_queries": self.max_queries,
            "seed": seed,
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
        params.update(self.attack_params.get(name, {}))
        try:
            return factory(**params)
        except TypeError as e:
            raise DeepCloakError(f"bad parameters for attack {name!r}: {e}") from None


@dataclass(frozen=True, kw_only=True)
class CloakSettings:
    """Which mask is evaluated: how it is fit, searched or ranked, and how its ratio is chosen.

    Args:
        fit_eps: FGSM budget of the fit when a train loader is given (default: the attacks'
            ``eps``).
        score: scorer of the fit when a train loader is given.
        layer: layer L for the fit (default: input of the final ``nn.Linear``).
        side: ``"input"`` or ``"output"`` of ``layer`` (default: input of an ``nn.Linear``,
            output of anything else).
        ratio: a fixed mask ratio; ``None`` to choose it on the validation split.
        ratios: candidate ratios (validation choice) and the test sweep's x axis.
        clean_budget: largest clean-accuracy drop allowed by the choice (0.01 = 1 point).
        select: a mask-search selector (:data:`~deepcloak.cloak.selectors.SELECTORS`:
            ``"greedy"``, ``"beam"``, ...) or ``None`` to rank features by ``score``. With one,
            the search runs on the training data and chooses the mask and its ratio on the
            validation samples within ``clean_budget``. Default ``"auto"``: beam search, unless
            a fixed ``ratio`` or a fitted cloak is given
            (:meth:`~deepcloak.evaluation.config.EvaluationConfig.resolved`).
        select_params: the selector's settings (e.g. ``{"width": 8}`` for beam) and the
            search's (``fit_budget``, ``max_removed``), checked against their declared types and
            ranges (:data:`~deepcloak.cloak.selectors.SELECTOR_SETTINGS`) and held with every
            default filled in, so the report shows them
            (:attr:`selector_settings`; ``select_params`` stays as given).

    Raises:
        DeepCloakError: an unknown scorer, side or selector, bad selector settings, a selector
            with a fixed ratio, or ratios without 0 to choose against.
    """

    fit_eps: float | None = None
    score: str = "deepcloak"
    layer: str | None = None
    side: Side | str | None = None
    ratio: float | None = None
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    clean_budget: float = 0.01
    select: str | None = AUTO
    select_params: Mapping[str, Any] = field(default_factory=dict)
    #: ``select`` with ``select_params`` checked, every default of the selector and the search
    #: filled in (what the search runs with and the report shows); ``None`` without a search.
    selector: SelectorChoice | None = field(init=False, default=None)

    @property
    def selector_settings(self) -> dict[str, Any]:
        """The checked settings of :attr:`selector` (empty without a search)."""
        return dict(self.selector.settings) if self.selector is not None else {}

    def __post_init__(self) -> None:
        if self.select == AUTO and self.ratio is not None:
            _set(self, "select", None)  # a fixed ratio: the paper's ranking
        if self.select is not None:
            # Checked by type and range before any work; recorded with the defaults filled in.
            name = DEFAULT_SELECTOR if self.select == AUTO else self.select
            _set(self, "selector", SelectorChoice.of(name, self.select_params))
            if self.ratio is not None:
                raise DeepCloakError(
                    f"select={self.select!r} chooses the mask and its ratio on validation; "
                    f"drop the fixed ratio ({self.ratio}) or the selector"
                )
        if self.fit_eps is not None:
            check_epsilon(self.fit_eps, name="fit_eps")
        if self.side is not None:
            _set(self, "side", parse_enum(Side, self.side, what="side"))
        _set(self, "ratios", tuple(check_ratios(self.ratios)))
        if self.ratio is not None:
            _set(self, "ratio", check_ratio(self.ratio))
        elif 0.0 not in self.ratios:
            raise DeepCloakError(
                "ratios must include 0 (the unmasked model) to choose a ratio against it"
            )
        check_budget(self.clean_budget)
        SCORERS.get(self.score)  # an unknown scorer is an error listing the known ones


@dataclass(frozen=True, kw_only=True)
class ComparisonSettings:
    """What the mask is compared against, and which ratios also face a white-box attack.

    Args:
        whitebox_ratios: ratios of the test sweep that also get a white-box PGD (costly).
        n_random: random masks of the chosen size for the random baseline.
        bit_depth: FeatureSqueezing's bit depth.
        window_size: SpatialSmoothing's median window.
        preprocessing_baselines: include FeatureSqueezing and SpatialSmoothing.
        whitebox_baselines: also attack the baselines end to end (else only gray-box/transfer).

    Raises:
        DeepCloakError: a bad ratio or a count that is not a positive integer.
    """

    whitebox_ratios: tuple[float, ...] = EVALUATION_WHITEBOX_RATIOS
    n_random: int = 5
    bit_depth: int = 4
    window_size: int = 2
    preprocessing_baselines: bool = True
    whitebox_baselines: bool = True

    def __post_init__(self) -> None:
        for name in ("bit_depth", "window_size"):
            _check_positive_int(name, getattr(self, name))
        if isinstance(self.n_random, bool) or not isinstance(self.n_random, int):
            raise DeepCloakError(f"n_random must be an integer >= 1, got {self.n_random!r}")
        if self.n_random < 1:
            raise DeepCloakError(
                f"n_random must be >= 1 (the random-mask baseline), got {self.n_random}"
            )
        _set(self, "whitebox_ratios", tuple(check_ratios(self.whitebox_ratios or (0.0,))))


@dataclass(frozen=True, kw_only=True)
class CheckSettings:
    """How sure the figures are: the intervals' coverage and the sanity checks' thresholds.

    Args:
        confidence: coverage of the Wilson intervals.
        sanity_tolerance: accuracy slack of the sanity checks (at least one sample).
        more_steps_factor: the "more steps" check runs PGD with this many times the steps.
        max_unbounded_accuracy: accuracy allowed under the unbounded L-inf probe (eps = 1).

    Raises:
        DeepCloakError: a confidence outside (0, 1), a fraction outside [0, 1], or a factor
            below 2.
    """

    confidence: float = 0.95
    sanity_tolerance: float = 0.01
    more_steps_factor: int = 4
    max_unbounded_accuracy: float = 0.05

    def __post_init__(self) -> None:
        _check_positive_int("more_steps_factor", self.more_steps_factor)
        if self.more_steps_factor < 2:
            raise DeepCloakError(f"more_steps_factor must be >= 2, got {self.more_steps_factor}")
        for name in ("sanity_tolerance", "max_unbounded_accuracy"):
            fraction = getattr(self, name)
            if not (isinstance(fraction, (int, float)) and 0 <= fraction <= 1):
                raise DeepCloakError(f"{name} must be a fraction in [0, 1], got {fraction!r}")
        if not 0 < self.confidence < 1:
            raise DeepCloakError(f"confidence must be in (0, 1), got {self.confidence}")


@dataclass(frozen=True, kw_only=True)
class SampleSettings:
    """How many samples the evaluation uses, in batches of how many.

    Args:
        max_samples: cap on test samples and on validation samples (``None``: all); the report
            records it and how many samples each split had and used.
        max_fit_samples: cap on training samples for the fit (``None``: all).
        batch_size: samples per attack batch.

    Raises:
        DeepCloakError: a cap or batch size that is not a positive integer.
    """

    max_samples: int | None = 500
    max_fit_samples: int | None = None
    batch_size: int = 128

    def __post_init__(self) -> None:
        _check_positive_int("batch_size", self.batch_size)
        for name in ("max_samples", "max_fit_samples"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """How the evaluation runs: its seed and its forward precision.

    Args:
        seed: seeds the fit, the attacks' random starts and the random masks.
        precision: ``"fp32"`` or ``"bf16"``: the precision of the passes that only predict
            (clean accuracy, predictions through masks, the sweep's feature caching); attacks
            always compute their gradients in float32 (:mod:`deepcloak.models.precision`).

    Raises:
        DeepCloakError: an unknown precision.
    """

    seed: int = 0
    precision: Precision | str = Precision.FP32

    def __post_init__(self) -> None:
        _set(self, "precision", parse_precision(self.precision))
