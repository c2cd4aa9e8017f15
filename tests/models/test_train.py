"""The training loop: learns digits quickly, is reproducible, and leaves no state behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from deepcloak.data.folder import read_image_folder
from deepcloak.data.images import read_images
from deepcloak.data.memory import ImageDataset
from deepcloak.errors import DeepCloakError
from deepcloak.models.train import Schedule, _lr_factor, accuracy, augment_batch, train_model
from deepcloak.models.zoo import create_model

Digits = tuple[TensorDataset, TensorDataset]


@pytest.fixture(scope="module")
def digits() -> Digits:
    """sklearn's 8x8 digits in [0, 1]: the first 1200 to train on, the other 597 to test."""
    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).div(16).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.int64)
    return TensorDataset(x[:1200], y[:1200]), TensorDataset(x[1200:], y[1200:])


def small_cnn(seed: int = 0, *, width: int = 8, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(
        "cnn", in_channels=1, num_classes=10, input_size=8, width=width, hidden=hidden
    )


def test_learns_digits(digits: Digits) -> None:
    train, test = digits
    model = small_cnn(width=16, hidden=64)
    result = train_model(model, train, epochs=10, batch_size=32, test_set=test)
    assert result.test_accuracy is not None and result.test_accuracy > 0.9
    assert result.epochs == 10 and len(result.losses) == 10
    assert result.losses[-1] < result.losses[0]
    assert result.seconds < 30
    assert not model.training


@pytest.mark.parametrize(("optimizer", "schedule"), [("adam", "cosine"), ("sgd", "constant")])
def test_other_optimizers_and_schedules(digits: Digits, optimizer: str, schedule: str) -> None:
    train, test = digits
    lr = 1e-2 if optimizer == "adam" else 0.05
    result = train_model(small_cnn(), train, epochs=6, batch_size=64, optimizer=optimizer,
                         schedule=schedule, lr=lr, test_set=test)  # fmt: skip
    assert result.test_accuracy is not None and result.test_accuracy > 0.85


def test_same_seed_same_weights(digits: Digits) -> None:
    train, _ = digits
    small = TensorDataset(*train[:300])

    def run(seed: int) -> dict[str, torch.Tensor]:
        # Dropout and augmentation make every random source count.
        model = small_cnn()
        model.classifier.insert(1, nn.Dropout(0.3))
        train_model(model, small, epochs=2, batch_size=32, augment=True, hflip=True, seed=seed)
        return model.state_dict()

    a, b, c = run(1), run(1), run(2)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_leaves_global_random_state_alone(digits: Digits) -> None:
    state = torch.get_rng_state()
    train_model(small_cnn(), TensorDataset(*digits[0][:64]), epochs=1, batch_size=32, seed=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_progress_reports_samples(digits: Digits) -> None:
    calls: list[tuple[str, int, int | None]] = []
    data = TensorDataset(*digits[0][:100])
    train_model(small_cnn(), data, epochs=2, batch_size=32, progress=lambda *a: calls.append(a))
    assert {task for task, _, _ in calls} == {"train"}
    done = [d for _, d, _ in calls]
    assert done == sorted(done) and done[-1] == calls[-1][2] == 2 * 96  # last partial batch dropped


def test_channels_last_trains_the_same_model(digits: Digits) -> None:
    data = TensorDataset(*digits[0][:128])
    a, b = small_cnn(), small_cnn()
    train_model(a, data, epochs=1, batch_size=32, augment=True, hflip=False)
    train_model(b, data, epochs=1, batch_size=32, augment=True, hflip=False, channels_last=True)
    assert b.features[0].weight.is_contiguous()  # handed back in the default layout
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, rtol=1e-4, atol=1e-5)


class ListDataset(Dataset):
    """A data set that is not a TensorDataset, so training goes through a DataLoader."""

    def __init__(self, data: TensorDataset) -> None:
        self.items = [data[i] for i in range(len(data))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[i]


def test_any_dataset_and_loader(digits: Digits) -> None:
    train, test = digits
    model = small_cnn()
    result = train_model(model, ListDataset(train), epochs=6, batch_size=64, lr=0.05)
    acc_loader = accuracy(model, DataLoader(test, batch_size=100))
    assert acc_loader == accuracy(model, ListDataset(test)) == accuracy(model, test, batch_size=7)
    assert acc_loader > 0.85 and result.test_accuracy is None


def test_accuracy_matches_brute_force_and_restores_modes(digits: Digits) -> None:
    _, test = digits
    model = small_cnn()
    model.train()
    model.features[1].eval()  # a frozen batch norm inside a training model must stay frozen
    modes = {name: m.training for name, m in model.named_modules()}
    acc = accuracy(model, test, batch_size=50)
    assert {name: m.training for name, m in model.named_modules()} == modes
    x, y = test.tensors
    model.eval()
    with torch.no_grad():
        expected = sum(int(model(x[i : i + 1]).argmax() == y[i]) for i in range(len(y))) / len(y)
    assert acc == pytest.approx(expected)


@pytest.mark.parametrize("total", [1, 2, 3, 100])
def test_schedules(total: int) -> None:
    one = [_lr_factor(Schedule.ONECYCLE, step, total) for step in range(total)]
    cos = [_lr_factor(Schedule("cosine"), step, total) for step in range(total)]
    assert one[0] == pytest.approx(0.04) and cos[0] == 1.0
    assert all(0 <= f <= 1 for f in one + cos)
    if total == 100:
        peak = one.index(max(one))
        assert peak == 25 and one[peak] == 1.0 and one[-1] < 1e-3 and cos[-1] < 1e-3
        assert cos == sorted(cos, reverse=True) and one[peak:] == sorted(one[peak:], reverse=True)


def test_augment_batch_crops_windows_and_flips() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(16, 2, 6, 6, generator=gen)
    out = augment_batch(x, padding=2, hflip=True, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        # Brute force: the output is some 6x6 window of the padded image, maybe mirrored.
        windows = [padded[i, :, r : r + 6, c : c + 6] for r in range(5) for c in range(5)]
        windows += [w.flip(2) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(augment_batch(x, padding=0, hflip=False), x)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"epochs": 1, "batch_size": 0}, "batch_size must be >= 1"),
        ({"epochs": 1, "momentum_": 0.5}, "unknown training option"),
        ({"epochs": 1, "optimizer": "lbfgs"}, "unknown optimizer"),
        ({"epochs": 1, "schedule": "step"}, "schedule"),
        ({"epochs": 1, "lr": 1e30, "schedule": "constant"}, "diverged"),
    ],
)
def test_bad_options_and_divergence(digits: Digits, kwargs: dict, match: str) -> None:
    # No batch norm, so that a huge learning rate really blows the logits up.
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(DeepCloakError, match=match):
        train_model(linear, TensorDataset(*digits[0][:64]), **{"batch_size": 32, **kwargs})


def test_a_streamed_folder_trains_the_weights_of_its_in_memory_copy(tmp_path: Path) -> None:
    """Whichever path batches the data (sliced tensors, a DataLoader decoding files, a
    TensorDataset), seeded training with shuffling and augmentation gives the same weights."""
    bunch = load_digits()
    for i, (pixels, label) in enumerate(zip(bunch.images[:120], bunch.target[:120], strict=True)):
        path = tmp_path / str(label) / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 15).astype(np.uint8)).save(path)  # 0..16 -> 0..240
    folder = read_image_folder(tmp_path, split="train", image_size=None)
    pixels = torch.from_numpy(read_images([folder.path(i) for i in range(len(folder))],
                                          mode="L", size=(8, 8)))  # fmt: skip
    held = ImageDataset(pixels, folder.labels, name="d", classes=folder.classes)

    def weights(data: Dataset[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        model = small_cnn()
        train_model(model, data, epochs=2, batch_size=16, augment=True, hflip=True, seed=4)
        return model.state_dict()

    reference = weights(held)
    for data in (folder, TensorDataset(*held.tensors())):
        assert all(torch.equal(v, reference[k]) for k, v in weights(data).items())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"momentum": 1.5}, r"momentum must be a finite number in \[0, 1\]"),
        ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0"),
        ({"label_smoothing": float("inf")}, "label_smoothing must be a finite number"),
        ({"crop_padding": -1}, "crop_padding must be an integer >= 0"),
    ],
)
def test_train_settings_out_of_range_are_refused_before_any_work(
    settings: dict[str, object], message: str
) -> None:
    # `train --lr -1` once ended in torch's ValueError traceback from the optimiser (issue 15).
    from deepcloak.models.train import TrainSettings

    with pytest.raises(DeepCloakError, match=message):
        TrainSettings(epochs=1, **settings)  # type: ignore[arg-type]
