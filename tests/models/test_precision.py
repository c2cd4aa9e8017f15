"""bf16 forward passes: only where they merely predict, attacks always in float32, recorded."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from deepcloak.attacks.native import FGSM, PGD
from deepcloak.cli import app
from deepcloak.cloak.fit import fit
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.config import EvaluationConfig
from deepcloak.evaluation.passes import correct
from deepcloak.evaluation.run import evaluate_cloak
from deepcloak.evaluation.sweep import graybox_sweep
from deepcloak.harden import HardenConfig, harden, harden_document
from deepcloak.models.checkpoint import save_checkpoint
from deepcloak.models.precision import (
    Precision,
    current_precision,
    forward_autocast,
    forward_precision,
    parse_precision,
)
from deepcloak.models.zoo import create_model
from tests.conftest import MODEL_FACTORIES
from tests.robust_toys import loader, quadrant_data, trained_mlp

CPU = torch.device("cpu")


def test_names_and_scoping() -> None:
    assert parse_precision("BF16") is parse_precision("bfloat16") is Precision.BF16
    assert parse_precision("float32") is Precision.FP32 and Precision.BF16.recorded == "bfloat16"
    with pytest.raises(
        DeepCloakError, match="unknown precision 'fp16'; expected one of: fp32, bf16"
    ):
        parse_precision("fp16")
    assert current_precision() is Precision.FP32
    with forward_precision("bf16"):
        with forward_precision("fp32"):
            assert current_precision() is Precision.FP32
        assert current_precision() is Precision.BF16
        with forward_autocast(CPU):
            assert torch.is_autocast_enabled("cpu")
            assert nn.Linear(3, 2)(torch.ones(1, 3)).dtype == torch.bfloat16
    assert current_precision() is Precision.FP32
    with forward_autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")  # float32 enters no autocast at all


class Passes:
    """Records every forward pass of a model: whether it builds a graph, and its logits' dtype.

    Where a graph is built (an attack), the dtype of the gradient reaching the logits too.
    """

    def __init__(self, model: nn.Module) -> None:
        self.graph: list[torch.dtype] = []
        self.predict: list[torch.dtype] = []
        self.grads: list[torch.dtype] = []
        model.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: object, out: torch.Tensor) -> None:
        if out.requires_grad:
            self.graph.append(out.dtype)
            out.register_hook(lambda g: self.grads.append(g.dtype))
        else:
            self.predict.append(out.dtype)


@contextmanager
def recorded(model: nn.Module) -> Iterator[Passes]:
    handles = len(model._forward_hooks)
    passes = Passes(model)
    try:
        yield passes
    finally:
        for key in list(model._forward_hooks)[handles:]:
            del model._forward_hooks[key]


def _resnet() -> tuple[nn.Module, DataLoader]:
    torch.manual_seed(0)
    model = MODEL_FACTORIES["resnet"]().eval()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(48, 1, 8, 8, generator=gen), torch.randint(0, 4, (48,), generator=gen)
    return model, DataLoader(TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize("attack", [FGSM(eps=0.1), PGD(eps=0.1, steps=3)], ids=["fgsm", "pgd"])
def test_bf16_sweep_predicts_in_bf16_while_attack_gradients_stay_float32(attack: FGSM) -> None:
    model, data = _resnet()
    cloak = fit(model, data, attack=FGSM(eps=0.1))
    with recorded(model) as passes:
        result = graybox_sweep(
            model, cloak, data, attack=attack, ratios=(0.0, 0.5), n_random=2, precision="bf16",
            whitebox_attacks=[attack], whitebox_ratios=(0.5,),
        )  # fmt: skip
    assert passes.graph and set(passes.graph) == {torch.float32}
    assert passes.grads and set(passes.grads) == {torch.float32}
    assert torch.bfloat16 in passes.predict  # the feature caching forward
    # The unmasked row is the model's own per-sample correctness, read here without the library
    # (float32); bfloat16 rounding may flip a sample near the decision boundary, not more.
    x, y = (torch.cat(t) for t in zip(*data, strict=True))
    with torch.no_grad():
        direct = model(x).argmax(-1) == y
    row = result.rows[0]
    assert row.ratio == 0.0 and row.clean.n == direct.numel() == 48
    assert int((row.clean.correct != direct).sum()) <= 2
    assert abs(row.clean_accuracy - direct.double().mean().item()) <= 2 / 48


def test_bf16_sweep_rows_are_the_models_own_per_sample_numbers() -> None:
    # Read without the library, in float32: clean and gray-box (FGSM on the unmasked model)
    # correctness of the trained toy MLP, whose gray-box accuracy is well below its clean one,
    # so a row showing one for the other cannot pass. bfloat16 may flip a few boundary samples.
    model = trained_mlp(0)
    x, y = quadrant_data(64, 5)
    cloak = fit(model, loader(96, 1), attack=FGSM(eps=0.05))
    data = DataLoader(TensorDataset(x, y), batch_size=16)
    result = graybox_sweep(
        model, cloak, data, attack=FGSM(eps=0.05), ratios=(0.0, 0.1), n_random=1,
        precision="bf16",
    )  # fmt: skip
    with torch.no_grad():
        clean = model(x).argmax(-1) == y
        gray = model(FGSM(eps=0.05)(model, x, y)).argmax(-1) == y
    assert int(clean.sum()) - int(gray.sum()) >= 8  # the attack works on this model
    row = result.rows[0]
    assert row.ratio == 0.0 and row.clean.n == row.graybox.n == 64
    assert int((row.clean.correct != clean).sum()) <= 2
    assert int((row.graybox.correct != gray).sum()) <= 2


def test_fp32_sweep_is_untouched_by_autocast_and_equals_the_default() -> None:
    model, data = _resnet()
    cloak = fit(model, data, attack=FGSM(eps=0.1))
    kwargs = {"attack": FGSM(eps=0.1), "ratios": (0.0, 0.25, 0.5), "n_random": 2}
    with recorded(model) as passes, forward_precision("bf16"):
        explicit = graybox_sweep(model, cloak, data, precision="fp32", **kwargs)
    assert set(passes.graph) | set(passes.predict) == {torch.float32}
    default = graybox_sweep(model, cloak, data, **kwargs)
    for a, b in zip(explicit.rows, default.rows, strict=True):
        for x, y in zip(a.results(), b.results(), strict=True):
            assert torch.equal(x.correct, y.correct)


def test_bf16_sweep_agrees_with_float32_on_almost_every_sample() -> None:
    model, data = _resnet()
    cloak = fit(model, data, attack=FGSM(eps=0.1))
    kwargs = {"attack": FGSM(eps=0.1), "ratios": (0.0, 0.5), "n_random": 0}
    fp32 = graybox_sweep(model, cloak, data, **kwargs)
    bf16 = graybox_sweep(model, cloak, data, precision="bf16", **kwargs)
    for a, b in zip(fp32.rows, bf16.rows, strict=True):
        assert (a.clean.correct != b.clean.correct).float().mean() <= 0.1


def test_harden_records_its_precision() -> None:
    model, data = _resnet()
    dataset = data.dataset
    config = HardenConfig(ratio=0.5, ratios=(0.0, 0.5), whitebox_ratios=(), n_random=1)
    for name, recorded_as in (("fp32", "float32"), ("bf16", "bfloat16")):
        cfg = dataclasses.replace(config, precision=name)
        result = harden(model, dataset, dataset, cfg)
        doc = harden_document(result, {})
        assert doc["environment"]["precision"] == recorded_as
        assert doc["config"]["precision"] == name


def test_bf16_evaluation_records_bfloat16_and_keeps_attacks_in_float32() -> None:
    model = trained_mlp(0)
    config = EvaluationConfig(
        eps=0.05, attacks=("fgsm", "pgd"), steps=3, select_attack="fgsm", ratio=0.1,
        ratios=(0.0, 0.1), whitebox_ratios=(0.1,), n_random=1, eps_grid=(0.05,),
        preprocessing_baselines=False, max_samples=40, precision="bf16",
    )  # fmt: skip
    with recorded(model) as passes:
        report = evaluate_cloak(model, loader(80, 1), loader(40, 2), loader(40, 3), config=config)
    assert report.environment["precision"] == "bfloat16"
    assert report.to_json()["config"]["precision"] == "bf16"
    assert set(passes.graph) == {torch.float32} and set(passes.grads) == {torch.float32}
    assert torch.bfloat16 in passes.predict
    assert current_precision() is Precision.FP32  # the setting ends with the evaluation


def test_clean_accuracy_pass_predicts_in_the_current_precision() -> None:
    model = trained_mlp(0)
    x, y = quadrant_data(64, 5)
    with recorded(model) as passes, forward_precision("bf16"):
        bf16 = correct(model, x, y, batch_size=16)
    assert passes.predict == [torch.bfloat16] * 4
    fp32 = correct(model, x, y, batch_size=16)
    assert (bf16 != fp32).float().mean() <= 0.05


def _checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn", in_channels=1, num_classes=10, input_size=8)
    path = tmp_path / "cnn.safetensors"
    save_checkpoint(path, model, metadata={"data": "digits", "input_shape": [1, 8, 8]})
    return path


def test_harden_command_takes_precision_and_records_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    limits = ["--fit-samples", "64", "--test-samples", "48", "--random-masks", "1"]
    args = ["harden", str(_checkpoint(tmp_path)), "--out", str(out), "--precision", "bf16"]
    result = CliRunner().invoke(app, [*args, *limits])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["environment"]["precision"] == "bfloat16"
    assert report["config"]["precision"] == "bf16"


@pytest.mark.parametrize("command", ["harden", "evaluate"])
def test_an_unknown_precision_is_refused_before_any_work(tmp_path: Path, command: str) -> None:
    out = tmp_path / "out"
    args = [command, str(_checkpoint(tmp_path)), "--out", str(out), "--precision", "fp16"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "unknown precision 'fp16'" in result.output and not out.exists()
