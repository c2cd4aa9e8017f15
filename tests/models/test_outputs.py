"""Models that return several outputs, non-finite logits, per-sample correctness, eval mode."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks import FGSM, PGD
from deepcloak.cloak.fit import fit
from deepcloak.errors import DeepCloakError
from deepcloak.models.outputs import SelectOutput, check_finite_logits, correct, select_logits
from deepcloak.models.runtime import eval_mode, model_device, model_dtype


class TwoHeads(nn.Module):
    """Returns ``(logits, aux_logits)`` in training mode, or a dict, as many real models do."""

    def __init__(self, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU())
        self.fc = nn.Linear(12, 3)
        self.aux = nn.Linear(12, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))  # a parameter of the root module itself

    def forward(self, x: torch.Tensor) -> object:
        h = self.body(x)
        main, aux = self.fc(h) * self.scale, self.aux(h)
        return {"logits": main, "aux": aux} if self.as_dict else (main, aux)


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_a_tuple_or_dict_without_a_selector_is_a_clear_error() -> None:
    x, y = _data()
    with pytest.raises(DeepCloakError, match=r"tuple of 2.*output=0 \(--output 0\)"):
        fit(TwoHeads(), DataLoader(TensorDataset(x, y), batch_size=4), attack=FGSM(eps=0.1))
    with pytest.raises(DeepCloakError, match=r"keys 'logits', 'aux'.*output='logits'"):
        FGSM(eps=0.1)(TwoHeads(as_dict=True), x, y)
    with pytest.raises(DeepCloakError, match="does not fit"):
        select_logits((x, y), 5)
    with pytest.raises(DeepCloakError, match="drop the output selector"):
        select_logits(x, 0)


@pytest.mark.parametrize("as_dict", [False, True])
def test_select_output_keeps_the_models_own_names_and_state(as_dict: bool) -> None:
    torch.manual_seed(0)
    model = TwoHeads(as_dict)
    wrapped = SelectOutput(model, "logits" if as_dict else 0)
    x, y = _data()
    assert [n for n, _ in wrapped.named_modules()][1:] == [n for n, _ in model.named_modules()][1:]
    assert list(wrapped.state_dict()) == list(model.state_dict())  # "scale" included
    with torch.no_grad():
        expected = model.fc(model.body(x)) * model.scale  # brute force: the main head
        torch.testing.assert_close(wrapped(x), expected)
    cloak = fit(wrapped, DataLoader(TensorDataset(x, y), batch_size=4), attack=FGSM(eps=0.1))
    assert cloak.layer.name == "fc"  # the main head, not "model.fc", not the aux head
    cloak.apply(wrapped, 0.5)  # masking the wrapper masks the model itself
    assert type(model.fc).__name__ == "MaskedLayer"


def test_select_output_shares_the_models_mode() -> None:
    model = TwoHeads().train()
    wrapped = SelectOutput(model, 0)
    assert model.training and wrapped.training
    with eval_mode(wrapped):
        assert not model.training and not model.fc.training
    assert model.training and model.fc.training
    wrapped.eval()
    assert not model.training
    with pytest.raises(DeepCloakError, match="index or a key"):
        SelectOutput(model, 1.5)  # type: ignore[arg-type]


def test_non_finite_logits_are_an_error_at_fit_and_in_attacks() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[3].bias[1] = float("inf")  # features of layer L stay finite, logits do not
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    for attack in (FGSM(eps=0.1), PGD(eps=0.1, steps=2)):
        with pytest.raises(DeepCloakError, match=r"logits hold NaN or inf for 12 of 12"):
            attack(model, x, y)
        with pytest.raises(DeepCloakError, match="NaN or inf"):
            fit(model, loader, attack=attack)
    with pytest.raises(DeepCloakError, match="NaN or inf"):
        fit(model, loader, score="activation")  # no attack: the logits are still checked
    with pytest.raises(DeepCloakError, match="1 of 2 samples"):
        check_finite_logits(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))


def test_correct_matches_brute_force_and_restores_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    x, y = _data(30)
    got = correct(model, x, y)
    with torch.no_grad():
        h = model[1](x.flatten(1))  # eval mode: dropout is the identity
        expected = (h @ model[3].weight.T + model[3].bias).argmax(1) == y
    assert torch.equal(got, expected)
    assert all(m.training for m in model.modules())


def test_model_device_and_dtype() -> None:
    assert model_device(nn.ReLU()) == torch.device("cpu")
    assert model_dtype(nn.ReLU()) is torch.float32
    assert model_dtype(nn.Linear(2, 2).double()) is torch.float64


def test_a_copied_wrapper_shares_state_with_its_own_copy_of_the_model() -> None:
    wrapped = SelectOutput(TwoHeads(), 0)
    twin = copy.deepcopy(wrapped)  # as harden() copies the model it writes
    assert twin.fc is twin.wrapped.fc and twin.fc is not wrapped.fc
    assert twin.state_dict().keys() == wrapped.state_dict().keys()
    x = _data()[0]
    with torch.no_grad():
        torch.testing.assert_close(twin(x), wrapped(x))
