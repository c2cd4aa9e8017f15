"""One schema for the three JSON documents (evaluate, harden, the paper sweep), documented once.

Every field of each document must appear in ``docs/schema.md``; the paper sweep's Markdown keeps
the section another script writes between its markers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from deepcloak.data.sets import load_dataset
from deepcloak.evaluation.results import SCHEMA
from deepcloak.harden import HardenConfig, HardenResult, harden, write_harden
from deepcloak.models.zoo import create_model
from tests.robust_toys import toy_report
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DOC = ROOT / "docs" / "schema.md"

#: Objects whose keys are free-form (attack parameters, caller's facts, checkpoint metadata,
#: a check's numbers): documented as a whole, not key by key.
FREE_FORM = {
    "attack",
    "whitebox_attacks",
    "metadata",
    "values",
    "attack_params",
    "checkpoint",
    "arch_kwargs",
    "training",
}


def _documented() -> set[str]:
    doc = SCHEMA_DOC.read_text(encoding="utf-8")
    return {part for name in re.findall(r"`([a-z_.\-0-9]+)`", doc) for part in name.split(".")}


def _keys(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(path, key)`` of nested dicts and lists, skipping free-form objects."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield path, key
            if key not in FREE_FORM:
                yield from _keys(value, f"{path}.{key}")
    elif isinstance(data, list):
        for item in data:
            yield from _keys(item, f"{path}[]")


def _undocumented(document: dict[str, Any]) -> list[str]:
    known = _documented()
    return sorted({f"{path}.{key}" for path, key in _keys(document) if key not in known})


@pytest.fixture(scope="module")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> tuple[HardenResult, dict[str, Any]]:
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8).eval()
    config = HardenConfig(ratio=0.1, ratios=(0.0, 0.1, 0.5), whitebox_ratios=(0.0,), n_random=2)
    result = harden(
        model, load_dataset("digits", limit=96), load_dataset("digits", split="test", limit=64),
        config,
    )  # fmt: skip
    result.model_info = {"arch": "cnn", "arch_kwargs": {"in_channels": 1, "num_classes": 10,
                                                         "input_size": 8}}  # fmt: skip
    result.data_info = {"data": "digits", "root": None, "train_samples": 96, "test_samples": 64,
                        "input_shape": [1, 8, 8]}  # fmt: skip
    out = tmp_path_factory.mktemp("harden")
    paths = write_harden(result, out)
    return result, json.loads(paths["report"].read_text())


def _paper_sweep() -> ModuleType:
    return load_script("experiments/paper_sweep.py", "paper_sweep")


@pytest.fixture(scope="module")
def paper(hardened: tuple[HardenResult, dict[str, Any]]) -> tuple[ModuleType, Any]:
    result, _ = hardened
    module = _paper_sweep()
    sets = (
        load_dataset("digits", limit=96),
        load_dataset("digits", split="test", limit=64),
        load_dataset("digits", split="test", limit=32),
    )
    meta = {"test_accuracy": 0.5, "train_seconds": 1.0, "training": {"epochs": 1}}
    return module, module.run_family("cnn", result.model, meta, sets, 0)


def test_the_three_documents_share_one_schema(
    hardened: tuple[HardenResult, dict[str, Any]], paper: tuple[ModuleType, Any]
) -> None:
    module, run = paper
    documents = {
        "evaluation": toy_report(ratio=0.1).to_json(),
        "harden": hardened[1],
        "paper-sweep": module.document([run], {"eps": 0.04}, 1.0),
    }
    for kind, document in documents.items():
        assert (document["schema"], document["kind"]) == (SCHEMA, kind)
        assert {"threat_models", "environment"} <= set(document)
        json.dumps(document, allow_nan=False)  # strict JSON: no NaN or infinity


def test_every_json_field_is_documented(
    hardened: tuple[HardenResult, dict[str, Any]], paper: tuple[ModuleType, Any]
) -> None:
    module, run = paper
    settings = {
        "eps": 0.04, "ratios": [0.0], "pgd_steps": 10, "n_random": 5, "seed": 0,
        "fit_samples": 96, "whitebox_samples": 32,
    }  # fmt: skip
    for document in (
        toy_report(ratio=0.1).to_json(),
        toy_report().to_json(),  # the ratio chosen on validation: candidates filled
        hardened[1],
        module.document([run], settings, 1.0),
    ):
        missing = _undocumented(document)
        assert not missing, f"{document['kind']}: fields missing from {SCHEMA_DOC.name}: {missing}"


def test_harden_and_the_paper_sweep_record_the_same_sweep(
    hardened: tuple[HardenResult, dict[str, Any]], paper: tuple[ModuleType, Any]
) -> None:
    _, report = hardened
    sweep = report["sweep"]
    assert [r["ratio"] for r in sweep["ratios"]] == [0.0, 0.1, 0.5]
    random_gray = [
        r
        for r in sweep["results"]
        if r["defense"] == "random-mask" and r["threat_model"] == "gray-box"
    ]
    assert all(r["masks"] == 2 and r["ci"]["method"] == "mean-over-masks" for r in random_gray)
    _, run = paper
    white = {r.attack_name for row in run.sweep.rows for r in row.whitebox}
    assert white == {"fgsm", "pgd"}


def test_results_md_keeps_the_marked_section(paper: tuple[ModuleType, Any]) -> None:
    module, run = paper
    start, end = module.MARKERS
    section = f"{start}\n## Beyond the paper\n\n| a | b |\n|---|---|\n| 1 | 2 |\n{end}"
    first, last = module.SECTIONS[1]  # experiments/default_mask.py's section is kept too
    other = f"{first}\n## The default mask\n\n| c |\n|---|\n| 3 |\n{last}"
    old = f"# old results\n\nstale numbers\n\n{section}\n\ntrailing words\n\n{other}\n"
    doc = module.document([run], {"eps": 0.04, "fit_samples": 96, "whitebox_samples": 32}, 60.0)
    new = module.markdown([run], doc, quick=False)
    merged = module.keep_marked_section(old, new)
    assert section in merged and other in merged and "stale numbers" not in merged
    assert merged.index(section) < merged.index(other)
    assert merged.startswith(new.rstrip("\n"))
    assert module.keep_marked_section(None, new) == new
    assert "small CNN" in new and "McNemar" in new


def test_a_saved_family_sweep_is_resumed_exactly(
    paper: tuple[ModuleType, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, run = paper
    sets = (
        load_dataset("digits", limit=96),
        load_dataset("digits", split="test", limit=64),
        load_dataset("digits", split="test", limit=32),
    )
    settings = {"seed": 0, "eps": 0.04}
    monkeypatch.setattr(module, "run_family", lambda *args: run)
    first = module.run_or_resume("cnn", None, run.meta, sets, settings, tmp_path)
    monkeypatch.setattr(module, "run_family", lambda *args: pytest.fail("not resumed"))
    again = module.run_or_resume("cnn", None, run.meta, sets, settings, tmp_path)
    assert again.sweep.to_json(per_sample=True) == first.sweep.to_json(per_sample=True)
    for old, new in zip(first.sweep.rows, again.sweep.rows, strict=True):
        assert torch.equal(old.random_graybox.correct, new.random_graybox.correct)
        assert [r.attack for r in old.whitebox] == [r.attack for r in new.whitebox]
    monkeypatch.setattr(module, "run_family", lambda *args: run)  # other settings: run again
    module.run_or_resume("cnn", None, run.meta, sets, {**settings, "eps": 0.1}, tmp_path)
