from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from deepcloak.evaluation.results import EvaluationReport
from deepcloak.report.evaluation import (
    EVALUATION_FILES,
    evaluation_tables,
    plot_accuracy_vs_eps,
    plot_accuracy_vs_ratio,
    write_evaluation,
)
from tests.robust_toys import toy_report

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "evaluation-schema.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report() -> EvaluationReport:
    return toy_report(ratio=0.1)


def _render(report: EvaluationReport) -> str:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    for table in evaluation_tables(report):
        console.print(table)
    return out.getvalue()


def test_tables_show_every_defence_threat_model_and_check(report: EvaluationReport) -> None:
    text = _render(report)
    for word in (
        "unmasked",
        "cloaked",
        "random-mask",
        "activation-pruning",
        "feature-squeezing",
        "spatial-smoothing",
        "gray-box",
        "white-box",
        "transfer",
        "worst-case",
        "McNemar",
        "more-steps",
        "gradient-free-not-stronger",
    ):
        assert word in text, word
    unmasked = report.result("unmasked", "clean")
    lo, hi = unmasked.interval
    assert f"{unmasked.accuracy:6.1%} [{lo:.1%}, {hi:.1%}]" in text
    assert "ratio 0.1 (3 of 32 features removed)" in text


def test_plots_are_pngs(report: EvaluationReport) -> None:
    assert plot_accuracy_vs_ratio(report).startswith(PNG_MAGIC)
    assert plot_accuracy_vs_eps(report).startswith(PNG_MAGIC)


def test_write_evaluation(report: EvaluationReport, tmp_path: Path) -> None:
    paths = write_evaluation(report, tmp_path / "run")
    assert set(paths) == set(EVALUATION_FILES)
    assert json.loads(paths["json"].read_text())["schema"] == "deepcloak-evaluation/1"
    assert paths["ratio_plot"].read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(EVALUATION_FILES.values())
    lean = write_evaluation(report, tmp_path / "lean", per_sample=False, plots=False)
    assert set(lean) == {"json"}
    assert "per_sample" not in json.loads(lean["json"].read_text())["results"][0]


def _documented(doc: str) -> set[str]:
    return {part for name in re.findall(r"`([a-z_.]+)`", doc) for part in name.split(".")}


def test_every_json_field_is_documented(report: EvaluationReport) -> None:
    doc = SCHEMA_DOC.read_text(encoding="utf-8")
    known = _documented(doc)
    data = report.to_json()
    missing = set(data) - known
    for section in ("run", "config", "ratio_choice"):
        missing |= {f"{section}.{k}" for k in data[section] if k not in known}
    for section in ("results", "comparisons", "sanity_checks", "eps_curve"):
        missing |= {f"{section}[].{k}" for k in data[section][0] if k not in known}
    for section in ("test", "train"):
        missing |= {
            f"run.data.{section}.{k}" for k in data["run"]["data"][section] if k not in known
        }
    missing |= {f"run.versions.{k}" for k in data["run"]["versions"] if k not in known}
    missing |= {f"run.device.{k}" for k in data["run"]["device"] if k not in known}
    candidates = toy_report().ratio_choice.to_json()["candidates"]  # chosen on validation
    missing |= {f"ratio_choice.candidates[].{k}" for k in candidates[0] if k not in known}
    assert not missing, f"fields missing from {SCHEMA_DOC.name}: {sorted(missing)}"
