"""Moved after 0.1.0 to :mod:`deepcloak.stats`, the one statistics module (the search's budget
uses the same Wilson interval). The names below still import from here, with a
:class:`DeprecationWarning`, until the next version.
"""

from __future__ import annotations

from deepcloak import stats as _stats
from deepcloak._moved import moved_names

__all__: list[str] = []

__getattr__ = moved_names(
    __name__,
    dict.fromkeys(["McNemarResult", "mcnemar_exact", "mean_interval", "wilson_interval"], _stats),
)
