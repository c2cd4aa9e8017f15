"""Batches of any data set, from one factory: sliced tensors in memory, worker processes on disk.

:func:`make_loader` is the one way the library batches a data set. In-memory sets
(:class:`~deepcloak.data.memory.ImageDataset`, a ``TensorDataset`` of ``(x, y)``) are served by
:class:`TensorLoader`: a ``DataLoader`` would fetch every sample through ``__getitem__`` and stack
them again in ``collate`` (per batch of 256, 256 Python calls and 512 small tensors), while
slicing the held tensors once per batch gives the same values bit for bit, 42x faster on 60k
samples. Sets that read from disk (:class:`~deepcloak.data.folder.ImageFolderDataset`, any other
``Dataset``) go through a ``DataLoader`` whose worker processes decode in parallel, into pinned
memory when the batches are bound for a GPU.

Both paths draw the same order from the same generator, so a data set gives the same batches
whichever path serves it. Under ``torchrun`` a loader shards **by batch** (``shard`` or
:meth:`TensorLoader.sharded`): process ``rank`` gets batches ``rank, rank + world_size, ...`` of
the batches one process would get, each sample once, never padded (see
:mod:`deepcloak.distributed` for why by batch).

Example:
    >>> train = load_dataset("digits")
    >>> for x, y in make_loader(train, batch_size=256, shuffle=True, seed=0):
    ...     pass  # x float32 (B, C, H, W) in [0, 1], y int64 (B,)
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, Protocol, TypeGuard

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from deepcloak.data.memory import ImageDataset
from deepcloak.distributed import Distributed
from deepcloak.errors import DeepCloakError

__all__ = [
    "BatchLoader",
    "PassBatchSampler",
    "PassSampler",
    "StreamLoader",
    "TensorLoader",
    "end_pass",
    "make_loader",
    "pass_order",
]

Batch = tuple[Tensor, Tensor]


class BatchLoader(Protocol):
    """What :func:`make_loader` returns: ``(x, y)`` batches, a new pass at each ``iter``."""

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


def make_loader(
    dataset: Dataset[Any],
    *,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    workers: int = 0,
    device: torch.device | str | None = None,
    shard: Distributed | None = None,
) -> BatchLoader:
    """Batches of ``dataset``, by the fastest path that gives the same values.

    Args:
        dataset: an :class:`~deepcloak.data.memory.ImageDataset` or a ``TensorDataset(x, y)``
            (sliced in memory), or any sized ``Dataset`` of ``(x, y)`` samples, such as an
            :class:`~deepcloak.data.folder.ImageFolderDataset` (a ``DataLoader``).
        batch_size: samples per batch (the last may be smaller unless ``drop_last``).
        shuffle: a new random order at every pass.
        seed: seeds the order when ``generator`` is not given.
        generator: draw the order from this generator instead (training shares one with its
            augmentation); each pass draws one 64-bit number and then the permutation.
        drop_last: leave out the last batch of a pass when it is smaller than ``batch_size``.
        workers: worker processes decoding samples for a ``DataLoader`` (0: in this process);
            in-memory sets need none. Workers stay alive between passes.
        device: where the batches will go; on CUDA, a ``DataLoader`` collates into pinned
            memory so that ``x.to(device, non_blocking=True)`` overlaps the copy.
        shard: this process's place among ``torchrun``'s; with ``world_size > 1`` it gets
            batches ``rank, rank + world_size, ...`` of each pass (each the same samples as in
            one process; not padded: over all ranks every sample comes exactly once). The
            library's passes shard the whole loader themselves
            (:func:`~deepcloak.distributed.iter_owned`); give them an unsharded one.

    Returns:
        An iterable of ``(x, y)`` CPU batches with ``len()`` (batches per pass, this shard's)
        and ``sharded(ctx)``, the same batches for one process of several.

    Raises:
        DeepCloakError: ``batch_size`` or ``workers`` is out of range, or ``dataset`` has no
            length.
    """
    _check_int("batch_size", batch_size, low=1)
    _check_int("workers", workers, low=0)
    if generator is None and shuffle:
        generator = torch.Generator().manual_seed(seed)
    if _in_memory(dataset):  # slice it
        return TensorLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
            drop_last=drop_last, shard=shard,
        )  # fmt: skip
    if not isinstance(dataset, Sized):
        raise DeepCloakError(
            f"make_loader needs a data set with a length, got {type(dataset).__name__}"
        )
    return _stream_loader(
        dataset, len(dataset), batch_size=batch_size, shuffle=shuffle, seed=seed,
        generator=generator, drop_last=drop_last, workers=workers, device=device, shard=shard,
    )  # fmt: skip


def _in_memory(dataset: Dataset[Any]) -> TypeGuard[ImageDataset | TensorDataset]:
    """Whether ``dataset`` is held as ``(x, y)`` tensors that :class:`TensorLoader` can slice."""
    return isinstance(dataset, ImageDataset) or (
        isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2
    )


def _stream_loader(
    dataset: Dataset[Any],
    size: int,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    generator: torch.Generator | None,
    drop_last: bool,
    workers: int,
    device: torch.device | str | None,
    shard: Distributed | None,
) -> BatchLoader:
    """:func:`make_loader`'s ``DataLoader`` path: ``size`` samples, read one by one."""
    on_cuda = (
        device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available()
    )
    settings: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": on_cuda,
        "persistent_workers": workers > 0,
    }
    # Only for the workers' seeds (the order is the sampler's): the global RNG stays as is.
    seeds = torch.Generator().manual_seed(seed)
    if shard is not None and shard.enabled:
        batches = PassBatchSampler(
            size, batch_size, shuffle=shuffle, generator=generator,
            drop_last=drop_last, shard=shard,
        )  # fmt: skip
        return StreamLoader(dataset, batch_sampler=batches, generator=seeds, **settings)
    loader = StreamLoader(
        dataset, batch_size=batch_size, drop_last=drop_last, generator=seeds,
        sampler=PassSampler(size, shuffle=shuffle, generator=generator), **settings,
    )  # fmt: skip
    loader.shard_settings = {
        "batch_size": batch_size, "shuffle": shuffle, "seed": seed, "generator": generator,
        "drop_last": drop_last, "workers": workers, "device": device,
    }  # fmt: skip
    return loader


class StreamLoader(DataLoader[Batch]):
    """The ``DataLoader`` :func:`make_loader` builds for a data set read from disk.

    :meth:`sharded` gives one process's batches of it (a second ``DataLoader`` over the same
    data set and order, kept for later passes so that its workers are reused).
    """

    shard_settings: dict[str, Any] | None = None
    _shards: dict[Distributed, BatchLoader] | None = None

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        """The batches; a :class:`DeepCloakError` raised in a worker process comes out as it
        was raised there (torch re-raises it with the worker's traceback in its message)."""
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except DeepCloakError as e:
                raise _unwrapped(e) from None
            yield batch

    def sharded(self, ctx: Distributed) -> BatchLoader:
        """Batches ``ctx.rank, ctx.rank + ctx.world_size, ...`` of each pass of this loader."""
        if not ctx.enabled:
            return self
        if self.shard_settings is None:
            raise DeepCloakError("this loader is already one process's shard")
        if self._shards is None:
            self._shards = {}
        if ctx not in self._shards:
            self._shards[ctx] = make_loader(self.dataset, shard=ctx, **self.shard_settings)
        return self._shards[ctx]


def _unwrapped(error: DeepCloakError) -> DeepCloakError:
    """The error a worker raised, out of torch's "Caught X in DataLoader worker process N.
    Original Traceback ..." message (torch rebuilds it as ``type(error)(that text)``)."""
    text = str(error)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return error
    lines = text.rstrip("\n").split("\n")
    head = f"{type(error).__module__}.{type(error).__qualname__}: "
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(head):
            return type(error)("\n".join([lines[i][len(head) :], *lines[i + 1 :]]))
    return error


def pass_order(n: int, *, shuffle: bool, generator: torch.Generator | None) -> Tensor | None:
    """The sample indices of one pass over ``n`` samples, or ``None`` for ``0..n-1`` in order.

    With a ``generator``, one 64-bit number is drawn first, as a ``DataLoader`` draws its
    workers' base seed at each pass; with :func:`end_pass` after the pass, a generator shared
    with other draws (training's augmentation) moves exactly as it did when every data set went
    through a ``DataLoader``, so seeded training gives the same weights as it always did,
    whichever path serves the data.
    """
    if generator is not None:
        torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(n, generator=generator) if shuffle else None


def batch_count(n: int, batch_size: int, *, drop_last: bool) -> int:
    """Batches of ``batch_size`` in a pass over ``n`` samples."""
    return n // batch_size if drop_last else -(-n // batch_size)


def owned_batches(n_batches: int, shard: Distributed | None) -> range:
    """The batch numbers of one pass that ``shard`` serves (all of them without a shard)."""
    if shard is None:
        return range(n_batches)
    return range(shard.rank, n_batches, shard.world_size)


def end_pass(n: int, *, shuffle: bool, generator: torch.Generator | None) -> None:
    """Close a pass that :func:`pass_order` began: a shuffled pass draws one more permutation,
    unused, as ``RandomSampler`` does when it runs out (see :func:`pass_order` for why)."""
    if shuffle and generator is not None:
        torch.randperm(n, generator=generator)


class PassSampler(Sampler[int]):
    """A ``DataLoader`` sampler giving :func:`pass_order`'s indices, a new draw at each pass."""

    def __init__(
        self, n: int, *, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> None:
        self.n, self.shuffle, self.generator = n, shuffle, generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = pass_order(self.n, shuffle=self.shuffle, generator=self.generator)
        yield from range(self.n) if order is None else order.tolist()
        end_pass(self.n, shuffle=self.shuffle, generator=self.generator)


class PassBatchSampler(Sampler[list[int]]):
    """A ``DataLoader`` batch sampler giving one process's batches of :func:`pass_order`'s
    pass: numbers ``rank, rank + world_size, ...``, each the samples one process would batch."""

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        shard: Distributed | None = None,
    ) -> None:
        self.n, self.batch_size, self.shuffle, self.generator = n, batch_size, shuffle, generator
        self.drop_last, self.shard = drop_last, shard

    def __len__(self) -> int:
        return len(owned_batches(batch_count(self.n, self.batch_size, drop_last=self.drop_last),
                                 self.shard))  # fmt: skip

    def __iter__(self) -> Iterator[list[int]]:
        order = pass_order(self.n, shuffle=self.shuffle, generator=self.generator)
        full = torch.arange(self.n) if order is None else order
        for b in owned_batches(
            batch_count(self.n, self.batch_size, drop_last=self.drop_last), self.shard
        ):
            yield full[b * self.batch_size : (b + 1) * self.batch_size].tolist()
        end_pass(self.n, shuffle=self.shuffle, generator=self.generator)


def _check_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive" if low == 1 else "a non-negative"
        raise DeepCloakError(f"{name} must be {kind} int, got {value!r}")


class TensorLoader:
    """Iterate over an in-memory data set in batches, sliced from its tensors.

    Args:
        dataset: an :class:`ImageDataset` (``uint8`` pixels, divided by its ``scale`` on the
            way out) or a ``TensorDataset(x, y)`` (served as held).
        batch_size: samples per batch (the last one may be smaller unless ``drop_last``).
        shuffle: a new random order every pass, drawn from ``generator``.
        generator: the random source of ``shuffle`` (seed it for a reproducible order); see
            :func:`pass_order` for what each pass draws from it.
        drop_last: leave out the last batch when it is smaller than ``batch_size``.
        shard: serve only this process's batches of each pass (see :func:`make_loader`).

    Raises:
        DeepCloakError: ``batch_size`` is not a positive int.

    Shape:
        Each batch is ``(x, y)``: for an :class:`ImageDataset`, ``x`` float32 ``(B, C, H, W)``
        in ``[0, 1]``, equal to what ``DataLoader(dataset, batch_size)`` gives, and ``y`` int64
        ``(B,)``. Batches are new tensors: changing one never changes the data set.
    """

    def __init__(
        self,
        dataset: ImageDataset | TensorDataset,
        *,
        batch_size: int = 256,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        shard: Distributed | None = None,
    ) -> None:
        _check_int("batch_size", batch_size, low=1)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last
        self.shard = shard if shard is not None and shard.enabled else None

    def sharded(self, ctx: Distributed) -> TensorLoader:
        """Batches ``ctx.rank, ctx.rank + ctx.world_size, ...`` of each pass of this loader
        (drawing each pass's order from the same generator)."""
        return TensorLoader(
            self.dataset, batch_size=self.batch_size, shuffle=self.shuffle,
            generator=self.generator, drop_last=self.drop_last, shard=ctx,
        )  # fmt: skip

    def _batches(self) -> range:
        n = batch_count(len(self.dataset), self.batch_size, drop_last=self.drop_last)
        return owned_batches(n, self.shard)

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[Batch]:
        x_all, y_all, scale = self._held()
        order = pass_order(len(y_all), shuffle=self.shuffle, generator=self.generator)
        for b in self._batches():
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, len(y_all))
            if order is None:
                x, y = x_all[start:stop], y_all[start:stop]  # views: copied just below
            else:
                index = order[start:stop]
                x, y = x_all[index], y_all[index]
            if scale is None:
                yield x.clone(), y.clone()
            else:  # the same operation as ImageDataset.__getitem__: values match bit for bit
                yield x.float() / scale, y.clone()  # (B, C, H, W), (B,)
        end_pass(len(y_all), shuffle=self.shuffle, generator=self.generator)

    def _held(self) -> tuple[Tensor, Tensor, int | None]:
        """The held ``(x, y)`` and the pixel scale (``None``: serve ``x`` as it is)."""
        if isinstance(self.dataset, TensorDataset):
            x, y = self.dataset.tensors
            return x, y, None
        return self.dataset.images, self.dataset.labels, self.dataset.scale
