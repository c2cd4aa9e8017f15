"""Render an :class:`~deepcloak.evaluation.results.EvaluationReport`: tables, JSON, PNG plots.

Library code never prints: :func:`evaluation_tables` returns ``rich`` tables for the CLI to
print, and :func:`write_evaluation` writes the JSON (schema ``deepcloak-evaluation/1``, see
``docs/evaluation-schema.md``) and the plots, each file atomically.

Example:
    >>> for table in evaluation_tables(report):
    ...     console.print(table)
    >>> write_evaluation(report, "runs/cnn-fmnist")
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from deepcloak.attacks.native import Norm
from deepcloak.evaluation.results import (
    WORST_CASE,
    AccuracyResult,
    CurvePoint,
    EvaluationReport,
    ThreatModel,
)
from deepcloak.io import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "EVALUATION_FILES",
    "evaluation_tables",
    "plot_accuracy_vs_eps",
    "plot_accuracy_vs_ratio",
    "write_evaluation",
]

#: File names written by :func:`write_evaluation`, by kind.
EVALUATION_FILES = {
    "json": "evaluation.json",
    "ratio_plot": "accuracy_vs_ratio.png",
    "eps_plot": "accuracy_vs_eps.png",
}

_STATUS_STYLE = {"pass": "[green]pass[/green]", "warn": "[bold yellow]warn[/bold yellow]"}


def _cell(r: AccuracyResult | None) -> str:
    if r is None:
        return "-"
    lo, hi = r.interval
    return f"{r.accuracy:6.1%} [{lo:.1%}, {hi:.1%}]"


def _defenses(report: EvaluationReport) -> list[str]:
    seen: dict[str, None] = {}
    for r in report.results:
        seen.setdefault(r.defense, None)
    return list(seen)


def _lookup(report: EvaluationReport) -> dict[tuple[str, ThreatModel, str], AccuracyResult]:
    return {(r.defense, r.threat_model, r.attack_name): r for r in report.results}


def summary_table(report: EvaluationReport) -> Table:
    """Defences by threat model: clean accuracy and per-sample worst case over the attacks."""
    cfg = report.config
    results = _lookup(report)
    tms = [t for t in report.threat_models() if t is not ThreatModel.CLEAN]
    n = next((r.n for r in report.results), 0)
    cloak = report.cloak
    table = Table(
        title=(
            f"DeepCloak evaluation: ratio {report.ratio:g} ({cloak.get('n_removed', 0)} of "
            f"{_n_features(cloak)} features removed), eps={cfg.eps:.4g} "
            f"({Norm(cfg.norm).value}), {n} test samples"
        ),
        caption=(
            f"Accuracy [{cfg.confidence:.0%} Wilson interval]; robust columns: per-sample "
            f"worst case over {', '.join(cfg.attacks)}, counted over all samples. Ratio: "
            f"{report.ratio_choice.reason}."
        ),
    )
    table.add_column("defence")
    table.add_column("clean", justify="right")
    for tm in tms:
        table.add_column(tm.value, justify="right")
    for d in _defenses(report):
        row = [d, _cell(results.get((d, ThreatModel.CLEAN, "none")))]
        row += [_cell(results.get((d, tm, WORST_CASE))) for tm in tms]
        table.add_row(*row)
    return table


def _n_features(cloak: dict[str, Any]) -> int:
    shape = cloak.get("feature_shape", [])
    out = 1
    for s in shape:
        out *= int(s)
    return out


def attacks_table(report: EvaluationReport) -> Table:
    """Every defence and threat model against every attack, and the worst case."""
    results = _lookup(report)
    attacks = [*report.config.attacks, WORST_CASE]
    table = Table(title="Robust accuracy by attack")
    table.add_column("defence")
    table.add_column("threat model")
    for a in attacks:
        table.add_column(a, justify="right")
    for d in _defenses(report):
        for tm in report.threat_models():
            if tm is ThreatModel.CLEAN:
                continue
            cells = [results.get((d, tm, a)) for a in attacks]
            if any(c is not None for c in cells):
                table.add_row(d, tm.value, *(f"{c.accuracy:.1%}" if c else "-" for c in cells))
    return table


def comparisons_table(report: EvaluationReport) -> Table:
    """McNemar's exact test: cloaked against unmasked, on the same samples."""
    table = Table(
        title="Cloaked vs unmasked (McNemar exact, paired)",
        caption="p(cloaked better): one-sided; p(differ): two-sided. Worst case over attacks.",
    )
    for col in ("threat model", "cloaked", "unmasked", "only cloaked right", "only unmasked right"):
        table.add_column(col, justify="right" if col != "threat model" else "left")
    table.add_column("p(cloaked better)", justify="right")
    table.add_column("p(differ)", justify="right")
    for c in report.comparisons:
        table.add_row(
            c.threat_model.value,
            f"{c.a_accuracy:.1%}",
            f"{c.b_accuracy:.1%}",
            str(c.test.a_only),
            str(c.test.b_only),
            f"{c.test.p_greater:.3g}",
            f"{c.test.p_two_sided:.3g}",
        )
    return table


def sanity_table(report: EvaluationReport) -> Table:
    """The sanity checks (Carlini et al. 2019): pass or warn, with the numbers behind them."""
    table = Table(title="Sanity checks (Carlini et al. 2019)")
    table.add_column("check")
    table.add_column("status")
    table.add_column("details")
    for c in report.sanity:
        table.add_row(c.name, _STATUS_STYLE[c.status.value], c.message)
    return table


def evaluation_tables(report: EvaluationReport) -> list[Table]:
    """All tables of a report, in reading order: summary, attacks, McNemar, sanity checks."""
    return [
        summary_table(report),
        attacks_table(report),
        comparisons_table(report),
        sanity_table(report),
    ]


# ---------------------------------------------------------------------------------------- plots
def _series(points: Sequence[CurvePoint]) -> dict[str, list[CurvePoint]]:
    out: dict[str, list[CurvePoint]] = defaultdict(list)
    for p in points:
        out[p.series].append(p)
    return {k: sorted(v, key=lambda p: p.x) for k, v in out.items()}


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, metadata={"Software": None})
    return buf.getvalue()


def _draw(ax: Axes, points: dict[str, list[CurvePoint]], styles: dict[str, dict[str, Any]]) -> None:
    for name, style in styles.items():
        pts = points.get(name)
        if not pts:
            continue
        xs = [p.x for p in pts]
        ys = [p.accuracy for p in pts]
        lo = [p.interval[0] for p in pts]
        hi = [p.interval[1] for p in pts]
        line = ax.plot(xs, ys, label=name, **style)[0]
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)


def _figure() -> tuple[Figure, Axes]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    return fig, fig.add_subplot(1, 1, 1)


def plot_accuracy_vs_ratio(report: EvaluationReport) -> bytes:
    """PNG: clean, gray-box, white-box and random-mask accuracy vs mask ratio, with Wilson bands.

    The chosen ratio is marked. Bands are Wilson intervals; the random-mask band is that of the
    mean accuracy over the random masks.
    """
    fig, ax = _figure()
    styles = {
        "clean": {"color": "tab:blue"},
        "gray-box": {"color": "tab:orange"},
        "white-box": {"color": "tab:red", "marker": "o"},
        "random gray-box": {"color": "tab:gray", "linestyle": "--"},
        "random clean": {"color": "tab:cyan", "linestyle": ":"},
    }
    _draw(ax, _series(report.ratio_curve), styles)
    ax.axvline(report.ratio, color="k", linestyle=":", linewidth=1, label="chosen ratio")
    cfg = report.config
    ax.set_xlabel("mask ratio (fraction of features removed)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"Accuracy vs ratio ({cfg.select_attack}, eps={cfg.eps:.4g} {Norm(cfg.norm).value}; "
        f"bands: {cfg.confidence:.0%} Wilson)"
    )
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_accuracy_vs_eps(report: EvaluationReport) -> bytes:
    """PNG: unmasked and cloaked (gray-box, white-box) accuracy vs epsilon, with Wilson bands."""
    fig, ax = _figure()
    styles = {
        "unmasked": {"color": "tab:blue", "marker": "o"},
        "cloaked gray-box": {"color": "tab:orange", "marker": "s"},
        "cloaked white-box": {"color": "tab:red", "marker": "^"},
    }
    _draw(ax, _series(report.eps_curve), styles)
    cfg = report.config
    ax.set_xlabel(f"eps ({Norm(cfg.norm).value}, inputs in [0, 1])")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(
        f"Accuracy vs eps (PGD, ratio {report.ratio:g}; bands: {cfg.confidence:.0%} Wilson)"
    )
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def write_evaluation(
    report: EvaluationReport,
    out_dir: str | os.PathLike[str],
    *,
    per_sample: bool = True,
    plots: bool = True,
) -> dict[str, Path]:
    """Write the JSON report and the PNG plots into ``out_dir``, each file atomically.

    Args:
        report: the evaluation.
        out_dir: the folder (created if missing).
        per_sample: include every result's per-sample correctness in the JSON.
        plots: also write the PNG plots.

    Returns:
        The paths written, by kind (keys of :data:`EVALUATION_FILES`).
    """
    out = Path(out_dir)
    paths = {"json": out / EVALUATION_FILES["json"]}
    write_json_atomic(paths["json"], report.to_json(per_sample=per_sample))
    if plots:
        paths["ratio_plot"] = out / EVALUATION_FILES["ratio_plot"]
        write_bytes_atomic(paths["ratio_plot"], plot_accuracy_vs_ratio(report))
        paths["eps_plot"] = out / EVALUATION_FILES["eps_plot"]
        write_bytes_atomic(paths["eps_plot"], plot_accuracy_vs_eps(report))
    return paths
