"""Figures of accuracy against the mask ratio or the budget, drawn on ``Figure`` objects.

One helper, :func:`accuracy_figure`, draws every plot deepcloak makes (``harden``'s sweep,
``evaluate``'s two curves, the paper sweep's figures): lines of accuracy with optional shaded
intervals, each band named in the legend. Figures are plain ``matplotlib.figure.Figure``
objects with an Agg canvas: no pyplot, no process-wide backend switch, no display needed.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deepcloak.attacks.native import Norm
from deepcloak.evaluation.results import (
    CLOAKED,
    UNMASKED,
    AccuracyResult,
    EvaluationReport,
    SweepResult,
    SweepRow,
    ThreatModel,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "Series",
    "accuracy_figure",
    "attack_label",
    "eps_figure",
    "png",
    "ratio_figure",
    "series",
    "sweep_figure",
]

RATIO_AXIS = "features removed (% of layer L)"


@dataclass(frozen=True)
class Series:
    """One line of a figure: its label, points, and an optional shaded interval.

    ``band`` is ``(low, high)`` per point; ``band_label`` names it in the legend (required
    with a band: an unnamed band would leave the reader guessing).
    """

    label: str
    x: Sequence[float]
    y: Sequence[float]
    band: tuple[Sequence[float], Sequence[float]] | None = None
    band_label: str | None = None
    style: Mapping[str, Any] = field(default_factory=dict)


def series(
    label: str,
    points: Sequence[tuple[float, AccuracyResult]],
    *,
    band: str | None = None,
    **style: Any,
) -> Series:
    """A :class:`Series` of results at ``x`` values; ``band`` names their intervals, if drawn."""
    pts = sorted(points, key=lambda p: p[0])
    return Series(
        label,
        [x for x, _ in pts],
        [r.accuracy for _, r in pts],
        ([r.interval[0] for _, r in pts], [r.interval[1] for _, r in pts]) if band else None,
        band,
        style,
    )


def accuracy_figure(
    lines: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    log_x: bool = False,
    marks: Mapping[str, float] | None = None,
) -> Figure:
    """Accuracy (y, in [0, 1]) against ``x`` for each series, bands named in the legend.

    Args:
        lines: the series, drawn in order (colours from matplotlib's cycle unless styled).
        title: the figure's title.
        xlabel: the x axis label (ratios in % by convention: see :data:`RATIO_AXIS`).
        log_x: a symmetric-log x axis (for ratio grids that crowd near 0), ticks at the points.
        marks: vertical lines to draw, label -> x (e.g. the chosen ratio).

    Raises:
        ValueError: a series has a band but no band label.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for s in lines:
        line = ax.plot(s.x, s.y, label=s.label, **dict(s.style))[0]
        if s.band is not None:
            if not s.band_label:
                raise ValueError(f"the band of series {s.label!r} needs a legend label")
            ax.fill_between(
                s.x, *s.band, color=line.get_color(), alpha=0.15, lw=0, label=s.band_label
            )
    for label, x in (marks or {}).items():
        ax.axvline(x, color="k", linestyle=":", linewidth=1, label=label)
    if log_x:
        ticks = sorted({x for s in lines for x in s.x})
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="x-small")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (no time stamp: the same figure gives the same bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def attack_label(spec: Mapping[str, Any]) -> str:
    """``FGSM(eps=0.04)``: an attack's name and its budget and steps."""
    shown = {k: v for k, v in spec.items() if k in ("eps", "steps")}
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
    )
    return f"{str(spec['name']).upper()}({params})"


def _at(rows: Sequence[SweepRow], get: Callable[[SweepRow], AccuracyResult | None]) -> list[Any]:
    return [(100 * r.ratio, res) for r in rows if (res := get(r)) is not None]


def sweep_figure(
    sweep: SweepResult, *, title: str = "", log_x: bool = False, chosen: float | None = None
) -> Figure:
    """Accuracy vs ratio (in %): clean, gray-box, random masks, and each white-box attack."""
    rows, conf = sweep.rows, (sweep.rows[0].graybox.confidence if sweep.rows else 0.95)
    gray = f"gray-box {attack_label(sweep.attack)} ({sweep.score} mask)"
    lines = [
        series("clean", _at(rows, lambda r: r.clean), color="black", marker="."),
        series(gray, _at(rows, lambda r: r.graybox), band=f"{conf:.0%} Wilson interval, gray-box",
               color="C3", marker="."),
    ]  # fmt: skip
    if sweep.n_random:
        lines.append(
            series(
                f"gray-box, random mask (mean of {sweep.n_random})",
                _at(rows, lambda r: r.random_graybox),
                band=f"{conf:.0%} interval of the random-mask mean",
                color="C0",
                linestyle="--",
            )
        )
    for i, spec in enumerate(sweep.whitebox_attacks):
        name = str(spec["name"])
        lines.append(
            series(
                f"white-box {attack_label(spec)} (attack knows the mask)",
                _at(rows, lambda r, n=name: r.whitebox_result(n)),  # type: ignore[misc]
                color=f"C{2 + 2 * i}",
                marker="o",
            )
        )
    marks = {f"chosen ratio ({100 * chosen:g}%)": 100 * chosen} if chosen is not None else None
    return accuracy_figure(
        lines, title=title or f"DeepCloak on {sweep.layer}", xlabel=RATIO_AXIS, log_x=log_x,
        marks=marks,
    )  # fmt: skip


def ratio_figure(report: EvaluationReport) -> Figure:
    """``evaluate``'s accuracy vs ratio on the test split, the chosen ratio marked."""
    cfg = report.config
    attack = f"{cfg.attack.select_attack}, eps={cfg.attack.eps:.4g} {Norm(cfg.attack.norm).value}"
    title = f"Accuracy vs ratio ({attack}), test split"
    return sweep_figure(report.ratio_curve, title=title, chosen=report.ratio)


def eps_figure(report: EvaluationReport) -> Figure:
    """``evaluate``'s accuracy vs eps: unmasked, cloaked gray-box and white-box, with bands."""
    cfg, conf = report.config, report.config.checks.confidence
    lines = []
    for label, defense, tm, marker in (
        ("unmasked", UNMASKED, ThreatModel.GRAYBOX, "o"),
        ("cloaked gray-box", CLOAKED, ThreatModel.GRAYBOX, "s"),
        ("cloaked white-box", CLOAKED, ThreatModel.WHITEBOX, "^"),
    ):
        pts = [
            (float(r.attack["eps"]), r)
            for r in report.eps_curve
            if r.defense == defense and r.threat_model is tm
        ]
        lines.append(series(label, pts, band=f"{conf:.0%} Wilson interval, {label}", marker=marker))
    return accuracy_figure(
        lines,
        title=f"Accuracy vs eps (PGD, ratio {100 * report.ratio:g}%)",
        xlabel=f"eps ({Norm(cfg.attack.norm).value}, inputs in [0, 1])",
    )
