"""Option text as config values: ``key=value`` lists, number lists, ``--output``, the method.

Only conversion lives here: each helper turns what a user typed into what a config takes, and
raises :class:`~deepcloak.errors.DeepCloakError` for text it cannot read; the configs check the
values themselves.
"""

from __future__ import annotations

import json
from typing import Any

from deepcloak.errors import DeepCloakError

__all__ = ["floats", "given", "key_values", "method", "output_key", "sample_cap", "selector"]


def key_values(items: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` options; values are JSON (``3``, ``0.5``, ``"avg"``) or plain text."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DeepCloakError(f"expected key=value, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def output_key(text: str | None) -> int | str | None:
    """``--output 0`` is an index, ``--output logits`` a key."""
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def selector(spec: str | None) -> dict[str, Any]:
    """``--select beam:width=4,clean_weight=2`` as the config's ``select`` and ``select_params``."""
    if spec is None:
        return {"select": None}
    from deepcloak.cloak.selectors import parse_selector

    name, params = parse_selector(spec)
    return {"select": name, "select_params": params}


def given(**options: Any) -> dict[str, Any]:
    """The options that were given (not ``None``): the others keep the config's default."""
    return {k: v for k, v in options.items() if v is not None}


def floats(text: str | None) -> tuple[float, ...] | None:
    """Parse a comma-separated list of numbers (``"0.01,0.02"``)."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DeepCloakError(f"expected comma-separated numbers, got {text!r}") from None


def sample_cap(text: str) -> int | None:
    """``--max-samples``: a positive count, or ``all`` (no cap)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise DeepCloakError(f"--max-samples must be a positive count or 'all', got {text!r}")
    return value


def method(select: str | None, ratio: float | None, score: str) -> dict[str, Any]:
    """``--select``/``--ratio``/``--score`` as the config's ``select``, ``select_params``,
    ``ratio`` and ``score``: ``--select deepcloak --ratio R`` (or ``--ratio R`` alone) is the
    paper's method; any other ``--select`` searches."""
    from deepcloak.harden import AUTO

    if ratio is not None and (select is None or select.split(":")[0].strip() == "deepcloak"):
        if select is not None and ":" in select:
            raise DeepCloakError(
                f"--select {select} with --ratio: the paper's method at a fixed ratio takes no "
                "selector settings; drop them or the ratio"
            )
        return {"select": None, "ratio": ratio, "score": score}
    if select is None:
        return {"select": AUTO, "ratio": ratio, "score": score}
    return {**selector(select), "ratio": ratio, "score": score}
