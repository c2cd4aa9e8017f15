from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from deepcloak.attacks import ATTACKS, PGD, create_attack
from deepcloak.attacks.art import ArtAPGD, ArtPGD, ArtSquare, require_art
from deepcloak.errors import DeepCloakError
from tests.counting import CountSamples
from tests.robust_toys import quadrant_data, trained_mlp


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = quadrant_data(60, seed=5)
    return trained_mlp(), x, y


def _n_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(x).argmax(-1) == y).sum())


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1)


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
def test_native_pgd_and_art_pgd_agree(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    model, x, y = toy
    params = {"eps": eps, "steps": 10, "step_size": eps / 4, "norm": norm, "random_start": False}
    native = PGD(**params)(model, x, y)
    art = ArtPGD(**params)(model, x, y)
    clean = _n_correct(model, x, y)
    n_native, n_art = _n_correct(model, native, y), _n_correct(model, art, y)
    assert n_native < clean  # the attack works at all
    assert abs(n_native - n_art) <= 1
    torch.testing.assert_close(art, native, rtol=0, atol=1e-4)


def test_pgd_agreement_on_every_fixture_model(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    params = {"eps": 0.1, "steps": 5, "step_size": 0.03, "random_start": False}
    torch.testing.assert_close(
        ArtPGD(**params)(model, x, y), PGD(**params)(model, x, y), rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_stays_in_the_ball_and_the_box(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str
) -> None:
    model, x, y = toy
    eps = 0.1 if norm == "linf" else 1.0
    x_adv = ArtSquare(eps=eps, max_queries=100, norm=norm)(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    dist = _linf(x_adv, x) if norm == "linf" else _l2(x_adv, x)
    assert float(dist.max()) <= eps + 1e-6
    assert _n_correct(model, x_adv, y) < _n_correct(model, x, y)


def test_apgd_stays_in_the_ball_and_beats_no_attack(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = toy
    x_adv = ArtAPGD(eps=0.05, steps=10)(model, x, y)
    assert float(_linf(x_adv, x).max()) <= 0.05 + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert _n_correct(model, x_adv, y) < _n_correct(model, x, y)
    dlr = ArtAPGD(eps=0.05, steps=10, loss="dlr")(model, x, y)
    assert _n_correct(model, dlr, y) < _n_correct(model, x, y)


def test_art_attacks_are_seeded_and_leave_global_state_alone(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = toy
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = ArtSquare(eps=0.1, max_queries=20, seed=7)(model, x, y)
    b = ArtSquare(eps=0.1, max_queries=20, seed=7)(model, x, y)
    assert np.random.rand() == expected_next  # numpy's global generator is restored
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_art_attacks_leave_the_model_as_it_was(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = toy
    model.train()
    first = next(model.parameters())
    first.grad = torch.full_like(first, 3.0)
    try:
        for attack in (ArtPGD(eps=0.05, steps=2), ArtAPGD(eps=0.05, steps=2)):
            attack(model, x, y)
        assert model.training and all(m.training for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())
        torch.testing.assert_close(first.grad, torch.full_like(first, 3.0))
        assert all(p.grad is None for p in list(model.parameters())[1:])
    finally:
        first.grad = None
        model.eval()


def test_zero_budget_returns_the_inputs(toy: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = toy
    for attack in (ArtAPGD(eps=0.0), ArtSquare(eps=0.0), ArtPGD(eps=0.0)):
        torch.testing.assert_close(attack(model, x, y), x)


def test_registered_by_name_with_specs() -> None:
    assert {"art-apgd", "square", "art-pgd"} <= set(ATTACKS.names())
    apgd = create_attack("art-apgd", eps=0.03, steps=20)
    assert isinstance(apgd, ArtAPGD)
    assert apgd.spec() == {
        "name": "art-apgd",
        "library": "art",
        "eps": 0.03,
        "steps": 20,
        "norm": "linf",
        "restarts": 1,
        "loss": "ce",
        "seed": 0,
    }
    assert create_attack("square", eps=0.03).spec()["max_queries"] == 300
    assert create_attack("art-pgd", eps=0.03, steps=10).spec()["step_size"] == pytest.approx(
        2.5 * 0.03 / 10
    )


def test_bad_parameters_and_inputs(toy: tuple[nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = toy
    with pytest.raises(DeepCloakError, match=r"eps must be <= 1.*8/255"):
        ArtAPGD(eps=8)
    with pytest.raises(DeepCloakError, match="unknown norm 'l1'; expected one of: linf, l2"):
        ArtSquare(eps=0.1, norm="l1")
    with pytest.raises(DeepCloakError, match="loss must be 'ce' or 'dlr'"):
        ArtAPGD(eps=0.1, loss="hinge")
    with pytest.raises(DeepCloakError, match="max_queries must be an integer >= 1"):
        ArtSquare(eps=0.1, max_queries=0)
    with pytest.raises(DeepCloakError, match=r"image inputs \(N, C, H, W\)"):
        ArtSquare(eps=0.1)(nn.Sequential(nn.Linear(64, 4)), x.flatten(1), y)
    with pytest.raises(DeepCloakError, match=r"labels must be in \[0, 3\]"):
        ArtAPGD(eps=0.1, steps=2)(model, x, y + 4)
    with pytest.raises(DeepCloakError, match=r"inputs must lie in \[0, 1\]"):
        ArtPGD(eps=0.1)(model, x * 3, y)


def test_missing_art_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "art", None)  # makes `import art` raise ImportError
    with pytest.raises(DeepCloakError, match=r"pip install 'deepcloak\[art\]'"):
        require_art()
    with pytest.raises(DeepCloakError, match="Adversarial Robustness Toolbox"):
        ArtSquare(eps=0.1)(trained_mlp(), *quadrant_data(4, seed=0))


@dataclass(frozen=True, kw_only=True)
class _SquareOnAllSamples(ArtSquare):
    """The adapter before it skipped broken samples and repeated queries: ART on every sample."""

    _standing_only: ClassVar[bool] = False


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_square_queries_only_standing_new_inputs_with_the_same_result(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    model, x, y = toy
    y = y.clone()
    y[:10] = (y[:10] + 1) % 4  # ten samples misclassified from the start: already adversarial
    settings = {"eps": eps, "max_queries": 100, "norm": norm, "seed": 3}
    before, after = CountSamples(model), CountSamples(model)
    expected = _SquareOnAllSamples(**settings)(before, x, y)
    got = ArtSquare(**settings)(after, x, y)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[:10], x[:10], rtol=0, atol=0)  # left as they were
    assert _n_correct(model, got, y) < _n_correct(model, x, y) - 10  # the attack still bites
    # Every query of the new path is one the old path made too, and most old ones repeated.
    assert after.samples * 3 < before.samples, (after.samples, before.samples)
