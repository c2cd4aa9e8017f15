"""Declared settings: a name, a type, an allowed range and a default, checked before any work.

Settings given as text (``--select beam:width=4``) or as Python values (``select_params``) are
checked against a table of :class:`Setting` once, up front: an error names the setting, the
value, what is allowed, and for an unknown name the closest declared one. Like click's
parameter types, a setting is strict about its type: ``true`` is not a count, ``2.5`` is not an
integer, ``nan`` is not a weight, and ``maybe`` is not a boolean.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deepcloak.errors import DeepCloakError

__all__ = ["Setting", "check_settings", "describe_settings", "parse_key_values"]

_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE, _FALSE = ("true", "yes", "on"), ("false", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One declared setting.

    Attributes:
        name: its key.
        kind: ``int``, ``float`` or ``bool`` (an ``int`` is accepted where a ``float`` is meant;
            never a ``bool`` where a number is meant).
        default: its value when not given (``None`` only with ``none_word``).
        help: what it does, one line.
        low, high: inclusive bounds of a number (``None``: unbounded on that side).
        none_word: a word (e.g. ``"all"``) that stands for ``None``; ``None`` is refused without.
    """

    name: str
    kind: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    none_word: str | None = None

    def allowed(self) -> str:
        """What the setting accepts, in words (``"an integer >= 1"``)."""
        if self.kind is bool:
            return "true or false"
        what = "an integer" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            what += f" in [{_number(self.low)}, {_number(self.high)}]"
        elif self.low is not None:
            what += f" >= {_number(self.low)}"
        elif self.high is not None:
            what += f" <= {_number(self.high)}"
        return what + (f", or {self.none_word}" if self.none_word else "")

    def parse(self, text: str, *, owner: str) -> Any:
        """The value written as ``text`` (from a command line), checked.

        Raises:
            DeepCloakError: text that is not a value of this setting's type and range.
        """
        word = text.strip()
        if self.none_word is not None and word.lower() == self.none_word:
            return None
        value: Any = None
        if self.kind is bool:
            value = True if word.lower() in _TRUE else False if word.lower() in _FALSE else None
        elif self.kind is int:
            value = int(word) if _INTEGER.fullmatch(word) else None
        else:
            try:
                value = float(word)
            except ValueError:
                value = None
        if value is None:
            raise self._refused(text, owner)
        try:
            return self.check(value, owner=owner)
        except DeepCloakError:
            raise self._refused(text, owner) from None  # name the value as it was written

    def check(self, value: Any, *, owner: str) -> Any:
        """``value`` (a Python value) checked and normalised (an ``int`` weight as ``float``).

        Raises:
            DeepCloakError: a value of the wrong type or out of range.
        """
        if value is None:
            if self.none_word is None:
                raise self._refused(value, owner)
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise self._refused(value, owner)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._refused(value, owner)
        if self.kind is int and not isinstance(value, int):
            raise self._refused(value, owner)
        if isinstance(value, float) and not math.isfinite(value):
            raise self._refused(value, owner)
        if (self.low is not None and value < self.low) or (
            self.high is not None and value > self.high
        ):
            raise self._refused(value, owner)
        return int(value) if self.kind is int else float(value)

    def _refused(self, value: Any, owner: str) -> DeepCloakError:
        shown = value if isinstance(value, str) else repr(value)
        return DeepCloakError(
            f"{owner} setting {self.name}={shown} is not allowed: {self.name} must be "
            f"{self.allowed()} ({self.help})"
        )


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else str(x)


def describe_settings(table: Sequence[Setting]) -> str:
    """``"width (an integer >= 1, default 4), ..."``, or ``"none"`` for an empty table."""
    if not table:
        return "none"
    return ", ".join(
        f"{s.name} ({s.allowed()}, default "
        f"{s.none_word if s.default is None else str(s.default).lower()})"
        for s in table
    )


def _unknown(key: str, table: Sequence[Setting], owner: str) -> DeepCloakError:
    names = [s.name for s in table]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.7)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return DeepCloakError(
        f"{owner} has no setting {key!r}{hint}; its settings: {describe_settings(table)}"
    )


def check_settings(
    table: Sequence[Setting], given: Mapping[str, Any], *, owner: str
) -> dict[str, Any]:
    """``given`` checked against ``table``, with every missing setting at its default.

    Values that are ``str`` are parsed as text (:meth:`Setting.parse`), others checked as
    Python values (:meth:`Setting.check`).

    Args:
        table: the declared settings.
        given: the settings given, by name.
        owner: what the settings belong to, for messages (``"selector 'beam'"``).

    Returns:
        Every declared setting, in the table's order.

    Raises:
        DeepCloakError: an unknown name (with the closest declared one) or a refused value.
    """
    by_name = {s.name: s for s in table}
    for key in given:
        if key not in by_name:
            raise _unknown(str(key), table, owner)
    out: dict[str, Any] = {}
    for s in table:
        if s.name not in given:
            out[s.name] = s.default
            continue
        value = given[s.name]
        out[s.name] = (
            s.parse(value, owner=owner) if isinstance(value, str) else s.check(value, owner=owner)
        )
    return out


def parse_key_values(text: str, *, example: str) -> dict[str, str]:
    """Split ``"key=value,key=value"`` into raw texts by key (a key given twice is refused).

    Raises:
        DeepCloakError: an item without ``=`` or a key, or a key given twice.
    """
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DeepCloakError(
                f"bad setting {item!r}; expected key=value,key=value (e.g. {example})"
            )
        if key in out:
            raise DeepCloakError(f"setting {key!r} is given twice in {text!r}")
        out[key] = value.strip()
    return out
