"""deepcloak.distributed: batch-strided shards, gathered back in batch order, and the library's
attack passes under a process group giving bit for bit a one-process run's results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.multiprocessing.spawn import start_processes
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import deepcloak.distributed
from deepcloak.attacks.native import PGD
from deepcloak.cloak.fit import fit
from deepcloak.data.loader import make_loader
from deepcloak.distributed import (
    Distributed,
    all_reduce_sum,
    distributed_run,
    from_main,
    gather_batches,
    iter_owned,
    owned_rows,
    setup_distributed,
    share_weights,
)
from deepcloak.errors import DeepCloakError
from deepcloak.evaluation.passes import correct, craft
from deepcloak.evaluation.sweep import graybox_sweep
from tests.conftest import TinyVGG

WORLD = 3


@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize(("n", "batch_size"), [(7, 2), (8, 2), (3, 5)])
def test_owned_rows_are_whole_batches_each_once(world: int, n: int, batch_size: int) -> None:
    """7 rows in batches of 2 end with a batch of 1; 8 ranks for 4 batches leave 4 with none."""
    one = owned_rows(n, batch_size, Distributed())
    assert [(s.start, s.stop) for s in one] == [
        (b, min(b + batch_size, n)) for b in range(0, n, batch_size)
    ]
    by_batch = {
        rank + i * world: rows
        for rank in range(world)
        for i, rows in enumerate(owned_rows(n, batch_size, Distributed(rank, world)))
    }
    assert [by_batch[b] for b in sorted(by_batch)] == one  # rank r: batches r, r + world, ...


def test_iter_owned_skips_the_others_batches_or_asks_the_loader() -> None:
    batches = [f"batch {b}" for b in range(5)]
    assert list(iter_owned(batches, Distributed(1, 3))) == ["batch 1", "batch 4"]
    assert list(iter_owned(batches, Distributed(3, 4))) == ["batch 3"]
    assert list(iter_owned(batches, Distributed(0, 1))) == batches
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    held = make_loader(TensorDataset(x, y), batch_size=3)  # serves only the owned batches
    got = [yb.tolist() for _, yb in iter_owned(held, Distributed(1, 2))]
    assert got == [[3, 4, 5], [9]]


def test_a_loader_sharded_already_is_refused() -> None:
    data = TensorDataset(torch.zeros(6, 1), torch.zeros(6, dtype=torch.int64))
    sampler: DistributedSampler[Any] = DistributedSampler(
        data, num_replicas=2, rank=0, shuffle=False
    )
    with pytest.raises(DeepCloakError, match="already sharded by a DistributedSampler"):
        next(iter_owned(DataLoader(data, sampler=sampler), Distributed(0, 2)))


def test_a_loader_shuffling_without_a_seeded_generator_is_refused() -> None:
    data = TensorDataset(torch.zeros(6, 1), torch.zeros(6, dtype=torch.int64))
    with pytest.raises(DeepCloakError, match="shuffles without a seeded generator"):
        next(iter_owned(DataLoader(data, shuffle=True), Distributed(0, 2)))
    seeded = DataLoader(data, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(list(iter_owned(seeded, Distributed(0, 2)))) == 3


def test_one_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = setup_distributed(torch.device("cpu"))
    assert (ctx, device) == (Distributed(), torch.device("cpu"))
    assert Distributed.current() == Distributed() and Distributed().is_main
    t = torch.arange(3)
    assert torch.equal(torch.cat(gather_batches([t, t + 3])), torch.arange(6))
    assert all_reduce_sum(t, ctx) is t
    assert from_main("mine") == "mine"
    with distributed_run(torch.device("cpu")) as (ctx, device):
        assert (ctx, device) == (Distributed(), torch.device("cpu"))
    with pytest.raises(DeepCloakError, match="raised inside"), distributed_run(device):
        raise DeepCloakError("raised inside")  # propagates, with no group to leave


# --------------------------------------------------------------------- across processes
def _model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyVGG()
    return model.eval()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(40, 1, 8, 8, generator=gen), torch.randint(0, 4, (40,), generator=gen)


def _order_sensitive() -> tuple[nn.Module, TensorDataset]:
    """A model whose first feature is ``2**53`` on sample 0 and ``1`` on samples 1..5: its
    float64 sum is ``2**53`` added in sample order (each ``+ 1`` rounds away) but ``2**53 + 4``
    when 3 processes each sum their own batches of one and then add the three sums."""
    scale = torch.ones(64)
    scale[0] = 2.0**53
    widen = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        widen.weight.copy_(torch.diag(scale))
    model = nn.Sequential(nn.Flatten(), widen, nn.Linear(64, 4))
    x = torch.zeros(6, 1, 8, 8)
    x[0, 0, 0, 0], x[1:, 0, 0, 0] = 1.0, 2.0**-53
    return model.eval(), TensorDataset(x, torch.zeros(6, dtype=torch.int64))


def _run_passes() -> dict[str, Any]:
    """The passes whose results must not depend on the number of processes."""
    model, (x, y) = _model(), _data()
    attack = PGD(eps=0.1, steps=2, seed=0)  # a random start per call: per batch
    rows = torch.arange(7.0)  # batches of 2: 2, 2, 2, 1
    few = torch.arange(6.0).view(3, 2)  # 2 batches: fewer than WORLD
    # fit: batches of 6 (the last of 4), cut at 29 samples inside batch 4 (rank 1's second)
    cloak = fit(model, make_loader(TensorDataset(x, y), batch_size=6), attack=attack,
                max_samples=29)  # fmt: skip
    x_adv = craft(attack, model, x, y, batch_size=16)
    tricky, ones = _order_sensitive()
    ordered = fit(tricky, make_loader(ones, batch_size=1), score="activation")
    sweep = graybox_sweep(
        model, cloak, DataLoader(TensorDataset(x, y), batch_size=7), attack=attack,
        ratios=[0.0, 0.25, 0.5], n_random=2, whitebox_attacks=[attack], whitebox_ratios=[0.25],
    )  # fmt: skip
    return {
        "rows": torch.cat(gather_batches([rows[s] for s in owned_rows(7, 2)])),
        "flags": torch.cat(gather_batches([rows[s] % 3 == 0 for s in owned_rows(7, 2)])),
        "few": torch.cat(gather_batches([few[s] for s in owned_rows(3, 2)])),
        "scores": cloak.scores,
        "n_samples": torch.tensor(cloak.n_samples),
        "ordered": ordered.scores,
        "x_adv": x_adv,
        "correct": correct(model, x_adv, y, batch_size=16),
        "sweep": sweep.to_json(),
    }


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # as the parent: identical float rounding
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        assert Distributed.current() == Distributed(rank, WORLD)
        assert from_main(f"rank {rank}") == "rank 0"
        differs = nn.Linear(3, 2)
        nn.init.constant_(differs.weight, float(rank))
        share_weights(differs)  # every process now holds rank 0's weights
        assert torch.equal(differs.weight, torch.zeros(2, 3))
        # Batches that disagree on one process are an error on every process, not a hang.
        odd = [torch.zeros(2, 2), *([torch.zeros(1, 3)] if rank == 1 else [])]
        with pytest.raises(DeepCloakError, match="different shapes or dtypes"):
            gather_batches(odd)
        # Gather in pieces of 3 rows of 8x8 float32 images (and many rows of smaller ones).
        deepcloak.distributed.GATHER_CHUNK_BYTES = 3 * 64 * 4
        torch.save(_run_passes(), f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_passes_across_processes_equal_one_process_bit_for_bit(tmp_path: Path) -> None:
    # fork: the workers start at once, without importing torch again (one torch thread here)
    start_processes(  # type: ignore[no-untyped-call]
        _worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, start_method="fork"
    )
    expected = _run_passes()  # this process: no process group
    assert expected["n_samples"].item() == 29
    assert expected["ordered"][0].item() == -(2.0**53) / 6  # the sum in batch order
    assert torch.equal(expected["rows"], torch.arange(7.0))
    assert torch.equal(expected["few"], torch.arange(6.0).view(3, 2))
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        assert got["flags"].dtype == torch.bool
        for key, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == got[key].dtype and torch.equal(value, got[key]), key
            else:
                assert value == got[key], key
