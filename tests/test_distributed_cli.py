"""``torchrun --nproc-per-node 2 -m deepcloak harden|evaluate`` (gloo, CPU) writes the mask
file and every number of a one-process run, bit for bit, and only rank 0 prints and writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import deepcloak.cli
from deepcloak.cli import app
from deepcloak.data.sets import load_dataset
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.train import train_model
from deepcloak.models.zoo import create_model
from tests.report_numbers import numbers

pytestmark = pytest.mark.slow

ARCH_KWARGS = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": 4, "blocks": 2}
#: What differs between identical runs: clocks, durations and the machine's description.
CLOCK_KEYS = {"seconds", "environment", "time", "timings", "started_at", "finished_at",
              "duration_s"}  # fmt: skip

# PGD draws a random start per batch: batches of 32 and 16 that do not divide the samples
# (uneven last batches, fit cut inside a batch) show that each process forms the same batches.
HARDEN = ["harden", "--data", "digits", "--attack", "pgd", "--steps", "2", "--fit-samples", "100",
          "--test-samples", "70", "--batch-size", "32", "--random-masks", "2", "--ratio", "0.25",
          "--device", "cpu"]  # fmt: skip
EVALUATE = ["evaluate", "--data", "digits", "--attacks", "fgsm,pgd,square", "--steps", "2",
            "--queries", "10", "--eps-grid", "0.1", "--val-samples", "30", "--test-samples", "40",
            "--fit-samples", "90", "--batch-size", "16", "--random-masks", "2",
            "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn", **ARCH_KWARGS)
    train_model(model, load_dataset("digits", limit=300), epochs=2, batch_size=64, seed=0)
    path = tmp_path_factory.mktemp("model") / "cnn.safetensors"
    save_checkpoint(path, model, arch="cnn", arch_kwargs=ARCH_KWARGS)
    return path


def torchrun(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node 2 -m deepcloak ...``."""
    src = str(Path(deepcloak.cli.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # the threads of this process: one
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "deepcloak", "--threads", "1", *args]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("args", "files"),
    [(HARDEN, ["report.json", "mask.safetensors"]), (EVALUATE, ["evaluation.json"])],
    ids=["harden", "evaluate"],
)
def test_two_processes_give_the_one_process_results(
    checkpoint: Path, tmp_path: Path, args: list[str], files: list[str]
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    result = CliRunner().invoke(app, [*args[:1], str(checkpoint), *args[1:], "--out", str(one)])
    assert result.exit_code == 0, result.output
    run = torchrun([*args[:1], str(checkpoint), *args[1:], "--out", str(two)])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("wrote ") == 1  # rank 0 alone prints and writes
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    report, *binary = files
    for name in binary:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    expected = numbers(json.loads((one / report).read_text()), CLOCK_KEYS)
    assert numbers(json.loads((two / report).read_text()), CLOCK_KEYS) == expected
    accuracies = [k for k in json.dumps(expected).split('"') if k == "accuracy"]
    assert len(accuracies) > 20  # numbers were compared, not blanks


# One rank meets bad data while the other waits in a gather, as in a sweep's pass.
PEER_FAILS = """
import sys, torch, typer
from deepcloak.cli import distributed_command, user_errors
from deepcloak.distributed import gather_batches
from deepcloak.errors import DataFormatError

@user_errors
def command():
    with distributed_command("cpu") as (ctx, _):
        if ctx.rank == 1:
            raise DataFormatError("labels.bin: label 12 in batch 3 is outside 0..9")
        gather_batches([torch.zeros(2)])

try:
    command()
except typer.Exit as e:
    sys.exit(e.exit_code)
"""


def test_a_peer_of_a_process_that_meets_bad_data_stops_with_one_line(tmp_path: Path) -> None:
    script = tmp_path / "peer_fails.py"
    script.write_text(PEER_FAILS)
    src = str(Path(deepcloak.cli.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "--monitor-interval", "5", str(script)]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    why = "labels.bin: label 12 in batch 3 is outside 0..9"
    assert f"error (rank 1): {why}" in lines, lines
    assert f"error: rank 1 stopped: {why}" in lines, lines  # rank 0: one line, the reason
    # torchrun's agent prints its own traceback of the failed children; no process prints one
    workers = [line for line in lines if "peer_fails.py" in line or "deepcloak" in line]
    assert not any("File " in line for line in workers), lines
    assert not any("gloo" in line.lower() or "DistBackendError" in line for line in lines), lines
