"""``--resume``: an evaluation stopped after a stage continues where it stopped, with the same
numbers as an uninterrupted run, and never reuses the stages of another evaluation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import deepcloak.evaluation.stages as stages_module
from deepcloak.cli import app
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.crafted import Samples
from deepcloak.evaluation.results import EvaluationReport
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.zoo import create_model
from deepcloak.resume import work_folder_for
from tests.evaluation.test_crafted import compact
from tests.robust_toys import TOY_CONFIG, loader, single_thread, toy_report, trained_mlp

FIXED = dataclasses.replace(TOY_CONFIG, ratio=0.1)


class Stop(Exception):
    """Raised by a stub stage: the run stops there."""


def _evaluate(work: Path, *, resume: bool = False, config: Any = FIXED) -> EvaluationReport:
    with single_thread():
        return evaluate_cloak(
            trained_mlp(0), loader(200, 1), loader(60, 2), loader(60, 3), config=config,
            surrogate=trained_mlp(1), metadata={"model": "toy-mlp", "data": "quadrants"},
            work_dir=work, resume=resume,
        )  # fmt: skip


def _stop(*args: Any, **kwargs: Any) -> Any:
    raise Stop


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder of the toy evaluation stopped after the attacks stage (in the eps curve)."""
    work = tmp_path_factory.mktemp("resume") / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages_module, "eps_curve", _stop)
        with pytest.raises(Stop):
            _evaluate(work)
    return work


def _copy(work: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(work, to)
    return to


def test_a_resumed_run_equals_an_uninterrupted_one_and_redoes_no_finished_stage(
    stopped: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _copy(stopped, tmp_path / "work")
    saved = {p.name for p in (work / "stages").iterdir()}
    assert saved == {"fit.json", "ratio-choice.json", "attacks.json"}
    assert (work / "cloak.safetensors").is_file() and len(list((work / "crafted").iterdir())) == 28
    calls: dict[str, int] = {"measure": 0, "fit": 0, "crafted": 0}

    def counting(name: str, real: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        stages_module, "measure_defenses", counting("measure", stages_module.measure_defenses)
    )
    monkeypatch.setattr(stages_module, "_fit_or_use", counting("fit", stages_module._fit_or_use))
    monkeypatch.setattr(Samples, "craft", counting("crafted", Samples.craft))
    resumed = _evaluate(work, resume=True)
    assert calls == {"measure": 0, "fit": 0, "crafted": 6}  # eps curve 4, probe, more steps
    assert compact(resumed) == compact(toy_report(0.1))
    assert resumed.cloak == toy_report(0.1).cloak
    t = resumed.timings
    assert [s.name for s in t.stages if s.resumed] == ["fit", "ratio choice", "attacks"]
    assert sum(p.resumed for p in t.passes) == 29 and len(t.passes) == 35
    assert t.attack_seconds > 0 and t.overhead is not None


def test_stages_of_another_evaluation_are_refused_naming_what_differs(
    stopped: Path, tmp_path: Path
) -> None:
    work = _copy(stopped, tmp_path / "work")
    other = dataclasses.replace(FIXED, eps=0.06, steps=11)
    with pytest.raises(DeepCloakError, match=r"another evaluation \(config.eps, config.steps"):
        _evaluate(work, resume=True, config=other)
    with pytest.raises(DeepCloakError, match="pass --resume to continue it, or delete"):
        _evaluate(work)
    with (
        single_thread(),
        pytest.raises(DeepCloakError, match=r"\(metadata.data, metadata.model, model differ"),
    ):
        evaluate_cloak(
            trained_mlp(1), loader(200, 1), loader(60, 2), loader(60, 3), config=FIXED,
            work_dir=work, resume=True, surrogate=trained_mlp(1),
        )  # fmt: skip


def test_a_fingerprint_alone_is_not_an_interrupted_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    config = dataclasses.replace(FIXED, attacks=("fgsm",), eps_grid=(0.05,), n_random=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stages_module, "_fit_or_use", _stop)  # stops before any stage is saved
        with pytest.raises(Stop):
            _evaluate(work, config=config)
    assert work.is_dir()
    assert _evaluate(work, config=config).timings.passes  # no --resume needed, nothing lost


def test_the_cli_resumes_and_removes_the_work_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8)
    checkpoint = tmp_path / "cnn.safetensors"
    save_checkpoint(checkpoint, model, metadata={"data": "digits", "input_shape": [1, 8, 8]})
    args = [
        "evaluate", str(checkpoint), "--attacks", "fgsm,pgd", "--steps", "2", "--eps", "0.1",
        "--val-samples", "40", "--test-samples", "30", "--fit-samples", "60",
        "--no-preprocessing-baselines", "--no-whitebox-baselines", "--eps-grid", "0.1",
    ]  # fmt: skip
    runner = CliRunner()
    whole = runner.invoke(app, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "eval"
    with monkeypatch.context() as mp:
        mp.setattr(stages_module, "sanity_checks", _stop)
        stopped = runner.invoke(app, [*args, "--out", str(out)])
    assert isinstance(stopped.exception, Stop) and not out.exists()
    assert work_folder_for(out).is_dir()
    assert "rerun the same command with --resume" in " ".join(stopped.output.split())
    again = runner.invoke(app, [*args, "--out", str(out)])
    assert again.exit_code == 2 and "pass --resume" in again.output
    resumed = runner.invoke(app, [*args, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert not work_folder_for(out).exists()
    a, b = (json.loads((d / "evaluation.json").read_text()) for d in (tmp_path / "whole", out))
    for key in ("results", "eps_curve", "ratio_curve", "sanity_checks", "ratio_choice", "cloak"):
        assert a[key] == b[key], key
    # fit (the searched cloak), attacks and eps curve: the search's choice is part of the fit
    assert [s["resumed"] for s in b["timings"]["stages"]].count(True) == 3


def test_a_cloak_of_another_model_saves_no_stage(tmp_path: Path) -> None:
    from torch import nn

    from deepcloak.attacks.native import FGSM
    from deepcloak.cloak.fit import fit
    from deepcloak.evaluation.resume import EvaluationFolder

    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    cloak = fit(other, loader(32, 1), attack=FGSM(eps=0.05))
    work = tmp_path / "work"
    with pytest.raises(DeepCloakError, match="is this the same model"):
        evaluate_cloak(
            trained_mlp(0), cloak, loader(20, 2), loader(20, 3), config=FIXED, work_dir=work
        )
    assert not EvaluationFolder(work).holds_work()  # the CLI removes such a folder


def test_a_folder_of_other_files_is_never_used_or_removed(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DeepCloakError, match="is not a deepcloak work folder"):
        _evaluate(tmp_path, config=dataclasses.replace(FIXED, attacks=("fgsm",)))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_run_stopped_inside_a_stage_keeps_the_sets_it_crafted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work, real, calls = tmp_path / "work", Samples.craft, [0]

    def craft(self: Samples, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if stop_after is not None and calls[0] > stop_after:
            raise Stop
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Samples, "craft", craft)
    stop_after: int | None = 10  # inside the attacks stage: gray-box 4, transfer 4, white-box 2
    with pytest.raises(Stop):
        _evaluate(work)
    assert len(list((work / "crafted").iterdir())) == 10
    assert not (work / "stages" / "attacks.json").exists()
    stop_after, calls[0] = None, 0
    resumed = _evaluate(work, resume=True)
    assert calls[0] == 34 - 10  # only the sets not crafted before
    assert compact(resumed) == compact(toy_report(0.1))
    assert sum(p.resumed for p in resumed.timings.passes) == 11  # the fit's and the 10 sets
