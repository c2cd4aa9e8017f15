"""Tests for deepcloak.data.sets: built-in sets, IDX / CIFAR-10 / image-folder readers,
safe unpickling.

Files are written here byte by byte from the formats' specifications, and loaded values are
compared with the arrays that went in, not with the loader's own output.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close
from torch.utils.data import DataLoader

from deepcloak.data.memory import ImageDataset
from deepcloak.data.sets import DATA_ROOT_ENV, DATASETS, load_dataset
from deepcloak.errors import DataFormatError, DeepCloakError
from tests.realdata import skip_without_fashion_mnist

RNG = np.random.default_rng(1234)


# ------------------------------------------------------------------------------------ helpers
def write_idx(path: Path, array: np.ndarray, *, magic: int | None = None) -> Path:
    """Write ``array`` (uint8) as an IDX file; gzip it when ``path`` ends in ``.gz``."""
    magic = 0x00000800 | array.ndim if magic is None else magic
    raw = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def write_mnist(folder: Path, *, gz: bool, n_train: int = 7, n_test: int = 5) -> dict:
    """Fake MNIST IDX files of random 28x28 images; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[prefix] = (images, labels)
    return out


def cifar_records(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random CIFAR records: pixels ``(n, 3072)`` (R plane, G plane, B plane) and labels."""
    return RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8), RNG.integers(0, 10, size=n)


CIFAR_NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar_bin(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    written = {}
    for stem, n in [(f"data_batch_{i}", i) for i in range(1, 6)] + [("test_batch", 4)]:
        pixels, labels = cifar_records(n)
        records = np.concatenate([labels[:, None].astype(np.uint8), pixels], axis=1)
        (folder / f"{stem}.bin").write_bytes(records.tobytes())
        written[stem] = (pixels, labels)
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR_NAMES) + "\n\n")
    return written


def py2_style_pickle(obj: object) -> bytes:
    """A pickle like CIFAR-10's Python 2 ones: numpy.core module names, and the dtype's strings
    ("u1", "|") as Python 2 ``str``, which ``encoding="bytes"`` turns into ``bytes``.

    Protocol 3 stores bytes natively (protocol 2 under Python 3 would route them through
    ``_codecs.encode``) and writes globals as text, so the Python 2 forms can be put back.
    """
    raw = pickle.dumps(obj, protocol=3).replace(b"numpy._core.", b"numpy.core.")
    for text in (b"u1", b"|"):  # BINUNICODE -> SHORT_BINBYTES
        raw = raw.replace(
            b"X" + struct.pack("<I", len(text)) + text, b"C" + bytes([len(text)]) + text
        )
    return raw


def write_cifar_py(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True)
    written = {}
    for stem, n in [(f"data_batch_{i}", i + 1) for i in range(1, 6)] + [("test_batch", 3)]:
        pixels, labels = cifar_records(n)
        batch = {
            b"batch_label": stem.encode(),
            b"labels": [int(v) for v in labels],
            b"data": pixels,
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        (folder / stem).write_bytes(py2_style_pickle(batch))
        written[stem] = (pixels, labels)
    meta = {b"label_names": [s.encode() for s in CIFAR_NAMES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_style_pickle(meta))
    return written


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# ------------------------------------------------------------------------------------- digits
def test_digits_shapes_range_and_split() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    # 1797 images; sklearn rounds the 20% test share up: ceil(359.4) = 360.
    assert (len(train), len(test)) == (1437, 360)
    assert train.input_shape == test.input_shape == (1, 8, 8)
    assert train.num_classes == 10 and train.classes == [str(d) for d in range(10)]
    x, y = train.tensors()
    assert x.shape == (1437, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
    assert torch.equal(x * 16, (x * 16).round())  # exactly k/16, as the source's 0..16

    # Together the splits are exactly sklearn's samples (as a multiset of (pixels, label)).
    bunch = load_digits()
    expected = Counter(
        (row.tobytes(), int(t)) for row, t in zip(bunch.data / 16, bunch.target, strict=True)
    )
    got: Counter[tuple[bytes, int]] = Counter()
    for part in (train, test):
        px, lab = part.tensors()
        px64 = px.reshape(len(part), 64).double().numpy()
        got.update((row.tobytes(), int(t)) for row, t in zip(px64, lab, strict=True))
    assert got == expected

    # Stratified: every class keeps about 20% of its samples in the test split.
    counts = np.bincount(test.labels.numpy(), minlength=10)
    totals = np.bincount(bunch.target, minlength=10)
    assert np.all(np.abs(counts - 0.2 * totals) <= 1)


def test_digits_is_deterministic_and_limit_is_seeded() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    s0, s0_again = load_dataset("digits", limit=50), load_dataset("digits", limit=50)
    s1 = load_dataset("digits", limit=50, seed=1)
    assert len(s0) == 50 and torch.equal(s0.images, s0_again.images)
    assert not torch.equal(s0.images, s1.images)
    # Every kept sample comes from the full split.
    full = {(img.numpy().tobytes(), int(t)) for img, t in zip(a.images, a.labels, strict=True)}
    assert all(
        (img.numpy().tobytes(), int(t)) in full for img, t in zip(s0.images, s0.labels, strict=True)
    )
    assert len(load_dataset("digits", split="test", limit=10_000)) == 360


def test_dataloader_batches_are_float_and_int64() -> None:
    x, y = next(iter(DataLoader(load_dataset("digits", limit=8), batch_size=8)))
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.int64


# ------------------------------------------------------------------------------ fashion-mnist
@pytest.mark.realdata
@skip_without_fashion_mnist
def test_real_fashion_mnist_test_split() -> None:
    data = load_dataset("fashion-mnist", split="test", limit=200)
    x, y = data.tensors()
    assert x.shape == (200, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and 0.5 < float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"


# ----------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_files(tmp_path: Path, gz: bool) -> None:
    written = write_mnist(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_dataset("mnist", split=split, root=tmp_path)
        images, labels = written[prefix]
        x, y = data.tensors()
        assert x.shape == (len(images), 1, 28, 28)
        assert_close(x, torch.from_numpy(images[:, None].astype(np.float32) / 255))
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
        assert data[2][0].shape == (1, 28, 28) and int(data[2][1]) == int(labels[2])


def test_fashion_mnist_with_root(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    data = load_dataset("fashion-mnist", root=tmp_path)
    assert len(data) == 7 and data.name == "fashion-mnist" and data.classes[1] == "Trouser"


def test_fashion_mnist_default_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_mnist(tmp_path / "fashion-mnist", gz=False)
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert len(load_dataset("fashion-mnist", split="test")) == 5
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "empty"))
    with pytest.raises(
        DataFormatError, match=r"empty/fashion-mnist: no such folder.*DEEPCLOAK_DATA_ROOT"
    ):
        load_dataset("fashion-mnist")


def test_truncated_idx_names_the_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[: 16 + 1000])
    with pytest.raises(DataFormatError, match=r"t10k-images-idx3-ubyte.*3920 bytes.*found 1000"):
        load_dataset("mnist", split="test", root=tmp_path)


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataFormatError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("mnist", root=tmp_path)


def test_bad_magic(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    labels = RNG.integers(0, 10, size=(7, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)  # an images file as labels
    with pytest.raises(DataFormatError, match=r"train-labels.*0x00000803.*0x00000801"):
        load_dataset("mnist", root=tmp_path)


def test_idx_count_mismatch_and_label_range(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(6, np.uint8))
    with pytest.raises(DataFormatError, match=r"7 images but .* 6 labels"):
        load_dataset("mnist", root=tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 10, 4, 5, 6], np.uint8))
    with pytest.raises(DataFormatError, match=r"label 10 at record 3 is outside 0..9"):
        load_dataset("mnist", root=tmp_path)


def test_missing_idx_file_names_path_and_expected_files(tmp_path: Path) -> None:
    write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataFormatError) as info:
        load_dataset("mnist", split="test", root=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in message
    assert "train-images-idx3-ubyte" in message and "t10k-images-idx3-ubyte" in message


def test_mnist_needs_root(tmp_path: Path) -> None:
    with pytest.raises(DeepCloakError, match="pass the folder"):
        load_dataset("mnist")
    with pytest.raises(DataFormatError, match="no such folder"):
        load_dataset("mnist", root=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------ CIFAR-10
@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_binary(tmp_path: Path, point_at: str) -> None:
    written = write_cifar_bin(tmp_path / "cifar-10-batches-bin")
    root = tmp_path if point_at == "parent" else tmp_path / "cifar-10-batches-bin"
    train = load_dataset("cifar10", root=root)
    test = load_dataset("cifar10", split="test", root=root)
    assert (len(train), len(test)) == (1 + 2 + 3 + 4 + 5, 4)
    assert train.input_shape == (3, 32, 32) and train.classes == CIFAR_NAMES
    pixels, labels = written["test_batch"]
    x, y = test.tensors()
    # Record layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    red = pixels[:, :1024].reshape(-1, 32, 32).astype(np.float32) / 255
    blue = pixels[:, 2048:].reshape(-1, 32, 32).astype(np.float32) / 255
    assert_close(x[:, 0], torch.from_numpy(red))
    assert_close(x[:, 2], torch.from_numpy(blue))
    assert y.tolist() == labels.tolist()
    assert train.labels[-5:].tolist() == written["data_batch_5"][1].tolist()


def test_cifar_binary_misaligned(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(folder)
    (folder / "test_batch.bin").write_bytes(b"\x01" * (3073 * 2 + 5))
    with pytest.raises(DataFormatError, match=r"test_batch.bin.*6151 bytes.*3073-byte records"):
        load_dataset("cifar10", split="test", root=tmp_path)


def test_cifar_python(tmp_path: Path) -> None:
    written = write_cifar_py(tmp_path / "cifar-10-batches-py")
    train = load_dataset("cifar10", root=tmp_path)
    test = load_dataset("cifar10", split="test", root=tmp_path)
    assert (len(train), len(test)) == (2 + 3 + 4 + 5 + 6, 3)
    assert test.classes == CIFAR_NAMES
    pixels, labels = written["test_batch"]
    green = pixels[:, 1024:2048].reshape(-1, 32, 32).astype(np.float32) / 255
    assert_close(test.tensors()[0][:, 1], torch.from_numpy(green))
    assert test.labels.tolist() == labels.tolist()
    first = written["data_batch_1"][0].reshape(-1, 3, 32, 32)
    assert torch.equal(train.images[:2], torch.from_numpy(first))


def test_cifar_python_protocol5(tmp_path: Path) -> None:
    """A batch re-saved from Python 3 with protocol 5 (arrays rebuilt via _frombuffer)."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder)
    pixels, labels = cifar_records(2)
    (folder / "test_batch").write_bytes(
        pickle.dumps({"data": pixels, "labels": labels.tolist()}, protocol=5)
    )
    assert torch.equal(
        load_dataset("cifar10", split="test", root=tmp_path).images.reshape(2, -1),
        torch.from_numpy(pixels),
    )


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_py(folder)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    )
    with pytest.raises(DataFormatError, match=r"test_batch.*object that is not allowed"):
        load_dataset("cifar10", split="test", root=tmp_path)
    assert not marker.exists()


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="cifar-10-batches-bin"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DeepCloakError, match="needs root"):
        load_dataset("cifar10")


# --------------------------------------------------------------------------------- imagefolder
def test_imagefolder_flat_grey_split_80_20(tmp_path: Path) -> None:
    pictures = {}
    for cls in ("cat", "dog"):
        for i in range(5):
            pixels = RNG.integers(0, 256, size=(6, 4), dtype=np.uint8)  # (H, W)
            write_png(tmp_path / cls / f"{i}.png", pixels)
            pictures[pixels.tobytes()] = cls
    train = load_dataset("imagefolder", root=tmp_path)
    test = load_dataset("imagefolder", split="test", root=tmp_path)
    assert (len(train), len(test)) == (8, 2)
    assert train.classes == ["cat", "dog"] and train.input_shape == (1, 6, 4)
    assert sorted(test.labels.tolist()) == [0, 1]  # one of each class held out
    seen = []
    for part in (train, test):
        x, y = part.tensors()
        for img, label in zip(x.mul(255).round().to(torch.uint8), y, strict=True):
            seen.append(img[0].numpy().tobytes())
            assert pictures[seen[-1]] == part.classes[int(label)]
    assert sorted(seen) == sorted(pictures)  # each image in exactly one split
    again = load_dataset("imagefolder", split="test", root=tmp_path)
    assert torch.equal(again.tensors()[0], test.tensors()[0])


def test_imagefolder_split_folders_rgb_and_resize(tmp_path: Path) -> None:
    red = np.zeros((5, 7, 3), np.uint8)
    red[..., 0] = 200
    for split in ("train", "test"):
        write_png(tmp_path / split / "a" / "x.png", red)
        write_png(tmp_path / split / "b" / "y.png", np.full((5, 7), 90, np.uint8))  # grey
    write_png(tmp_path / "train" / "b" / "z.png", np.full((5, 7), 10, np.uint8))
    train = load_dataset("imagefolder", root=tmp_path)
    assert len(train) == 3 and train.input_shape == (3, 5, 7)
    assert_close(train[0][0][:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    assert_close(train[1][0][:, 2, 3], torch.full((3,), 90 / 255))
    resized = load_dataset("imagefolder", split="test", root=tmp_path, image_size=4)
    assert resized.input_shape == (3, 4, 4) and len(resized) == 2
    assert_close(resized[1][0], torch.full((3, 4, 4), 90 / 255))  # a flat image stays flat


def test_imagefolder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="no class folders"):
        load_dataset("imagefolder", root=tmp_path / "empty")
    (tmp_path / "one" / "cls").mkdir(parents=True)
    with pytest.raises(DataFormatError, match=r"cls: no images"):
        load_dataset("imagefolder", root=tmp_path / "one")

    root = tmp_path / "sizes"
    write_png(root / "a" / "1.png", np.zeros((4, 4), np.uint8))
    write_png(root / "a" / "2.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataFormatError, match="differ in size; pass image_size"):
        load_dataset("imagefolder", root=root)

    bad = tmp_path / "bad"
    write_png(bad / "a" / "1.png", np.zeros((4, 4), np.uint8))
    (bad / "a" / "2.png").write_bytes(b"this is not a png")
    with pytest.raises(DataFormatError, match=r"2\.png: not a readable image"):
        load_dataset("imagefolder", root=bad)
    good = (bad / "a" / "1.png").read_bytes()
    (bad / "a" / "2.png").write_bytes(good[: len(good) // 2])  # valid header, cut-off data
    with pytest.raises(DataFormatError, match=r"2\.png"):  # on listing or on use
        load_dataset("imagefolder", root=bad).tensors()


# ----------------------------------------------------------------------------------- arguments
def test_unknown_name_lists_the_data_sets() -> None:
    assert DATASETS.names() == ["cifar10", "digits", "fashion-mnist", "imagefolder", "mnist"]
    with pytest.raises(DeepCloakError, match="cifar10, digits, fashion-mnist, imagefolder, mnist"):
        load_dataset("imagenet")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"split": "val"}, "unknown split 'val'; expected one of: train, test"),
        ({"limit": 0}, "limit must be a positive"),
        ({"image_size": 8}, "image_size applies only to 'imagefolder'"),
    ],
)
def test_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DeepCloakError, match=pattern):
        load_dataset("digits", **kwargs)


def test_image_dataset_validates_and_subsets() -> None:
    images = torch.arange(3 * 4, dtype=torch.uint8).reshape(3, 1, 2, 2)
    data = ImageDataset(images, torch.tensor([0, 1, 1]), name="t", classes=["a", "b"])
    sub = data.subset([2, 0])
    assert torch.equal(sub.images, images[[2, 0]]) and sub.labels.tolist() == [1, 0]
    assert sub.classes == ["a", "b"] and sub.name == "t"
    assert_close(data[1][0], images[1].float() / 255)
    with pytest.raises(DeepCloakError, match="uint8"):
        ImageDataset(images.float(), torch.tensor([0, 1, 1]), name="t", classes=["a", "b"])
    with pytest.raises(DeepCloakError, match=r"labels must lie in 0\.\.1"):
        ImageDataset(images, torch.tensor([0, 1, 2]), name="t", classes=["a", "b"])


def test_split_off_holds_out_disjoint_samples() -> None:
    ds = load_dataset("digits", split="train")
    rest, held = ds.split_off(100, seed=3)
    assert len(held) == 100 and len(rest) == len(ds) - 100
    both = torch.cat([rest.images, held.images]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == torch.unique(ds.images.flatten(1), dim=0).shape[0]
    torch.testing.assert_close(ds.split_off(100, seed=3)[1].labels, held.labels)
    with pytest.raises(DeepCloakError, match="cannot hold out"):
        ds.split_off(len(ds))


def test_image_dataset_still_imports_from_sets_with_a_warning() -> None:
    import deepcloak.data.sets as sets

    with pytest.warns(DeprecationWarning, match=r"deepcloak\.data\.memory\.ImageDataset"):
        moved = sets.ImageDataset
    assert moved is ImageDataset
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        sets.NoSuchThing  # noqa: B018
