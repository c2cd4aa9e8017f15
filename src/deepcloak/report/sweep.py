"""Turn sweep results into a terminal table, a JSON document and a PNG plot.

Library code never prints: :func:`sweep_table` returns a ``rich`` table for the CLI to render,
and :func:`sweep_markdown` a Markdown table for docs.
"""

from __future__ import annotations

import io
import os
import platform
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from deepcloak.evaluation.sweep import SweepResult, SweepRow
from deepcloak.io import write_bytes_atomic

if TYPE_CHECKING:  # rich is loaded when a table is drawn: `import deepcloak` must not load it
    from rich.table import Table

__all__ = [
    "SUMMARY_RATIOS",
    "environment",
    "plot_sweep",
    "summary_rows",
    "sweep_markdown",
    "sweep_table",
]

#: Ratios shown in terminal and Markdown tables (the JSON report holds every ratio).
SUMMARY_RATIOS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def environment(device: torch.device | str) -> dict[str, Any]:
    """Versions, device and time: recorded with every result so it can be reproduced."""
    import numpy

    from deepcloak._version import __version__

    return {
        "deepcloak": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summary_rows(
    result: SweepResult, ratios: Sequence[float] = SUMMARY_RATIOS, *, extra: Sequence[float] = ()
) -> list[SweepRow]:
    """The rows at ``ratios`` (and ``extra``) that the sweep has, in ratio order."""
    wanted = {round(r, 6) for r in (*ratios, *extra)}
    return [row for row in result.rows if round(row.ratio, 6) in wanted]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _random_cell(row: SweepRow) -> str:
    if row.random_graybox_accuracy is None or row.random_graybox_std is None:
        return "—"
    return f"{_pct(row.random_graybox_accuracy)} ± {_pct(row.random_graybox_std)}"


def _cells(row: SweepRow, with_whitebox: bool) -> list[str]:
    cells = [
        f"{100 * row.ratio:.0f}%",
        str(row.n_removed),
        _pct(row.clean_accuracy),
        _pct(row.graybox_accuracy),
        _random_cell(row),
    ]
    return [*cells, _pct(row.whitebox_accuracy)] if with_whitebox else cells


def _headers(result: SweepResult, with_whitebox: bool) -> list[str]:
    attack = _attack_label(result.attack)
    headers = [
        "ratio",
        "removed",
        "clean %",
        f"gray-box {attack} %",
        f"random mask, gray-box % (mean ± sd of {result.n_random})",
    ]
    if with_whitebox and result.whitebox_attack is not None:
        headers.append(f"white-box {_attack_label(result.whitebox_attack)} %")
    return headers


def _attack_label(spec: dict[str, Any]) -> str:
    shown = {k: v for k, v in spec.items() if k in ("eps", "steps")}
    params = ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
    )
    return f"{spec['name'].upper()}({params})"


def sweep_table(result: SweepResult, rows: Sequence[SweepRow] | None = None) -> Table:
    """A ``rich`` table of the sweep (default: the :data:`SUMMARY_RATIOS` rows)."""
    rows = summary_rows(result) if rows is None else rows
    with_whitebox = any(r.whitebox_accuracy is not None for r in rows)
    from rich.table import Table

    table = Table(
        title=f"DeepCloak sweep: {result.score} score, {result.layer} "
        f"({result.n_features} features), {result.n_samples} test samples",
        caption="gray-box: adversarial samples crafted on the unmasked model (the paper's threat "
        "model); white-box: attack run through the cloaked model. Accuracy over all samples.",
    )
    for h in _headers(result, with_whitebox):
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*_cells(row, with_whitebox))
    return table


def sweep_markdown(result: SweepResult, rows: Sequence[SweepRow] | None = None) -> str:
    """The same table as :func:`sweep_table`, in Markdown."""
    rows = summary_rows(result) if rows is None else rows
    with_whitebox = any(r.whitebox_accuracy is not None for r in rows)
    headers = _headers(result, with_whitebox)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---:|" * len(headers)]
    lines += ["| " + " | ".join(_cells(r, with_whitebox)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_sweep(result: SweepResult, path: str | os.PathLike[str], *, title: str = "") -> None:
    """Plot accuracy vs ratio (clean, gray-box, random mask, white-box) to a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; must precede pyplot
    import matplotlib.pyplot as plt

    ratios = [100 * r.ratio for r in result.rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(ratios, [r.clean_accuracy for r in result.rows], label="clean", color="black")
    gray_label = f"gray-box {_attack_label(result.attack)} ({result.score} mask)"
    ax.plot(ratios, [r.graybox_accuracy for r in result.rows], label=gray_label, color="C3")
    if result.n_random:
        mean = torch.tensor([r.random_graybox_accuracy for r in result.rows])
        sd = torch.tensor([r.random_graybox_std for r in result.rows])
        ax.plot(ratios, mean, label="gray-box, random mask (mean)", color="C0", ls="--")
        ax.fill_between(ratios, mean - sd, mean + sd, color="C0", alpha=0.15, lw=0)
    wb = [(100 * r.ratio, acc) for r in result.rows if (acc := r.whitebox_accuracy) is not None]
    if wb:
        ax.plot(*zip(*wb, strict=True), "o-", label="white-box (attack knows the mask)", color="C2")
    ax.set_xlabel("features removed (% of layer L)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or f"DeepCloak on {result.layer}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
