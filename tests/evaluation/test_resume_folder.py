"""The resume work folder is data, not trust: no link in it is followed, every file read back is
checked against what wrote it (any JSON value either loads or is one line naming the file), a
live run's folder is told from an interrupted one, and the OS saying no is one line."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

import deepcloak.evaluation.resume as resume_module
from deepcloak.cloak.taps import LayerRef, Side
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.crafted import CraftedSets, CraftKey
from deepcloak.evaluation.results import CLOAKED, RANDOM, AccuracyResult, SweepResult, SweepRow
from deepcloak.evaluation.results import ThreatModel as TM
from deepcloak.evaluation.resume import (
    CHECKS,
    CURVE,
    MAYBE_SWEEP,
    RESULTS,
    Codec,
    EvaluationFolder,
    StageRunner,
)
from deepcloak.evaluation.sanity import CheckStatus, SanityCheck
from deepcloak.evaluation.timings import AttackPass, Timings
from deepcloak.io import METADATA_KEY
from deepcloak.resume import WorkFolderError, work_folder_for
from tests.fuzz_settings import fuzz_settings

FINGERPRINT = {"deepcloak": "0", "config": {"eps": 0.1, "steps": 2}, "model": "abc"}
FGSM = {"name": "fgsm", "eps": 0.1}


def _result(defense: str, tm: TM, correct: list[Any], ratio: float | None) -> AccuracyResult:
    attack = {"name": "none"} if tm is TM.CLEAN else FGSM
    return AccuracyResult(defense, tm, attack, torch.tensor(correct), ratio)


def _row(ratio: float, removed: int) -> SweepRow:
    one, two = [True, False, True], [[True, False, True], [False, False, True]]
    return SweepRow(
        ratio, removed, _result(CLOAKED, TM.CLEAN, one, ratio),
        _result(CLOAKED, TM.GRAYBOX, one[::-1], ratio), _result(RANDOM, TM.CLEAN, two, ratio),
        _result(RANDOM, TM.GRAYBOX, two[::-1], ratio),
        (_result(CLOAKED, TM.WHITEBOX, [False] * 3, ratio),),
    )  # fmt: skip


SWEEP = SweepResult(
    [_row(0.0, 0), _row(0.25, 4)], LayerRef("fc", Side.INPUT), 16, "deepcloak", FGSM,
    [{"name": "pgd", "steps": 2}], 2, 0, True,
)  # fmt: skip
CHECK = SanityCheck("more-steps", CheckStatus.PASS, "fine", {"steps": 2, "accuracy": 0.5})
PASS = AttackPass(FGSM, "unmasked", None, None, None, "test", "attacks", 10, 0.5)
#: Each saved stage: its codec and a value it saves.
STAGES: dict[str, tuple[Codec[Any], Any]] = {
    "ratio choice": (MAYBE_SWEEP, SWEEP),
    "attacks": (RESULTS, [r for row in SWEEP.rows for r in row.results()]),
    "eps curve": (CURVE, ([SWEEP.rows[0].clean, SWEEP.rows[1].graybox], CHECK)),
    "sanity": (CHECKS, [CHECK, CHECK]),
}
KEY = CraftKey(json.dumps(FGSM, sort_keys=True), "unmasked", "test")


def _stop() -> Any:
    raise AssertionError("a saved stage was computed again")


def _saved_folder(work: Path) -> EvaluationFolder:
    """A work folder with every kind of file: stages (one with a pass), a crafted set."""
    folder = EvaluationFolder.open(work, FINGERPRINT, resume=False)
    for name, (codec, value) in STAGES.items():
        passes = [PASS.to_json()] if name == "attacks" else []
        folder.save_stage(name, {"seconds": 1.5, "value": codec.dump(value), "passes": passes})
    folder.save_crafted(KEY, torch.rand(3, 1, 2, 2), PASS)
    return folder


def _resume(work: Path) -> tuple[EvaluationFolder, StageRunner]:
    folder = EvaluationFolder.open(work, FINGERPRINT, resume=True)
    timings = Timings()
    return folder, StageRunner(timings, CraftedSets(timings, folder), folder)


def _one_line_naming(error: BaseException, path: Path) -> None:
    message = str(error)
    assert isinstance(error, WorkFolderError), repr(error)
    assert "\n" not in message and str(path) in message, message
    assert "start afresh" in message or "another --out" in message, message


def test_saved_files_read_back_as_they_were_written(tmp_path: Path) -> None:
    _saved_folder(tmp_path / "work")
    folder, runner = _resume(tmp_path / "work")
    for name, (codec, value) in STAGES.items():
        assert codec.dump(runner.run(name, _stop, codec)) == codec.dump(value), name
    assert runner.timings.stages[0].seconds == 1.5 and runner.store.outside == [
        replace(PASS, resumed=True)
    ]
    assert list(folder.saved_passes()) == [KEY]
    assert folder.load_crafted(KEY) is not None


# ---------------------------------------------------------------- structure and types
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_json(draw: st.DrawFn, valid: Any) -> Any:
    """``valid`` with one node replaced (by any JSON value, or the same number as another JSON
    type), removed, or duplicated: the files a reader of saved state must not trust blindly."""
    if isinstance(valid, (dict, list)) and valid and draw(st.integers(0, 3)):
        keys = list(valid) if isinstance(valid, dict) else list(range(len(valid)))
        at = draw(st.sampled_from(keys))
        out = dict(valid) if isinstance(valid, dict) else list(valid)
        edit = draw(st.sampled_from(["descend", "descend", "remove", "duplicate"]))
        if edit == "remove":
            del out[at]  # type: ignore[arg-type]
        elif edit == "duplicate" and isinstance(out, list):
            out.append(out[at])
        else:
            out[at] = draw(mutated_json(valid[at]))  # type: ignore[index]
        return out
    if type(valid) in (int, float) and draw(st.booleans()):
        return float(valid) if type(valid) is int else int(valid)
    return draw(json_values)


@given(data=st.data())
@fuzz_settings()
def test_any_stage_file_loads_or_is_one_line_naming_it(tmp_path: Path, data: st.DataObject) -> None:
    work = tmp_path / "work"
    if not work.exists():
        _saved_folder(work)
    name = data.draw(st.sampled_from(sorted(STAGES)))
    path = work / "stages" / (name.replace(" ", "-") + ".json")
    valid = json.loads(path.read_text())
    doc = data.draw(st.one_of(mutated_json(valid), json_values))
    path.write_text(json.dumps(doc))
    try:
        codec = STAGES[name][0]
        _, runner = _resume(work)
        value = runner.run(name, _stop, codec)
    except WorkFolderError as e:
        _one_line_naming(e, path)
    else:  # loaded: it is exactly what the writer saves, with every type right
        assert json.loads(json.dumps(codec.dump(value), allow_nan=False)) == doc["value"]
        assert all(type(p.samples) is int for p in runner.store.outside)
    finally:
        path.write_text(json.dumps(valid))


@given(doc=json_values)
@fuzz_settings()
def test_any_fingerprint_loads_or_is_one_line_naming_it(tmp_path: Path, doc: Any) -> None:
    work = tmp_path / "work"
    if not work.exists():
        _saved_folder(work)
    (work / "fingerprint.json").write_text(json.dumps(doc))
    with pytest.raises(WorkFolderError) as caught:
        EvaluationFolder.open(work, FINGERPRINT, resume=True)
    assert "\n" not in str(caught.value) and str(work) in str(caught.value)


@given(data=st.data())
@fuzz_settings()
def test_any_crafted_set_metadata_loads_or_is_one_line_naming_it(
    tmp_path: Path, data: st.DataObject
) -> None:
    work = tmp_path / "work"
    if not work.exists():
        _saved_folder(work)
    (path,) = (work / "crafted").iterdir()
    meta = data.draw(mutated_json({"key": vars(KEY), "pass": PASS.to_json()}))
    blob = {"adversarial": torch.zeros(3, 1, 2, 2)}
    path.write_bytes(safetensors.torch.save(blob, metadata={METADATA_KEY: json.dumps(meta)}))
    try:
        folder, _ = _resume(work)
    except WorkFolderError as e:
        _one_line_naming(e, path)
    else:  # loaded: the set's key, and a pass of that attack, model and split
        ((key, record),) = folder.saved_passes().items()
        assert key == KEY and record.attack == FGSM
        assert (record.model, record.split) == (KEY.model, KEY.split)
        assert type(record.samples) is int and type(record.resumed) is bool


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("fingerprint.json", "[1, 2]"),  # was TypeError
        ("stages/ratio-choice.json", "{}"),  # was KeyError: 'seconds'
        ("stages/sanity.json", '{"seconds": NaN, "value": [], "passes": []}'),
        ("stages/sanity.json", '{"seconds": 1, "value": [{"name": 1}], "passes": []}'),
        ("stages/attacks.json", '{"seconds": 1, "value": [], "passes": [{"samples": 3}]}'),
        ("stages/sanity.json", b'\xff{"seconds'),
    ],
)
def test_the_files_the_issue_names_are_one_line(tmp_path: Path, name: str, text: Any) -> None:
    work = tmp_path / "work"
    _saved_folder(work)
    path = work / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DeepCloakError) as caught:
        _, runner = _resume(work)
        for stage, (codec, _value) in STAGES.items():
            runner.run(stage, _stop, codec)
    _one_line_naming(caught.value, path if name != "fingerprint.json" else work)


# ------------------------------------------------------------------------------- links
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "entry", ["stages", "crafted", "stages/sanity.json", "fingerprint.json", "lock"]
)
def test_a_planted_link_is_refused_and_nothing_is_written_through_it(
    tmp_path: Path, entry: str
) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    _saved_folder(work)
    elsewhere.mkdir()
    (work / entry).rename(elsewhere / "target")
    is_dir = entry in ("stages", "crafted")
    (work / entry).symlink_to(elsewhere / "target", target_is_directory=is_dir)
    before = _snapshot(elsewhere)
    with pytest.raises(WorkFolderError, match="is a symbolic link") as caught:
        _, runner = _resume(work)
        for stage, (codec, value) in STAGES.items():  # as a resumed run reads and writes
            runner.run(stage, lambda v=value: v, codec)
        runner.run("new stage", lambda: [], CHECKS)
    _one_line_naming(caught.value, work / entry)
    EvaluationFolder(work).remove()  # as the CLI does after a run: never through a link
    assert _snapshot(elsewhere) == before and (work / entry).is_symlink()


def test_a_linked_work_folder_is_refused_never_used_nor_removed(tmp_path: Path) -> None:
    real, work = tmp_path / "real", tmp_path / "work"
    _saved_folder(real)
    work.symlink_to(real, target_is_directory=True)
    before = _snapshot(real)
    for resume in (False, True):
        with pytest.raises(WorkFolderError, match="is a symbolic link") as caught:
            EvaluationFolder.open(work, FINGERPRINT, resume=resume)
        _one_line_naming(caught.value, work)
    folder = EvaluationFolder(work)
    assert not folder.holds_work() and not folder.held_here()  # never called interrupted
    folder.remove()
    assert work.is_symlink() and _snapshot(real) == before


# --------------------------------------------------------------------- a live run's lock
@pytest.fixture
def held_by_another(tmp_path: Path) -> Iterator[Path]:
    """A work folder whose lock another process holds (here: another open file, as flock
    counts it), with that process's id in it."""
    work = tmp_path / "work"
    shutil.copytree(_saved_folder(tmp_path / "made").path, work)  # this process holds "made"
    fd = os.open(work / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    yield work
    os.close(fd)


def test_a_live_run_is_told_from_an_interrupted_one(held_by_another: Path) -> None:
    work = held_by_another
    for resume in (False, True):
        with pytest.raises(WorkFolderError) as caught:
            EvaluationFolder.open(work, FINGERPRINT, resume=resume)
        message = str(caught.value)
        assert "running now (process 4242)" in message and "interrupted" not in message
        assert "delete" not in message  # never advise deleting a live run's folder
    EvaluationFolder(work).remove()
    assert EvaluationFolder(work).holds_work()


def test_a_live_run_that_saved_nothing_yet_keeps_its_folder(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for sub in ("stages", "crafted"):  # as a run that just started has it
        (work / sub).mkdir(parents=True)
    (work / "fingerprint.json").write_text(json.dumps(FINGERPRINT))
    fd = os.open(work / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(WorkFolderError, match="running now"):
            EvaluationFolder.open(work, FINGERPRINT, resume=False)
        assert (work / "fingerprint.json").is_file()  # was: removed as "nothing to keep"
    finally:
        os.close(fd)
    EvaluationFolder.open(work, FINGERPRINT, resume=False).remove()  # once it ended: ours again
    assert not work.exists()


# ------------------------------------------------------------------------ the OS says no
def test_a_full_disk_while_saving_a_stage_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = EvaluationFolder.open(tmp_path / "work", FINGERPRINT, resume=False)

    def full(path: Any, obj: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(resume_module, "write_json_atomic", full)
    with pytest.raises(WorkFolderError, match="No space left on device") as caught:
        folder.save_stage("sanity", {"seconds": 1.0, "value": [], "passes": []})
    _one_line_naming(caught.value, tmp_path / "work" / "stages" / "sanity.json")


def test_the_cli_refuses_a_linked_work_folder_in_one_line_and_leaves_it(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepcloak.cli import app
    from deepcloak.models.checkpoint import save_checkpoint
    from deepcloak.models.zoo import create_model

    checkpoint = tmp_path / "cnn.safetensors"
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8, width=4)
    save_checkpoint(checkpoint, model, metadata={"data": "digits", "input_shape": [1, 8, 8]})
    out, elsewhere = tmp_path / "eval", tmp_path / "elsewhere"
    elsewhere.mkdir()
    work_folder_for(out).symlink_to(elsewhere, target_is_directory=True)
    args = ["evaluate", str(checkpoint), "--level", "quick", "--test-samples", "20",
            "--val-samples", "20", "--out", str(out)]  # fmt: skip
    for extra in ([], ["--resume"]):
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "is a symbolic link" in text and "finished stages are saved" not in text, text
    assert work_folder_for(out).is_symlink() and list(elsewhere.iterdir()) == []
    assert not out.exists()


def test_a_read_only_place_for_the_work_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(self: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(WorkFolderError, match="Read-only file system") as caught:
        EvaluationFolder.open(tmp_path / "work", FINGERPRINT, resume=False)
    _one_line_naming(caught.value, tmp_path / "work")
