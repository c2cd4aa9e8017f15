"""The standing-samples rule: in a worst case, attacks after the first run only on the samples
still standing (AutoAttack's order), and each set is crafted once."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepcloak.attacks import APGD, FGSM, PGD
from deepcloak.evaluation.crafted import CraftedSets, Samples, standing_after, target
from deepcloak.evaluation.timings import Timings
from tests.robust_toys import quadrant_data, trained_mlp


class _Counted:
    """An attack that counts the samples it is asked to attack."""

    def __init__(self, attack: Any) -> None:
        self.attack, self.samples = attack, 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.samples += int(x.shape[0])
        out: torch.Tensor = self.attack(model, x, y)
        return out

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = self.attack.spec()
        return out


def _setup() -> tuple[nn.Module, Samples]:
    x, y = quadrant_data(120, seed=7)
    return trained_mlp(), Samples(x, y, batch_size=32)


def test_later_attacks_run_only_on_the_samples_still_standing() -> None:
    model, samples = _setup()
    weak = PGD(eps=0.06, steps=1, step_size=0.01)
    first, second = _Counted(weak), _Counted(APGD(eps=0.06, steps=10))
    store = CraftedSets(Timings())
    sets = store.get_standing((first, second), model, target("unmasked"), samples)
    after_first = samples.correct(model, sets[0])
    assert first.samples == 120 and 0 < second.samples == int(after_first.sum()) < 120
    broken = ~after_first  # they keep the point that broke them
    torch.testing.assert_close(sets[1][broken], sets[0][broken], rtol=0, atol=0)
    after_second = samples.correct(model, sets[1])
    assert not bool((after_second & ~after_first).any())  # the worst case so far, per sample
    assert int(after_second.sum()) < int(after_first.sum())  # the second attack broke more
    # the passes record what was attacked; asked again, the store crafts nothing
    assert [p.samples for p in store.timings.passes] == [120, second.samples]
    again = store.get_standing((first, second), model, target("unmasked"), samples)
    assert first.samples == 120 and second.samples == int(after_first.sum())
    assert all(torch.equal(a, b) for a, b in zip(again, sets, strict=True))


def test_a_set_crafted_on_standing_samples_is_not_taken_for_one_crafted_alone() -> None:
    model, samples = _setup()
    store = CraftedSets(Timings())
    apgd = _Counted(APGD(eps=0.06, steps=10))
    store.get_standing((PGD(eps=0.06, steps=5), apgd), model, target("unmasked"), samples)
    standing = apgd.samples
    store.get(apgd, model, target("unmasked"), samples)  # alone: on every sample
    assert apgd.samples == standing + 120


def test_fgsm_runs_on_every_sample_and_the_others_in_order() -> None:
    model, samples = _setup()
    fgsm, pgd, apgd = (
        _Counted(FGSM(eps=0.06)),
        _Counted(PGD(eps=0.06, steps=5)),
        _Counted(APGD(eps=0.06, steps=10)),
    )
    attacks = {"fgsm": fgsm, "pgd": pgd, "apgd": apgd}
    sets = CraftedSets(Timings()).get_all(attacks, model, target("unmasked"), samples)
    assert list(sets) == ["fgsm", "pgd", "apgd"]
    assert fgsm.samples == pgd.samples == 120
    assert apgd.samples == int(samples.correct(model, sets["pgd"]).sum()) < 120
    assert standing_after(list(attacks)) == {"fgsm": [], "pgd": [], "apgd": ["pgd"]}
