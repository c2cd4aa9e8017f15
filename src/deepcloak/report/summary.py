"""What was saved and what it bought: one record for ``report.json``, one block for the terminal.

``deepcloak harden`` prints this block before its table, so a user reads in a few lines which
mask was saved (layer, features removed, how it was chosen and on which samples), what it costs
in clean accuracy against the budget, and what it buys on the test samples under each threat
model. The text is rendered from the JSON record alone, so the terminal and ``report.json``
never disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deepcloak.evaluation.results import (
    AccuracyResult,
    EvaluationReport,
    ThreatModel,
    find_result,
)
from deepcloak.report.figures import attack_label

if TYPE_CHECKING:
    from deepcloak.cloak.search import SearchResult
    from deepcloak.cloak.taps import LayerRef
    from deepcloak.data.splits import ValidationInfo
    from deepcloak.evaluation.results import SweepResult

__all__ = ["evaluation_mask_lines", "paper_line", "saved_mask_lines", "saved_mask_record"]


def _accuracy(r: AccuracyResult) -> dict[str, Any]:
    return {"accuracy": r.accuracy, "interval": list(r.interval), "correct": r.n_correct, "n": r.n}


def saved_mask_record(
    sweep: SweepResult,
    *,
    ratio: float,
    layer: LayerRef,
    search: SearchResult | None,
    validation: ValidationInfo | None,
    score: str,
    clean_budget: float,
) -> dict[str, Any]:
    """The ``saved_mask`` record of ``report.json`` (documented in ``docs/schema.md``).

    Test figures are the sweep's rows at the saved ratio and at 0 (the unmasked model), on the
    same samples; validation figures are the search's, on the samples the mask was chosen on.

    Args:
        sweep: the test sweep of ``deepcloak harden`` (it includes ``ratio`` and 0).
        ratio: the saved mask's ratio.
        layer: the layer the mask applies to.
        search: the search that chose the mask, or ``None`` for a fixed ratio.
        validation: where the search's validation samples came from, if it ran.
        score: the scorer that ranked features for a fixed ratio.
        clean_budget: the search's clean-accuracy budget.

    Returns:
        The record, JSON-able (:meth:`deepcloak.harden.HardenResult.saved_mask` fills it).
    """
    row = sweep.row(ratio)
    record: dict[str, Any] = {
        "method": "search" if search is not None else "ratio",
        "selector": search.selector if search is not None else None,
        "settings": dict(search.settings) if search is not None else None,
        "score": None if search is not None else score,
        "layer": layer.to_json(),
        "n_features": sweep.n_features,
        "n_removed": row.n_removed,
        "ratio": ratio,
        "clean_budget": clean_budget if search is not None else None,
        "fits_budget": None,
        "found": None,
        "validation": None,
    }
    if search is not None:
        record.update(_search_record(search, validation))
    record["test"] = _test_record(sweep, ratio)
    return record


def _search_record(search: SearchResult, validation: ValidationInfo | None) -> dict[str, Any]:
    """What the search found, and its validation figures (``saved_mask`` with a search)."""
    chosen, unmasked = search.chosen, search.candidates[0]
    return {
        "found": bool(search.path),
        "fits_budget": search.n_removed > 0,
        "fit_budget": search.fit_budget,
        "fit_samples": search.fit_samples,
        "validation": {
            **(validation.to_json() if validation is not None else {}),
            "samples": search.val_samples,
            "confidence": search.confidence,
            "clean_accuracy": chosen.clean_accuracy,
            "baseline_clean_accuracy": unmasked.clean_accuracy,
            "clean_drop": chosen.drop.drop,
            "clean_drop_upper": chosen.drop.upper,
            "graybox_accuracy": chosen.adv_accuracy,
            "baseline_graybox_accuracy": unmasked.adv_accuracy,
            "graybox_gain": chosen.adv_accuracy - unmasked.adv_accuracy,
        },
        "seconds": dict(search.seconds),
    }


def _test_record(sweep: SweepResult, ratio: float) -> dict[str, Any]:
    """The saved mask's test figures against the unmasked model's, on the same samples."""
    row, base = sweep.row(ratio), sweep.row(0.0)
    whitebox = [
        {
            "attack": spec,
            **_accuracy(w),
            "baseline_accuracy": b.accuracy,
            "gain": w.accuracy - b.accuracy,
        }
        for spec, w, b in zip(sweep.whitebox_attacks, row.whitebox, base.whitebox, strict=False)
    ]
    return {
        "samples": row.clean.n,
        "clean": _accuracy(row.clean),
        "baseline_clean_accuracy": base.clean.accuracy,
        "clean_drop": base.clean.accuracy - row.clean.accuracy,
        "graybox_attack": sweep.attack,
        "graybox": _accuracy(row.graybox),
        "baseline_graybox_accuracy": base.graybox.accuracy,
        "graybox_gain": row.graybox.accuracy - base.graybox.accuracy,
        "whitebox": whitebox,
    }


def _pts(fraction: float) -> str:
    return f"{100 * fraction:+.1f} points"


def _ci(r: dict[str, Any]) -> str:
    lo, hi = r["interval"]
    return f"{100 * r['accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _settings(settings: dict[str, Any] | None) -> str:
    if not settings:
        return ""
    return (
        " ("
        + ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in settings.items()
        )
        + ")"
    )


def saved_mask_lines(record: dict[str, Any]) -> list[str]:
    """The block ``deepcloak harden`` prints before its table, from :func:`saved_mask_record`."""
    layer = record["layer"]
    where = f"{layer['name']} ({layer['side']})"
    n, total = record["n_removed"], record["n_features"]
    test = record["test"]
    if record["method"] == "search":
        how = f"{record['selector']} search{_settings(record['settings'])}"
    else:
        how = f"the paper's {record['score']} score at a fixed ratio"
    lines = [f"saved mask: {how}, layer {where}: {n} of {total} features removed ({n / total:.1%})"]
    val = record.get("validation")
    if val is not None:
        budget = record["clean_budget"]
        lines.append(
            f"  chosen on {val.get('description') or str(val['samples']) + ' validation samples'}"
        )
        if record["fits_budget"]:
            conf, upper = f"{val['confidence']:.0%}", 100 * val["clean_drop_upper"]
            lines.append(
                f"  validation: clean drop {_pts(val['clean_drop'])} ({conf} upper bound "
                f"{upper:.2f} <= budget {100 * budget:.2f}), gray-box gain "
                f"{_pts(val['graybox_gain'])}"
            )
        else:
            why = (
                "no mask the search proposed"
                if record["found"]
                else "the search found no mask that helps on the fit samples, so none"
            )
            lines.append(
                f"  no mask fits a {100 * budget:g}-point budget ({why} kept the "
                f"{val['confidence']:.0%} upper bound of its validation clean drop within it); "
                "the saved model is the unmasked one"
            )
    elif record["method"] == "ratio":
        lines.append("  the ratio was fixed: no validation, no budget checked")
    gray = attack_label(test["graybox_attack"])
    lines.append(
        f"  test ({test['samples']:,} samples): clean {_ci(test['clean'])} "
        f"({_pts(-test['clean_drop'])}); gray-box {gray} {_ci(test['graybox'])} "
        f"({_pts(test['graybox_gain'])})"
    )
    for w in test["whitebox"]:
        lines.append(
            f"  white-box {attack_label(w['attack'])} (the attacker knows the mask): "
            f"{_ci(w)} ({_pts(w['gain'])})"
        )
    return lines


def paper_line(paper: dict[str, Any], searched: dict[str, Any]) -> str:
    """One line comparing the paper's score, chosen the same way, with the searched mask."""
    test, n = paper["test"], paper["n_removed"]
    edge = searched["test"]["graybox_gain"] - test["graybox_gain"]
    features = "feature" if n == 1 else "features"
    return (
        f"  beside it, the paper's score chosen the same way removes {n} {features}: test clean "
        f"{_ci(test['clean'])} ({_pts(-test['clean_drop'])}), gray-box "
        f"{_ci(test['graybox'])} ({_pts(test['graybox_gain'])}); the search's edge: {_pts(edge)}"
    )


def _result_text(r: AccuracyResult | None, base: AccuracyResult | None) -> str:
    if r is None:
        return "-"
    lo, hi = r.interval
    text = f"{100 * r.accuracy:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text if base is None else f"{text} ({_pts(r.accuracy - base.accuracy)})"


def evaluation_mask_lines(report: EvaluationReport) -> list[str]:
    """The block ``deepcloak evaluate`` prints first: the evaluated mask, how it was chosen,
    on which samples, and what it buys on the test samples under each threat model (per-sample
    worst case over the level's attacks)."""
    cloak, choice = report.cloak, report.ratio_choice
    layer = cloak.get("layer") or report.run.get("layer") or {}
    n_features = 1
    for s in cloak.get("feature_shape", []):
        n_features *= int(s)
    n = int(cloak.get("n_removed", 0))
    selection = cloak.get("selection")
    if selection:
        how = f"{selection['selector']} search{_settings(selection.get('settings'))}"
    elif choice.split == "fixed":
        how = f"the paper's {cloak.get('score', 'deepcloak')} score at a fixed ratio"
    else:
        how = f"the paper's {cloak.get('score', 'deepcloak')} score, ratio chosen on validation"
    where = f"{layer.get('name', '?')} ({layer.get('side', 'input')})"
    lines = [
        f"evaluated mask: {how}, layer {where}: {n} of {n_features} features removed "
        f"({n / max(n_features, 1):.1%})"
    ]
    validation = (report.run.get("metadata") or {}).get("validation")
    if isinstance(validation, dict) and validation.get("description"):
        lines.append(f"  chosen on {validation['description']}")
    if choice.split != "fixed":
        lines.append(f"  {choice.reason}")
    results = report.results
    test_n = next((r.n for r in results), 0)
    parts = [
        "clean "
        + _result_text(
            find_result(results, "cloaked", ThreatModel.CLEAN),
            find_result(results, "unmasked", ThreatModel.CLEAN),
        )
    ]
    for tm in (ThreatModel.GRAYBOX, ThreatModel.WHITEBOX, ThreatModel.TRANSFER):
        cloaked = find_result(results, "cloaked", tm)
        if cloaked is not None:
            parts.append(
                f"{tm.value} {_result_text(cloaked, find_result(results, 'unmasked', tm))}"
            )
    lines.append(f"  test ({test_n:,} samples; attacks: per-sample worst case): {parts[0]}")
    lines += [f"    {p}" for p in parts[1:]]
    return lines
