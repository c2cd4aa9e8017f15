"""The ratio grids, defined once: the sweep's default, the white-box subsets, the summaries."""

from __future__ import annotations

__all__ = [
    "DEFAULT_RATIOS",
    "EVALUATION_WHITEBOX_RATIOS",
    "PAPER_RATIOS",
    "SUMMARY_RATIOS",
    "WHITEBOX_RATIOS",
]

#: 0 and the paper's grid 1%..99% in 1% steps.
DEFAULT_RATIOS: tuple[float, ...] = tuple(i / 100 for i in range(100))

#: Ratios at which ``deepcloak harden`` also runs the white-box attack (one attack pass each).
WHITEBOX_RATIOS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)

#: Ratios at which ``deepcloak evaluate``'s ratio curve also runs the white-box attack.
EVALUATION_WHITEBOX_RATIOS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)

#: Ratios shown in terminal and Markdown tables (the JSON documents hold every ratio).
SUMMARY_RATIOS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)

#: The ratios of ``experiments/paper_sweep.py`` (``docs/results.md``): harden's white-box grid.
PAPER_RATIOS: tuple[float, ...] = WHITEBOX_RATIOS
