"""Inputs of other float dtypes and labels of any integer width: converted, or refused clearly."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks import FGSM, PGD
from deepcloak.batches import as_labels, check_batch, unpack_batch
from deepcloak.cloak.fit import fit
from deepcloak.errors import DeepCloakError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 8, 8, generator=gen), torch.randint(0, 3, (12,), generator=gen)


@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
@pytest.mark.parametrize("input_dtype", [torch.float64, torch.float16])
def test_other_dtypes_give_the_float32_int64_results(
    input_dtype: torch.dtype, label_dtype: torch.dtype
) -> None:
    model, (x, y) = _model(), _data()
    x_other = x.to(input_dtype)
    x_ref = x_other.float()  # what the conversion must give (half rounds the inputs)
    for attack in (FGSM(eps=0.1), PGD(eps=0.1, steps=2)):
        got = attack(model, x_other, y.to(label_dtype))
        assert got.dtype is torch.float32
        torch.testing.assert_close(got, attack(model, x_ref, y))
    ref = fit(model, DataLoader(TensorDataset(x_ref, y), batch_size=4), attack=FGSM(eps=0.1))
    other = TensorDataset(x_other, y.to(label_dtype))
    got_cloak = fit(model, DataLoader(other, batch_size=4), attack=FGSM(eps=0.1))
    torch.testing.assert_close(got_cloak.scores, ref.scores)


def test_float_and_bool_labels_are_refused_never_truncated() -> None:
    model, (x, y) = _model(), _data()
    for bad in (y.float() + 0.5, y.double(), y > 0):
        with pytest.raises(DeepCloakError, match="labels must be integer class indices"):
            FGSM(eps=0.1)(model, x, bad)
        with pytest.raises(DeepCloakError, match="labels must be integer class indices"):
            fit(model, DataLoader(TensorDataset(x, bad), batch_size=4))
    assert as_labels(torch.tensor([1, 2], dtype=torch.int16)).dtype is torch.int64


def test_integer_images_and_bad_batches_are_refused() -> None:
    x, y = _data()
    with pytest.raises(DeepCloakError, match=r"x.float\(\) / 255"):
        check_batch((x * 255).to(torch.uint8), y)
    with pytest.raises(DeepCloakError, match="one label per input"):
        check_batch(x, y[:3])
    with pytest.raises(DeepCloakError, match="pair"):
        unpack_batch(x, torch.device("cpu"))
    with pytest.raises(DeepCloakError, match="hold tensors"):
        unpack_batch((x, [0] * 12), torch.device("cpu"))


def test_sweeps_take_float64_inputs_and_int32_labels() -> None:
    from deepcloak.evaluation.sweep import graybox_sweep

    model, (x, y) = _model(), _data()
    ref_loader = DataLoader(TensorDataset(x, y), batch_size=4)
    other_loader = DataLoader(TensorDataset(x.double(), y.int()), batch_size=4)
    cloak = fit(model, ref_loader, attack=FGSM(eps=0.1))
    kwargs: dict[str, object] = {"ratios": (0.0, 0.5), "n_random": 1, "attack": FGSM(eps=0.1)}
    ref = graybox_sweep(model, cloak, ref_loader, **kwargs)  # type: ignore[arg-type]
    got = graybox_sweep(model, cloak, other_loader, **kwargs)  # type: ignore[arg-type]
    assert got.rows == ref.rows
