"""Output folders are replaced as a whole, and --out is checked before any work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepcloak.errors import DeepCloakError
from deepcloak.io import atomic_write, write_text_atomic
from deepcloak.report import files
from deepcloak.report.files import (
    MARKER,
    check_output_file,
    check_output_folder,
    clean_stale,
    replace_folder,
    write_folder,
)

SET = ("report.json", "mask.safetensors", "cloaked_model.safetensors")


def write_set(folder: Path, generation: int) -> None:
    for name in SET:
        write_text_atomic(folder / name, f"{generation}\n")


def generations(folder: Path) -> set[str]:
    """The generation each file of the set carries; a complete set has exactly one."""
    assert sorted(os.listdir(folder)) == sorted((*SET, MARKER))
    return {(folder / name).read_text() for name in SET}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(params=[True, False], ids=["exchange", "two-renames"])
def swap_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Both ways of swapping: Linux renameat2 exchange, and the portable two renames."""
    if not request.param:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    yield request.param


def test_new_set_replaces_old_set_whole(tmp_path: Path, swap_mode: bool) -> None:
    out = tmp_path / "run"
    with replace_folder(out) as tmp:
        write_set(tmp, 1)
        (tmp / "extra.png").write_bytes(b"old only")
    with replace_folder(out) as tmp:
        assert tmp.parent == out.parent and not (tmp / "report.json").exists()
        write_set(tmp, 2)
    assert generations(out) == {"2\n"}  # extra.png of the old set is gone
    assert siblings(out) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_inside_block_keeps_old_set(tmp_path: Path, error: BaseException) -> None:
    out = tmp_path / "run"
    with replace_folder(out) as tmp:
        write_set(tmp, 1)
    with pytest.raises(type(error)), replace_folder(out) as tmp:
        write_text_atomic(tmp / "report.json", "2\n")
        raise error
    assert generations(out) == {"1\n"}
    assert siblings(out) == []


def test_failure_on_first_run_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "a" / "run"
    with pytest.raises(RuntimeError), replace_folder(out) as tmp:
        write_set(tmp, 1)
        raise RuntimeError("boom")
    assert not out.exists() and siblings(out) == []


def test_write_folder_returns_paths_under_out(tmp_path: Path) -> None:
    out = tmp_path / "run"

    def writer(folder: Path) -> dict[str, Path]:
        write_set(folder, 1)
        return {"report": folder / "report.json", "mask": folder / "mask.safetensors"}

    paths = write_folder(out, writer)
    assert paths == {"report": out / "report.json", "mask": out / "mask.safetensors"}
    assert all(p.is_file() for p in paths.values())


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_permissions_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        with replace_folder(tmp_path / "run") as tmp:
            write_set(tmp, 1)
    finally:
        os.umask(old)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~umask
    for name in (*SET, MARKER):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_work_folders_of_dead_runs_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with replace_folder(out) as tmp:
        write_set(tmp, 1)
    dead = tmp_path / f".run.deepcloak-new-{dead_pid()}-0a1b2c3d"
    live = tmp_path / f".run.deepcloak-new-{os.getppid()}-0a1b2c3d"  # a live process: kept
    other = tmp_path / f".other.deepcloak-new-{dead_pid()}-0a1b2c3d"  # another --out: kept
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "report.json").write_text("half")
    assert clean_stale(out) == [dead]
    assert not dead.exists() and live.exists() and other.exists()
    assert generations(out) == {"1\n"}


def test_swap_cut_off_by_a_kill_is_repaired(tmp_path: Path) -> None:
    """A kill between the two renames leaves no ``out``: the next run puts the old set back."""
    out = tmp_path / "run"
    with replace_folder(out) as tmp:
        write_set(tmp, 1)
    pid = dead_pid()
    os.rename(out, tmp_path / f".run.deepcloak-old-{pid}-00000001")
    new = tmp_path / f".run.deepcloak-new-{pid}-00000001"
    new.mkdir()
    write_set(new, 2)
    clean_stale(out)
    assert generations(out) == {"1\n"} and siblings(out) == []


def replace_forever(out: Path, ready: int) -> None:
    """In a forked child: replace the set again and again, so kills land in every phase."""
    os.write(ready, b"r")
    generation = 2
    while True:
        with replace_folder(out) as tmp:
            for name in SET:
                write_text_atomic(tmp / name, f"{generation}\n")
        generation += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_any_moment_leaves_a_complete_set(tmp_path: Path, swap_mode: bool) -> None:
    out = tmp_path / "run"
    with replace_folder(out) as tmp:
        write_set(tmp, 1)
    seen: set[str] = set()
    # Fixed delays put kills in every phase; longer ones follow until a kill lands after a swap
    # (on a loaded machine the child may not finish one swap within the first delays).
    delays = [0.0, 0.001, 0.003, 0.007, 0.011, 0.017, 0.023, 0.031, 0.043, 0.06]
    delays += [0.1 * 2**i for i in range(6)]
    for i, delay in enumerate(delays):
        if i >= 10 and len(seen) > 1:
            break
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child never returns into pytest
            try:
                replace_forever(out, write)
            finally:
                os._exit(1)
        os.read(read, 1)
        os.close(read)
        os.close(write)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        if swap_mode:  # one atomic exchange: out is complete even before any repair
            assert len(generations(out)) == 1
        clean_stale(out)
        seen |= generations(out)
        assert len(generations(out)) == 1 and siblings(out) == []
    assert len(seen) > 1  # the kills did land after some swaps, not only before the first


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(DeepCloakError, match="is a file, but this command writes a folder"):
        check_output_folder(tmp_path / "report.json")
    with pytest.raises(DeepCloakError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "report.json" / "run")
    with pytest.raises(DeepCloakError, match="is a file, not a folder"):
        check_output_file(tmp_path / "report.json" / "model.safetensors")


def test_folder_given_for_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeepCloakError, match="is a folder, but this command writes one file"):
        check_output_file(tmp_path)
    assert check_output_file(tmp_path / "new" / "model.safetensors").name == "model.safetensors"


def test_folder_of_other_files_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(DeepCloakError, match=r"did not write \(thesis.tex\)"):
        check_output_folder(tmp_path)
    with pytest.raises(DeepCloakError), replace_folder(tmp_path):
        pass
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    old_run = tmp_path / "old"  # written before the marker existed: known names only
    old_run.mkdir()
    (old_run / "report.json").write_text("{}")
    assert check_output_folder(old_run) == old_run


def test_folder_holding_the_working_directory_is_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (Path("."), tmp_path):  # empty, or holding only the working directory
        with pytest.raises(DeepCloakError, match="holds the working directory"):
            check_output_folder(out)


def test_unwritable_location_is_refused_quickly() -> None:
    start = time.perf_counter()
    with pytest.raises(DeepCloakError, match="is not writable"):
        check_output_folder("/proc/deepcloak-run")  # not writable even for root
    with pytest.raises(DeepCloakError, match="is not writable"):
        check_output_file("/proc/deepcloak-run/model.safetensors")
    assert time.perf_counter() - start < 1.0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(DeepCloakError, match="is not writable"):
            check_output_folder(ro)
        with pytest.raises(DeepCloakError, match="is not writable"):
            check_output_folder(ro / "run")
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_temporary_file_of_a_killed_write_is_removed_by_the_next_check(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old model")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            with atomic_write(target) as f:
                f.write(b"half a new model")
                f.flush()
                os.write(write, b"r")
                time.sleep(60)
        finally:
            os._exit(1)
    os.read(read, 1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(read)
    os.close(write)
    assert len(siblings(target)) == 1  # the killed write's temporary file
    live = tmp_path / f".model.safetensors.{os.getppid()}-writing.tmp"  # a live writer's: kept
    live.write_bytes(b"in progress")
    check_output_file(target)
    assert siblings(target) == [live.name]
    assert target.read_bytes() == b"old model"
