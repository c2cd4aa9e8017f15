"""Reports, last in the flow: tables, figures and output files for sweeps and evaluations.

- :mod:`.tables`, :mod:`.figures`, :mod:`.summary`: what is shown (matplotlib is imported only
  when a figure is drawn);
- :mod:`.files`: output folders and files, replaced as a set;
- :mod:`.evaluation`: an evaluation's files (:func:`write_evaluation`).

This ``__init__`` is the sub-package's face: the names callers outside it use. Modules inside
import their siblings directly, never through it.
"""

from __future__ import annotations

from deepcloak.report.evaluation import EVALUATION_FILES, write_evaluation
from deepcloak.report.figures import (
    Series,
    accuracy_figure,
    eps_figure,
    png,
    ratio_figure,
    sweep_figure,
)
from deepcloak.report.files import (
    MARKER,
    check_output_file,
    check_output_folder,
    clean_stale,
    replace_folder,
    write_folder,
)
from deepcloak.report.summary import (
    evaluation_mask_lines,
    paper_line,
    saved_mask_lines,
    saved_mask_record,
)
from deepcloak.report.tables import (
    comparisons_table,
    evaluation_tables,
    summary_table,
    sweep_markdown,
    sweep_table,
    timings_table,
)

__all__ = [
    "EVALUATION_FILES",
    "MARKER",
    "Series",
    "accuracy_figure",
    "check_output_file",
    "check_output_folder",
    "clean_stale",
    "comparisons_table",
    "eps_figure",
    "evaluation_mask_lines",
    "evaluation_tables",
    "paper_line",
    "png",
    "ratio_figure",
    "replace_folder",
    "saved_mask_lines",
    "saved_mask_record",
    "summary_table",
    "sweep_figure",
    "sweep_markdown",
    "sweep_table",
    "timings_table",
    "write_evaluation",
    "write_folder",
]
