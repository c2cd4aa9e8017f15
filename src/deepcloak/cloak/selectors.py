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
    ``beam``: greedy with the ``width`` best removal sets kept at each size (by default
        ``width=8, clean_weight=2``, tuned on seeds no published figure uses:
        docs/default_mask_tuning.md).

Each selector declares its settings with types, ranges and defaults (:data:`SELECTOR_SETTINGS`);
:func:`parse_selector` reads ``NAME:key=value,...`` against them before any work.

Greedy and beam stop when no allowed removal raises the adversarial fit accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

import torch

from deepcloak._moved import moved_names
from deepcloak.cloak import removal_sets
from deepcloak.cloak.head import HeadFeatures
from deepcloak.cloak.mask import rank_features
from deepcloak.cloak.removal_sets import RemovalState, expansions, min_clean_correct, start_state
from deepcloak.cloak.scores import deepcloak_score
from deepcloak.errors import DeepCloakError
from deepcloak.registry import Registry
from deepcloak.settings import Setting, check_settings, parse_key_values

__all__ = [
    "AUTO",
    "DEFAULT_FIT_BUDGET",
    "DEFAULT_SELECTOR",
    "SEARCH_SETTINGS",
    "SELECTORS",
    "SELECTOR_SETTINGS",
    "BeamSelector",
    "GreedySelector",
    "Path",
    "RankingSelector",
    "Selector",
    "SelectorChoice",
    "check_selector",
    "create_selector",
    "parse_selector",
    "selector_settings",
    "split_settings",
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


class BeamSelector:
    """Beam search over removal sets: keep the ``width`` best sets of each size.

    Sets are ranked by their score, adversarial fit samples correct plus ``clean_weight``
    times clean fit samples correct, then by summed adversarial margin, then by the sorted
    feature indices (lexicographically smaller first). ``width=1`` is greedy.

    Args:
        width: sets kept per size (default 8, tuned: docs/default_mask_tuning.md).
        clean_weight: worth of a clean fit sample against an adversarial one. ``0`` spends the
            fit budget on the first removals that gain most; ``1`` or more trades robustness
            for clean accuracy step by step, so the path climbs the budget gradually (default
            2; greedy's default is 0).
        rivals: rival classes updated per candidate (see :func:`candidate_outcomes`).
        stop_at_plateau: stop when the best set of the next size does not score strictly higher.
    """

    name = "beam"

    def __init__(
        self,
        *,
        width: int = 8,
        clean_weight: float = 2.0,
        rivals: int = 16,
        stop_at_plateau: bool = True,
    ) -> None:
        given = {"width": width, "clean_weight": clean_weight, "rivals": rivals}
        checked = check_settings(
            SELECTOR_SETTINGS["beam"], {**given, "stop_at_plateau": stop_at_plateau},
            owner=f"selector {self.name!r}",
        )  # fmt: skip
        self.width, self.rivals = int(checked["width"]), int(checked["rivals"])
        self.stop_at_plateau = bool(checked["stop_at_plateau"])
        self.clean_weight = float(checked["clean_weight"])

    def settings(self) -> dict[str, Any]:
        """The selector's settings."""
        return {
            "width": self.width,
            "clean_weight": self.clean_weight,
            "rivals": self.rivals,
            "stop_at_plateau": self.stop_at_plateau,
        }

    def __call__(self, fit: HeadFeatures, *, fit_budget: float, max_removed: int) -> Path:
        start, base_clean = start_state(fit, self.clean_weight)
        min_clean = min_clean_correct(fit, base_clean, fit_budget)
        beam, best_so_far = [start], start.score
        path: Path = []
        while beam and len(path) < min(max_removed, fit.n_features):
            options = [
                (c, m, s, j, state)
                for state in beam
                for c, m, s, j in expansions(
                    fit, state, min_clean, self.clean_weight, self.rivals, self.width
                )
            ]
            options.sort(key=lambda o: (-o[0], -o[1], o[2]))
            seen: set[tuple[int, ...]] = set()
            chosen: list[tuple[float, float, int, RemovalState]] = []
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
        self.name = name
        checked = check_settings(SELECTOR_SETTINGS["random"], {"seed": seed}, owner=name)
        self.seed = int(checked["seed"])

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


_RIVALS = Setting(
    "rivals", int, 16, "rival classes updated per candidate; the result is exact anyway", 1
)
_PLATEAU = Setting(
    "stop_at_plateau", bool, True, "stop when the next size does not score strictly higher"
)


def _clean_weight(default: float) -> Setting:
    return Setting(
        "clean_weight", float, default, "worth of a clean fit sample against an adversarial one",
        0.0,
    )  # fmt: skip


#: Each built-in selector's settings, with types, ranges and defaults (see :class:`Setting`).
SELECTOR_SETTINGS: dict[str, tuple[Setting, ...]] = {
    "beam": (
        Setting("width", int, 8, "removal sets kept per size", 1),
        _clean_weight(2.0),
        _RIVALS,
        _PLATEAU,
    ),
    "greedy": (_clean_weight(0.0), _RIVALS, _PLATEAU),
    "deepcloak": (),
    "random": (Setting("seed", int, 0, "seed of the random order", 0, 2**63 - 1),),
}

#: The clean-accuracy drop the selector may spend on the fit samples, by default: 3 points on
#: the fit samples held a 1-point budget on validation in the tuning (docs/default_mask_tuning.md).
DEFAULT_FIT_BUDGET = 0.03

SEARCH_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "fit_budget", float, DEFAULT_FIT_BUDGET,
        "clean-accuracy drop the selector may spend on the fit samples", 0.0, 1.0,
    ),
    Setting(
        "max_removed", int, None, "longest removal set the selector proposes", 1,
        none_word="all",
    ),
)  # fmt: skip
"""Settings of the search itself (:func:`~deepcloak.cloak.search.search_cached`), not of a
selector, that a selector spec may carry."""

_SEARCH_NAMES = frozenset(s.name for s in SEARCH_SETTINGS)


def selector_settings(name: str) -> tuple[Setting, ...] | None:
    """The settings ``name`` declares; ``None`` for a selector registered without a table.

    Raises:
        DeepCloakError: an unknown selector (the message lists the known ones).
    """
    SELECTORS.get(name)  # an unknown name is an error listing the known ones
    return SELECTOR_SETTINGS.get(name)


def check_selector(name: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A selector's settings and the search's, checked, with every default filled in.

    Values may be Python values (``{"width": 4}``) or text (``{"width": "4"}``).

    Raises:
        DeepCloakError: an unknown selector or setting (naming the closest one), or a value of
            the wrong type or range (naming what is allowed).
    """
    table = selector_settings(name)
    owner = f"selector {name!r}"
    if table is None:  # registered elsewhere: its factory checks its own settings
        own = {k: v for k, v in settings.items() if k not in _SEARCH_NAMES}
        create_selector(name, **own)
        search = {k: v for k, v in settings.items() if k in _SEARCH_NAMES}
        return {**own, **check_settings(SEARCH_SETTINGS, search, owner=owner)}
    return check_settings((*table, *SEARCH_SETTINGS), settings, owner=owner)


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(selector's, search's)``: checked settings split between the selector and the search."""
    own = {k: v for k, v in settings.items() if k not in _SEARCH_NAMES}
    return own, {k: v for k, v in settings.items() if k in _SEARCH_NAMES}


class SelectorChoice(NamedTuple):
    """A selector chosen by name, with its settings checked and every default filled in.

    Built once, from ``--select`` text (:func:`parse_selector`) or from Python values
    (:meth:`of`, which a config calls), and then handed as it is to the search, the report and
    the resume fingerprint. It unpacks as ``name, settings``.

    Attributes:
        name: a name in :data:`SELECTORS`.
        settings: the selector's settings and the search's (``fit_budget``, ``max_removed``).
    """

    name: str
    settings: dict[str, Any]

    @classmethod
    def of(cls, name: str, settings: Mapping[str, Any] | None = None) -> SelectorChoice:
        """``name`` with ``settings`` (Python values or text) checked (:func:`check_selector`).

        Raises:
            DeepCloakError: an unknown selector or setting, or a value of the wrong type or range.
        """
        return cls(name, check_selector(name, settings or {}))

    @property
    def selector_settings(self) -> dict[str, Any]:
        """The selector's own settings (without the search's)."""
        return split_settings(self.settings)[0]

    @property
    def fit_budget(self) -> float:
        """The clean-accuracy drop the selector may spend on the fit samples."""
        return float(self.settings["fit_budget"])

    @property
    def max_removed(self) -> int | None:
        """The longest removal set the selector proposes (``None``: no limit)."""
        limit = self.settings["max_removed"]
        return None if limit is None else int(limit)

    def create(self) -> Selector:
        """The selector itself, built with its settings."""
        return create_selector(self.name, **self.selector_settings)


def parse_selector(spec: str) -> SelectorChoice:
    """Parse ``"beam:width=4,clean_weight=2,fit_budget=0.03"`` into a name and its settings.

    Each value is read against the setting's declared type and range
    (:data:`SELECTOR_SETTINGS`, :data:`SEARCH_SETTINGS`), once, before any work; the result
    holds every setting, the ones not given at their defaults, and unpacks as
    ``name, settings``.

    Raises:
        DeepCloakError: an unknown selector or setting (naming the closest one), a malformed
            ``key=value``, a setting given twice, or a value of the wrong type or range.
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    SELECTORS.get(name)  # the name first: its settings make sense only for a known selector
    texts = parse_key_values(rest, example="beam:width=4,clean_weight=2")
    if selector_settings(name) is None:
        return SelectorChoice.of(name, {k: _loose_value(v) for k, v in texts.items()})
    return SelectorChoice.of(name, texts)


def _loose_value(text: str) -> Any:
    """A value for a selector without declared settings: a bool, a number, or the text."""
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

    Declared settings are checked first (:func:`check_selector`); missing ones take their
    defaults.

    Raises:
        DeepCloakError: unknown name (the message lists the known ones) or bad settings.
    """
    table = selector_settings(name)
    if table is not None:
        checked = check_settings(table, settings, owner=f"selector {name!r}")
        return SELECTORS.create(name, **checked)
    try:
        return SELECTORS.create(name, **settings)
    except TypeError as e:
        raise DeepCloakError(f"bad settings for selector {name!r}: {e}") from None


__getattr__ = moved_names(__name__, {"ranked_candidates": removal_sets})
