"""The command line's model options: --output picks the logits, --device is checked at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from deepcloak.cli import app


class TupleModel(nn.Module):
    """Returns ``(logits, features)``, as many research models do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU())
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.fc(features), features


def tuple_model() -> nn.Module:
    """A ``TupleModel`` briefly trained on digits (full batch, seeded)."""
    from deepcloak.data.sets import load_dataset

    model = TupleModel()
    x, y = load_dataset("digits", split="train").tensors()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x)[0], y).backward()
        optimiser.step()
    return model


SPEC = "tests.test_cli_flags:tuple_model"
FAST = ["--data", "digits", "--fit-samples", "64", "--test-samples", "32", "--random-masks", "1"]
RANDOM = ["--random-weights"]  # the factories build untrained models: say so (issue 15)


def test_a_tuple_output_without_a_selector_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["harden", SPEC, *RANDOM, *FAST, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "--output 0" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_output_picks_the_logits_and_the_mask_lands_on_the_real_head(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["harden", SPEC, *RANDOM, *FAST, "--output", "0", "--device", "cpu", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["environment"]["device"] == "cpu"
    assert '"fc"' in json.dumps(report)  # layer L is the model's own head, by its own name


def test_an_unknown_device_is_one_clear_error(tmp_path: Path) -> None:
    args = [
        "harden",
        SPEC,
        *RANDOM,
        *FAST,
        "--output",
        "0",
        "--device",
        "tpu",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output


def test_select_saves_the_searched_mask_with_its_selection(tmp_path: Path) -> None:
    from deepcloak.cloak.fit import Cloak

    out = tmp_path / "o"
    data = [
        "--data",
        "digits",
        "--fit-samples",
        "900",
        "--test-samples",
        "32",
        "--random-masks",
        "1",
    ]
    args = ["harden", SPEC, *RANDOM, *data, "--output", "0", "--select", "greedy"]
    args += ["--val-samples", "300", "--val-from", "train"]  # digits' test split is too small
    result = CliRunner().invoke(app, [*args, "--eps", "0.2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cloak, ratio = Cloak.load(out / "mask.safetensors")
    assert cloak.score_name == "search:greedy" and cloak.selection is not None
    assert cloak.selection["selector"] == "greedy"
    removed = int((~cloak.mask(ratio).mask.bool()).sum())
    assert removed == len(cloak.selection["removed"]) > 0
    validation = cloak.selection["validation"]
    assert validation["adv_accuracy"] > validation["baseline_adv_accuracy"]
    assert validation["clean_drop"]["upper"] <= 0.01 + 1e-9


def test_select_takes_the_selectors_and_the_searchs_settings(tmp_path: Path) -> None:
    from deepcloak.cloak.fit import Cloak

    out = tmp_path / "o"
    data = ["--data", "digits", "--fit-samples", "900", "--test-samples", "32"]
    select = "beam:width=2,clean_weight=2,fit_budget=0.03"
    args = [
        "harden",
        SPEC,
        *RANDOM,
        *data,
        "--random-masks",
        "1",
        "--output",
        "0",
        "--select",
        select,
    ]
    result = CliRunner().invoke(
        app, [*args, "--val-samples", "300", "--eps", "0.2", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    cloak, _ = Cloak.load(out / "mask.safetensors")
    assert cloak.selection is not None and cloak.selection["selector"] == "beam"
    assert cloak.selection["settings"]["width"] == 2
    assert cloak.selection["settings"]["clean_weight"] == 2.0
    assert cloak.selection["fit_budget"] == 0.03
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["selector_settings"] == {
        "width": 2, "clean_weight": 2.0, "rivals": 16, "stop_at_plateau": True,
        "fit_budget": 0.03, "max_removed": None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("beam:depth=3", "selector 'beam' has no setting 'depth'"),
        ("beam:widht=4", "did you mean 'width'?"),
        ("beam:width=2.5", "width=2.5 is not allowed"),
        ("random:seed=abc", "seed=abc is not allowed"),
        ("beam:max_removed=-1", "max_removed=-1 is not allowed"),
        ("beam:stop_at_plateau=maybe", "must be true or false"),
        ("beam:clean_weight=nan", "clean_weight=nan is not allowed"),
    ],
)
def test_a_bad_selector_setting_is_one_clear_error(tmp_path: Path, spec: str, message: str) -> None:
    out = tmp_path / "o"
    for command in ("harden", "evaluate"):
        args = [command, SPEC, *RANDOM, *FAST, "--output", "0", "--select", spec]
        result = CliRunner().invoke(app, [*args, "--out", str(out)])
        text = " ".join(result.output.split())  # rich wraps long lines
        assert result.exit_code == 2 and message in text, result.output
        assert not out.exists()


def test_an_unknown_selector_is_one_clear_error(tmp_path: Path) -> None:
    args = [
        "harden",
        SPEC,
        *RANDOM,
        *FAST,
        "--output",
        "0",
        "--select",
        "best",
        "--out",
        str(tmp_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "best" in result.output


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) * float("nan")


def nan_model() -> nn.Module:
    return NaNModel()


def test_non_finite_logits_are_one_clear_error_in_harden_and_evaluate(tmp_path: Path) -> None:
    for command in ("harden", "evaluate"):
        out = tmp_path / command
        args = [
            command,
            "tests.test_cli_flags:nan_model",
            *RANDOM,
            "--data",
            "digits",
            "--out",
            str(out),
        ]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "NaN" in result.output or "finite" in result.output
        assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data", "digits", "--lr", "-1"], "lr must be a finite number > 0, got -1"),
        (["train", "--model", "cnn", "--data", "digits", "--option", "hidden=abc"],
         "model 'cnn' option hidden must be an integer, got 'abc'"),
        (["harden", SPEC, *RANDOM, *FAST, "--output", "0", "--side", "sideways"],
         "unknown side 'sideways'; expected one of: input, output"),
        (["harden", SPEC, *FAST, "--output", "0", "--weights", "WEIGHTS.txt"],
         "not a weights file; expected a safetensors file or a torch.save file"),
        (["harden", SPEC, *FAST, "--output", "0", "--weights", "RANDOM.pt", "--allow-pickle"],
         "not a weights file"),
        (["harden", SPEC, *FAST, "--output", "0", "--weights", "PICKLE.pt", "--allow-pickle"],
         "unreadable torch.save file"),
    ],
)  # fmt: skip
def test_a_bad_option_value_is_one_line_not_a_traceback(
    tmp_path: Path, args: list[str], message: str
) -> None:
    # Each was a traceback with exit 1 (issue 15): checked at its cause, in the library.
    (tmp_path / "WEIGHTS.txt").write_text("these are not weights\n")
    (tmp_path / "RANDOM.pt").write_bytes(bytes(range(7, 256)) * 3)
    (tmp_path / "PICKLE.pt").write_bytes(b"\x80\x02" + bytes(range(256)))  # a pickle's start
    named = [
        str(tmp_path / a) if a in ("WEIGHTS.txt", "RANDOM.pt", "PICKLE.pt") else a for a in args
    ]
    result = CliRunner().invoke(app, [*named, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def unseeded_mlp() -> nn.Module:
    """A factory that does not seed itself: its weights are random unless seeded for it."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


def float16_mlp() -> nn.Module:
    return unseeded_mlp().half()


def bfloat16_mlp() -> nn.Module:
    return unseeded_mlp().bfloat16()


def float64_mlp() -> nn.Module:
    return unseeded_mlp().double()


@pytest.mark.parametrize("command", ["harden", "evaluate"])
def test_a_factory_without_weights_is_refused_before_any_work(tmp_path: Path, command: str) -> None:
    out = tmp_path / "o"
    spec = "tests.test_cli_flags:unseeded_mlp"
    result = CliRunner().invoke(app, [command, spec, *FAST, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "random, unseeded model" in " ".join(result.output.split())
    assert "--random-weights" in result.output and not out.exists()


def test_random_weights_are_seeded_with_seed_and_recorded(tmp_path: Path) -> None:
    reports = []
    for name in ("a", "b"):
        args = ["harden", "tests.test_cli_flags:unseeded_mlp", *RANDOM, "--seed", "5", *FAST]
        result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    assert reports[0]["model"]["random_weights_seed"] == 5
    assert reports[0]["sweep"] == reports[1]["sweep"]  # the same model twice, so the same table
    assert (tmp_path / "a" / "mask.safetensors").read_bytes() == (
        tmp_path / "b" / "mask.safetensors"
    ).read_bytes()


@pytest.mark.parametrize("factory", ["float16_mlp", "bfloat16_mlp", "float64_mlp"])
def test_harden_command_runs_a_model_of_any_floating_dtype(tmp_path: Path, factory: str) -> None:
    # Regression (issue 15): the data's float32 batches reached a float16/bfloat16/float64
    # model unconverted, a raw torch dtype error.
    args = ["harden", f"tests.test_cli_flags:{factory}", *RANDOM, *FAST, "--eps", "0.1"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["sweep"]["n_samples"] == 32 and report["sweep"]["results"]
    state = load_file(tmp_path / "o" / "cloaked_state_dict.safetensors")
    assert {t.dtype for t in state.values()} == {getattr(torch, factory.split("_")[0])}
