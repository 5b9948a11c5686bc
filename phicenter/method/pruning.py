"""Magnitude and structured (whole-unit) pruning with an exact count per round, and the mask that enforces it
in the forward pass."""
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


METHODS = ("magnitude", "structured")


def _pools(names: list[str], bases: dict[str, float], scope: str) -> list[list[str]]:
    """scope="layer": every tensor is its own pool; "global": tensors sharing a base form one pool."""
    if scope == "layer":
        return [[n] for n in names]
    by_base: dict[float, list[str]] = {}
    for n in names:
        by_base.setdefault(bases[n], []).append(n)
    return list(by_base.values())


def prune_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                bases: dict[str, float], scope: str = "layer", method: str = "magnitude",
                output: str | None = None, whole: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """New masks with round((1 - base) * alive) of each pool's alive weights (method="magnitude") or alive
    output units (method="structured") removed, smallest first. Dead weights and units stay dead.

    scope="layer": every tensor is its own pool. scope="global": tensors sharing a base form one pool
    (so an output layer with its own base is pruned apart from the rest). Under method="structured" the
    output layer (`output`, default: the last tensor of `weights`) and the layers in `whole` are left unpruned.
    """
    if scope not in ("layer", "global"):
        raise ValueError(f"prune.scope must be 'layer' or 'global', got {scope!r}")
    if method not in METHODS:
        raise ValueError(f"prune.method must be one of {', '.join(METHODS)}, got {method!r}")
    names = list(weights)
    new = {n: masks[n].clone() for n in names}
    if method == "structured":
        output = names[-1] if output is None else output
        for pool in _pools([n for n in names if n != output and n not in whole], bases, scope):
            _prune_units(pool, weights, masks, bases[pool[0]], scope, new)
        return new
    for pool in _pools(names, bases, scope):
        scores = torch.cat([
            torch.where(masks[n].bool(), weights[n].detach().abs().float(),
                        torch.full_like(weights[n], math.inf, dtype=torch.float32)).flatten()
            for n in pool])
        alive = int(sum(int(masks[n].sum()) for n in pool))
        cut = _lowest(scores, n_to_prune(alive, bases[pool[0]]))
        flat = torch.ones_like(scores)
        flat[cut] = 0.0
        offset = 0
        for n in pool:
            size = masks[n].numel()
            new[n] = (flat[offset:offset + size].view_as(masks[n]) * masks[n]).to(masks[n].dtype)
            offset += size
    return new


def unit_scores(weight: torch.Tensor, mask: torch.Tensor, per_weight: bool = False) -> torch.Tensor:
    """One score per output unit (dim 0: a conv filter, a linear neuron): the L1 norm of its alive weights,
    or with per_weight their mean |w|; +inf for a unit with no alive weight (never counted, never picked).
    Summed in float64, so the order does not depend on summation rounding for any realistic fan-in."""
    alive = mask.bool().flatten(1)
    l1 = torch.where(alive, weight.detach().flatten(1).double().abs(), 0.0).sum(1)
    n = alive.sum(1)
    score = l1 / n.clamp_min(1) if per_weight else l1
    return torch.where(n > 0, score, math.inf)


def _prune_units(pool: list[str], weights, masks, base: float, scope: str, new: dict) -> None:
    """Structured pruning of one pool: k = round((1 - base) * alive units) whole units go, lowest score
    first, ties to the lower index (in pool order). Layer scope ranks by L1 norm; a global pool ranks by
    mean |w| (units of different fan-in are compared per weight)."""
    scores = torch.cat([unit_scores(weights[n], masks[n], per_weight=scope == "global") for n in pool])
    alive = int(torch.isfinite(scores).sum())
    cut = _lowest(scores, n_to_prune(alive, base))
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep[cut] = False
    offset = 0
    for n in pool:
        units = masks[n].shape[0]
        rows = keep[offset:offset + units].view(-1, *([1] * (masks[n].dim() - 1)))
        new[n] = (masks[n].bool() & rows).to(masks[n].dtype)
        offset += units


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
