"""Structured tickets made smaller for real: the units structured pruning removed are taken out of the network
(smaller Conv, Linear and BatchNorm layers), so the network computes the same outputs with fewer weights and
fewer operations. Which units can go, and what each one takes with it, is method.units' wiring (read off the
graph with torch.fx). See docs/method.md, "A ticket".
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from phicenter.method import units
from phicenter.ticket.encoding import TicketError, replace, resized


class CompactError(TicketError):
    """A network that cannot be compacted, said in one line naming the layer (and the block it lies in)."""


def _block(layer: str) -> str:
    """The module a layer lies in (`blocks.3` for `blocks.3.conv2`), or the layer itself at the top level."""
    parent = layer.rpartition(".")[0]
    return parent or layer


def removed_units(
    net: nn.Module, masks: dict[str, torch.Tensor], wiring: units.Wiring | None = None
) -> dict[str, torch.Tensor]:
    """Per removable layer (units.Wiring.removable), which of its units go (bool per unit): those with no alive
    incoming weight that no weight reads any more (every weight on the unit's input columns of every layer
    reading it pruned and exactly 0). So removing them changes no output but for the rounding of sums;
    under prune.method=structured these are exactly the units the run removed.

    CompactError when a pruned unit cannot go: every unit of a layer removed (nothing would flow through it), or
    a pruned unit of a layer whose output enters a residual addition (the shortcut carries that channel on)."""
    wiring = units.Wiring(net) if wiring is None else wiring
    modules = dict(net.named_modules())
    dead = {n: ~masks[n].bool().flatten(1).any(1) for n in wiring.layers if n in masks}
    out = {}
    for name, removable in wiring.removable.items():
        if name not in dead:
            continue
        gone = dead[name].clone()
        for reader, flat in removable.readers:
            w, m = modules[reader].weight.detach(), masks[reader].bool().to(modules[reader].weight.device)
            read = m | (w != 0)
            read = (read.flatten(2).any(2) if read.dim() > 2 else read).any(0)  # per input column
            gone &= ~read.view(gone.numel(), -1).any(1).to(gone.device) if flat else ~read.to(gone.device)
        if bool(gone.all()):
            raise CompactError(
                f"{_block(name)} cannot be compacted: every unit of {name} is removed, so nothing flows through it"
            )
        out[name] = gone
    for name, why in wiring.kept.items():
        d = dead.get(name)
        if d is not None and bool(d.any()) and "residual" in why:
            raise CompactError(
                f"residual block {_block(name)} cannot be compacted: {int(d.sum())} of the "
                f"{d.numel()} units of {name} are pruned, but {why} (the shortcut carries those "
                "channels past it)"
            )
    return out


@torch.no_grad()
def compact(net: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of the plain network `net` (weights at their effective values, `masks` its prunable layers' masks)
    without its removed units (removed_units): each removable layer keeps its other units, with their biases and
    BatchNorm channels; each layer that reads it keeps the matching input channels (behind a flatten, each
    unit's h*w columns). Outputs equal net's up to the rounding of shorter sums. The masks are not carried over:
    a structured ticket's surviving units have every weight alive."""
    wiring = units.Wiring(net)
    gone = removed_units(net, masks, wiring)
    out = copy.deepcopy(net)
    modules = dict(out.named_modules())
    rows, cols, norms = {}, {}, {}
    for name, g in gone.items():
        if not bool(g.any()):
            continue
        keep = ~g
        rows[name] = keep
        for norm in wiring.removable[name].norms:
            norms[norm] = keep
        for reader, flat in wiring.removable[name].readers:
            if reader in cols:
                raise CompactError(f"{reader} reads the units of more than one layer; it cannot be compacted")
            width = modules[reader].weight.shape[1]
            cols[reader] = keep.repeat_interleave(width // keep.numel()) if flat else keep
    for name in sorted(set(rows) | set(cols)):
        m = modules[name]
        w = m.weight.detach()
        w = w[rows[name].to(w.device)] if name in rows else w
        w = w[:, cols[name].to(w.device)] if name in cols else w
        bias = None if m.bias is None else (m.bias.detach()[rows[name].to(w.device)] if name in rows else m.bias)
        replace(out, name, _filled(m, {"weight": w, "bias": bias}))
    for name, keep in norms.items():
        bn = modules[name]
        k = keep.to(bn.running_mean.device if bn.running_mean is not None else bn.weight.device)
        values = {
            attr: (None if getattr(bn, attr) is None else getattr(bn, attr).detach()[k])
            for attr in ("weight", "bias", "running_mean", "running_var")
        }
        values["num_batches_tracked"] = bn.num_batches_tracked
        replace(out, name, _filled(bn, values))
    return out


def _filled(m: nn.Module, values: dict) -> nn.Module:
    """A layer like `m`, sized for values["weight"] (or the running mean), holding `values` (clones), in m's
    mode; made on the meta device first, so no initialisation is drawn from the global RNG."""
    first = values.get("weight")
    first = values["running_mean"] if first is None else first
    with torch.device("meta"):
        new = resized(m, tuple(first.shape))
    new = new.to_empty(device=first.device)
    for attr, v in values.items():
        if v is None:
            continue
        if attr in new._parameters:
            new._parameters[attr] = nn.Parameter(v.detach().clone(), requires_grad=getattr(m, attr).requires_grad)
        else:
            new._buffers[attr] = v.detach().clone()
    return new.train(m.training)
