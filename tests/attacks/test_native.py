from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepcloak.attacks import FGSM, PGD, create_attack
from deepcloak.attacks.native import _attack_forward, _input_gradient
from deepcloak.errors import DeepCloakError


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize(
    "attack", [FGSM(eps=0.05), PGD(eps=0.05, steps=5), PGD(eps=0.5, norm="l2")]
)
def test_attack_stays_in_ball_and_unit_box_and_raises_loss(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], attack: FGSM | PGD
) -> None:
    x, y = data
    x_adv = attack(model, x, y)
    assert x_adv.shape == x.shape
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    delta = (x_adv - x).flatten(1)
    if isinstance(attack, PGD) and attack.norm.value == "l2":
        assert float(delta.norm(dim=1).max()) <= attack.eps + 1e-5
    else:
        assert float(delta.abs().max()) <= attack.eps + 1e-6
    assert _loss(model, x_adv, y) > _loss(model, x, y)


def test_fgsm_matches_a_hand_computed_step() -> None:
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 0.0]]))
    model = nn.Sequential(lin)
    x, y = torch.full((1, 3), 0.5), torch.tensor([0])
    # d(CE)/dx = (softmax - onehot) @ W; for class 0 its sign is -(W0 - W1) where p0 < 1.
    expected = torch.clamp(x + 0.1 * torch.sign(-(lin.weight[0] - lin.weight[1])), 0, 1)
    torch.testing.assert_close(FGSM(eps=0.1)(model, x, y), expected)


def test_pgd_is_at_least_as_strong_as_fgsm(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    fgsm = FGSM(eps=0.1)(model, x, y)
    pgd = PGD(eps=0.1, steps=20, restarts=2)(model, x, y)
    assert _loss(model, pgd, y) >= _loss(model, fgsm, y) - 1e-4


def test_attacks_restore_mode_and_leave_param_grads_alone(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    model.train()
    model.get_submodule(next(n for n, _ in model.named_modules() if n)).eval()  # mixed modes
    modes = {n: m.training for n, m in model.named_modules()}
    x, y = data
    PGD(eps=0.03, steps=2)(model, x, y)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())


def test_pgd_is_deterministic_given_its_seed(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = data
    a = PGD(eps=0.05, steps=3, seed=7)(model, x, y)
    torch.testing.assert_close(a, PGD(eps=0.05, steps=3, seed=7)(model, x, y))


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan")])
def test_bad_epsilon_is_refused(eps: float) -> None:
    with pytest.raises(DeepCloakError, match="eps"):
        FGSM(eps=eps)
    with pytest.raises(DeepCloakError, match="eps"):
        PGD(eps=eps)


def test_inputs_outside_unit_range_are_refused(model: nn.Module) -> None:
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(DeepCloakError, match=r"\[0, 1\]"):
        FGSM(eps=0.1)(model, torch.full((2, 1, 8, 8), 2.0), y)
    with pytest.raises(DeepCloakError, match="floating-point"):
        FGSM(eps=0.1)(model, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), y)


def test_labels_outside_the_model_classes_are_refused(model: nn.Module) -> None:
    with pytest.raises(DeepCloakError, match=r"labels must be in \[0, 3\]"):
        FGSM(eps=0.1)(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 9]))


def test_unknown_attack_and_norm() -> None:
    with pytest.raises(DeepCloakError, match=r"unknown attack 'cw'; expected one of: .*fgsm, pgd"):
        create_attack("cw", eps=0.1)
    with pytest.raises(DeepCloakError, match="norm"):
        PGD(eps=0.1, norm="l1")
    assert create_attack("pgd", eps=0.1, steps=4).spec()["step_size"] == pytest.approx(0.0625)


def _rgb_convnet() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()  # fmt: skip


def _plain_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The input gradient of the summed cross-entropy on the model as it is (NCHW)."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    return grad


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_fast_path_computes_the_plain_models_attack(
    model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], channels: int
) -> None:
    x, y = data
    if channels == 3:
        model, x = (
            _rgb_convnet(),
            x.repeat(1, 3, 1, 1) * torch.tensor([1.0, 0.8, 0.6]).view(3, 1, 1),
        )
    forward, x_fast = _attack_forward(model, x)
    has_conv = any(p.ndim == 4 for p in model.parameters())  # the MLP runs as it is
    assert (x_fast.stride()[1] == 1) == has_conv and torch.equal(x_fast, x)  # NHWC, same values
    with torch.no_grad():
        torch.testing.assert_close(forward(x_fast), model(x), rtol=1e-5, atol=1e-6)
    reference = _plain_gradient(model, x, y)
    grad, _ = _input_gradient(forward, x_fast, y)
    # Float rounding differs between layouts; a ReLU input at +-1e-9 may then route the gradient
    # differently, so a few entries may differ; the rest agree to float precision.
    close = torch.isclose(grad, reference, rtol=1e-4, atol=1e-7)
    assert float(close.float().mean()) > 0.995
    eps = 0.05
    expected = (x + eps * reference.sign()).clamp(0, 1)
    got = FGSM(eps=eps)(model, x, y)
    assert got.is_contiguous()
    assert float((got == expected).float().mean()) > 0.995


class _Flat(nn.Module):
    """Logits that do not depend on the input: every gradient step is zero, so PGD's output is
    its random start (projected), and the start can be measured."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(1, keepdim=True)


def _start(attack: PGD, n: int, shape: tuple[int, ...] = (1, 2, 2)) -> torch.Tensor:
    """The perturbations ``attack`` starts from on ``n`` grey inputs (no clamping at eps 0.1)."""
    x = torch.full((n, *shape), 0.5)
    return (attack(_Flat(), x, torch.zeros(n, dtype=torch.long)) - x).flatten(1).double()


def test_pgd_starts_at_a_random_point_by_default() -> None:
    # Issue 15: with the random start switched off, only stored per-sample results noticed.
    from deepcloak.evaluation.config import EvaluationConfig, build_attack

    assert PGD(eps=0.1).random_start
    for level in ("quick", "standard", "thorough"):  # and as the evaluation builds it
        config = EvaluationConfig.for_level(level)
        assert getattr(build_attack("pgd", config), "random_start", None) is True
    delta = _start(PGD(eps=0.1, steps=1), 400)
    assert (delta.abs().amax(1) > 0).all() and float(delta.abs().max()) <= 0.1 + 1e-6
    # Uniform in [-eps, eps] per coordinate: mean 0, standard deviation eps / sqrt(3).
    assert abs(float(delta.mean())) < 0.005
    assert abs(float(delta.std()) - 0.1 / 3**0.5) < 0.003
    off = _start(PGD(eps=0.1, steps=1, random_start=False), 10)
    assert torch.equal(off, torch.zeros_like(off))


def test_pgd_l2_random_start_is_uniform_in_the_ball() -> None:
    # Uniform in the d-ball: (r / eps) ** d is uniform on [0, 1] and the direction is isotropic.
    # A start drawn near the centre (r = eps * U, no 1/d power) fails the KS test at p ~ 1e-300.
    from scipy.stats import kstest

    eps, d, n = 0.1, 4, 4000
    delta = _start(PGD(eps=eps, steps=1, norm="l2"), n)
    radius = delta.norm(dim=1)
    assert float(radius.max()) <= eps + 1e-6
    assert kstest(((radius / eps) ** d).numpy(), "uniform").pvalue > 0.01
    direction = delta / radius[:, None]
    assert float(direction.mean(0).abs().max()) < 0.05  # no preferred direction
    assert abs(float((direction**2).mean(0).sum()) - 1) < 1e-6
