"""One registry mechanism for everything chosen by name (models, scorers, attacks, data sets).

Modelled on timm's ``register_model`` / ``create_model`` / ``list_models``: a name maps to a
factory; creating by an unknown name is a clear error listing the known ones; never ``eval``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from deepcloak.errors import DeepCloakError

__all__ = ["Registry"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Registry(Generic[T]):
    """A named set of factories that build ``T``.

    Args:
        kind: what the registry holds, used in error messages (e.g. ``"model"``).

    Example:
        >>> models: Registry[nn.Module] = Registry("model")
        >>> @models.register("cnn")
        ... def cnn(num_classes: int = 10) -> nn.Module: ...
        >>> models.create("cnn", num_classes=3)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name`` (warns when it replaces one)."""

        def decorate(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                log.warning("%s %r registered twice; the later one wins", self.kind, name)
            self._factories[name] = factory
            return factory

        return decorate

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered under ``name``.

        Raises:
            DeepCloakError: no factory has that name; the message lists the known names.
        """
        try:
            return self._factories[name]
        except KeyError:
            raise DeepCloakError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the ``T`` registered under ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._factories
