"""The options ``harden`` and ``evaluate`` share are declared once, and read the same in both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from typer.testing import CliRunner

from deepcloak.cli import app
from deepcloak.cli.options import DataOpt, SeedOpt, parsed_into

# The options the two commands share by name but mean differently (each says how).
DIFFERENT = {"steps", "random_masks", "test_samples", "fit_samples", "out_dir"}


def _params(command: str) -> dict[str, tuple[object, object, tuple[str, ...]]]:
    """Each option of ``command``: its help, default and flags, as click sees them."""
    group = typer.main.get_command(app)
    params = group.commands[command].params
    return {p.name: (getattr(p, "help", None), p.default, tuple(p.opts)) for p in params}


def test_the_shared_options_have_one_help_and_one_default() -> None:
    harden, evaluate = _params("harden"), _params("evaluate")
    shared = (harden.keys() & evaluate.keys()) - DIFFERENT
    assert len(shared) >= 20, sorted(shared)  # model, data, ..., workers
    for name in sorted(shared):
        assert harden[name] == evaluate[name], name
    for name in DIFFERENT:
        assert harden[name] != evaluate[name], name


@dataclass(frozen=True)
class _Options:
    name: Annotated[str, typer.Argument(help="A name.")]
    data: DataOpt = "digits"
    seed: SeedOpt = 0
    out: Annotated[Path, typer.Option("--out", help="Where.")] = Path("here")


def test_a_command_receives_its_options_as_one_dataclass() -> None:
    received: list[_Options] = []
    tiny = typer.Typer()

    @tiny.command()
    @parsed_into(_Options)
    def run(o: _Options) -> None:
        """Run."""
        received.append(o)

    @tiny.command()
    def other() -> None:  # two commands: typer names them
        """Other."""

    runner = CliRunner()
    assert runner.invoke(tiny, ["run", "x", "--seed", "3"]).exit_code == 0
    assert received == [_Options(name="x", data="digits", seed=3, out=Path("here"))]
    assert runner.invoke(tiny, ["run"]).exit_code == 2  # the argument is required
    shown = runner.invoke(tiny, ["run", "--help"], env={"COLUMNS": "200"}).output
    for line in ("A name.", "Data set: digits", "[default: digits]", "--out", "Where."):
        assert line in shown, shown
