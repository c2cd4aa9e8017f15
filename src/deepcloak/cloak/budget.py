"""Moved after 0.1.0 to :mod:`deepcloak.stats`, the one statistics module (Newcombe's bound on a
paired accuracy drop lives there with the Wilson interval it is built from). The names below
still import from here, with a :class:`DeprecationWarning`, until the next version.
"""

from __future__ import annotations

from deepcloak import stats as _stats
from deepcloak._moved import moved_names

__all__: list[str] = []

__getattr__ = moved_names(
    __name__,
    dict.fromkeys(["PairedDrop", "newcombe_upper", "paired_drop", "wilson_bounds"], _stats),
)
