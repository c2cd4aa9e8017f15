"""The command line checks --out before any work, and stops on Ctrl-C with one line, exit 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deepcloak
from deepcloak.cli import app

runner = CliRunner()
SRC = str(Path(deepcloak.__file__).parents[1])


@pytest.mark.parametrize(
    ("command", "target", "message"),
    [
        (["demo"], "file", "is a file, but this command writes a folder"),
        (["harden", "no-such-model.safetensors"], "file", "is a file, but this command writes"),
        (["evaluate", "no-such-model.safetensors"], "under-file", "is a file, not a folder"),
        (["harden", "no-such-model.safetensors"], "/proc/deepcloak-run", "is not writable"),
        (["train", "--data", "digits"], "folder", "is a folder, but this command writes one file"),
    ],
)
def test_bad_out_fails_at_once(
    tmp_path: Path, command: list[str], target: str, message: str
) -> None:
    (tmp_path / "file").write_text("not a folder")
    paths = {"file": tmp_path / "file", "under-file": tmp_path / "file" / "run"}
    out = paths.get(target, tmp_path if target == "folder" else Path(target))
    start = time.perf_counter()
    result = runner.invoke(app, [*command, "--out", str(out)])
    assert time.perf_counter() - start < 1.0  # before loading the model or any data
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())  # rich may wrap the line
    assert (tmp_path / "file").read_text() == "not a folder"


# Runs the real ``deepcloak`` entry point with one slow step: a loop of real torch work.
SLOW_COMMAND = textwrap.dedent(
    """
    import sys, torch
    import deepcloak.demo

    def slow_demo(config, progress=None):
        print("ready", flush=True)
        a = torch.randn(256, 256)
        while True:
            a = torch.tanh(a @ a)

    deepcloak.demo.run_demo = slow_demo
    sys.argv = ["deepcloak", "demo", "--out", sys.argv[1]]
    from deepcloak.cli import main
    main()
    """
)


@pytest.mark.skipif(os.name != "posix", reason="sends SIGINT")
def test_ctrl_c_stops_with_one_line_and_status_130(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_COMMAND, str(tmp_path / "run")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    time.sleep(0.2)
    start = time.perf_counter()
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=30)
    assert time.perf_counter() - start < 5.0  # promptly, not after the step
    assert child.returncode == 130
    lines = stderr.decode().strip().splitlines()
    assert lines == ["interrupted (Ctrl-C)"], lines
    assert not (tmp_path / "run").exists()
