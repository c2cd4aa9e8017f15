"""What native and ART attacks share: projection, settings checks, worst case, construction."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from deepcloak.attacks import (
    APGD,
    APGDT,
    FGSM,
    PGD,
    ArtAPGD,
    ArtPGD,
    ArtSquare,
    attack_from_spec,
    attack_settings,
    create_attack,
    list_attacks,
)
from deepcloak.attacks.base import Norm, project, worst_case
from deepcloak.errors import DeepCloakError


def test_projection_matches_a_per_sample_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(5, 2, 3, 3, generator=gen)
    # Perturbations inside the ball (L2 norms ~0.08 and ~0.2) as well as outside: a projection
    # that always rescales to the sphere would pass on outside ones alone.
    scale = torch.tensor([0.02, 0.05, 0.5, 1.0, 2.0]).view(-1, 1, 1, 1)
    x_adv = x + torch.randn(5, 2, 3, 3, generator=gen) * scale
    eps = 0.3
    linf = project(x_adv, x, eps, Norm.LINF)
    l2 = project(x_adv, x, eps, Norm.L2)
    inside = 0
    for i in range(5):
        d = x_adv[i] - x[i]
        expected_inf = (x[i] + d.clamp(-eps, eps)).clamp(0, 1)
        norm = float(d.norm())
        expected_l2 = (x[i] + (d * (eps / norm) if norm > eps else d)).clamp(0, 1)
        torch.testing.assert_close(linf[i], expected_inf)
        torch.testing.assert_close(l2[i], expected_l2)
        assert float((l2[i] - x[i]).norm()) <= eps + 1e-6
        if norm <= eps:  # inside: left exactly as it was (up to the [0, 1] clamp)
            inside += 1
            assert torch.equal(l2[i], x_adv[i].clamp(0, 1))
    assert inside == 2


def test_worst_case_is_correct_under_every_attack() -> None:
    a = torch.tensor([True, True, False, True])
    b = torch.tensor([True, False, False, True])
    c = torch.tensor([False, True, False, True])
    assert worst_case([a, b, c]).tolist() == [all(t) for t in zip(a, b, c, strict=True)]
    assert worst_case([a]).tolist() == a.tolist() and worst_case([a]) is not a
    with pytest.raises(DeepCloakError, match="at least one"):
        worst_case([])
    with pytest.raises(DeepCloakError, match="differ in shape"):
        worst_case([a, a[:2]])


@pytest.mark.parametrize(
    ("factory", "kwargs", "message"),
    [
        (PGD, {"steps": 0}, "steps must be an integer >= 1"),
        (ArtPGD, {"restarts": 0}, "restarts must be an integer >= 1"),
        (ArtAPGD, {"steps": 2.5}, "steps must be an integer >= 1"),
        (ArtSquare, {"max_queries": 0}, "max_queries must be an integer >= 1"),
        (PGD, {"step_size": float("nan")}, "step_size must be a finite number > 0"),
        (ArtPGD, {"step_size": -1.0}, "step_size must be a finite number > 0"),
    ],
)
def test_native_and_art_share_the_iterative_checks(
    factory: type, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(DeepCloakError, match=message):
        factory(eps=0.1, **kwargs)


def test_create_attack_builds_native_and_art_attacks_by_name() -> None:
    assert list_attacks() == ["apgd", "apgd-t", "art-apgd", "art-pgd", "fgsm", "pgd", "square"]
    assert isinstance(create_attack("fgsm", eps=0.1), FGSM)
    assert isinstance(create_attack("square", eps=0.1, max_queries=5), ArtSquare)
    assert attack_settings("fgsm") == {"eps"}
    with pytest.raises(DeepCloakError, match="L-inf only"):
        create_attack("fgsm", eps=0.1, norm="l2")
    with pytest.raises(DeepCloakError, match=r"takes no setting 'stepz'.*steps"):
        create_attack("pgd", eps=0.1, stepz=3)
    with pytest.raises(DeepCloakError, match="needs a budget"):
        create_attack("pgd", steps=3)
    with pytest.raises(DeepCloakError, match="unknown attack 'cw'"):
        create_attack("cw", eps=0.1)
    attacks = (PGD(eps=0.1, steps=3, norm="l2"), ArtAPGD(eps=0.1), ArtSquare(eps=0.2))
    for attack in (*attacks, APGD(eps=0.1, norm="l2"), APGDT(eps=0.1, targets=3)):
        rebuilt = attack_from_spec(attack.spec())
        assert type(rebuilt) is type(attack) and rebuilt.spec() == attack.spec()
    # ART's APGD was saved as "apgd" before the native one took the name
    old = {**ArtAPGD(eps=0.1).spec(), "name": "apgd"}
    assert isinstance(attack_from_spec(old), ArtAPGD)


def test_import_deepcloak_loads_neither_art_nor_rich_nor_matplotlib() -> None:
    code = (
        "import sys, deepcloak; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'art', 'rich', 'matplotlib'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
