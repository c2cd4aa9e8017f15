"""Running one command across processes with ``torch.distributed``, as ``torchrun`` launches it.

``torchrun --nproc-per-node K -m deepcloak harden ...`` starts K copies of the command. Each
joins the process group (:func:`setup_distributed`), and the passes that cost attacks split
their work **by batch**: process ``rank`` takes batches ``rank, rank + K, rank + 2K, ...`` of
exactly the batches one process would form (:func:`iter_owned`, :func:`owned_rows`), then the
per-batch results are gathered back into batch order on every process (:func:`gather_batches`).
Sharding by batch rather than by sample matters: an attack seeds its random start per call, so
a batch of the same samples gives the same adversarial samples, bit for bit, whichever process
crafts it; a sample-strided shard would form other batches and other numbers.

Nothing is passed down the call chain: the library's passes read the group from
``torch.distributed``'s global state (:meth:`Distributed.current`), as ``DistributedSampler``
does. Without torchrun (no process group) every function here is a no-op on one process.

Every process must make the same collective calls in the same order. Errors that depend on the
data (a bad label in one batch) are raised only by the process that holds that batch: it leaves
its message in the group's store and exits; a peer whose collective then breaks reads it and
stops with one line, "rank N stopped: <its message>" (unless torchrun's agent stops it first).
Across nodes, a process left waiting in a collective gives up at the process group's timeout.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, RandomSampler

from deepcloak.errors import DeepCloakError

__all__ = [
    "Distributed",
    "Shardable",
    "all_reduce_sum",
    "close_distributed",
    "distributed_run",
    "from_main",
    "gather_batches",
    "iter_owned",
    "owned_rows",
    "setup_distributed",
    "share_weights",
]

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Distributed:
        """The default process group of ``torch.distributed``, or one process when there is none."""
        if dist.is_available() and dist.is_initialized():
            return cls(rank=dist.get_rank(), world_size=dist.get_world_size())
        return cls()

    @property
    def enabled(self) -> bool:
        """Whether several processes share the work."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes outputs and prints (rank 0)."""
        return self.rank == 0

    def owns(self, batch: int) -> bool:
        """Whether batch number ``batch`` (counted from 0 in one pass) is this process's."""
        return batch % self.world_size == self.rank


def setup_distributed(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group ``torchrun`` describes in the environment, if any.

    NCCL joins CUDA processes (one GPU each), gloo CPU processes.

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
    return Distributed.current(), device


def close_distributed() -> None:
    """Wait for every process (rank 0 may still be writing), then leave the process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_run(device: torch.device) -> Iterator[tuple[Distributed, torch.device]]:
    """One command's time in ``torchrun``'s process group (:func:`setup_distributed`).

    Yields this process's place and device. On success every process waits for the others at
    the end (rank 0 may still be writing) and leaves the group; on an error the process leaves
    at once (waiting would hang if the others carry on) and the error propagates: the process
    exits, and torchrun stops the others.
    """
    ctx, device = setup_distributed(device)
    try:
        yield ctx, device
    except BaseException as e:
        if not (ctx.enabled and dist.is_initialized()):
            raise
        if isinstance(e, DeepCloakError):  # say why before leaving: the peers read it
            _tell_peers(ctx, str(e))
        peer = None if isinstance(e, DeepCloakError) else _failed_peer(ctx)
        dist.destroy_process_group()
        if peer is not None:  # this process's collective broke because a peer stopped
            raise DeepCloakError(f"rank {peer[0]} stopped: {peer[1]}") from None
        raise
    close_distributed()


_FAILED = "deepcloak/failed/"


def _tell_peers(ctx: Distributed, message: str) -> None:
    """Leave this process's error in the group's store, where the peers look when the
    collective they wait in breaks (best effort: the store may be gone)."""
    with contextlib.suppress(Exception):
        store = dist.distributed_c10d._get_default_store()
        store.set(f"{_FAILED}{ctx.rank}", message.splitlines()[0] if message else "")


def _failed_peer(ctx: Distributed) -> tuple[int, str] | None:
    """The first peer that left its error in the store, and the error, if any did."""
    with contextlib.suppress(Exception):
        store = dist.distributed_c10d._get_default_store()
        for rank in range(ctx.world_size):
            key = f"{_FAILED}{rank}"
            if rank != ctx.rank and store.check([key]):
                return rank, store.get(key).decode("utf-8", "replace")
    return None


class Shardable(Protocol):
    """A loader that can serve only one process's batches without loading the others
    (:func:`~deepcloak.data.loader.make_loader`'s loaders)."""

    def sharded(self, ctx: Distributed) -> Iterable[Any]: ...


def iter_owned(loader: Iterable[T], ctx: Distributed | None = None) -> Iterator[T]:
    """The batches of ``loader`` this process works on: numbers ``rank, rank + K, ...``.

    A loader with a ``sharded(ctx)`` method (:class:`Shardable`) serves only those batches;
    any other is iterated whole and the other processes' batches are skipped.

    Args:
        loader: the whole data, the same on every process.
        ctx: the process group (default: :meth:`Distributed.current`).

    Raises:
        DeepCloakError: ``loader`` is sharded already (its sampler is a ``DistributedSampler``),
            or shuffles without a seeded generator (each process would see another order).
    """
    ctx = ctx if ctx is not None else Distributed.current()
    if not ctx.enabled:
        yield from loader
        return
    if isinstance(getattr(loader, "sampler", None), DistributedSampler):
        raise DeepCloakError(
            "the loader is already sharded by a DistributedSampler; give every process the "
            "whole data set: deepcloak splits the batches among the processes itself"
        )
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, RandomSampler) and sampler.generator is None:
        raise DeepCloakError(
            "the loader shuffles without a seeded generator, so every process would see another "
            "order and samples would be skipped or repeated; pass shuffle=False, or a "
            "torch.Generator seeded alike on every process"
        )
    sharded = getattr(loader, "sharded", None)
    if callable(sharded):
        yield from sharded(ctx)
        return
    for b, batch in enumerate(loader):
        if ctx.owns(b):
            yield batch


def owned_rows(n: int, batch_size: int, ctx: Distributed | None = None) -> list[slice]:
    """The row ranges of this process's batches when ``n`` rows are cut into ``batch_size``."""
    ctx = ctx if ctx is not None else Distributed.current()
    step = batch_size * ctx.world_size
    return [
        slice(start, min(start + batch_size, n)) for start in range(ctx.rank * batch_size, n, step)
    ]


def _comm_device() -> torch.device:
    """Where tensors must be for the group's collectives (NCCL: this process's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    """``tensor`` summed over all processes (itself when not distributed), in place."""
    if ctx.enabled:
        wire = tensor.to(_comm_device())  # NCCL sums CUDA tensors only
        dist.all_reduce(wire)
        tensor.copy_(wire)
    return tensor


def share_weights(model: nn.Module, ctx: Distributed | None = None) -> nn.Module:
    """Give every process rank 0's parameters and buffers, in place (a no-op on one process).

    Processes that trained the same model from the same seed can still differ in the last bits
    (non-deterministic GPU kernels); everything after training must see one model.
    """
    ctx = ctx if ctx is not None else Distributed.current()
    if ctx.enabled:
        with torch.no_grad():
            for tensor in model.state_dict().values():
                wire = tensor.detach().to(_comm_device())
                dist.broadcast(wire, src=0)
                tensor.copy_(wire)
    return model


def from_main(value: T, ctx: Distributed | None = None) -> T:
    """Rank 0's ``value`` on every process (``value`` itself when not distributed).

    Pickled, so only for small values that the processes of one run send each other.
    """
    ctx = ctx if ctx is not None else Distributed.current()
    if not ctx.enabled:
        return value
    box: list[Any] = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def gather_batches(
    local: Sequence[torch.Tensor], ctx: Distributed | None = None
) -> list[torch.Tensor]:
    """Every process's batches, in batch order, on every process (on the CPU).

    Args:
        local: this process's per-batch tensors, in the order :func:`iter_owned` or
            :func:`owned_rows` gave the batches: its ``i``-th is batch ``rank + i * K``.
            Batches may differ in rows, not in the other dimensions nor dtype.
        ctx: the process group (default: :meth:`Distributed.current`).

    Returns:
        All batches of all processes, batch ``b`` at position ``b`` (``local`` itself when
        not distributed; empty when no process has a batch).

    Raises:
        DeepCloakError: processes hold batches of different shapes or dtypes.
    """
    ctx = ctx if ctx is not None else Distributed.current()
    if not ctx.enabled:
        return [t.cpu() for t in local]
    # Each process says whether its own batches agree, so that every process raises together
    # instead of one raising while the others wait in the gather.
    agree = all(t.shape[1:] == local[0].shape[1:] and t.dtype == local[0].dtype for t in local)
    mine = (
        [t.shape[0] for t in local],
        tuple(local[0].shape[1:]) if local else None,
        local[0].dtype if local else None,
        agree,
    )
    metas: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(metas, mine)
    shapes = {(m[1], m[2]) for m in metas if m[1] is not None}
    if not shapes:
        return []
    if len(shapes) > 1 or not all(m[3] for m in metas):
        raise DeepCloakError(
            f"processes hold batches of different shapes or dtypes: {sorted(map(str, shapes))}"
        )
    ((trailing, dtype),) = shapes
    wire = torch.uint8 if dtype == torch.bool else dtype  # gloo cannot gather bool tensors
    empty = torch.empty((0, *trailing), dtype=wire)
    flat = torch.cat([t.cpu().to(wire) for t in local]) if local else empty
    parts = _gather_rows(flat, [sum(m[0]) for m in metas], trailing, wire, ctx)
    per_rank = [list(torch.split(p.to(dtype), m[0])) for p, m in zip(parts, metas, strict=True)]
    out = []
    for i in range(max(len(batches) for batches in per_rank)):
        out += [batches[i] for batches in per_rank if i < len(batches)]
    return out


#: Bytes per rank in one all-gather: on GPUs the gathered rows pass through device memory, so a
#: large gather (the inputs of a whole test set) goes in pieces of this size.
GATHER_CHUNK_BYTES = 64 * 2**20


def _gather_rows(
    flat: torch.Tensor, rows: list[int], trailing: tuple[int, ...], wire: torch.dtype,
    ctx: Distributed,
) -> list[torch.Tensor]:  # fmt: skip
    """Each process's ``flat`` (``rows[r]`` rows of shape ``trailing``), on the CPU, gathered
    in pieces: an all-gather needs equal shapes, so each piece is padded to the longest."""
    device = _comm_device()
    parts = [torch.empty((n, *trailing), dtype=wire) for n in rows]
    row_bytes = max(1, math.prod(trailing) * wire.itemsize)
    step = max(1, GATHER_CHUNK_BYTES // row_bytes)
    for start in range(0, max(rows), step):
        stop = min(start + step, max(rows))
        piece = torch.zeros((stop - start, *trailing), dtype=wire, device=device)
        mine = flat[start:stop]
        piece[: mine.shape[0]] = mine.to(device)
        pieces = [torch.empty_like(piece) for _ in range(ctx.world_size)]
        dist.all_gather(pieces, piece)
        for part, got, n in zip(parts, pieces, rows, strict=True):
            if start < n:
                part[start : min(stop, n)] = got[: min(stop, n) - start].cpu()
    return parts
