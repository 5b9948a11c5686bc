"""Stable seeds derived from (seed, purpose, round, ...), identical in every process and on every device."""

from __future__ import annotations

import hashlib

import torch


def derive(seed: int, *keys) -> int:
    digest = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, *keys) -> torch.Generator:
    """A CPU generator: draws are made on the CPU and moved, so CPU and GPU runs see the same numbers."""
    return torch.Generator().manual_seed(derive(seed, *keys))
