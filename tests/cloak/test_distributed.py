"""Scores fit on shards in separate processes and all-reduced equal the one-process scores."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepcloak.cloak.scores import DeepCloakScore, deepcloak_score

WORLD = 2


def _features() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(10, 6, generator=gen), torch.randn(10, 6, generator=gen)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        clean, adv = _features()
        scorer = DeepCloakScore()
        scorer.update(clean[rank::WORLD], adv[rank::WORLD])  # this process's shard
        scorer.all_reduce()
        torch.save({"scores": scorer.compute(), "count": scorer.count}, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_processes_equals_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    expected = deepcloak_score(*_features())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["scores"], expected)
        assert got["count"] == 10
