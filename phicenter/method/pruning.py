"""Magnitude pruning with an exact count per round, and the mask that enforces it in the forward pass."""
from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn
from torch.nn.utils import parametrize


def n_to_prune(n_alive: int, base: float) -> int:
    """round((1 - base) * n_alive), halves rounded up, computed exactly from base's decimal form: in floats
    (1 - 0.9) * 5 = 0.4999999999999999 would round down, while (1 - 0.75) * 2 = 0.5 rounds up."""
    exact = (1 - Fraction(repr(float(base)))) * int(n_alive)
    return int(math.floor(exact + Fraction(1, 2)))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k smallest scores; equal scores are taken in index order (stable sort)."""
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    order = torch.sort(scores, stable=True).indices
    return order[:k]


def prune_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                bases: dict[str, float], scope: str = "layer") -> dict[str, torch.Tensor]:
    """New masks with round((1 - base) * alive) of each pool's alive weights removed, smallest |w| first.

    scope="layer": every tensor is its own pool. scope="global": tensors sharing a base form one pool
    (so an output layer with its own base is pruned apart from the rest). Dead weights stay dead.
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"prune.scope must be 'layer' or 'global', got {scope!r}")
    names = list(weights)
    if scope == "layer":
        pools = [[n] for n in names]
    else:
        by_base: dict[float, list[str]] = {}
        for n in names:
            by_base.setdefault(bases[n], []).append(n)
        pools = list(by_base.values())
    new = {n: masks[n].clone() for n in names}
    for pool in pools:
        scores = torch.cat([
            torch.where(masks[n].bool(), weights[n].detach().abs().float(),
                        torch.full_like(weights[n], math.inf, dtype=torch.float32)).flatten()
            for n in pool])
        alive = int(sum(int(masks[n].sum()) for n in pool))
        k = n_to_prune(alive, bases[pool[0]])
        cut = _lowest(scores, k)
        flat = torch.ones_like(scores)
        flat[cut] = 0.0
        offset = 0
        for n in pool:
            size = masks[n].numel()
            new[n] = (flat[offset:offset + size].view_as(masks[n]) * masks[n]).to(masks[n].dtype)
            offset += size
    return new


class MaskFill(nn.Module):
    """weight = where(mask, raw, fill): pruned entries are exactly `fill` whatever the optimizer does."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))
        self.register_buffer("fill", torch.zeros_like(weight))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, raw, self.fill.to(raw.dtype))


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and Linear layers, in module order; their `weight` is what IMP prunes (never biases or BN)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}


def attach_masks(model: nn.Module) -> dict[str, nn.Module]:
    """Register a MaskFill on every prunable weight (idempotent); returns the prunable layers."""
    layers = prunable_layers(model)
    for layer in layers.values():
        if not parametrize.is_parametrized(layer, "weight"):
            parametrize.register_parametrization(layer, "weight", MaskFill(layer.weight), unsafe=True)
    return layers


def raw_weight(layer: nn.Module) -> nn.Parameter:
    """The trainable tensor behind a masked weight."""
    return layer.parametrizations.weight.original


def mask_of(layer: nn.Module) -> MaskFill:
    return layer.parametrizations.weight[0]


def sparsity(layers: dict[str, nn.Module]) -> tuple[float, dict[str, float]]:
    """Share of pruned prunable weights: overall and per layer."""
    per, dead, total = {}, 0, 0
    for name, layer in layers.items():
        m = mask_of(layer).mask
        d = int(m.numel() - m.sum())
        per[name] = d / m.numel()
        dead, total = dead + d, total + m.numel()
    return dead / max(total, 1), per
