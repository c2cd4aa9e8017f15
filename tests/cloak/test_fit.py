from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from deepcloak.attacks.native import FGSM, PGD
from deepcloak.cloak.fit import Cloak, fit, layer_features
from deepcloak.cloak.mask import MaskedLayer
from deepcloak.cloak.taps import first_forward, resolve_layer
from deepcloak.errors import DataFormatError, DeepCloakError, LayerError
from deepcloak.models.runtime import eval_mode
from tests.conftest import DEFAULT_LAYERS
from tests.counting import CountSamples


def test_score_equals_brute_force_on_a_tiny_model(
    model: nn.Module, model_name: str, data: tuple[torch.Tensor, torch.Tensor], loader: DataLoader
) -> None:
    attack = FGSM(eps=0.1)
    cloak = fit(model, loader, attack=attack)
    # Brute force: per sample, features at the input of the final Linear, computed by hand.
    linear = model.get_submodule(DEFAULT_LAYERS[model_name])
    feats: list[torch.Tensor] = []
    h = linear.register_forward_pre_hook(lambda _m, a: feats.append(a[0].detach()))
    x, y = data
    expected = torch.zeros(linear.in_features, dtype=torch.float64)
    for i in range(x.shape[0]):
        xi, yi = x[i : i + 1], y[i : i + 1]
        x_adv = attack(model, xi, yi)
        with torch.no_grad():
            model(xi)
            model(x_adv)
        expected += (feats[-1] - feats[-2]).abs().double().sum(0)
    h.remove()
    torch.testing.assert_close(cloak.scores, expected, rtol=1e-5, atol=1e-5)
    assert cloak.n_samples == 40 and cloak.feature_shape == (linear.in_features,)


def test_fit_leaves_the_model_untouched_and_in_its_mode(
    model: nn.Module, loader: DataLoader
) -> None:
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, loader, attack=FGSM(eps=0.1))
    assert model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_mask_removes_top_scored_features_and_apply_inserts_it(
    model: nn.Module, loader: DataLoader
) -> None:
    cloak = fit(model, loader, attack=FGSM(eps=0.1))
    top = int(torch.argmax(cloak.scores))
    mask = cloak.mask(1 / cloak.n_features)
    assert mask.n_removed == 1 and mask.mask.flatten()[top] == 0
    cloak.apply(model, 0.5)
    assert isinstance(model.get_submodule(cloak.layer.name), MaskedLayer)


def test_apply_fold_gives_the_same_logits(model: nn.Module, loader: DataLoader) -> None:
    import copy

    cloak = fit(model, loader, attack=FGSM(eps=0.1))
    x = torch.rand(6, 1, 8, 8)
    hooked = cloak.apply(copy.deepcopy(model), 0.3)(x)
    folded = cloak.apply(copy.deepcopy(model), 0.3, fold=True)
    assert type(folded.get_submodule(cloak.layer.name)) is nn.Linear
    torch.testing.assert_close(folded(x), hooked, rtol=1e-6, atol=1e-6)


def test_random_score_skips_the_attack(model: nn.Module, loader: DataLoader) -> None:
    class Exploding:
        def __call__(self, *_: object) -> torch.Tensor:
            raise AssertionError("the random score must not run the attack")

        def spec(self) -> dict[str, str]:
            return {"name": "none"}

    cloak = fit(model, loader, attack=Exploding(), score="random", seed=3)  # type: ignore[arg-type]
    assert cloak.score_name == "random" and cloak.n_samples == 40


def test_max_samples_limits_the_fit(model: nn.Module, loader: DataLoader) -> None:
    assert fit(model, loader, attack=FGSM(eps=0.1), max_samples=20).n_samples == 20


def test_save_and_load_round_trip(model: nn.Module, loader: DataLoader, tmp_path: Path) -> None:
    cloak = fit(model, loader, attack=FGSM(eps=0.1), seed=5)
    path = tmp_path / "mask.safetensors"
    cloak.save(path, 0.25)
    loaded, ratio = Cloak.load(path)
    assert ratio == 0.25 and loaded.layer == cloak.layer and loaded.seed == 5
    assert loaded.attack == {"name": "fgsm", "eps": 0.1}
    torch.testing.assert_close(loaded.scores, cloak.scores)
    torch.testing.assert_close(loaded.mask(0.25).mask, cloak.mask(0.25).mask)
    meta = loaded.metadata(0.25)
    assert meta["n_removed"] == cloak.n_removed(0.25) and "deepcloak_version" in meta


def test_corrupt_mask_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(DataFormatError, match=r"bad\.safetensors"):
        Cloak.load(path)
    with pytest.raises(DataFormatError, match="no such file"):
        Cloak.load(tmp_path / "missing.safetensors")


def test_bad_ratio_writes_no_file(model: nn.Module, loader: DataLoader, tmp_path: Path) -> None:
    cloak = fit(model, loader, attack=FGSM(eps=0.1))
    with pytest.raises(DeepCloakError, match="ratio"):
        cloak.save(tmp_path / "m.safetensors", 1.0)
    with pytest.raises(DeepCloakError, match="ratio"):
        cloak.mask(-0.01)
    assert list(tmp_path.iterdir()) == []


def test_fit_bad_inputs(model: nn.Module) -> None:
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(DeepCloakError, match="no samples"):
        fit(model, DataLoader(TensorDataset(x[:0], y[:0]), batch_size=2))
    with pytest.raises(DeepCloakError, match=r"\[0, 1\]"):
        fit(model, DataLoader(TensorDataset(x * 255, y), batch_size=2))
    with pytest.raises(DeepCloakError, match="labels must be in"):
        fit(model, DataLoader(TensorDataset(x, y + 7), batch_size=2))
    with pytest.raises(LayerError, match="no layer named 'head'"):
        fit(model, DataLoader(TensorDataset(x, y), batch_size=2), layer="head")
    with pytest.raises(DeepCloakError, match="unknown scorer"):
        fit(model, DataLoader(TensorDataset(x, y), batch_size=2), score="best")


def test_nan_features_are_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(DeepCloakError, match="NaN or inf"):
        fit(model, DataLoader(TensorDataset(x, y), batch_size=2), attack=FGSM(eps=0.1))


def _previous_path_scores(model: nn.Module, loader: DataLoader, attack: FGSM | PGD) -> torch.Tensor:
    """The fit before the clean pass was reused: attack, then one pass over clean + adversarial."""
    ref = resolve_layer(model, example=next(iter(loader))[0][:1])
    total = torch.zeros(0, dtype=torch.float64)
    with eval_mode(model):
        for x, y in loader:
            clean, adv, _ = layer_features(model, ref, x, attack(model, x, y))
            batch = (adv.double() - clean.double()).abs().sum(0)
            total = batch if total.numel() == 0 else total + batch
    return total


@pytest.mark.parametrize("attack", [FGSM(eps=0.1), PGD(eps=0.1, steps=2)], ids=["fgsm", "pgd"])
def test_fit_reuses_the_attacks_clean_pass_and_scores_as_before(
    model: nn.Module, loader: DataLoader, attack: FGSM | PGD
) -> None:
    counted = CountSamples(model)
    cloak = fit(counted, loader, attack=attack)
    expected = _previous_path_scores(model, loader, attack)
    torch.testing.assert_close(cloak.scores, expected, rtol=1e-6, atol=1e-6)
    n = 40
    # FGSM's gradient pass is the clean pass: fit = attack (1 pass) + adversarial pass. PGD with
    # a random start never sees the clean batch, so the fit runs it (steps + 2 passes + 1 clean).
    # Both plus the one-sample pass that finds the default layer L.
    expected_samples = 2 * n if isinstance(attack, FGSM) else (attack.steps + 2 + 1) * n
    assert counted.samples - 1 == expected_samples


def test_first_forward_reuses_only_a_pass_on_the_same_inputs(model: nn.Module) -> None:
    ref = resolve_layer(model)
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with eval_mode(model), first_forward(model, ref) as first:
        model(x)
        model(x + 0.5)  # a later pass is ignored
    reused = first.reuse_for(x)
    assert reused is not None
    feats, logits = layer_features(model, ref, x)
    torch.testing.assert_close(reused[0], feats)
    torch.testing.assert_close(reused[1], logits)
    assert first.reuse_for(x + 1e-3) is None
    assert first.reuse_for(x[:2]) is None
