"""Tables of sweeps and evaluations: ``rich`` tables for the terminal, Markdown for docs.

Library code never prints: these return tables for the CLI to render. ``rich`` is imported only
when a table is built, so ``import deepcloak`` does not load it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from deepcloak.attacks.native import Norm
from deepcloak.evaluation.grids import SUMMARY_RATIOS
from deepcloak.evaluation.results import (
    WORST_CASE,
    AccuracyResult,
    EvaluationReport,
    SweepResult,
    SweepRow,
    ThreatModel,
)
from deepcloak.report.figures import attack_label

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "attacks_table",
    "comparisons_table",
    "evaluation_tables",
    "sanity_table",
    "summary_rows",
    "summary_table",
    "sweep_markdown",
    "sweep_table",
    "timings_table",
]

_STATUS_STYLE = {"pass": "[green]pass[/green]", "warn": "[bold yellow]warn[/bold yellow]"}


def _table(**kwargs: Any) -> Table:
    from rich.table import Table

    return Table(**kwargs)


# ---------------------------------------------------------------------------------- sweeps
def summary_rows(
    result: SweepResult, ratios: Sequence[float] = SUMMARY_RATIOS, *, extra: Sequence[float] = ()
) -> list[SweepRow]:
    """The rows at ``ratios`` (and ``extra``) that the sweep has, in ratio order."""
    wanted = {round(r, 6) for r in (*ratios, *extra)}
    return [row for row in result.rows if round(row.ratio, 6) in wanted]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _random_cell(row: SweepRow) -> str:
    if row.random_graybox is None:
        return "—"
    return f"{_pct(row.random_graybox.accuracy)} ± {_pct(row.random_graybox.std)}"


def _sweep_cells(row: SweepRow, with_whitebox: bool) -> list[str]:
    cells = [
        f"{100 * row.ratio:.1f}%" if round(100 * row.ratio, 6) % 1 else f"{100 * row.ratio:.0f}%",
        str(row.n_removed),
        _pct(row.clean_accuracy),
        _pct(row.graybox_accuracy),
        _random_cell(row),
    ]
    return [*cells, _pct(row.whitebox_accuracy)] if with_whitebox else cells


def _sweep_headers(result: SweepResult, with_whitebox: bool) -> list[str]:
    headers = [
        "ratio",
        "removed",
        "clean %",
        f"gray-box {attack_label(result.attack)} %",
        f"random mask, gray-box % (mean ± sd of {result.n_random})",
    ]
    if with_whitebox and result.whitebox_attack is not None:
        headers.append(f"white-box {attack_label(result.whitebox_attack)} %")
    return headers


def _mark(row: SweepRow, saved: float | None, searched: bool) -> str:
    """The ``mask`` cell: the saved mask's row, and rows past a searched one."""
    if saved is None:
        return ""
    if abs(row.ratio - saved) < 1e-9:
        return "saved"
    return "ext." if searched and row.ratio > saved else ""


def _sweep_caption(saved: float | None, searched: bool) -> str:
    caption = (
        "gray-box: adversarial samples crafted on the unmasked model (the paper's threat "
        "model); white-box: attack run through the cloaked model. Accuracy over all samples."
    )
    if saved is not None and searched:
        caption += (
            " Rows below the saved mask remove the first features the search removed; rows "
            "marked ext. extend it in the paper's order (by score), beyond what the search chose."
        )
    return caption


def sweep_table(
    result: SweepResult,
    rows: Sequence[SweepRow] | None = None,
    *,
    saved: float | None = None,
    searched: bool = False,
) -> Table:
    """A ``rich`` table of the sweep (default: the :data:`SUMMARY_RATIOS` rows, and ``saved``).

    Args:
        result: the sweep.
        rows: the rows to show (default: the summary ratios and the saved ratio).
        saved: the saved mask's ratio: its row is shown.
        searched: the saved mask was searched: a ``mask`` column marks its row ``saved`` and
            the rows past it ``ext.`` (the paper-order extension).
    """
    headers, cells, marked = _sweep_grid(result, rows, saved, searched)
    table = _table(
        title=f"DeepCloak sweep: {result.score} score, {result.layer} "
        f"({result.n_features} features), {result.n_samples} test samples",
        caption=_sweep_caption(marked, searched),
    )
    for i, h in enumerate(headers):
        mask_column = marked is not None and i == len(headers) - 1
        table.add_column(h, justify="left" if mask_column else "right")
    for row_cells in cells:
        table.add_row(*row_cells)
    return table


def sweep_markdown(
    result: SweepResult,
    rows: Sequence[SweepRow] | None = None,
    *,
    saved: float | None = None,
    searched: bool = False,
) -> str:
    """The same table as :func:`sweep_table`, in Markdown."""
    headers, cells, _ = _sweep_grid(result, rows, saved, searched)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
    lines += ["| " + " | ".join(row_cells) + " |" for row_cells in cells]
    return "\n".join(lines) + "\n"


def _sweep_grid(
    result: SweepResult, rows: Sequence[SweepRow] | None, saved: float | None, searched: bool
) -> tuple[list[str], list[list[str]], float | None]:
    """The sweep table's headers and cells, and the ratio its ``mask`` column marks (``None``:
    no such column; a fixed ratio's row needs no mark, the block above the table says it)."""
    extra = () if saved is None else (saved,)
    rows = summary_rows(result, extra=extra) if rows is None else rows
    with_whitebox = any(r.whitebox for r in rows)
    marked = saved if searched else None
    headers = _sweep_headers(result, with_whitebox) + (["mask"] if marked is not None else [])
    cells = [_sweep_cells(r, with_whitebox) for r in rows]
    if marked is not None:
        for r, row_cells in zip(rows, cells, strict=True):
            row_cells.append(_mark(r, marked, searched))
    return headers, cells, marked


# ----------------------------------------------------------------------------- evaluations
def _cell(r: AccuracyResult | None) -> str:
    if r is None:
        return "-"
    lo, hi = r.interval
    return f"{r.accuracy:6.1%} [{lo:.1%}, {hi:.1%}]"


def _defenses(report: EvaluationReport) -> list[str]:
    return list(dict.fromkeys(r.defense for r in report.results))


def _lookup(report: EvaluationReport) -> dict[tuple[str, ThreatModel, str], AccuracyResult]:
    return {(r.defense, r.threat_model, r.attack_name): r for r in report.results}


def summary_table(report: EvaluationReport) -> Table:
    """Defences by threat model: clean accuracy and per-sample worst case over the attacks."""
    cfg, cloak, results = report.config, report.cloak, _lookup(report)
    attack = cfg.attack
    tms = [t for t in report.threat_models() if t is not ThreatModel.CLEAN]
    n = next((r.n for r in report.results), 0)
    n_features = 1
    for s in cloak.get("feature_shape", []):
        n_features *= int(s)
    table = _table(
        title=(
            f"DeepCloak evaluation: ratio {100 * report.ratio:g}% ({cloak.get('n_removed', 0)} "
            f"of {n_features} features removed), eps={attack.eps:.4g} "
            f"({Norm(attack.norm).value}), {n} test samples"
        ),
        caption=(
            f"Accuracy [{cfg.checks.confidence:.0%} interval: Wilson; random masks: of the mean "
            f"over {cfg.compare.n_random}]; robust columns: per-sample worst case over "
            f"{', '.join(attack.attacks)}, counted over all samples. Ratio: "
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


def attacks_table(report: EvaluationReport) -> Table:
    """Every defence and threat model against every attack, and the worst case."""
    results = _lookup(report)
    attacks = [*report.config.attack.attacks, WORST_CASE]
    table = _table(title="Robust accuracy by attack")
    table.add_column("defence")
    table.add_column("threat model")
    for a in attacks:
        table.add_column(a, justify="right")
    for d in _defenses(report):
        for tm in report.threat_models():
            cells = [results.get((d, tm, a)) for a in attacks]
            if tm is not ThreatModel.CLEAN and any(c is not None for c in cells):
                table.add_row(d, tm.value, *(f"{c.accuracy:.1%}" if c else "-" for c in cells))
    return table


def comparisons_table(report: EvaluationReport) -> Table:
    """McNemar's exact test: cloaked against unmasked, on the same samples."""
    table = _table(
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
    table = _table(title="Sanity checks (Carlini et al. 2019)")
    table.add_column("check")
    table.add_column("status")
    table.add_column("details")
    for c in report.sanity:
        table.add_row(c.name, _STATUS_STYLE[c.status.value], c.message)
    return table


def timings_table(report: EvaluationReport) -> Table:
    """Where the time went: each stage, its attack passes, and the overhead over them."""
    t = report.timings
    overhead = "-" if t.overhead is None else f"{t.overhead:.2f}x"
    resumed = any(s.resumed for s in t.stages)
    table = _table(
        title=f"Time: {t.total_seconds:.1f} s, of which attack passes {t.attack_seconds:.1f} s "
        f"(overhead {overhead})",
        caption=f"Each attack pass ran once; stages took crafted sets from earlier ones "
        f"{t.reused} times." + (" Stages marked resumed were read back." if resumed else ""),
    )
    for col in ("stage", "seconds", "attack passes", "attack seconds", "in attacks"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in t.stages:
        attack = t.stage_attack_seconds(s.name)
        n = sum(p.stage == s.name for p in t.passes)
        table.add_row(
            s.name + (" (resumed)" if s.resumed else ""), f"{s.seconds:.2f}", str(n),
            f"{attack:.2f}", f"{attack / s.seconds:.0%}" if s.seconds > 0 else "-",
        )  # fmt: skip
    return table


def evaluation_tables(report: EvaluationReport) -> list[Table]:
    """All tables of a report, in reading order: summary, attacks, McNemar, sanity, time."""
    return [
        summary_table(report),
        attacks_table(report),
        comparisons_table(report),
        sanity_table(report),
        timings_table(report),
    ]
