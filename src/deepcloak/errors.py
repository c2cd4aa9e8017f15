"""The one small error hierarchy of deepcloak.

Every error a user can cause is a :class:`DeepCloakError` (a ``ValueError``), with a message that
says what was wrong, what was expected, and how to fix it.
"""

from __future__ import annotations

__all__ = ["DataFormatError", "DeepCloakError", "LayerError"]


class DeepCloakError(ValueError):
    """Bad input to deepcloak: the message says what was wrong and what was expected."""


class LayerError(DeepCloakError):
    """The layer to cloak could not be found or used."""


class DataFormatError(DeepCloakError):
    """A data or model file is missing, truncated or malformed."""
