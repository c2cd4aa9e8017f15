"""One parser for the fixed sets of values (norms, splits, threat models, ...).

Each such set is a ``str`` enum that also accepts its string at the API boundary;
:func:`parse_enum` is the one conversion, with the one error message, that every enum's
``parse`` uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import TypeVar

from deepcloak.errors import DeepCloakError

__all__ = ["parse_enum"]

E = TypeVar("E", bound=Enum)


def parse_enum(
    cls: type[E],
    value: E | str,
    *,
    what: str,
    aliases: Mapping[str, E] | None = None,
    error: type[DeepCloakError] = DeepCloakError,
) -> E:
    """``value`` as a member of ``cls``: the member itself, or its exact string value.

    Args:
        cls: the enum.
        value: a member of ``cls``, or the string value of one (``"linf"``).
        what: what the value names, for the error message (``"norm"``).
        aliases: other spellings, each matched after the text is stripped of spaces and
            lower-cased (``{"float32": Precision.FP32}``); list a member's own value here to read
            it that loosely too.
        error: the :class:`~deepcloak.errors.DeepCloakError` subclass to raise.

    Returns:
        The member.

    Raises:
        DeepCloakError: (``error``) any other value; the message names it and lists the values
            of ``cls``'s members.

    Example:
        >>> from deepcloak.attacks.base import Norm
        >>> parse_enum(Norm, "l2", what="norm")
        <Norm.L2: 'l2'>
    """
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:  # not a value of cls (an unhashable one too: Enum then searches)
        pass
    if aliases is not None and isinstance(value, str):
        member = aliases.get(value.strip().lower())
        if member is not None:
            return member
    choices = ", ".join(str(member.value) for member in cls)
    raise error(f"unknown {what} {value!r}; expected one of: {choices}")
