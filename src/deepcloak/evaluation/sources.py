"""Moved after 0.1.0 to :mod:`deepcloak.sources`: what every command reads (``harden`` too, not
only the evaluation). The names below still import from here, with a
:class:`DeprecationWarning`, until the next version.
"""

from __future__ import annotations

from deepcloak import sources as _sources
from deepcloak._moved import moved_names

__all__: list[str] = []

__getattr__ = moved_names(
    __name__,
    dict.fromkeys(["DataSource", "LoadedModel", "ModelSource", "trained_input_shape"], _sources),
)
