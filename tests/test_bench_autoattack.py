"""``bench/autoattack.py``: the peer comparison runs end to end and its rows agree with its bits.

A tiny model on random 8x8 images stands in for the zoo's Fashion-MNIST models (the script's
``model_for`` and data loading are swapped out), so the script's own code — the cloak's fit, each
level's worst case, the peer's AutoAttack, the paired counts and the resumable JSON — runs in a
few seconds. The GPU run of 2026-12-04 failed in ``cloak_for`` after 54 s; this catches that.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from deepcloak.data.memory import ImageDataset
from deepcloak.models.zoo import create_model
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    return load_script("bench/autoattack.py", "bench_autoattack")


def _data(n: int, seed: int) -> ImageDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=gen)
    return ImageDataset(x, y, classes=[str(i) for i in range(10)], name="random")


def test_the_comparison_runs_and_its_rows_match_its_bits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("torchattacks", reason="the peer (torchattacks 3.5.1) is an optional extra")
    script = _script()
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8, width=4).eval()
    meta = {"training": {"epochs": 0}}
    monkeypatch.setattr(script, "model_for", lambda family, args: (model, meta))
    monkeypatch.setattr(
        script, "load_dataset", lambda name, split, **kw: _data(64 if split == "train" else 12, 1)
    )
    args = argparse.Namespace(
        device="cpu", families="cnn", samples=12, levels="standard,before",
        variants="unmasked,cloaked", eps=[0.1], seed=100, batch_size=6, json=tmp_path / "m.json",
        first=0, eps_from=None,
    )  # fmt: skip
    data: dict[str, Any] = {}
    script.measure(args, data)
    rows = data["rows"]
    assert {(r["variant"], r["level"]) for r in rows} == {
        (v, lv) for v in ("unmasked", "cloaked") for lv in ("standard", "before")
    }
    for r in rows:
        ours = script._unbits(r["correct"])
        peer = script._unbits(data["peer"][r["key"]]["correct"])
        assert r["n"] == len(ours) == len(peer) == 12
        assert r["accuracy"] == pytest.approx(ours.double().mean().item())
        assert r["only_peer"] == int((ours & ~peer).sum())  # ours right, the peer's wrong
        assert r["only_deepcloak"] == int((~ours & peer).sum())
        assert r["accuracy"] <= r["clean"]
    saved = json.loads(args.json.read_text())
    assert saved["rows"] == rows
    script.measure(args, data)  # resumable: nothing is measured twice
    assert data["rows"] == rows


def test_render_appends_other_runs_rows_and_lists_their_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script = _script()
    sys.path.insert(0, str(ROOT / "bench"))
    import levels

    row = {"key": "m|unmasked|0.02", "model": "m", "variant": "unmasked", "eps": 0.02,
           "clean": 0.9, "peer_accuracy": 0.5,
           "level": "standard", "accuracy": 0.4, "only_peer": 0, "only_deepcloak": 1,
           "p_value": 1.0, "cost_ratio": 0.3, "seconds": 3.0, "peer_seconds": 10.0,
           "n": 2, "correct": "01"}  # fmt: skip
    other = {**row, "eps": 0.01, "key": "m|unmasked|0.01"}
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"run": {"peer": "P", "setting": "GPU run"}, "rows": [row]}))
    second.write_text(json.dumps({"run": {"setting": "CPU check"}, "rows": [other]}))
    docs_json = tmp_path / "docs.json"
    monkeypatch.setattr(script, "DOCS_JSON", docs_json)
    monkeypatch.setattr(levels, "DOC", tmp_path / "levels.md")
    monkeypatch.setattr(levels, "PEER", docs_json)
    script.render(first, second)
    slim = json.loads(docs_json.read_text())
    assert [r["eps"] for r in slim["rows"]] == [0.01, 0.02]  # grouped per model, by budget
    assert all("correct" not in r for r in slim["rows"])
    assert slim["run"] == {"peer": "P", "setting": "(1) GPU run (2) CPU check"}
    doc = (tmp_path / "levels.md").read_text()
    assert "(1) GPU run (2) CPU check" in doc
    assert "| m | unmasked | 0.02 | 0–1 | 90.0% |" in doc  # the samples a row covers
    # the summary: one line per level, over both rows (gap 0.4 - 0.5, cost 6 s / 20 s)
    assert "| `standard` | 2 | 0 | -10.0 points | 0 / 2 | 1 | 0.30 (6 s / 20 s) |" in doc

    # the pooled sign test: 5 discordant samples all the peer's: (1/2)^5; none: 1
    assert levels._pooled_p(5, 0) == pytest.approx(1 / 32)
    assert levels._pooled_p(0, 0) == 1.0

    # parallel parts of one run share its setting: it is said once
    second.write_text(json.dumps({"run": {"setting": "GPU run"}, "rows": [other]}))
    script.render(first, second)
    assert json.loads(docs_json.read_text())["run"]["setting"] == "GPU run"


def _part(first: int, ours: str, peer: str, **extra: Any) -> dict[str, Any]:
    return {"key": "m|unmasked|0.02", "model": "m", "variant": "unmasked", "eps": 0.02,
            "level": "standard", "first": first, "n": len(ours), "clean": 1.0,
            "seconds": 1.0, "peer_seconds": 4.0, "correct": ours, "peer_correct": peer,
            **extra}  # fmt: skip


def test_consecutive_sample_ranges_join_into_one_row_with_the_test_redone_on_their_bits() -> None:
    script = _script()
    # samples 0-3: the peer alone breaks 2 (p 1/4); samples 4-7: the peer alone breaks 1 more
    early = _part(0, "1110", "0010", clean=0.75)
    late = _part(4, "1011", "0011", clean=1.0)
    (row,) = script.join_ranges([late, early])
    assert (row["first"], row["n"]) == (0, 8)
    assert (row["only_peer"], row["only_deepcloak"]) == (3, 0)
    assert row["p_value"] == pytest.approx(1 / 8)  # redone on 3 discordant samples, not pooled
    assert row["accuracy"] == pytest.approx(6 / 8)
    assert row["peer_accuracy"] == pytest.approx(3 / 8)
    assert row["clean"] == pytest.approx(0.875)
    assert (row["seconds"], row["peer_seconds"], row["cost_ratio"]) == (2.0, 8.0, 0.25)
    assert row["correct"] == "11101011"

    # overlapping ranges (a GPU run beside a CPU check on the same samples) stay apart, as do
    # ranges with a gap between them
    assert len(script.join_ranges([early, _part(0, "1111", "1111")])) == 2
    assert len(script.join_ranges([early, _part(5, "1111", "1111")])) == 2
