"""Write an evaluation's files: the JSON document and its two figures, each atomically.

``deepcloak harden`` writes its own set (report, figure, mask, cloaked model) with
:func:`deepcloak.harden.write_harden`; both documents follow the schema in ``docs/schema.md``.

Example:
    >>> write_evaluation(report, "runs/cnn-fmnist")
"""

from __future__ import annotations

import os
from pathlib import Path

from deepcloak.evaluation.results import EvaluationReport
from deepcloak.io import write_bytes_atomic, write_json_atomic
from deepcloak.report.files import write_folder

__all__ = ["EVALUATION_FILES", "write_evaluation"]

#: File names written by :func:`write_evaluation`, by kind.
EVALUATION_FILES = {
    "json": "evaluation.json",
    "ratio_plot": "accuracy_vs_ratio.png",
    "eps_plot": "accuracy_vs_eps.png",
}


def write_evaluation(
    report: EvaluationReport,
    out_dir: str | os.PathLike[str],
    *,
    per_sample: bool = True,
    plots: bool = True,
) -> dict[str, Path]:
    """Write the JSON report and the PNG figures into ``out_dir``, replaced as a whole.

    Args:
        report: the evaluation.
        out_dir: the folder (created if missing).
        per_sample: include every result's per-sample correctness in the JSON.
        plots: also write the figures (accuracy vs ratio, accuracy vs eps).

    Returns:
        The paths written, by kind (keys of :data:`EVALUATION_FILES`).

    Raises:
        DeepCloakError: ``out_dir`` holds files deepcloak did not write, or cannot be written.
    """
    return write_folder(out_dir, lambda out: _write_files(report, out, per_sample, plots))


def _write_files(
    report: EvaluationReport, out: Path, per_sample: bool, plots: bool
) -> dict[str, Path]:
    from deepcloak.report.figures import eps_figure, png, ratio_figure

    paths = {"json": out / EVALUATION_FILES["json"]}
    write_json_atomic(paths["json"], report.to_json(per_sample=per_sample))
    if plots:
        paths["ratio_plot"] = out / EVALUATION_FILES["ratio_plot"]
        write_bytes_atomic(paths["ratio_plot"], png(ratio_figure(report)))
        paths["eps_plot"] = out / EVALUATION_FILES["eps_plot"]
        write_bytes_atomic(paths["eps_plot"], png(eps_figure(report)))
    return paths
