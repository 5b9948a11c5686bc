"""The fast pipeline: batches by index from tensors resident on the training device.

A permutation seeded by (seed, round, epoch) picks each batch; augmentation and normalisation run batched on
the device. No worker processes, no per-sample transforms."""

from __future__ import annotations

import math

import torch

from phicenter.data.shards import batches_per_epoch, shard, shard_size
from phicenter.data.transforms import augment, augment_draws
from phicenter.method import seeding


class Group:
    """`count` consecutive batches of one epoch, each made only when the loop reaches it (hot in cache, and
    never k batches in memory at once). Groups are consumed in order, each one fully, as a loop does;
    anything else is an error rather than a silently different order."""

    def __init__(self, stream: _Stream, start: int, count: int):
        self.stream, self.start, self.count = stream, start, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        if self.stream.position != self.start:
            raise RuntimeError(
                f"batch group starting at {self.start} consumed out of order "
                f"(the epoch is at batch {self.stream.position})"
            )
        for _ in range(self.count):
            yield self.stream.next()


class _Stream:
    def __init__(self, batches, position: int = 0):
        self.batches, self.position = batches, position

    def next(self):
        self.position += 1
        return next(self.batches)


def spans(total: int, group: int, start: int = 0):
    """(first batch, count) of each item of an epoch of `total` batches in groups of `group`: the groups keep
    their places, and batches before `start` (where a round that starts mid-epoch starts) are left out, so the
    epoch has as many items as a whole one, the first ones shorter or empty."""
    for lo in range(0, total, group):
        first = max(lo, start)
        yield first, max(0, min(lo + group, total) - first)


def _grouped(batches, group: int, total: int, start: int = 0):
    """Lists of the batches of each span (`batches` yields those from `start` on); else each batch itself."""
    if group <= 1 and start == 0:
        yield from batches
        return
    it = iter(batches)
    for _, count in spans(total, max(1, group), start):
        yield [next(it) for _ in range(count)]


class Batches:
    """Batches by index from resident tensors: a permutation seeded by (seed, round, epoch), normalised
    (and optionally augmented) on the device. No worker processes, no per-sample transforms.

    Yields (x, y) pairs; with group=k > 1, Groups of k consecutive pairs (iterables, made lazily; CohortModule
    takes one optimizer step per pair), so a training loop's per-item overhead is paid once per k steps.
    An epoch started at batch j (`set_epoch(..., start=j)`) yields Groups in the places of a whole epoch's
    (spans) holding its batches j.., augmentation included."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        group: int = 1,
    ):
        self.x, self.y = x, y
        self.mean, self.std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
        self.batch_size, self.shuffle, self.augment, self.seed = batch_size, shuffle, augment, seed
        self.drop_last, self.group = drop_last, max(1, int(group))
        self.round = self.epoch = self.start = 0
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> Batches:
        """From now on, yield only this process's shard of each epoch's order (data.shards)."""
        self.rank, self.world = int(rank), int(world)
        return self

    def to(self, device) -> Batches:
        self.x, self.y = self.x.to(device), self.y.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def set_epoch(self, round_index: int, epoch: int, start: int = 0) -> None:
        """The next pass is epoch `epoch` of round `round_index`, from its batch `start` on."""
        self.round, self.epoch, self.start = round_index, epoch, int(start)

    def n_batches(self) -> int:
        return batches_per_epoch(len(self.y), self.batch_size, self.world, self.drop_last)

    def __len__(self) -> int:
        return math.ceil(self.n_batches() / self.group)

    def normalize(self, xb: torch.Tensor) -> torch.Tensor:
        """(x / 255 - mean) / std in place, the very arithmetic of ToTensor + Normalize (bit-identical)."""
        return xb.float().div_(255.0).sub_(self.mean).div_(self.std)

    def __iter__(self):
        if self.group == 1 and self.start == 0:
            return self._batches()
        return self._groups()

    def _groups(self):
        stream = _Stream(self._batches(), self.start)
        for first, count in spans(self.n_batches(), self.group, self.start):
            yield Group(stream, first, count)

    def _batches(self):
        g = seeding.generator(self.seed, "batches", self.round, self.epoch)
        order = torch.randperm(len(self.y), generator=g) if self.shuffle else None
        if self.world > 1:
            order = shard(torch.arange(len(self.y)) if order is None else order, self.rank, self.world)
        n = shard_size(len(self.y), self.world)
        order = None if order is None else order.to(self.x.device)
        for i in range(self.n_batches()):
            lo, hi = i * self.batch_size, min((i + 1) * self.batch_size, n)
            if i < self.start:  # left out; its augmentation draws are drawn, so the next batches get theirs
                if self.augment:
                    augment_draws(hi - lo, g)
                continue
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:  # index_select copies whole rows: ~10x faster than x[idx] for small batches
                idx = order[lo:hi]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
            if self.augment:
                xb = augment(xb, g)
            yield self.normalize(xb), yb
