"""make_loader: sliced tensors and DataLoaders serve the same batches, sharded alike."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from deepcloak.data import images
from deepcloak.data.folder import ImageFolderDataset, read_image_folder
from deepcloak.data.loader import TensorLoader, make_loader
from deepcloak.data.memory import ImageDataset
from deepcloak.data.sets import load_dataset
from deepcloak.distributed import Distributed
from deepcloak.errors import DeepCloakError


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_equal_the_dataloaders_bit_for_bit(drop_last: bool) -> None:
    data = load_dataset("digits")  # 1437 samples: the last batch of 100 is partial
    ours = list(TensorLoader(data, batch_size=100, drop_last=drop_last))
    theirs = list(DataLoader(data, batch_size=100, drop_last=drop_last))
    assert len(ours) == len(theirs) == len(TensorLoader(data, batch_size=100, drop_last=drop_last))
    for (x, y), (x_ref, y_ref) in zip(ours, theirs, strict=True):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_shuffled_passes_cover_every_sample_once_reproducibly() -> None:
    data = load_dataset("digits", split="test")  # 360 samples
    loader = TensorLoader(
        data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    first, second = list(loader), list(loader)
    x_all = torch.cat([x for x, _ in first])
    y_all = torch.cat([y for _, y in first])
    # Each sample exactly once: sort both by (label, pixels) and compare with the data set.
    x_ref, y_ref = data.tensors()
    key = lambda x, y: sorted(zip(y.tolist(), x.flatten(1).tolist(), strict=True))  # noqa: E731
    assert key(x_all, y_all) == key(x_ref, y_ref)
    assert not torch.equal(y_all, torch.cat([y for _, y in second]))  # a new order each pass
    again = TensorLoader(
        data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(batch_size: object) -> None:
    with pytest.raises(DeepCloakError, match="batch_size must be a positive int"):
        TensorLoader(load_dataset("digits", limit=4), batch_size=batch_size)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ make_loader
def folder_and_copy(tmp_path: Path, n: int = 23) -> tuple[ImageFolderDataset, ImageDataset]:
    """A streaming folder of ``n`` small RGB images and the same samples held in memory."""
    rng = np.random.default_rng(0)
    for i in range(n):
        path = tmp_path / f"c{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)).save(path)
    folder = read_image_folder(tmp_path, split="train", image_size=None)
    pixels = images.read_images(
        [folder.path(i) for i in range(len(folder))], mode="RGB", size=(5, 4)
    )
    held = ImageDataset(torch.from_numpy(pixels), folder.labels, name="t", classes=folder.classes)
    return folder, held


def concat(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_path_serves_the_same_batches(tmp_path: Path, shuffle: bool) -> None:
    folder, held = folder_and_copy(tmp_path)
    tensors = TensorDataset(*held.tensors())
    kw = {"batch_size": 4, "shuffle": shuffle, "seed": 5}
    ref = list(make_loader(held, **kw))
    assert len(ref) == 5  # 17 training samples of 23: 4 + 4 + 4 + 4 + 1
    assert isinstance(make_loader(held, **kw), TensorLoader)
    assert isinstance(make_loader(folder, **kw), DataLoader)
    others = [make_loader(folder, **kw), make_loader(folder, workers=2, **kw),
              make_loader(tensors, **kw)]  # fmt: skip
    if not shuffle:
        others.append(DataLoader(held, batch_size=4))
    for other in others:
        batches = list(other)
        assert len(batches) == len(other) == len(ref)
        for (x, y), (x_ref, y_ref) in zip(batches, ref, strict=True):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    x_all, _ = concat(ref)  # each sample once
    assert sorted(x_all.flatten(1).tolist()) == sorted(held.tensors()[0].flatten(1).tolist())


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world", [2, 3, 7])
def test_shards_hold_whole_batches_of_the_unsharded_pass(
    tmp_path: Path, shuffle: bool, world: int
) -> None:
    """Rank r serves batches r, r + world, ... of one process's pass, each the same samples;
    an uneven last batch stays whole and 7 ranks for 5 batches leave two ranks without any."""
    folder, held = folder_and_copy(tmp_path)  # 17 training samples: batches 4, 4, 4, 4, 1
    for data in (folder, held):
        ref = list(make_loader(data, batch_size=4, shuffle=shuffle, seed=2))
        got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for rank in range(world):
            shard = Distributed(rank=rank, world_size=world)
            fresh = make_loader(data, batch_size=4, shuffle=shuffle, seed=2)  # its first pass
            for loader in (
                make_loader(data, batch_size=4, shuffle=shuffle, seed=2, shard=shard),
                fresh.sharded(shard),  # type: ignore[attr-defined]
            ):
                batches = list(loader)
                assert len(batches) == len(loader) == len(range(rank, len(ref), world))
                for b, batch in zip(range(rank, len(ref), world), batches, strict=True):
                    got[b] = batch
        assert sorted(got) == list(range(len(ref)))  # each batch once, none padded
        for b, (x_ref, y_ref) in enumerate(ref):
            assert torch.equal(got[b][0], x_ref) and torch.equal(got[b][1], y_ref)


def test_a_sharded_stream_loader_keeps_its_workers_between_passes(tmp_path: Path) -> None:
    folder, _ = folder_and_copy(tmp_path)
    full = make_loader(folder, batch_size=4, workers=1)
    shard = Distributed(rank=1, world_size=2)
    assert full.sharded(shard) is full.sharded(shard)  # type: ignore[attr-defined]
    assert full.sharded(Distributed()) is full  # type: ignore[attr-defined]
    with pytest.raises(DeepCloakError, match="already one process's shard"):
        full.sharded(shard).sharded(shard)  # type: ignore[attr-defined]


def test_a_shared_generator_moves_as_under_a_dataloader() -> None:
    """Training draws its augmentation from the generator that orders its batches: both paths
    must draw from it exactly what ``DataLoader(shuffle=True)`` drew, so weights stay the same."""
    data = load_dataset("digits", split="test")  # 360 samples
    trace = {}
    for name in ("dataloader", "tensorloader", "stream"):
        gen = torch.Generator().manual_seed(9)
        if name == "dataloader":
            loader = DataLoader(data, batch_size=64, shuffle=True, generator=gen, drop_last=True)
        else:
            sub = data if name == "tensorloader" else ListDataset(data)
            loader = make_loader(sub, batch_size=64, shuffle=True, generator=gen, drop_last=True)
        labels, noise = [], []
        for _ in range(2):  # two passes, a draw after every batch as augmentation does
            for _, y in loader:
                labels.append(y)
                noise.append(torch.rand(3, generator=gen))
        trace[name] = (torch.cat(labels), torch.cat(noise), gen.get_state())
    for name in ("tensorloader", "stream"):
        assert all(torch.equal(a, b) for a, b in zip(trace[name], trace["dataloader"], strict=True))


class ListDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A plain map-style data set (no tensors to slice): served through a DataLoader."""

    def __init__(self, data: ImageDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[i]


def test_loader_settings_and_fresh_batches() -> None:
    stream = make_loader(ListDataset(load_dataset("digits", limit=8)), batch_size=4, workers=2)
    assert isinstance(stream, DataLoader)
    assert (stream.num_workers, stream.persistent_workers) == (2, True)
    assert stream.pin_memory is False  # no device named: nothing to pin for
    cuda = make_loader(ListDataset(load_dataset("digits", limit=8)), batch_size=4, device="cuda")
    assert isinstance(cuda, DataLoader) and cuda.pin_memory is torch.cuda.is_available()
    x = torch.arange(6.0).reshape(6, 1)
    for xb, _ in make_loader(TensorDataset(x, torch.zeros(6, dtype=torch.int64)), batch_size=4):
        xb += 100  # a batch is a new tensor: the data set stays as it was
    assert torch.equal(x, torch.arange(6.0).reshape(6, 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"workers": -1}, "workers must be a non-negative int"),
        ({"workers": 1.5}, "workers must be a non-negative int"),
    ],
)
def test_bad_loader_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(DeepCloakError, match=match):
        make_loader(load_dataset("digits", limit=4), **kwargs)


def test_a_dataset_without_length_is_refused() -> None:
    class Endless(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            while True:
                yield torch.zeros(1), torch.zeros((), dtype=torch.int64)

    with pytest.raises(DeepCloakError, match="needs a data set with a length"):
        make_loader(Endless(), batch_size=2)  # type: ignore[arg-type]
