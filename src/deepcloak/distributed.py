"""Running one command across processes with ``torch.distributed``, as ``torchrun`` launches it.

``torchrun --nproc-per-node K -m deepcloak harden ...`` starts K copies of the command; each reads
its rank from the environment, works on its own shard of the data, and the shards' results are
summed (score sums, correctness counts) or gathered back into sample order (per-sample
correctness). Only rank 0 writes files. NCCL joins GPUs, gloo CPUs. Without torchrun (no
``WORLD_SIZE`` above 1 in the environment) everything here is a no-op on one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from deepcloak.errors import DeepCloakError

__all__ = ["Distributed", "ShardSampler", "all_reduce_sum", "gather_shards", "setup_distributed"]


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        """Whether several processes share the work."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs and prints (rank 0)."""
        return self.rank == 0


def setup_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group ``torchrun`` describes in the environment, if any.

    Args:
        device: the device asked for; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``
            (one GPU per process).

    Returns:
        This process's :class:`Distributed` and the device it should use.

    Raises:
        DeepCloakError: torchrun's environment is incomplete.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(), device
    if device.type == "cuda":
        try:
            local_rank = int(os.environ["LOCAL_RANK"])
        except KeyError:
            raise DeepCloakError(
                "WORLD_SIZE is set but LOCAL_RANK is not: launch with torchrun"
            ) from None
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size()), device


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a data set of ``n`` samples, in order.

    Unlike ``DistributedSampler``, shards are not padded to equal length: padding repeats
    samples, and a repeated sample would be counted twice in every accuracy. Together the
    shards cover each index exactly once, so summed counts equal a one-process run's.
    """

    def __init__(self, n: int, ctx: Distributed) -> None:
        self.indices = range(ctx.rank, n, ctx.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def all_reduce_sum(tensor: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    """``tensor`` summed over all processes (itself when not distributed), in place."""
    if ctx.enabled:
        dist.all_reduce(tensor)
    return tensor


def gather_shards(local: torch.Tensor, ctx: Distributed, n: int) -> torch.Tensor:
    """Rebuild a per-sample tensor of ``n`` rows from every process's :class:`ShardSampler` rows.

    Args:
        local: this process's rows, in the order its ``ShardSampler`` gave the samples.
        ctx: the process group.
        n: the data set's size.

    Returns:
        All ``n`` rows in sample order, on every process.
    """
    if not ctx.enabled:
        return local
    sizes = [len(range(r, n, ctx.world_size)) for r in range(ctx.world_size)]
    if local.shape[0] != sizes[ctx.rank]:
        raise DeepCloakError(
            f"rank {ctx.rank} holds {local.shape[0]} rows, expected {sizes[ctx.rank]} of {n}"
        )
    dtype = local.dtype
    if dtype == torch.bool:  # gloo cannot gather bool tensors
        local = local.to(torch.uint8)
    # all_gather needs equal shapes: pad every shard to the longest, then trim.
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    out = local.new_empty((n, *local.shape[1:]))
    for rank, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        out[rank :: ctx.world_size] = part[:size]
    return out.to(dtype)
