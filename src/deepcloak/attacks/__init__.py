"""Attacks: native FGSM/PGD (:mod:`.native`) and APGD (:mod:`.apgd`), the hot path, and ART's
attacks (:mod:`.art`), the independent cross-check.

Every attack, native or ART, is built by name with :func:`create_attack`. The names are
registered here, explicitly, in one place: importing :mod:`.art` registers nothing, and the
``art`` package itself is imported only when an ART attack runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from deepcloak.attacks.apgd import APGD, APGDT
from deepcloak.attacks.art import ART_ATTACKS, GRADIENT_FREE, ArtAPGD, ArtPGD, ArtSquare
from deepcloak.attacks.base import Attack, Norm
from deepcloak.attacks.native import FGSM, PGD
from deepcloak.errors import DeepCloakError
from deepcloak.registry import Registry

__all__ = [
    "APGD",
    "APGDT",
    "ART_ATTACKS",
    "ATTACKS",
    "FGSM",
    "GRADIENT_FREE",
    "PGD",
    "ArtAPGD",
    "ArtPGD",
    "ArtSquare",
    "Attack",
    "Norm",
    "attack_from_spec",
    "attack_settings",
    "create_attack",
    "list_attacks",
]

#: Every attack by name: ``fgsm``, ``pgd``, ``apgd`` (APGD-CE) and ``apgd-t`` (targeted APGD-DLR)
#: native; ``art-apgd``, ``square`` and ``art-pgd`` from ART.
ATTACKS: Registry[Attack] = Registry("attack")
ATTACKS.register("fgsm")(FGSM)
ATTACKS.register("pgd")(PGD)
ATTACKS.register("apgd")(APGD)
ATTACKS.register("apgd-t")(APGDT)
ATTACKS.register("art-apgd")(ArtAPGD)
ATTACKS.register("square")(ArtSquare)
ATTACKS.register("art-pgd")(ArtPGD)


def list_attacks() -> list[str]:
    """The names :func:`create_attack` knows, sorted."""
    return ATTACKS.names()


def attack_settings(name: str) -> frozenset[str]:
    """The settings (constructor parameters) the attack ``name`` takes, e.g. ``{"eps"}``.

    Useful to pass shared settings (``eps``, ``norm``, ``steps``, ``seed``...) only to the
    attacks that take them.

    Raises:
        DeepCloakError: unknown name (the message lists the known ones).
    """
    factory = ATTACKS.get(name)
    if not dataclasses.is_dataclass(factory):
        return frozenset({"eps"})
    return frozenset(f.name for f in dataclasses.fields(factory))


def create_attack(name: str, **settings: Any) -> Attack:
    """Build any attack, native or ART, by name.

    Args:
        name: one of :func:`list_attacks` (``"fgsm"``, ``"pgd"``, ``"apgd"``, ``"apgd-t"``,
            ``"art-apgd"``, ``"square"``, ``"art-pgd"``).
        **settings: the attack's parameters (``eps`` always; see each class for the rest).

    Returns:
        The configured attack, a callable ``(model, x, y) -> x_adv``.

    Raises:
        DeepCloakError: unknown name, a setting the attack does not take (``norm`` on an L-inf
            only attack says so), or a bad value.

    Example:
        >>> attack = create_attack("pgd", eps=8 / 255, steps=10)
    """
    known = attack_settings(name)
    unknown = sorted(set(settings) - known)
    if "norm" in unknown:
        raise DeepCloakError(f"attack {name!r} is L-inf only: it takes no 'norm' setting")
    if unknown:
        raise DeepCloakError(
            f"attack {name!r} takes no setting {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(sorted(known))}"
        )
    if "eps" not in settings:
        raise DeepCloakError(f"attack {name!r} needs a budget: eps=... (e.g. 8/255)")
    return ATTACKS.create(name, **settings)


def attack_from_spec(spec: Mapping[str, Any]) -> Attack:
    """Rebuild an attack from its :meth:`~Attack.spec` (as saved in reports and mask files).

    Raises:
        DeepCloakError: the spec has no ``name``, or :func:`create_attack` refuses it.
    """
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise DeepCloakError(f"an attack spec needs a 'name', got {dict(spec)!r}")
    if name == "apgd" and params.get("library") == "art":
        name = "art-apgd"  # ART's APGD, saved under its name before the native one took it
    params.pop("library", None)  # descriptive only: the name says which library
    return create_attack(name, **params)
