"""Tests for deepcloak.distributed: shards cover every sample once and gather back in order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepcloak.distributed import (
    Distributed,
    ShardSampler,
    all_reduce_sum,
    gather_shards,
    setup_distributed,
)

WORLD = 2
N = 7  # not a multiple of WORLD: shards differ in length


@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_each_index_once(world: int) -> None:
    seen = [i for r in range(world) for i in ShardSampler(N, Distributed(r, world))]
    assert sorted(seen) == list(range(N))


def test_one_process_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx, device = setup_distributed(torch.device("cpu"))
    assert (ctx, device) == (Distributed(), torch.device("cpu"))
    t = torch.arange(3)
    assert gather_shards(t, ctx, 3) is t
    assert all_reduce_sum(t, ctx) is t


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ctx = Distributed(rank, WORLD)
        idx = torch.tensor(list(ShardSampler(N, ctx)))
        values = torch.arange(N, dtype=torch.float64) * 10
        gathered = gather_shards(values[idx], ctx, N)
        flags = gather_shards(idx % 3 == 0, ctx, N)
        count = all_reduce_sum(torch.tensor([idx.numel()]), ctx)
        torch.save({"values": gathered, "flags": flags, "count": count}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_and_sum_across_processes_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["values"], torch.arange(N, dtype=torch.float64) * 10)
        assert got["flags"].dtype == torch.bool
        assert got["flags"].tolist() == [i % 3 == 0 for i in range(N)]
        assert got["count"].item() == N
