"""Settings of :func:`deepcloak.harden.harden`: one frozen, checked :class:`HardenConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from deepcloak.attacks import create_attack
from deepcloak.attacks.native import Attack
from deepcloak.cloak.selectors import AUTO, DEFAULT_SELECTOR, SelectorChoice
from deepcloak.cloak.taps import parse_side
from deepcloak.data.splits import ValFrom
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.grids import DEFAULT_RATIOS, WHITEBOX_RATIOS
from deepcloak.models.precision import Precision, parse_precision
from deepcloak.validation import (
    check_budget,
    check_epsilon,
    check_positive_int,
    check_ratio,
    check_ratios,
)

__all__ = ["PAPER_RATIO", "HardenConfig"]

#: The paper's ratio when ``select=None`` and no ratio is given.
PAPER_RATIO = 0.01


@dataclass(frozen=True)
class HardenConfig:
    """Settings of :func:`harden`.

    With no arguments, the mask is *searched* (:data:`DEFAULT_SELECTOR`) and its size chosen on
    validation samples the model never trained on (a seeded part of the test split), within a
    1-point clean-accuracy budget held at 95% confidence. The paper's method is one setting
    away: ``ratio=0.01`` (or ``select=None``) ranks features by ``score`` and removes that
    fraction.

    Attributes:
        attack: ``"fgsm"`` (the paper's) or ``"pgd"``; used for the fit and the test samples.
        eps: attack budget in [0, 1].
        steps: PGD steps (ignored by FGSM).
        ratio: a fixed fraction of features to remove, ranked by ``score`` (the paper's method;
            ``None``: the search chooses, or 1% when ``select=None``).
        ratios: ratios of the sweep.
        whitebox_ratios: ratios at which the attack is also run through the cloaked model.
        layer, side: layer L (default: input of the final ``nn.Linear``).
        score: scorer of the paper's method.
        n_random: random masks per ratio in the baseline.
        batch_size: samples per batch.
        seed: seeds attacks, random masks and the validation draw.
        select: the search's selector (``"beam"``, ``"greedy"``, ``"deepcloak"``, ``"random"``;
            see :data:`deepcloak.cloak.selectors.SELECTORS`): it proposes masks on the fit
            samples and the saved one is chosen on the validation samples. ``None``: the paper's
            method at ``ratio``. Default :data:`AUTO`: beam, unless ``ratio`` is given.
        select_params: the selector's settings (``{"width": 8}`` for beam) and the search's
            own (``fit_budget``, ``max_removed``; see
            :func:`~deepcloak.cloak.search.search_cached`).
        clean_budget: with a search: the largest clean-accuracy drop the mask may cost, held
            at 95% confidence on the validation samples.
        val_from: with a search, when :func:`harden` is not given validation samples: where to
            draw them (``"test"``: a seeded part of the test split, every figure reported on
            the rest; ``"train"``: held out of the training split, biased).
        val_samples: how many (``None``: ``min(5000, half of the split drawn from)``).
        precision: ``"fp32"`` or ``"bf16"`` for the sweep's forward-only passes (feature
            caching, masked predictions); the fit and every attack run in float32.
    """

    attack: str = "fgsm"
    eps: float = 8 / 255
    steps: int = 10
    ratio: float | None = None
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    whitebox_ratios: tuple[float, ...] = WHITEBOX_RATIOS
    layer: str | None = None
    side: str | None = None
    score: str = "deepcloak"
    n_random: int = 5
    batch_size: int = 256
    seed: int = 0
    select: str | None = AUTO
    select_params: Mapping[str, Any] = field(default_factory=dict)
    #: ``select`` with ``select_params`` checked, every default of the selector and the search
    #: filled in (what the search runs with and the report shows); ``None`` without a search.
    selector: SelectorChoice | None = field(init=False, default=None)
    clean_budget: float = 0.01
    val_from: str = "test"
    val_samples: int | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    precision: Precision | str = Precision.FP32

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", parse_precision(self.precision))
        check_epsilon(self.eps)
        parse_side(self.side)  # before any work, with or without a layer
        if self.select == AUTO:
            object.__setattr__(self, "select", None if self.ratio is not None else DEFAULT_SELECTOR)
        if self.select is None:
            object.__setattr__(self, "ratio", PAPER_RATIO if self.ratio is None else self.ratio)
        else:
            self._check_search()
        check_ratio(self.ratio if self.ratio is not None else 0.0)
        check_ratios(self.ratios)
        check_ratios(self.whitebox_ratios or (0.0,))
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise DeepCloakError(f"batch_size must be >= 1, got {self.batch_size}")
        self.make_attack()  # an unknown attack or a bad setting fails here, before any work

    def _check_search(self) -> None:
        if self.ratio is not None:
            raise DeepCloakError(
                f"select={self.select!r} chooses the mask and its size on validation samples; "
                f"a fixed ratio ({self.ratio}) is the paper's method: drop the ratio, or rank by "
                "the paper's score at that ratio (--select deepcloak --ratio R; select=None)"
            )
        if self.score != "deepcloak":
            raise DeepCloakError(
                f"score={self.score!r} ranks features for the paper's method at a fixed ratio; "
                f"the search (select={self.select!r}) chooses its own: add a ratio (--ratio R) "
                "to rank by that score, or drop the score"
            )
        # Checked by type and range before any work; recorded with the defaults filled in.
        name = self.select or DEFAULT_SELECTOR
        object.__setattr__(self, "selector", SelectorChoice.of(name, self.select_params))
        check_budget(self.clean_budget)
        ValFrom.parse(self.val_from)
        if self.val_samples is not None:
            check_positive_int(self.val_samples, "val_samples")

    @property
    def selector_settings(self) -> dict[str, Any]:
        """The checked settings of :attr:`selector` (empty without a search)."""
        return dict(self.selector.settings) if self.selector is not None else {}

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-able, with the checked selector as ``selector_settings``."""
        return {
            ("selector_settings" if k == "selector" else k): (
                self.selector_settings if k == "selector" else v
            )
            for k, v in asdict(self).items()
        }

    @property
    def searches(self) -> bool:
        """Whether the saved mask is searched (else: the paper's ranking at ``ratio``)."""
        return self.select is not None

    def make_attack(self) -> Attack:
        """The configured attack."""
        params: dict[str, Any] = {"eps": self.eps}
        if self.attack == "pgd":
            params.update(steps=self.steps, seed=self.seed)
        return create_attack(self.attack, **params)

    def sweep_ratios(self, saved: float | None = None) -> list[float]:
        """The sweep's ratios, with the saved ratio and the white-box ratios included."""
        chosen = [r for r in (saved, self.ratio) if r is not None]
        return sorted({*self.ratios, *chosen, *self.whitebox_ratios})
