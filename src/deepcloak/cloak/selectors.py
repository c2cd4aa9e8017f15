"""Mask selectors: which features to remove, as a path of growing removal sets.

A selector looks at the cached fit features (:class:`~deepcloak.cloak.head.HeadFeatures`) and
returns a *path*: the removal set it proposes for 1, 2, ... removed features, each as a tuple
in removal order. The search then picks one entry of the path on validation data.

Selectors (chosen by name from :data:`SELECTORS`):
    ``deepcloak``: the paper's score (``sum |f(x_adv) - f(x)|``), highest first.
    ``random``: a seeded random order, the baseline.
    ``greedy``: each step removes the feature whose removal makes the most adversarial fit
        samples correct, among those keeping the clean fit accuracy within ``fit_budget``.
        Ties go to the larger summed adversarial margin, then to the lower feature index.
    ``beam``: greedy with the ``width`` best removal sets kept at each size.

Greedy and beam stop when no allowed removal raises the adversarial fit accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from deepcloak.cloak.head import HeadFeatures, apply_removal, candidate_outcomes, full_logits
from deepcloak.cloak.head import margins as logit_margins
from deepcloak.cloak.mask import rank_features
from deepcloak.cloak.scores import deepcloak_score
from deepcloak.errors import DeepCloakError
from deepcloak.registry import Registry

__all__ = [
    "AUTO",
    "DEFAULT_SELECTOR",
    "SEARCH_SETTINGS",
    "SELECTORS",
    "BeamSelector",
    "GreedySelector",
    "Path",
    "RankingSelector",
    "Selector",
    "create_selector",
    "parse_selector",
    "ranked_candidates",
]

#: A config's ``select`` default: the search with :data:`DEFAULT_SELECTOR`, unless a fixed ratio
#: (the paper's method) or a fitted cloak is given.
AUTO = "auto"
#: The selector a command with no flags searches with.
DEFAULT_SELECTOR = "beam"

#: Removal sets for 1, 2, ... removed features, each in removal order.
Path = list[tuple[int, ...]]


class Selector(Protocol):
    """Proposes removal sets of growing size from the cached fit features."""

    name: str

    def settings(self) -> dict[str, Any]:
        """The selector's settings, JSON-able (recorded in the mask file)."""
        ...

    def __call__(self, fit: HeadFeatures, *, fit_budget: float, max_removed: int) -> Path:
        """The path of removal sets, at most ``max_removed`` long."""
        ...


def ranked_candidates(
    correct: torch.Tensor, margin: torch.Tensor, allowed: torch.Tensor, limit: int
) -> list[int]:
    """Allowed feature indices by (correct desc, margin desc, index asc), the first ``limit``."""
    idx = allowed.nonzero().squeeze(1)  # ascending index
    if idx.numel() == 0:
        return []
    # Stable sorts from the least to the most significant key give the lexicographic order.
    order = torch.sort(margin[idx], descending=True, stable=True).indices
    idx = idx[order]
    order = torch.sort(correct[idx], descending=True, stable=True).indices
    return [int(i) for i in idx[order][:limit]]


@dataclass
class _State:
    """One removal set and the logits of the fit samples under it."""

    removed: tuple[int, ...]  # in removal order
    keep: torch.Tensor  # (F,) bool
    clean_logits: torch.Tensor  # (N, K)
    adv_logits: torch.Tensor  # (N, K)
    score: float  # adversarial correct + clean_weight * clean correct
    adv_margin: float

    def extend(self, fit: HeadFeatures, j: int, score: float, adv_margin: float) -> _State:
        keep = self.keep.clone()
        keep[j] = False
        return _State(
            (*self.removed, j),
            keep,
            apply_removal(self.clean_logits, fit.clean, fit.weight, [j]),
            apply_removal(self.adv_logits, fit.adv, fit.weight, [j]),
            score,
            adv_margin,
        )


def _start(fit: HeadFeatures, clean_weight: float) -> tuple[_State, int]:
    """The unmasked state, and the number of clean fit samples it gets right."""
    keep = torch.ones(fit.n_features, dtype=torch.bool, device=fit.device)
    zc = full_logits(fit.clean, fit.weight, fit.bias, keep)
    za = full_logits(fit.adv, fit.weight, fit.bias, keep)
    m = logit_margins(za, fit.labels)
    clean = int((logit_margins(zc, fit.labels) > 0).sum())
    score = int((m > 0).sum()) + clean_weight * clean
    return _State((), keep, zc, za, score, float(m.double().sum())), clean


def _expansions(
    fit: HeadFeatures, state: _State, min_clean: int, clean_weight: float, rivals: int, limit: int
) -> list[tuple[float, float, tuple[int, ...], int]]:
    """The ``limit`` best allowed one-feature extensions: ``(score, margin, set, j)``."""
    oc = candidate_outcomes(
        fit.clean, fit.labels, state.clean_logits, fit.weight, state.keep, rivals=rivals
    )
    oa = candidate_outcomes(
        fit.adv, fit.labels, state.adv_logits, fit.weight, state.keep, rivals=rivals
    )
    allowed = state.keep & (oc.correct >= min_clean)
    score = oa.correct.double() + clean_weight * oc.correct.double()
    return [
        (float(score[j]), float(oa.margin[j]), tuple(sorted((*state.removed, j))), j)
        for j in ranked_candidates(score, oa.margin, allowed, limit)
    ]


def _min_clean(fit: HeadFeatures, base_clean: int, fit_budget: float) -> int:
    """Fewest clean fit samples a mask may get right: ``base - floor(budget * N)``."""
    if not 0.0 <= fit_budget <= 1.0:
        raise DeepCloakError(f"fit_budget must be a fraction in [0, 1], got {fit_budget}")
    return base_clean - math.floor(fit_budget * fit.n_samples + 1e-9)


class BeamSelector:
    """Beam search over removal sets: keep the ``width`` best sets of each size.

    Sets are ranked by their score, adversarial fit samples correct plus ``clean_weight``
    times clean fit samples correct, then by summed adversarial margin, then by the sorted
    feature indices (lexicographically smaller first). ``width=1`` is greedy.

    Args:
        width: sets kept per size.
        clean_weight: worth of a clean fit sample against an adversarial one. ``0`` spends the
            fit budget on the first removals that gain most; ``1`` or more trades robustness
            for clean accuracy step by step, so the path climbs the budget gradually.
        rivals: rival classes updated per candidate (see :func:`candidate_outcomes`).
        stop_at_plateau: stop when the best set of the next size does not score strictly higher.
    """

    name = "beam"

    def __init__(
        self,
        *,
        width: int = 4,
        clean_weight: float = 0.0,
        rivals: int = 16,
        stop_at_plateau: bool = True,
    ) -> None:
        if width < 1 or rivals < 1 or clean_weight < 0:
            raise DeepCloakError(
                f"width and rivals must be >= 1 and clean_weight >= 0, got {width}, {rivals} "
                f"and {clean_weight}"
            )
        self.width, self.rivals, self.stop_at_plateau = width, rivals, stop_at_plateau
        self.clean_weight = float(clean_weight)

    def settings(self) -> dict[str, Any]:
        """The selector's settings."""
        return {
            "width": self.width,
            "clean_weight": self.clean_weight,
            "rivals": self.rivals,
            "stop_at_plateau": self.stop_at_plateau,
        }

    def __call__(self, fit: HeadFeatures, *, fit_budget: float, max_removed: int) -> Path:
        start, base_clean = _start(fit, self.clean_weight)
        min_clean = _min_clean(fit, base_clean, fit_budget)
        beam, best_so_far = [start], start.score
        path: Path = []
        while beam and len(path) < min(max_removed, fit.n_features):
            options = [
                (c, m, s, j, state)
                for state in beam
                for c, m, s, j in _expansions(
                    fit, state, min_clean, self.clean_weight, self.rivals, self.width
                )
            ]
            options.sort(key=lambda o: (-o[0], -o[1], o[2]))
            seen: set[tuple[int, ...]] = set()
            chosen: list[tuple[float, float, int, _State]] = []
            for c, m, s, j, state in options:
                if s not in seen and len(chosen) < self.width:
                    seen.add(s)
                    chosen.append((c, m, j, state))
            if not chosen or (self.stop_at_plateau and chosen[0][0] <= best_so_far):
                break
            beam = [state.extend(fit, j, c, m) for c, m, j, state in chosen]
            best_so_far = max(best_so_far, beam[0].score)
            path.append(beam[0].removed)
        return path


class GreedySelector(BeamSelector):
    """Greedy removal: beam search of width 1 (see :class:`BeamSelector`)."""

    name = "greedy"

    def __init__(
        self, *, clean_weight: float = 0.0, rivals: int = 16, stop_at_plateau: bool = True
    ) -> None:
        super().__init__(
            width=1, clean_weight=clean_weight, rivals=rivals, stop_at_plateau=stop_at_plateau
        )

    def settings(self) -> dict[str, Any]:
        """The selector's settings."""
        return {k: v for k, v in super().settings().items() if k != "width"}


class RankingSelector:
    """A fixed ranking of the features, whose prefixes form the path (no budget during search).

    Args:
        name: ``"deepcloak"`` (the paper's score on the fit features) or ``"random"``.
        seed: seed of the random order.
    """

    def __init__(self, name: str, *, seed: int = 0) -> None:
        if name not in ("deepcloak", "random"):
            raise DeepCloakError(f"a ranking selector is 'deepcloak' or 'random', got {name!r}")
        self.name, self.seed = name, seed

    def settings(self) -> dict[str, Any]:
        """The selector's settings."""
        return {"seed": self.seed} if self.name == "random" else {"score": "deepcloak"}

    def __call__(self, fit: HeadFeatures, *, fit_budget: float, max_removed: int) -> Path:
        if self.name == "deepcloak":
            ranking = rank_features(deepcloak_score(fit.clean, fit.adv))
        else:
            gen = torch.Generator().manual_seed(self.seed)
            ranking = torch.randperm(fit.n_features, generator=gen)
        order = [int(j) for j in ranking[: min(max_removed, fit.n_features)]]
        return [tuple(order[: i + 1]) for i in range(len(order))]


SELECTORS: Registry[Selector] = Registry("selector")
SELECTORS.register("greedy")(GreedySelector)
SELECTORS.register("beam")(BeamSelector)


def _ranking(name: str) -> Callable[..., Selector]:
    def factory(*, seed: int = 0) -> Selector:
        return RankingSelector(name, seed=seed)

    return factory


SELECTORS.register("deepcloak")(_ranking("deepcloak"))
SELECTORS.register("random")(_ranking("random"))


SEARCH_SETTINGS = ("fit_budget", "max_removed")
"""Settings of the search itself (:func:`~deepcloak.cloak.search.search_cached`), not of a
selector, that a selector spec may carry."""


def parse_selector(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"beam:width=4,clean_weight=2,fit_budget=0.03"`` into a name and its settings.

    Values are read as ``true``/``false``, integers, floats, or else kept as text. The settings
    are checked: the selector must accept them (or they are :data:`SEARCH_SETTINGS`).

    Raises:
        DeepCloakError: an unknown selector, a malformed ``key=value`` or a setting it refuses.
    """
    name, _, rest = spec.partition(":")
    settings: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise DeepCloakError(
                f"bad selector setting {item!r} in {spec!r}; expected NAME:key=value,... "
                "(e.g. beam:width=4,clean_weight=2)"
            )
        settings[key.strip()] = _setting_value(value.strip())
    create_selector(
        name.strip(), **{k: v for k, v in settings.items() if k not in SEARCH_SETTINGS}
    )  # refuse unknown names and settings now, before any work
    return name.strip(), settings


def _setting_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def create_selector(name: str, **settings: Any) -> Selector:
    """Build the selector registered as ``name`` with its ``settings`` (keyword arguments).

    Raises:
        DeepCloakError: unknown name (the message lists the known ones) or bad settings.
    """
    try:
        return SELECTORS.create(name, **settings)
    except TypeError as e:
        raise DeepCloakError(f"bad settings for selector {name!r}: {e}") from None
