"""Issue 16's moves: every old path still gives the same object for one version, with a warning
that names the new home; the one function whose arguments changed order warns and still works."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import torch
from torch import nn

import deepcloak.evaluation.resume
import deepcloak.resume
import deepcloak.sources
from deepcloak.cloak.fit import Cloak
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError

EV = "deepcloak.evaluation"
_CACHE = [
    ("deepcloak.evaluation.sweep", name, "deepcloak.evaluation.feature_cache", name)
    for name in ("DEVICE_SHARE", "FeatureCache", "cache_device", "cache_features",
                 "masked_predictions")
]  # fmt: skip
MOVED = [
    *[
        ("deepcloak.evaluation.sources", name, "deepcloak.sources", name)
        for name in ("DataSource", "LoadedModel", "ModelSource", "trained_input_shape")
    ],
    *[
        ("deepcloak.evaluation.resume", name, "deepcloak.resume", name)
        for name in ("WorkFolderError", "work_folder_for", "digest", "model_digest")
    ],
    (
        "deepcloak.evaluation.resume",
        "WorkFolder",
        "deepcloak.evaluation.resume",
        "EvaluationFolder",
    ),
    (
        "deepcloak.evaluation.inputs",
        "check_model_fits",
        "deepcloak.models.fits",
        "check_model_fits",
    ),
    ("deepcloak.harden", "check_model_fits_data", "deepcloak.models.fits", "check_model_fits_data"),
    *_CACHE,
]


@pytest.mark.parametrize(("old", "name", "new", "new_name"), MOVED)
def test_a_moved_name_still_imports_from_its_old_module_with_a_warning(
    old: str, name: str, new: str, new_name: str
) -> None:
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{new_name}"):
        moved = getattr(module, name)
    assert moved is getattr(importlib.import_module(new), new_name)


def test_the_old_work_folder_name_is_the_evaluations_folder_not_the_bare_one() -> None:
    with pytest.warns(DeprecationWarning):
        old = deepcloak.evaluation.resume.WorkFolder  # type: ignore[attr-defined]
    assert old.FOLDERS == ("stages", "crafted")  # the layout the old class had
    assert issubclass(old, deepcloak.resume.WorkFolder)


def _cloak(n_features: int) -> Cloak:
    scores = torch.arange(n_features, dtype=torch.float64)
    return Cloak(LayerRef("1", Side.INPUT), scores, "deepcloak", {"name": "fgsm"}, 4)


def _model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()  # 4 features at layer "1"


def test_the_function_check_cloak_features_became_the_cloak_s_method() -> None:
    import deepcloak.evaluation.sweep as sweep

    with pytest.warns(DeprecationWarning, match=r"moved to deepcloak\.cloak\.fit\.Cloak"):
        old = sweep.check_cloak_features  # type: ignore[attr-defined]
    assert old is Cloak.check_features
    old(_cloak(4), (4,))  # same arguments as before: the cloak first
    with pytest.raises(DeepCloakError, match="is this the same model"):
        old(_cloak(5), (4,))


def test_check_cloak_fits_warns_and_checks_as_the_method_does() -> None:
    from deepcloak.evaluation.inputs import check_cloak_fits

    x = torch.rand(2, 1, 2, 2)
    with pytest.warns(DeprecationWarning, match=r"cloak\.check_fits\(model, x\)"):
        check_cloak_fits(_model(), _cloak(4), x)
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(DeepCloakError, match="is this the same model"),
    ):
        check_cloak_fits(_model(), _cloak(5), x)
    with pytest.raises(DeepCloakError, match="is this the same model"):
        _cloak(5).check_fits(_model(), x)
    with pytest.raises(DeepCloakError, match="not usable in this model"):
        Cloak(LayerRef("9", Side.INPUT), torch.zeros(4), "deepcloak", {}, 1).check_fits(_model(), x)


def test_no_module_of_the_package_imports_a_moved_name_from_its_old_home() -> None:
    """The library itself uses the new homes: an old path would warn in every user's run."""
    old_homes = {(old, name) for old, name, _, _ in MOVED}
    old_homes |= {(f"{EV}.inputs", "check_cloak_fits"), (f"{EV}.sweep", "check_cloak_features")}
    src = Path(deepcloak.sources.__file__).parent
    found = [
        f"{path.relative_to(src)}: from {node.module} import {alias.name}"
        for path in sorted(src.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if (node.module, alias.name) in old_homes
    ]
    assert found == []
