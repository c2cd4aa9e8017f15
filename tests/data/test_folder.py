"""Image folders stream from disk: the same samples as the in-memory reader, in flat memory.

Expected pixels come from Pillow directly (open, convert, resize) or from the in-memory reader
(:func:`deepcloak.data.images.read_images`) the data set used to be built with.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcloak.data import images
from deepcloak.data.folder import ImageFolderDataset
from deepcloak.data.loader import make_loader
from deepcloak.data.memory import ImageDataset
from deepcloak.data.sets import ImageSet, load_dataset
from deepcloak.errors import DataFormatError, DeepCloakError

RNG = np.random.default_rng(7)


def write_mixed_folder(root: Path, *, per_class: int = 5) -> None:
    """Three classes of grey PNGs, RGB JPEGs and palette PNGs of two sizes."""
    for c in ("ant", "bee", "cow"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            if i % 3 == 0:
                pixels = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / c / f"{i}.jpg", quality=80)
            elif i % 3 == 1:
                Image.fromarray(RNG.integers(0, 256, (12, 10), dtype=np.uint8)).save(
                    root / c / f"{i}.png"
                )
            else:
                pixels = RNG.integers(0, 256, (9, 14, 3), dtype=np.uint8)
                Image.fromarray(pixels).convert("P").save(root / c / f"{i}.png")


def write_noise_folder(root: Path, n: int, *, side: int = 48) -> Path:
    """``n`` RGB noise PNGs of ``side x side`` in two classes."""
    rng = np.random.default_rng(n)
    for i in range(n):
        path = root / f"c{i % 2}" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    return root


def in_memory_copy(data: ImageFolderDataset) -> ImageDataset:
    """The same samples decoded at once by the in-memory reader."""
    paths = [data.path(i) for i in range(len(data))]
    pixels = images.read_images(paths, mode=data.mode, size=data.size)
    return ImageDataset(
        torch.from_numpy(pixels), data.labels.clone(), name=data.name, classes=data.classes
    )


def test_samples_equal_pillows_own_decoding(tmp_path: Path) -> None:
    for split in ("train", "test"):
        write_mixed_folder(tmp_path / split, per_class=3 if split == "train" else 2)
    data = load_dataset("imagefolder", split="test", root=tmp_path, image_size=7)
    assert isinstance(data, ImageFolderDataset) and isinstance(data, ImageSet)
    expected = [
        (tmp_path / "test" / c / name, label)
        for label, c in enumerate(["ant", "bee", "cow"])
        for name in ["0.jpg", "1.png"]  # classes in order, files sorted by name
    ]
    assert len(data) == len(expected) and data.input_shape == (3, 7, 7)
    for i, (path, label) in enumerate(expected):
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB").resize((7, 7), Image.Resampling.BILINEAR))
        x, y = data[i]
        assert data.path(i) == path and int(y) == label and y.dtype == torch.int64
        assert x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(pixels.transpose(2, 0, 1).copy()).float() / 255)


@pytest.mark.parametrize("limit", [None, 4])
def test_streaming_equals_the_in_memory_reader(tmp_path: Path, limit: int | None) -> None:
    write_mixed_folder(tmp_path, per_class=7)
    for split in ("train", "test"):
        data = load_dataset("imagefolder", split=split, root=tmp_path, image_size=16, limit=limit)
        assert isinstance(data, ImageFolderDataset)
        reference = in_memory_copy(data)
        x, y = data.tensors()
        x_ref, y_ref = reference.tensors()
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
        assert all(torch.equal(data[i][0], reference[i][0]) for i in range(len(data)))
        held = data.to_memory()
        assert torch.equal(held.images, reference.images) and torch.equal(held.labels, y_ref)
    train = load_dataset("imagefolder", root=tmp_path, image_size=16)
    test = load_dataset("imagefolder", split="test", root=tmp_path, image_size=16)
    assert (len(train), len(test)) == (15, 6)  # 2 of each class's 7 held out (20 %, rounded up)
    files = {train.path(i) for i in range(15)} | {test.path(i) for i in range(6)}
    assert files == {p for p in tmp_path.glob("*/*") if p.is_file()}


def test_subset_and_split_off_keep_files_and_labels(tmp_path: Path) -> None:
    write_mixed_folder(tmp_path, per_class=7)
    data = load_dataset("imagefolder", root=tmp_path, image_size=5)
    assert isinstance(data, ImageFolderDataset)
    sub = data.subset([4, 0, 9])
    assert [sub.path(i) for i in range(3)] == [data.path(i) for i in (4, 0, 9)]
    assert sub.labels.tolist() == data.labels[[4, 0, 9]].tolist()
    assert torch.equal(sub[0][0], data[4][0])
    rest, held = data.split_off(5, seed=1)
    both = sorted(str(s.path(i)) for s in (rest, held) for i in range(len(s)))
    assert both == sorted(str(data.path(i)) for i in range(len(data)))
    assert isinstance(held, ImageFolderDataset) and len(held) == 5
    assert "ImageFolderDataset(name='imagefolder', samples=15" in repr(data)


def test_bad_construction() -> None:
    with pytest.raises(DeepCloakError, match="2 paths but 1 labels"):
        ImageFolderDataset(["a", "b"], [0], name="t", classes=["x"], mode="L", size=(2, 2))
    with pytest.raises(DeepCloakError, match=r"labels must lie in 0\.\.0"):
        ImageFolderDataset(["a"], [1], name="t", classes=["x"], mode="L", size=(2, 2))
    with pytest.raises(DeepCloakError, match="mode must be 'L' or 'RGB'"):
        ImageFolderDataset(["a"], [0], name="t", classes=["x"], mode="CMYK", size=(2, 2))


def _peak_bytes(run: object) -> int:
    """Peak bytes traced while calling ``run`` (Python objects and NumPy arrays; not torch's
    own buffers, which tracemalloc does not see)."""
    tracemalloc.start()
    try:
        run()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_iterating_a_folder_keeps_memory_flat_in_its_size(tmp_path: Path) -> None:
    sets = {
        n: load_dataset("imagefolder", root=write_noise_folder(tmp_path / str(n), n))
        for n in (50, 400)
    }

    def iterate(data: ImageSet) -> None:
        for _ in make_loader(data, batch_size=16):
            pass

    iterate(sets[50])  # first use imports and caches what it needs: not part of the figure
    peak = {n: _peak_bytes(lambda d=data: iterate(d)) for n, data in sets.items()}
    decoded = 48 * 48 * 3  # bytes of one image held in memory
    # Flat: 8x the images, about the same peak (a batch or two of decoded images).
    assert peak[400] < 1.5 * peak[50] + 64 * decoded, peak
    assert peak[400] < 0.25 * len(sets[400]) * decoded, peak
    # The measure can fail: reading the same 320 images into memory traces them all.
    folder = sets[400]
    assert isinstance(folder, ImageFolderDataset)
    whole = _peak_bytes(lambda: in_memory_copy(folder))
    assert whole > len(folder) * decoded > 4 * peak[400]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_image_is_the_same_one_line_error_with_or_without_workers(
    tmp_path: Path, workers: int
) -> None:
    root = write_noise_folder(tmp_path / "images", 4, side=8)
    data = load_dataset("imagefolder", root=root)
    for path in root.glob("*/*.png"):
        path.write_bytes(b"not an image")  # spoilt after the listing: decoding tells
    with pytest.raises(DataFormatError) as caught:
        for _ in make_loader(data, batch_size=2, workers=workers):
            pass
    message = str(caught.value)
    assert "\n" not in message and "not a readable image" in message, message
    assert "DataLoader worker" not in message and "Traceback" not in message
