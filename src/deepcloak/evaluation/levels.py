"""Evaluation levels: the settings that decide an evaluation's cost, fixed per level.

Like AutoAttack's versions, a level (``quick``, ``standard``, ``thorough``) names a set of
settings; :meth:`deepcloak.evaluation.config.EvaluationConfig.for_level` starts from one and
lets explicit settings override it. Settings are named flat (``steps``, ``max_samples``), as on
the command line; the config files each under its part.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from deepcloak.enums import parse_enum
from deepcloak.evaluation.grids import EVALUATION_WHITEBOX_RATIOS

__all__ = ["LEVELS", "EvaluationLevel"]


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
        return parse_enum(cls, value, what="level")


def _level(**settings: Any) -> Mapping[str, Any]:
    return MappingProxyType(settings)


#: The settings each level fixes; every other setting keeps its default. ``standard`` is the
#: dataclass defaults; ``quick`` is a first look in about a minute on a CPU (FGSM and APGD-CE-10
#: on 100 samples, no gradient-free attack: not a result to publish); ``standard`` is AutoAttack's
#: strength at a fraction of its cost (APGD-CE-100, then APGD-T over the top-5 targets and
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
                apgd=_level(steps=100), **{"apgd-t": _level(steps=100, targets=5)}
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

#: The settings of ``standard``, which are also the parts' defaults.
STANDARD: Mapping[str, Any] = LEVELS[EvaluationLevel.STANDARD]
