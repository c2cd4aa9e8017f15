"""Reading saved state back without trusting it: each value checked against what wrote it.

A file of a work folder is data from disk. :func:`round_trip` accepts a value only if every
field has its declared type and writing it again gives exactly the data read, so a file edited
by hand, truncated or planted is refused with the name of the first field that differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from deepcloak.errors import DeepCloakError

__all__ = ["READ_ERRORS", "describe_error", "no_constant", "round_trip"]

T = TypeVar("T")

#: What reading malformed data can raise: a missing key, a wrong type, a bad value, a bad
#: tensor shape (torch's RuntimeError), an overflow. Any of them means the file is not what
#: deepcloak wrote.
READ_ERRORS = (LookupError, TypeError, ValueError, AttributeError, RuntimeError, ArithmeticError)


def no_constant(name: str) -> Any:
    """``json.loads``'s ``parse_constant``: refuse NaN and infinities (deepcloak writes none).

    Raises:
        ValueError: always.
    """
    raise ValueError(f"{name} is not JSON (deepcloak writes no NaN or infinity)")


def describe_error(e: BaseException) -> str:
    """One line on what was wrong with data read back (one of :data:`READ_ERRORS`)."""
    if isinstance(e, DeepCloakError):
        return str(e)
    if isinstance(e, KeyError):
        return f"no field {e}"
    return f"{type(e).__name__}: {e}".splitlines()[0]


def round_trip(
    load: Callable[[Any], T], dump: Callable[[T], Any], data: Any, what: str, hint: Any = None
) -> T:
    """``load(data)``, accepted only if it is exactly what a writer would save.

    The value read back must have the declared type in every field (dataclasses, checked
    recursively), and ``dump`` of it must give ``data`` again with the same JSON types: what is
    derived (an accuracy from the per-sample results) must agree with what it derives from.

    Args:
        load: reads the value from JSON data.
        dump: writes it back as JSON data.
        data: what was read from the file.
        what: how to name the value in errors (``"value"``, ``"pass"``).
        hint: the declared type (``None``: the type of the value read).

    Raises:
        DeepCloakError: it is not; the message names the first field that differs.
    """
    value = load(data)
    _check_types(value, type(value) if hint is None else hint, what)
    again = json.loads(json.dumps(dump(value)))
    where = _first_difference(data, again, what)
    if where is not None:
        raise DeepCloakError(
            f"{where} differs from what deepcloak writes for the rest of the file (its type, "
            "or its agreement with the other fields)"
        )
    return value


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    """The path of the first place ``a`` and ``b`` differ in value or JSON type, or ``None``."""
    if type(a) is not type(b):
        return where
    if isinstance(a, dict):
        if list(a) != list(b):
            return where
        for k in a:
            found = _first_difference(a[k], b[k], f"{where}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if a == b else where


def _check_types(value: Any, hint: Any, where: str) -> None:
    """Raise a ``DeepCloakError`` naming the field if ``value`` is not of type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    ok: bool
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            with contextlib.suppress(DeepCloakError):
                _check_types(value, arm, where)
                return
        ok = False
    elif hint is type(None):
        ok = value is None
    elif hint is bool:
        ok = type(value) is bool
    elif hint is int:
        ok = type(value) is int
    elif hint is float:
        ok = type(value) in (int, float) and math.isfinite(value)
    elif origin in (list, tuple) and isinstance(value, origin):
        for i, item in enumerate(value):
            _check_types(item, args[0], f"{where}[{i}]")
        return
    elif origin is dict and isinstance(value, dict):
        ok = all(type(k) is str for k in value)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, hint):
        for name, field_hint in typing.get_type_hints(hint).items():
            _check_types(getattr(value, name), field_hint, f"{where}.{name}")
        return
    else:
        ok = isinstance(value, origin or hint)
    if not ok:
        raise DeepCloakError(f"{where} is {value!r:.60}, expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
