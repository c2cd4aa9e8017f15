"""The benchmark's bookkeeping: targets read the right way, and each device keeps its section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_targets_are_read_as_upper_or_lower_bounds(bench: ModuleType) -> None:
    assert bench.Figure("a", 1.10, "<= 1.15", "").met
    assert not bench.Figure("a", 1.20, "<= 1.15", "").met
    assert bench.Figure("a", 1.30, ">= 1.2", "").met
    assert not bench.Figure("a", 1.05, ">= 1.2", "").met


def test_a_device_run_replaces_only_its_own_section(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "DOC", tmp_path / "performance.md")
    bench.write_doc("## cpu: first\n", "cpu")
    bench.write_doc("## cuda: H100\n", "cuda")
    bench.write_doc("## cpu: second\n", "cpu")
    text = (tmp_path / "performance.md").read_text()
    assert text.startswith(bench.HEADER)
    assert "## cuda: H100" in text and "## cpu: second" in text and "first" not in text
    assert text.count("<!-- bench:cpu -->") == 1


def test_hand_written_pgd_stays_in_the_ball(bench: ModuleType) -> None:
    import torch

    model = bench.bench_model(torch.device("cpu"), "cnn", width=2)
    x, y = bench.synthetic_set(8).tensors()
    x_adv = bench.hand_pgd(model, x, y, steps=2)
    assert (x_adv - x).abs().max() <= bench.EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_a_control_figure_has_no_verdict(bench: ModuleType) -> None:
    control = bench.Figure("unmodified copy vs plain", 1.04, "-", "")
    assert control.met is None and control.verdict == "-"
    assert bench.Figure("a", 1.0, "<= 1.02", "").verdict == "yes"


def test_each_round_starts_with_the_next_side(bench: ModuleType) -> None:
    import torch

    calls: list[str] = []
    timer = bench.Timer(torch.device("cpu"), repeats=2)
    best = timer.best({name: (lambda name=name: calls.append(name)) for name in "abc"})
    assert calls == list("abcbcacab") and set(best) == set("abc")
