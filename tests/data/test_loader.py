"""TensorLoader serves the same batches as a DataLoader, by slicing tensors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from deepcloak.data.loader import TensorLoader
from deepcloak.data.sets import load_dataset
from deepcloak.errors import DeepCloakError


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_equal_the_dataloaders_bit_for_bit(drop_last: bool) -> None:
    data = load_dataset("digits")  # 1437 samples: the last batch of 100 is partial
    ours = list(data.loader(batch_size=100, drop_last=drop_last))
    theirs = list(DataLoader(data, batch_size=100, drop_last=drop_last))
    assert len(ours) == len(theirs) == len(data.loader(batch_size=100, drop_last=drop_last))
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
