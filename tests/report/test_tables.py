from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.evaluation.results import (
    AccuracyResult,
    EvaluationReport,
    SweepResult,
    SweepRow,
    compare,
)
from deepcloak.report.evaluation import EVALUATION_FILES, write_evaluation
from deepcloak.report.tables import (
    comparisons_table,
    evaluation_tables,
    summary_table,
    sweep_markdown,
    sweep_table,
)
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


# -------------------------------------------------------- tables read cell by cell (issue 15)
# A table that shows the right numbers in the wrong columns passes any test that only looks
# for words: these read every cell against the result model, with numbers chosen so that any
# two columns differ.


def _correct(n_right: int, n: int = 20) -> torch.Tensor:
    return torch.arange(n) < n_right


def _sweep() -> SweepResult:
    fgsm = {"name": "fgsm", "eps": 0.1}

    def row(ratio: float, removed: int, clean: int, gray: int, rand: tuple[int, int], white: int):
        def acc(tm: str, right: torch.Tensor, defense: str = "cloaked") -> AccuracyResult:
            return AccuracyResult(defense, tm, fgsm if tm != "clean" else {"name": "none"},
                                  right, ratio)  # fmt: skip

        random = torch.stack([_correct(rand[0]), _correct(rand[1])])
        return SweepRow(
            ratio, removed, acc("clean", _correct(clean)), acc("gray-box", _correct(gray)),
            acc("clean", random, "random-mask"), acc("gray-box", random, "random-mask"),
            (acc("white-box", _correct(white)),),
        )  # fmt: skip

    rows = [row(0.0, 0, 18, 7, (7, 7), 1), row(0.1, 3, 17, 12, (8, 10), 4)]
    return SweepResult(
        rows, LayerRef("fc", Side.INPUT), 32, "deepcloak", fgsm, [fgsm], 2, 0, True
    )  # fmt: skip


def _expected_sweep_cells(result: SweepResult) -> list[dict[str, str]]:
    """Each row's cells by column, written out from the result model (not by tables.py)."""
    out = []
    for r in result.rows:
        assert r.random_graybox is not None and r.whitebox_accuracy is not None
        out.append({
            "ratio": f"{100 * r.ratio:.0f}%",
            "removed": str(r.n_removed),
            "clean %": f"{100 * r.clean.accuracy:.1f}",
            "gray-box": f"{100 * r.graybox.accuracy:.1f}",
            "random mask": f"{100 * r.random_graybox.accuracy:.1f} ± "
                           f"{100 * r.random_graybox.std:.1f}",
            "white-box": f"{100 * r.whitebox_accuracy:.1f}",
        })  # fmt: skip
    return out


def _by_prefix(headers: list[str], prefix: str) -> int:
    (index,) = [i for i, h in enumerate(headers) if h.startswith(prefix)]
    return index


def test_sweep_table_cells_are_the_results_numbers_in_their_own_columns() -> None:
    result = _sweep()
    expected = _expected_sweep_cells(result)
    assert expected[1]["clean %"] == "85.0" and expected[1]["gray-box"] == "60.0"  # all differ
    table = sweep_table(result, result.rows)
    headers = [str(c.header) for c in table.columns]
    columns = [[str(cell) for cell in c.cells] for c in table.columns]
    lines = sweep_markdown(result, result.rows).splitlines()
    md_headers = [h.strip() for h in lines[0].strip("|").split("|")]
    md_rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert md_headers == headers and len(md_rows) == len(expected)
    for i, cells in enumerate(expected):
        for name, text in cells.items():
            assert columns[_by_prefix(headers, name)][i] == text, (name, i)
            assert md_rows[i][_by_prefix(md_headers, name)] == text, (name, i)


def test_a_searched_masks_sweep_marks_the_same_rows_in_the_terminal_and_in_markdown() -> None:
    result = _sweep()
    ratios = [r.ratio for r in result.rows]
    saved = ratios[1]
    table = sweep_table(result, result.rows, saved=saved, searched=True)
    headers = [str(c.header) for c in table.columns]
    marks = [str(cell) for cell in table.columns[-1].cells]
    lines = sweep_markdown(result, result.rows, saved=saved, searched=True).splitlines()
    md_marks = [line.strip("|").split("|")[-1].strip() for line in lines[2:]]
    expected = ["", "saved", *["ext."] * (len(ratios) - 2)]
    assert headers[-1] == "mask" and table.columns[-1].justify == "left"
    assert marks == md_marks == expected
    # A fixed ratio (not searched) has no mask column in either form.
    fixed = sweep_table(result, result.rows, saved=saved)
    assert "mask" not in [str(c.header) for c in fixed.columns]
    md_header = sweep_markdown(result, result.rows, saved=saved).splitlines()[0]
    assert "mask" not in [h.strip() for h in md_header.strip("|").split("|")]


def _paired(a_only: int, b_only: int, both: int = 5, n: int = 20) -> tuple[torch.Tensor, ...]:
    a = torch.zeros(n, dtype=torch.bool)
    b = torch.zeros(n, dtype=torch.bool)
    a[:both] = b[:both] = True
    a[both : both + a_only] = True
    b[both + a_only : both + a_only + b_only] = True
    return a, b


def test_mcnemar_table_cells_show_the_right_tail_and_counts(report: EvaluationReport) -> None:
    # cloaked right on 8 samples the unmasked model gets wrong, the reverse on 1; then the
    # mirror image. P(X >= 8 | X ~ Bin(9, 1/2)) = 10/512, written out by hand.
    comparisons = []
    for a_only, b_only, tm in ((8, 1, "gray-box"), (1, 8, "white-box")):
        a, b = _paired(a_only, b_only)
        comparisons.append(compare(
            AccuracyResult("cloaked", tm, {"name": "pgd"}, a, 0.1),
            AccuracyResult("unmasked", tm, {"name": "pgd"}, b, 0.0),
        ))  # fmt: skip
    table = comparisons_table(dataclasses.replace(report, comparisons=comparisons))
    cells = {str(c.header): [str(v) for v in c.cells] for c in table.columns}
    assert cells["threat model"] == ["gray-box", "white-box"]
    assert cells["cloaked"] == ["65.0%", "30.0%"] and cells["unmasked"] == ["30.0%", "65.0%"]
    assert cells["only cloaked right"] == ["8", "1"]
    assert cells["only unmasked right"] == ["1", "8"]
    assert cells["p(cloaked better)"] == [f"{10 / 512:.3g}", f"{1 - 1 / 512:.3g}"]
    assert cells["p(differ)"] == [f"{20 / 512:.3g}", f"{20 / 512:.3g}"]


def test_summary_table_cells_are_each_defences_results(report: EvaluationReport) -> None:
    table = summary_table(report)
    headers = [str(c.header) for c in table.columns]
    columns = [[str(v) for v in c.cells] for c in table.columns]
    results = {(r.defense, r.threat_model.value, r.attack_name): r for r in report.results}
    assert len(columns[0]) >= 4 and headers[:3] == ["defence", "clean", "gray-box"]
    for i, defense in enumerate(columns[0]):
        for j, tm in enumerate(headers[1:], start=1):
            attack = "none" if tm == "clean" else "worst-case"
            found = [results[key]] if (key := (defense, tm, attack)) in results else []
            if not found:
                assert columns[j][i] == "-"
                continue
            lo, hi = found[0].interval
            assert columns[j][i] == f"{found[0].accuracy:6.1%} [{lo:.1%}, {hi:.1%}]", (defense, tm)
