"""Magnitude and structured (whole-unit) pruning with an exact count per round, and the mask in force: each
prunable weight holds its effective value, dead entries held at their fill in place (no autograd cost)."""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn


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


def prune_masks(
    weights: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    bases: dict[str, float],
    scope: str = "layer",
    method: str = "magnitude",
    output: str | None = None,
    whole: tuple[str, ...] = (),
) -> dict[str, torch.Tensor]:
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
        scores = torch.cat(
            [
                torch.where(
                    masks[n].bool(),
                    weights[n].detach().abs().float(),
                    torch.full_like(weights[n], math.inf, dtype=torch.float32),
                ).flatten()
                for n in pool
            ]
        )
        alive = int(sum(int(masks[n].sum()) for n in pool))
        cut = _lowest(scores, n_to_prune(alive, bases[pool[0]]))
        flat = torch.ones_like(scores)
        flat[cut] = 0.0
        offset = 0
        for n in pool:
            size = masks[n].numel()
            new[n] = (flat[offset : offset + size].view_as(masks[n]) * masks[n]).to(masks[n].dtype)
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
        rows = keep[offset : offset + units].view(-1, *([1] * (masks[n].dim() - 1)))
        new[n] = (masks[n].bool() & rows).to(masks[n].dtype)
        offset += units


# -- the mask in force -------------------------------------------------------------------------------------
# A prunable weight is a plain Parameter that holds its effective value: its dead entries are exactly its
# fill (0, or standard's frozen trained value). Beside it, on the same module, two buffers: `<name>_mask`
# (bool, True = alive) and `<name>_fill`. Training keeps the invariant in place, outside autograd:
# zero_dead_grads before every optimizer step (neither the gradient nor momentum built from it reaches a dead
# entry) and reapply_masks after it (nothing else the optimizer does, weight decay included, survives in a
# dead entry), unless the step provably leaves dead entries where they are (step_can_move_dead). The forward
# pass is the layer's own, with no mask in it.
MASK, FILL = "_mask", "_fill"


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and Linear layers, in module order; their `weight` is what IMP prunes (never biases or BN)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))}


def attach_masks(model: nn.Module, names=None) -> dict[str, nn.Module]:
    """Give every prunable weight (`names`: those layers only, in module order) a mask (all alive) and a fill
    (zeros), idempotent; returns those layers. The weight stays the layer's own Parameter."""
    global _GENERATION
    layers = prunable_layers(model)
    if names is not None:
        layers = {n: m for n, m in layers.items() if n in set(names)}
    for layer in layers.values():
        if "weight" + MASK not in layer._buffers:
            w = layer.weight
            layer.register_buffer("weight" + MASK, torch.ones(w.shape, dtype=torch.bool, device=w.device))
            layer.register_buffer("weight" + FILL, torch.zeros_like(w, requires_grad=False).detach())
            _GENERATION += 1
    return layers


class Mask:
    """A prunable weight's mask and fill (`mask_of`): `.mask` (bool, True = alive) and `.fill`, the layer's
    own buffers, to be written in place (copy_). The weight takes them at the next reapply_masks."""

    __slots__ = ("layer",)

    def __init__(self, layer: nn.Module):
        self.layer = layer

    @property
    def mask(self) -> torch.Tensor:
        return self.layer._buffers["weight" + MASK]

    @property
    def fill(self) -> torch.Tensor:
        return self.layer._buffers["weight" + FILL]


def has_mask(layer: nn.Module) -> bool:
    return "weight" + MASK in layer._buffers


def mask_of(layer: nn.Module) -> Mask:
    if "weight" + MASK not in layer._buffers:
        raise ValueError(f"{type(layer).__name__} has no mask: call pruning.attach_masks on its model first")
    return Mask(layer)


def raw_weight(layer: nn.Module) -> nn.Parameter:
    """The trainable tensor of a prunable layer: its weight itself (dead entries at their fill)."""
    return layer.weight


def state_keys(name: str) -> tuple[str, str, str]:
    """The state_dict keys of prunable layer `name`: its weight, mask and fill."""
    return f"{name}.weight", f"{name}.weight{MASK}", f"{name}.weight{FILL}"


def sparsity(layers: dict[str, nn.Module]) -> tuple[float, dict[str, float]]:
    """Share of pruned prunable weights: overall and per layer."""
    per, dead, total = {}, 0, 0
    for name, layer in layers.items():
        m = mask_of(layer).mask
        d = int(m.numel() - m.sum())
        per[name] = d / m.numel()
        dead, total = dead + d, total + m.numel()
    return dead / max(total, 1), per


_LEGACY = ".parametrizations.weight."  # masks as torch parametrizations (where(mask, raw, fill) in the forward)


def is_legacy(state: dict) -> bool:
    """A state dict saved while masks were parametrizations: `<layer>.parametrizations.weight.original`,
    `.0.mask`, `.0.fill`."""
    return any(_LEGACY in k for k in state)


def upgrade_state(state: dict) -> dict:
    """A state dict in today's names (a legacy one converted, any other returned as it is). The weight
    becomes where(mask, original, fill), the effective weight the forward pass used: under weight decay the
    raw tensor's dead entries had drifted from their fill."""
    if not is_legacy(state):
        return state
    out = {}
    for key, value in state.items():
        if _LEGACY not in key:
            out[key] = value
            continue
        name, rest = key.split(_LEGACY, 1)
        if rest == "original":
            mask, fill = state[f"{name}{_LEGACY}0.mask"], state[f"{name}{_LEGACY}0.fill"]
            out[state_keys(name)[0]] = torch.where(mask, value, fill.to(value.dtype))
        elif rest in ("0.mask", "0.fill"):
            out[state_keys(name)[1 if rest == "0.mask" else 2]] = value
        else:
            raise ValueError(f"unexpected key {key!r} in a state dict with masks as parametrizations")
    return out


# -- enforcing it, in place, every optimizer step -------------------------------------------------------
_GENERATION = 0  # bumped by attach_masks: a module's list of masked tensors is looked up again
_INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class _Derived:
    """What the per-step passes need of one mask and fill, rebuilt when either is written (their version
    counters move on every in-place write: copy_, load_state_dict, ...) or moved: `keep`, 1 for an alive
    entry and 0 for a dead one, in the integer type of the weight's width, and `dead_fill`, the fill's bits at
    dead entries and 0 elsewhere. The passes work on the floats' bits, so they are exact for every value:
    bits * 1 is the entry unchanged (NaN, inf and -0.0 included), bits * 0 is +0.0, + dead_fill puts the fill
    exactly. Elementwise and vectorised (torch.where with a bool mask is a scalar loop on CPU)."""

    __slots__ = ("stamp", "keep", "dead_fill", "any_dead", "zero_fill")

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor, stamp):
        itype = _INT[weight.element_size()]
        self.stamp = stamp
        self.any_dead = not bool(mask.all())
        self.keep = mask.to(itype)
        dead_fill = torch.where(mask, torch.zeros((), dtype=weight.dtype, device=weight.device), fill.to(weight.dtype))
        self.dead_fill = dead_fill.view(itype)
        self.zero_fill = not bool(self.dead_fill.any())


def _stamp(weight, mask, fill) -> tuple:
    """What the derived tensors were built from. It holds the mask and fill themselves, so no other tensor can
    take their identity while they are cached; a write bumps their version counters."""
    return (mask, fill, mask._version, fill._version, mask.data_ptr(), fill.data_ptr(), weight.dtype, weight.device)


def _same(a: tuple, b: tuple) -> bool:
    return a[0] is b[0] and a[1] is b[1] and a[2:] == b[2:]


def _masked(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, parameter name) of every parameter with a mask beside it: a prunable layer's `weight`, or a
    stacked cohort's `<layer>__weight` (engine.stacked). Looked up once per model (and again after
    attach_masks registers new masks anywhere)."""
    found = model.__dict__.get("_phicenter_masked")
    if found is None or found[0] != _GENERATION:
        pairs = [
            (m, name)
            for m in model.modules()
            for name, p in m._parameters.items()
            if p is not None and name + MASK in m._buffers
        ]
        found = (_GENERATION, pairs)
        model.__dict__["_phicenter_masked"] = found
    return found[1]


def _enforced(model: nn.Module) -> tuple[list, bool]:
    """(weight, derived) of every masked parameter of `model` that has a dead entry, and whether any mask or
    fill was written (or moved) since the last pass over `model`."""
    out, written = [], False
    for m, name in _masked(model):
        weight, mask, fill = m._parameters[name], m._buffers[name + MASK], m._buffers[name + FILL]
        cache = m.__dict__.setdefault("_phicenter_derived", {})
        stamp = _stamp(weight, mask, fill)
        d = cache.get(name)
        if d is None or not _same(d.stamp, stamp):
            with torch.no_grad():
                d = cache[name] = _Derived(weight, mask, fill, stamp)
            written = True
        if d.any_dead:
            out.append((weight, d))
    return out, written


@torch.no_grad()
def zero_dead_grads(model: nn.Module) -> bool:
    """Before an optimizer step: the gradient of every dead weight of `model` becomes exactly +0.0, in place
    (what the gradient of where(mask, raw, fill) gave); alive entries are untouched. Returns whether a mask or
    fill was written since the last pass (see step_can_move_dead)."""
    masked, written = _enforced(model)
    for weight, d in masked:
        if weight.grad is not None:
            weight.grad.view(d.keep.dtype).mul_(d.keep)
    return written


@torch.no_grad()
def reapply_masks(model: nn.Module) -> None:
    """Every dead weight of `model` back to exactly its fill, in place; alive entries are untouched. After an
    optimizer step that can move dead weights (step_can_move_dead), and after masks or fills were written."""
    for weight, d in _enforced(model)[0]:
        bits = weight.detach().view(d.keep.dtype)
        if d.zero_fill:
            bits.mul_(d.keep)
        else:
            torch.addcmul(d.dead_fill, bits, d.keep, out=bits)


# torch optimizers whose step leaves an entry exactly as it is while that entry's gradient has been +0.0 at
# every step since the optimizer was made and no weight decay applies: its update is exactly 0 (Adam's and
# AdamW's moments stay 0, so p - lr * 0 / (0 + eps); SGD's momentum buffer stays 0), whatever their options
# (fused, foreach, amsgrad, maximize, nesterov, dampening). tests/test_masking.py checks each.
STILL_WITHOUT_GRADIENT = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)


def step_can_move_dead(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a step of `optimizer` can move a dead weight although zero_dead_grads zeroed its gradient before
    each of the optimizer's steps: yes under weight decay in any parameter group, and for any optimizer outside
    STILL_WITHOUT_GRADIENT. When it cannot, reapply_masks after its steps would change nothing."""
    if type(optimizer) not in STILL_WITHOUT_GRADIENT:
        return True
    return any(float(g.get("weight_decay") or 0.0) != 0.0 for g in optimizer.param_groups)
