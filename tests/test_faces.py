"""Each sub-package's ``__init__`` is its face: a docstring and an explicit ``__all__`` of the
names callers outside it use, each the very object its defining module holds."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "deepcloak"
FACES = ["attacks", "cloak", "data", "evaluation", "models", "report", "resume"]


def _sources(package: str) -> dict[str, str]:
    """Each name the face imports, by the module it imports it from (read from its source)."""
    tree = ast.parse((SRC / package / "__init__.py").read_text(encoding="utf-8"))
    return {
        alias.asname or alias.name: node.module
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepcloak.")
        for alias in node.names
    }


def _defined(package: str) -> set[str]:
    """The names the face defines itself, at its top level."""
    tree = ast.parse((SRC / package / "__init__.py").read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("package", FACES)
def test_face_has_docstring_and_all(package: str) -> None:
    face = importlib.import_module(f"deepcloak.{package}")
    assert face.__doc__ and face.__doc__.strip(), f"deepcloak.{package} has no docstring"
    assert isinstance(face.__all__, list) and face.__all__, f"deepcloak.{package}: empty __all__"
    assert len(set(face.__all__)) == len(face.__all__), f"deepcloak.{package}: duplicate names"


@pytest.mark.parametrize("package", FACES)
def test_face_names_are_the_defining_modules_objects(package: str) -> None:
    face = importlib.import_module(f"deepcloak.{package}")
    sources = _sources(package)
    for name in face.__all__:
        assert hasattr(face, name), f"deepcloak.{package}.__all__ names missing {name!r}"
        if name in sources:  # re-exported: the same object as in the module it comes from
            origin = importlib.import_module(sources[name])
            assert getattr(face, name) is getattr(origin, name), f"{package}.{name}"
        else:  # defined in the face itself (e.g. the attack registry and its helpers)
            assert name in _defined(package), (
                f"deepcloak.{package}.{name}: neither imported nor defined"
            )


@pytest.mark.parametrize("package", FACES)
def test_face_reexports_only_its_own_modules(package: str) -> None:
    # A face shows its own sub-package; another package's names belong to that package's face.
    foreign = {
        n: m for n, m in _sources(package).items() if not m.startswith(f"deepcloak.{package}.")
    }
    exported = set(importlib.import_module(f"deepcloak.{package}").__all__)
    assert not (set(foreign) & exported), foreign


def test_every_subpackage_has_a_face() -> None:
    packages = sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    assert set(packages) - {"cli"} <= set(FACES), set(packages) - set(FACES)
