from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from deepcloak.evaluation.results import EvaluationReport
from deepcloak.report.evaluation import EVALUATION_FILES, write_evaluation
from deepcloak.report.tables import evaluation_tables
from tests.robust_toys import toy_report

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
    assert "ratio 10% (3 of 32 features removed)" in text


def test_write_evaluation(report: EvaluationReport, tmp_path: Path) -> None:
    paths = write_evaluation(report, tmp_path / "run")
    assert set(paths) == set(EVALUATION_FILES)
    document = json.loads(paths["json"].read_text())
    assert (document["schema"], document["kind"]) == ("deepcloak/2", "evaluation")
    assert paths["ratio_plot"].read_bytes().startswith(PNG_MAGIC)
    assert paths["eps_plot"].read_bytes().startswith(PNG_MAGIC)
    assert sorted(
        p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")
    ) == sorted(EVALUATION_FILES.values())
    lean = write_evaluation(report, tmp_path / "lean", per_sample=False, plots=False)
    assert set(lean) == {"json"}
    assert "per_sample" not in json.loads(lean["json"].read_text())["results"][0]
