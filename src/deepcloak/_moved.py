"""Names that moved to another module, still importable from the old one for one version.

A module whose names moved binds ``__getattr__ = moved_names(__name__, {...})``: reading a moved
name there warns (:class:`DeprecationWarning`, naming the new home) and gives the same object.
A name that was renamed as it moved maps to ``(module, new_name)``; a function that became a
method maps to ``(class, method_name)`` when it takes the instance first, as the method does.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

__all__ = ["moved_names"]


def moved_names(
    old: str, homes: Mapping[str, ModuleType | tuple[ModuleType | type, str]]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for the names of ``homes`` that moved out of module ``old``.

    Args:
        old: the module the names used to live in (its ``__name__``).
        homes: each moved name and the module it lives in now (with its new name, if renamed).

    Returns:
        The function to bind as ``old``'s module-level ``__getattr__``; other names raise
        :class:`AttributeError` as usual.
    """

    def __getattr__(name: str) -> Any:
        found = homes.get(name)
        if found is None:
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        home, new = found if isinstance(found, tuple) else (found, name)
        where = (
            home.__name__
            if isinstance(home, ModuleType)
            else home.__module__ + "." + home.__qualname__
        )
        warnings.warn(
            f"{old}.{name} moved to {where}.{new}; import it from there "
            f"({old} stops providing it in the next version)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(home, new)

    return __getattr__
