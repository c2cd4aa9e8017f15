"""Native APGD-CE and APGD-T: against ART's AutoPGD, the best iterate, the targeted DLR loss."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcloak.attacks import APGD, APGDT, create_attack
from deepcloak.attacks.apgd import checkpoints, dlr_targeted_loss
from deepcloak.attacks.art import ArtAPGD
from deepcloak.errors import DeepCloakError
from tests.robust_toys import quadrant_data, trained_mlp

#: Native APGD against ART's (same steps, budget and seeds 0-3, on the toy's 200 samples): over
#: the 800 attacked samples, at most this fraction broken by ART's only, and the native one's
#: accuracy at most this much above ART's. Both are randomised (L-inf: the native one is at least
#: as strong on every seed; L2: within about a point either way per seed).
ONLY_ART, ACCURACY_GAP = 0.025, 0.015


@pytest.fixture(scope="module")
def toy() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = quadrant_data(200, seed=5)
    return trained_mlp(), x, y


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(-1) == y


def _dist(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    d = (a - b).flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.08), ("l2", 0.5), ("l2", 0.6)])
def test_never_weaker_than_arts_apgd_per_sample(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor], norm: str, eps: float
) -> None:
    model, x, y = toy
    native, art = [], []
    for seed in range(4):
        settings: dict[str, Any] = {"eps": eps, "steps": 20, "norm": norm, "seed": seed}
        native.append(_correct(model, APGD(**settings)(model, x, y), y))
        art.append(_correct(model, ArtAPGD(**settings)(model, x, y), y))
    n, a = torch.cat(native), torch.cat(art)
    assert float(n.double().mean()) < 0.9 * float(_correct(model, x, y).double().mean())
    assert float((n & ~a).double().mean()) <= ONLY_ART  # broken by ART's only
    assert float(n.double().mean()) <= float(a.double().mean()) + ACCURACY_GAP
    if norm == "linf":
        assert int(n.sum()) <= int(a.sum())


@pytest.mark.parametrize("name", ["apgd", "apgd-t"])
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.06), ("l2", 0.6)])
def test_stays_in_the_ball_and_the_box_and_lowers_accuracy(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor], name: str, norm: str, eps: float
) -> None:
    model, x, y = toy
    attack = create_attack(name, eps=eps, steps=10, norm=norm)
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float(_dist(x_adv, x, norm).max()) <= eps * (1 + 1e-5)
    assert int(_correct(model, x_adv, y).sum()) < int(_correct(model, x, y).sum()) - 10
    torch.testing.assert_close(attack(model, x, y), x_adv, rtol=0, atol=0)  # seeded
    assert not torch.equal(
        create_attack(name, eps=eps, steps=10, norm=norm, seed=1)(model, x, y), x_adv
    )


class _BrokenOnce(nn.Module):
    """A classifier that misclassifies sample 0 on its ``when``-th forward pass only (as
    if that iterate crossed the boundary and a later one crossed back); records its inputs."""

    def __init__(self, when: int) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3, 4) * 5)
            self.fc.bias.zero_()
        self.when, self.seen = when, list[torch.Tensor]()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # curved, so that the gradient's direction changes from iterate to iterate
        out: torch.Tensor = self.fc(x + 0.3 * torch.sin(12 * x.flip(-1)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        out: torch.Tensor = self.logits(x)
        if len(self.seen) == self.when:
            out = out.clone()
            # class 2, just: wrong for sample 0, at a lower loss than later (real) iterates
            out[0] = torch.tensor([1.0, -5.0, 1.001])
        return out


def test_a_sample_broken_at_an_intermediate_step_stays_broken() -> None:
    x = torch.tensor([[0.55, 0.43, 0.3, 0.5], [0.3, 0.6, 0.3, 0.5]])
    y = torch.tensor([0, 1])
    model = _BrokenOnce(when=3)  # forward 1: clean check; 2: start; 3, 4, ...: steps 1, 2, ...
    x_adv = APGD(eps=0.03, steps=10, norm="l2")(model, x, y)  # too small to break it for real
    iterates = [seen[0] for seen in model.seen[1:-1]]  # sample 0's, start to last step
    assert len({tuple(t.tolist()) for t in iterates}) > 2  # the iterates move
    assert all(int(model.logits(t).argmax()) == 0 for t in iterates)  # none wrong for real
    torch.testing.assert_close(x_adv[0], iterates[1], rtol=0, atol=0)  # the one that broke it
    assert not torch.equal(x_adv[0], iterates[-1])
    with torch.no_grad():  # not the highest-loss iterate either
        losses = [float(F.cross_entropy(model.logits(t), y[0])) for t in iterates]
    assert max(losses) > losses[1]


def test_later_targets_and_restarts_run_only_on_samples_still_standing(
    toy: tuple[nn.Module, torch.Tensor, torch.Tensor],
) -> None:
    model, x, y = toy
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        x_adv = APGDT(eps=0.06, steps=4, targets=3)(model, x, y)
    finally:
        hook.remove()
    standing = int(_correct(model, x_adv, y).sum())
    # two clean passes (targets, standing), then per target: start, 4 steps, a closing pass
    runs = [sizes[i] for i in range(2, len(sizes), 6)]
    assert sizes[:2] == [len(x)] * 2 and len(sizes) == 2 + 6 * 3
    assert runs[0] == len(x) and runs[0] > runs[1] >= runs[2] >= standing


def test_targeted_dlr_loss_by_hand() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5, -1.0], [0.0, 4.0, 1.0, 2.0, 3.0]])
    y, t = torch.tensor([0, 1]), torch.tensor([2, 4])
    # sorted: (3, 2, 1, 0.5, -1) and (4, 3, 2, 1, 0)
    expected = torch.tensor([-(3 - 2) / (3 - (1 + 0.5) / 2), -(4 - 3) / (4 - (2 + 1) / 2)])
    torch.testing.assert_close(dlr_targeted_loss(logits, y, t), expected)
    # unchanged when the logits are shifted and scaled
    torch.testing.assert_close(dlr_targeted_loss(2 * logits + 7, y, t), expected)


def test_checkpoints_are_the_reference_implementations() -> None:
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert checkpoints(1) == []


def test_bad_settings_and_models() -> None:
    with pytest.raises(DeepCloakError, match="steps must be an integer >= 1"):
        APGD(eps=0.1, steps=0)
    with pytest.raises(DeepCloakError, match="targets must be an integer >= 1"):
        APGDT(eps=0.1, targets=0)
    with pytest.raises(DeepCloakError, match="unknown norm 'l1'; expected one of: linf, l2"):
        APGD(eps=0.1, norm="l1")
    three = nn.Linear(4, 3)
    with pytest.raises(DeepCloakError, match="at least 4 classes, the model has 3"):
        APGDT(eps=0.1)(three, torch.rand(2, 4), torch.tensor([0, 1]))
    x = torch.rand(2, 4)
    torch.testing.assert_close(APGD(eps=0.0)(three, x, torch.tensor([0, 1])), x)
