"""Settings of an evaluation, built from its parts and its level, and its attacks by name.

:class:`EvaluationConfig` holds one frozen part per question a reader asks of an evaluation
(:mod:`deepcloak.evaluation.config_parts`): what to attack with (``config.attack``), which mask
(``config.cloak``), compared against what (``config.compare``), how sure (``config.checks``), on
how many samples (``config.samples``), and how it runs (``config.runtime``). Each part checks its
settings at construction, so a bad setting (unknown attack, eps outside [0, 1], an L-inf-only
attack under L2, ...) fails before any work is done.

Settings can also be given flat, by name, as the command line and the levels name them:
``EvaluationConfig(eps=8 / 255, steps=10)`` files each under its part (:data:`SETTING_PARTS`).
Levels (like AutoAttack's versions) fix the settings that decide an evaluation's cost:
:meth:`EvaluationConfig.for_level` starts from ``quick``, ``standard`` (the defaults) or
``thorough`` (:data:`LEVELS`) and lets explicit settings override them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

from torch import nn

from deepcloak.attacks.native import Attack, parse_norm
from deepcloak.cloak.selectors import AUTO, DEFAULT_SELECTOR
from deepcloak.cloak.taps import Side
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config_parts import (
    AttackSettings,
    CheckSettings,
    CloakSettings,
    ComparisonSettings,
    RuntimeSettings,
    SampleSettings,
)
from deepcloak.evaluation.levels import LEVELS, EvaluationLevel
from deepcloak.models.precision import (
    Precision,
    check_precision_supported,
    forward_precision,
    parse_precision,
)
from deepcloak.models.runtime import model_device

__all__ = [
    "LEVELS",
    "SETTING_PARTS",
    "AttackSettings",
    "CheckSettings",
    "CloakSettings",
    "ComparisonSettings",
    "EvaluationConfig",
    "EvaluationLevel",
    "RuntimeSettings",
    "SampleSettings",
    "build_attack",
    "in_config_precision",
]

#: The parts of an evaluation, by the attribute that holds each.
_PARTS: Mapping[str, type[Any]] = MappingProxyType(
    {
        "attack": AttackSettings,
        "cloak": CloakSettings,
        "compare": ComparisonSettings,
        "checks": CheckSettings,
        "samples": SampleSettings,
        "runtime": RuntimeSettings,
    }
)

#: Each setting's part, by the setting's flat name (``"eps"`` -> ``"attack"``): how flat
#: settings (the command line's, the levels', report.json's) find their home.
SETTING_PARTS: Mapping[str, str] = MappingProxyType(
    {f.name: part for part, cls in _PARTS.items() for f in dataclasses.fields(cls)}
)


@dataclass(frozen=True, init=False)
class EvaluationConfig:
    """Everything that defines an evaluation (the CLI only parses into this).

    Give the parts, or the settings flat by name (each goes to its part, over a given part):
    ``EvaluationConfig(eps=8 / 255, attacks=("pgd",), max_samples=None)``.

    Args:
        attack: what to attack with (:class:`AttackSettings`: ``eps``, ``norm``, ``attacks``,
            ``steps``, ``restarts``, ``max_queries``, ``attack_params``, ``select_attack``,
            ``eps_grid``, ``eps_factors``).
        cloak: which mask is evaluated (:class:`CloakSettings`: ``fit_eps``, ``score``,
            ``layer``, ``side``, ``ratio``, ``ratios``, ``clean_budget``, ``select``,
            ``select_params``).
        compare: what it is compared against (:class:`ComparisonSettings`:
            ``whitebox_ratios``, ``n_random``, ``bit_depth``, ``window_size``,
            ``preprocessing_baselines``, ``whitebox_baselines``).
        checks: how sure the figures are (:class:`CheckSettings`: ``confidence``,
            ``sanity_tolerance``, ``more_steps_factor``, ``max_unbounded_accuracy``).
        samples: how many samples (:class:`SampleSettings`: ``max_samples``,
            ``max_fit_samples``, ``batch_size``).
        runtime: how it runs (:class:`RuntimeSettings`: ``seed``, ``precision``).
        level: the level these settings started from (:meth:`for_level`); settings that differ
            from it are listed by :attr:`level_overrides`.
        **settings: settings by flat name (:data:`SETTING_PARTS`).

    Raises:
        DeepCloakError: an unknown setting (naming the closest one), a part of the wrong type,
            an unknown level, or a bad setting (see each part).
    """

    attack: AttackSettings
    cloak: CloakSettings
    compare: ComparisonSettings
    checks: CheckSettings
    samples: SampleSettings
    runtime: RuntimeSettings
    level: EvaluationLevel

    def __init__(
        self,
        *,
        attack: AttackSettings | None = None,
        cloak: CloakSettings | None = None,
        compare: ComparisonSettings | None = None,
        checks: CheckSettings | None = None,
        samples: SampleSettings | None = None,
        runtime: RuntimeSettings | None = None,
        level: EvaluationLevel | str = EvaluationLevel.STANDARD,
        **settings: Any,
    ) -> None:
        given = dict(
            attack=attack, cloak=cloak, compare=compare, checks=checks, samples=samples,
            runtime=runtime,
        )  # fmt: skip
        flat = _by_part(settings)
        for name, cls in _PARTS.items():
            part, changes = given[name], flat.get(name, {})
            if part is None:
                part = cls(**changes)
            elif not isinstance(part, cls):
                raise DeepCloakError(
                    f"{name} must be {cls.__name__}(...), got {type(part).__name__}; or give "
                    "its settings by name"
                )
            elif changes:
                part = replace(part, **changes)
            object.__setattr__(self, name, part)
        object.__setattr__(self, "level", EvaluationLevel.parse(level))

    @classmethod
    def for_level(
        cls, level: EvaluationLevel | str = EvaluationLevel.STANDARD, **overrides: Any
    ) -> EvaluationConfig:
        """The settings of ``level`` (:data:`LEVELS`), with ``overrides`` taking precedence.

        Example:
            >>> EvaluationConfig.for_level("quick", max_samples=None).attack.attacks
            ('fgsm', 'apgd')

        Raises:
            DeepCloakError: an unknown level, or a bad setting.
        """
        parsed = EvaluationLevel.parse(level)
        # a part given whole is the caller's: the level's settings for it give way
        settings = {k: v for k, v in LEVELS[parsed].items() if SETTING_PARTS[k] not in overrides}
        if "steps" in overrides and "attack_params" in settings:
            # explicit steps are every iterative attack's, APGD's too (which the level sets apart)
            settings["attack_params"] = {
                name: {k: v for k, v in params.items() if k != "steps"}
                for name, params in settings["attack_params"].items()
            }
        return cls(**{**settings, **overrides, "level": parsed})

    def setting(self, name: str) -> Any:
        """The value of the setting ``name`` (flat, e.g. ``"eps"``), read from its part.

        Raises:
            DeepCloakError: an unknown setting.
        """
        return getattr(getattr(self, _part_of(name)), name)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: the settings read flat, as they were
        # before they moved into parts, keep working for one version, with a warning.
        part = SETTING_PARTS.get(name)
        if part is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        warnings.warn(
            f"EvaluationConfig.{name} moved to EvaluationConfig.{part}.{name}; read it from "
            "there (the flat name stops working in the next version)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(getattr(self, part), name)

    @property
    def uses_art(self) -> bool:
        """Whether the evaluation needs ART (its attacks, or the preprocessing baselines)."""
        return self.compare.preprocessing_baselines or self.attack.uses_art

    @property
    def resolved_fit_eps(self) -> float:
        """The FGSM budget of the fit: ``cloak.fit_eps``, or the attacks' ``eps`` by default."""
        return self.cloak.fit_eps if self.cloak.fit_eps is not None else self.attack.eps

    @property
    def level_overrides(self) -> tuple[str, ...]:
        """Settings of :data:`LEVELS` whose values here differ from the level's."""
        fixed = LEVELS[self.level]
        return tuple(name for name, value in fixed.items() if self.setting(name) != value)

    @property
    def level_name(self) -> str:
        """The level's name (``"quick"``, ``"standard"`` or ``"thorough"``)."""
        return self.level.value

    @property
    def max_samples_source(self) -> str:
        """Where the sample cap comes from: ``"level"`` or ``"setting"`` (an override)."""
        return "setting" if "max_samples" in self.level_overrides else "level"

    def resolved(self, *, cloak_given: bool) -> EvaluationConfig:
        """The config with ``select="auto"`` resolved: the default search
        (:data:`~deepcloak.cloak.selectors.DEFAULT_SELECTOR`), or none when a fitted cloak is
        evaluated as it is."""
        if self.cloak.select != AUTO:
            return self
        select = None if cloak_given else DEFAULT_SELECTOR
        return replace(self, cloak=replace(self.cloak, select=select))

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict of every setting, flat by name (as :data:`LEVELS` and the CLI name
        them), with the level and the settings that differ from it."""
        d: dict[str, Any] = {}
        for part in _PARTS:
            d.update(dataclasses.asdict(getattr(self, part)))
        a, c = self.attack, self.cloak
        # the checked selector is recorded as its settings, under their name of old, in place
        d = {
            ("selector_settings" if k == "selector" else k): (
                c.selector_settings if k == "selector" else v
            )
            for k, v in d.items()
        }
        d["norm"] = parse_norm(a.norm).value
        d["side"] = Side(c.side).value if c.side is not None else None
        d["attacks"] = list(a.attacks)
        d["attack_params"] = {k: dict(v) for k, v in a.attack_params.items()}
        d["ratios"] = list(c.ratios)
        d["whitebox_ratios"] = list(self.compare.whitebox_ratios)
        d["eps_grid"] = list(a.resolved_eps_grid)
        d["precision"] = parse_precision(self.runtime.precision).value
        d["eps_factors"] = list(a.eps_factors)
        d["select_params"] = dict(c.select_params)
        d["level"] = self.level_name
        d["level_overrides"] = list(self.level_overrides)
        return d


def _part_of(name: str) -> str:
    """The part that holds the setting ``name``.

    Raises:
        DeepCloakError: an unknown setting (naming the closest known one).
    """
    part = SETTING_PARTS.get(name)
    if part is None:
        close = difflib.get_close_matches(name, SETTING_PARTS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DeepCloakError(f"unknown evaluation setting {name!r}{hint}")
    return part


def _by_part(settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat ``settings`` grouped by the part each belongs to (:func:`_part_of`)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in settings.items():
        out.setdefault(_part_of(name), {})[name] = value
    return out


P = ParamSpec("P")
R = TypeVar("R")


def in_config_precision(evaluate: Callable[P, R]) -> Callable[P, R]:
    """Run ``evaluate(model, ..., config=...)`` with the config's precision as forward precision.

    The precision is checked against the model's device first (bf16 needs a GPU that has it).
    """

    @functools.wraps(evaluate)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        config = kwargs.get("config")
        precision = (
            config.runtime.precision if isinstance(config, EvaluationConfig) else Precision.FP32
        )
        model = args[0] if args else kwargs.get("model")
        if isinstance(model, nn.Module):
            check_precision_supported(precision, model_device(model))
        with forward_precision(precision):
            return evaluate(*args, **kwargs)

    return wrapper


def build_attack(
    name: str, config: EvaluationConfig, *, eps: float | None = None, steps: int | None = None
) -> Attack:
    """Build the registered attack ``name`` with the settings of ``config``
    (:meth:`AttackSettings.build`, seeded with ``config.runtime.seed``).

    Raises:
        DeepCloakError: unknown name, bad parameters, or an L-inf-only attack under ``l2``.
    """
    return config.attack.build(name, seed=config.runtime.seed, eps=eps, steps=steps)
