"""TorchScript classifiers: bias-less heads, work after the head, tuple outputs, real names."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks import FGSM
from deepcloak.cloak.fit import fit
from deepcloak.cloak.torchscript import ScriptedClassifier, cloakable
from deepcloak.errors import DeepCloakError, LayerError
from tests.conftest import TinyVGG

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_a_head_without_bias_works() -> None:
    torch.manual_seed(0)
    eager = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 7), nn.ReLU(), nn.Linear(7, 3, bias=False)
    ).eval()
    scripted = torch.jit.script(eager)
    x = _x()
    view = cloakable(scripted, x)
    assert isinstance(view, ScriptedClassifier) and view.head_name == "3"
    with torch.no_grad():
        torch.testing.assert_close(view.features(x), torch.relu(eager[1](x.flatten(1))))
        torch.testing.assert_close(view(x), scripted(x))


class Tempered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)) / 0.5  # a temperature after the final Linear


def test_logits_scaled_after_the_head_get_a_clear_error() -> None:
    x = _x()
    with pytest.raises(LayerError, match=r"its last one with 3 outputs is 'fc'.*temperature"):
        cloakable(torch.jit.trace(Tempered().eval(), x), x)
    softmaxed = torch.jit.script(nn.Sequential(nn.Flatten(), nn.Linear(64, 3), nn.Softmax(1)))
    with pytest.raises(LayerError, match="cannot be cloaked"):
        cloakable(softmaxed, x)


def test_masks_name_the_real_layer_and_apply_to_the_eager_twin() -> None:
    torch.manual_seed(0)
    eager = TinyVGG().eval()
    x, y = _x(16), torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(1))
    view = cloakable(torch.jit.script(copy.deepcopy(eager)), x)
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    cloak = fit(view, loader, attack=FGSM(eps=0.1))
    assert str(cloak.layer) == "input of 'classifier.2'"  # the scripted model's own name
    twin_cloak = fit(eager, loader, attack=FGSM(eps=0.1))
    torch.testing.assert_close(cloak.scores, twin_cloak.scores, rtol=1e-4, atol=1e-5)
    twin = cloak.apply(copy.deepcopy(eager), 0.25, fold=True)
    cloak.apply(view, 0.25, fold=True)
    buffer = io.BytesIO()
    view.save_scripted(buffer)
    buffer.seek(0)
    reloaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(view(x), twin(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reloaded(x), twin(x), rtol=1e-5, atol=1e-5)


class TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.flatten(1)
        return self.fc(h), h.mean(1)


def test_a_scripted_model_returning_a_tuple_takes_an_output_selector() -> None:
    torch.manual_seed(0)
    eager = TupleOut().eval()
    scripted, x = torch.jit.script(eager), _x()
    with pytest.raises(DeepCloakError, match=r"tuple of 2.*output=0 \(--output 0\)"):
        cloakable(scripted, x)
    view = cloakable(scripted, x, output=0)
    with torch.no_grad():
        torch.testing.assert_close(view(x), eager(x)[0])
        torch.testing.assert_close(view.features(x), x.flatten(1))
