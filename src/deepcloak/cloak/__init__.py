"""The cloak, after the attacks: find the features attackers exploit and mask them.

- :mod:`.taps`: layer L, the input of the final ``nn.Linear`` (:class:`LayerRef`, :class:`Side`);
- :mod:`.scores`: feature scores from streaming sums (the paper's :class:`DeepCloakScore`);
- :mod:`.mask`: rankings, keep-masks and the mask inserted into or folded into a model;
- :mod:`.fit`: the fit (:func:`fit` -> :class:`Cloak`);
- :mod:`.head`, :mod:`.search`, :mod:`.selectors`, :mod:`.iterative`: the mask search on cached
  head features, beyond the paper's score;
- :mod:`.torchscript`: TorchScript models made cloakable (:func:`cloakable`).

This ``__init__`` is the sub-package's face: the names callers outside it use. Modules inside
import their siblings directly, never through it.
"""

from __future__ import annotations

from deepcloak.cloak.fit import DEFAULT_EPS, Cloak, fit, layer_features
from deepcloak.cloak.head import (
    HeadFeatures,
    apply_removal,
    cache_head_features,
    cache_head_features_multi,
    candidate_outcomes,
    concat_head_features,
    full_logits,
    linear_head,
    margins,
)
from deepcloak.cloak.iterative import extend_path, iterative_search
from deepcloak.cloak.mask import (
    FeatureMask,
    MaskedLayer,
    find_masks,
    fold_mask,
    insert_mask,
    keep_mask,
    masked,
    random_keep_mask,
    rank_features,
    removal_count,
    remove_mask,
)
from deepcloak.cloak.scores import (
    SCORERS,
    ActivationScore,
    DeepCloakScore,
    RandomScore,
    create_scorer,
    deepcloak_score,
)
from deepcloak.cloak.search import (
    SearchResult,
    choose_on_validation,
    pick_within_budget,
    search_cached,
    search_mask,
)
from deepcloak.cloak.selectors import (
    AUTO,
    DEFAULT_SELECTOR,
    SEARCH_SETTINGS,
    SELECTOR_SETTINGS,
    SELECTORS,
    BeamSelector,
    SelectorChoice,
    check_selector,
    create_selector,
    parse_selector,
)
from deepcloak.cloak.taps import (
    LayerRef,
    Side,
    first_forward,
    parse_side,
    reaches_logits,
    resolve_layer,
    tap,
)
from deepcloak.cloak.torchscript import ScriptedClassifier, cloakable

__all__ = [
    "AUTO",
    "DEFAULT_EPS",
    "DEFAULT_SELECTOR",
    "SCORERS",
    "SEARCH_SETTINGS",
    "SELECTORS",
    "SELECTOR_SETTINGS",
    "ActivationScore",
    "BeamSelector",
    "Cloak",
    "DeepCloakScore",
    "FeatureMask",
    "HeadFeatures",
    "LayerRef",
    "MaskedLayer",
    "RandomScore",
    "ScriptedClassifier",
    "SearchResult",
    "SelectorChoice",
    "Side",
    "apply_removal",
    "cache_head_features",
    "cache_head_features_multi",
    "candidate_outcomes",
    "check_selector",
    "choose_on_validation",
    "cloakable",
    "concat_head_features",
    "create_scorer",
    "create_selector",
    "deepcloak_score",
    "extend_path",
    "find_masks",
    "first_forward",
    "fit",
    "fold_mask",
    "full_logits",
    "insert_mask",
    "iterative_search",
    "keep_mask",
    "layer_features",
    "linear_head",
    "margins",
    "masked",
    "parse_selector",
    "parse_side",
    "pick_within_budget",
    "random_keep_mask",
    "rank_features",
    "reaches_logits",
    "removal_count",
    "remove_mask",
    "resolve_layer",
    "search_cached",
    "search_mask",
    "tap",
]
