"""The evaluated mask found by a mask search instead of the paper's ranking (``--select``).

With ``EvaluationConfig.select`` set, :func:`search_cloak` runs
:func:`~deepcloak.cloak.search.search_mask` on the training data the cloak would be fit on, with
the evaluation's validation split (held out of the training data, as for the ratio choice) as
the search's validation samples. The search chooses the mask *and* its size there, so its
choice (:func:`search_choice`) becomes the evaluation's
:class:`~deepcloak.evaluation.ratio_choice.RatioChoice`; the returned
:class:`~deepcloak.cloak.fit.Cloak` ranks the removed features first, in removal order, so its
mask at that ratio is exactly the searched mask and every test number follows from it as for a
fitted cloak.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks.native import FGSM
from deepcloak.cloak.fit import Cloak
from deepcloak.cloak.search import search_mask
from deepcloak.cloak.taps import LayerRef, resolve_layer
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.crafted import Samples
from deepcloak.evaluation.results import RatioCandidate, RatioChoice
from deepcloak.models.runtime import model_device
from deepcloak.progress import ProgressFn
from deepcloak.stats import wilson_interval

__all__ = ["search_choice", "search_cloak"]


def _layer(model: nn.Module, config: EvaluationConfig, x: torch.Tensor) -> LayerRef | None:
    if config.cloak.layer is None and config.cloak.side is None:
        return None  # search_mask finds the input of the final nn.Linear itself
    return resolve_layer(
        model, config.cloak.layer, config.cloak.side, example=x[:1].to(model_device(model))
    )


def search_cloak(
    model: nn.Module,
    train: Iterable[Any],
    val: Samples,
    config: EvaluationConfig,
    progress: ProgressFn | None = None,
) -> Cloak:
    """Search the mask on ``train`` and choose it on ``val``; a cloak whose mask it is.

    The fit samples are crafted with FGSM at ``config.resolved_fit_eps``, as a fit would be;
    ``config.samples.max_fit_samples`` caps them. The cloak's metadata records the search
    (``selection``), from which :func:`search_choice` gives the evaluated ratio.

    Args:
        model: the trained classifier (left unmodified).
        train: the training batches (the validation samples already held out of them).
        val: the evaluation's validation samples.
        config: the evaluation's settings (``select`` must be set).

    Returns:
        A cloak whose mask at ``search_choice(cloak).ratio`` is the searched mask.

    Raises:
        DeepCloakError: bad selector settings, or a layer L that is not the input of the final
            ``nn.Linear``.
    """
    if config.cloak.selector is None:
        raise ValueError("search_cloak needs config.cloak.select")  # a programming error, not input
    eps = config.resolved_fit_eps
    val_loader = DataLoader(TensorDataset(val.x, val.y), batch_size=val.batch_size)
    found = search_mask(
        model, train, val_loader, layer=_layer(model, config, val.x), attack=FGSM(eps=eps),
        selector=config.cloak.selector, clean_budget=config.cloak.clean_budget,
        confidence=config.checks.confidence, max_samples=config.samples.max_fit_samples,
        progress=progress,
    )  # fmt: skip
    cloak, _ = found.to_cloak(seed=config.runtime.seed)
    return cloak


def _counts(validation: Mapping[str, Any], n: int) -> dict[str, int]:
    """The exact validation counts a search recorded (see ``SearchResult.selection``)."""
    names = ("clean_correct", "adv_correct", "baseline_clean_correct", "baseline_adv_correct")
    missing = [name for name in names if name not in validation]
    if missing:
        raise DeepCloakError(
            f"the recorded search lacks its exact validation counts ({', '.join(missing)}): it "
            "was written by an older deepcloak; run the evaluation again without --resume"
        )
    counts = {name: int(validation[name]) for name in names}
    if not all(0 <= c <= n for c in counts.values()):
        raise DeepCloakError(f"the recorded search's validation counts {counts} exceed n={n}")
    return counts


def _candidate(
    n_removed: int, n_features: int, clean: int, adv: int, base: Mapping[str, int], n: int,
    confidence: float,
) -> RatioCandidate:  # fmt: skip
    return RatioCandidate(
        ratio=n_removed / n_features,
        n_removed=n_removed,
        clean_accuracy=clean / n,
        graybox_accuracy=adv / n,
        graybox_gain=adv / n - base["baseline_adv_correct"] / n,
        clean_drop=base["baseline_clean_correct"] / n - clean / n,
        within_budget=True,  # the unmasked model, and the mask the search chose within budget
        clean_ci=wilson_interval(clean, n, confidence),
        graybox_ci=wilson_interval(adv, n, confidence),
        confidence=confidence,
    )


def search_choice(cloak: Cloak) -> RatioChoice:
    """The search's validation choice, from what ``cloak`` records of it, as a :class:`RatioChoice`.

    The candidates are the unmasked model and the chosen mask (the search's validation figures;
    ``graybox_accuracy`` is the accuracy on validation samples crafted on the unmasked model by
    the search's attack). Built from the cloak's metadata alone, so a resumed evaluation (whose
    cloak was saved and read back) gives the same choice.

    Raises:
        DeepCloakError: a cloak that records no search.
    """
    sel = cloak.selection
    if sel is None:
        raise DeepCloakError("this cloak was not found by a mask search (no 'selection' recorded)")
    v, n, conf = sel["validation"], int(sel["val_samples"]), float(sel["confidence"])
    removed, n_features, k = len(sel["removed"]), cloak.n_features, _counts(sel["validation"], n)
    base = _candidate(0, n_features, k["baseline_clean_correct"], k["baseline_adv_correct"],
                      k, n, conf)  # fmt: skip
    chosen = _candidate(removed, n_features, k["clean_correct"], k["adv_correct"], k, n, conf)
    drop = v["clean_drop"]
    reason = (
        f"mask search ({sel['selector']}): the best validation gray-box accuracy among its "
        f"removal sets whose paired clean-accuracy drop stays within {sel['clean_budget']:.2%} "
        f"at {conf:.0%} confidence (this one removes {removed} features; drop "
        f"{drop['drop']:+.2%}, bound {drop['upper']:.2%})"
    )
    return RatioChoice(
        ratio=removed / n_features,
        clean_budget=float(sel["clean_budget"]),
        baseline_clean_accuracy=v["baseline_clean_accuracy"],
        baseline_graybox_accuracy=v["baseline_adv_accuracy"],
        candidates=(base, chosen) if removed else (base,),
        n_samples=n,
        attack=dict(cloak.attack),
        split="validation",
        reason=reason,
    )
