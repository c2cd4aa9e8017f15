"""A report's numbers without what changes between identical runs (clocks, the machine)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any


def numbers(report: Any, clock_keys: Collection[str]) -> Any:
    """``report`` (parsed JSON) without the keys in ``clock_keys`` and any ``*_seconds`` key."""
    if isinstance(report, dict):
        return {
            k: numbers(v, clock_keys)
            for k, v in report.items()
            if k not in clock_keys and not k.endswith("_seconds")
        }
    if isinstance(report, list):
        return [numbers(v, clock_keys) for v in report]
    return report
