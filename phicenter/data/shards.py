"""Data-parallel training: each process trains on its own shard of every epoch's order."""

from __future__ import annotations

import math

import torch


def shard(order: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Process `rank`'s share of an epoch's order, as torch's DistributedSampler takes it: the order padded
    with its own first indices to a multiple of `world`, then every world-th index from position `rank`."""
    if world <= 1:
        return order
    pad = -len(order) % world
    if pad:
        order = torch.cat([order, order.repeat(math.ceil(pad / len(order)))[:pad]])
    return order[rank::world]


def shard_size(n: int, world: int) -> int:
    return math.ceil(n / max(1, world))


def batches_per_epoch(n: int, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
    """Optimizer steps in one epoch of n samples for each of `world` processes (the last batch shorter, or
    dropped)."""
    m = shard_size(n, world)
    return m // batch_size if drop_last else math.ceil(m / batch_size)
