"""How a network's units are wired, read off its graph (torch.fx): which units structured pruning may remove and
what a removed unit takes with it (its bias, its BatchNorm channel, the weights that read it), and which prunable
weights can still change the output (effective sparsity). See docs/method.md, "Structured pruning" and
"Effective sparsity".
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from phicenter.method import pruning

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
# Channel-wise ops that map 0 to 0: a silent channel stays silent through them, and channel i of their output
# depends on channel i of their input only.
SAME_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
)
SAME_FUNCTIONS = (
    torch.relu,
    F.relu,
    torch.tanh,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.dropout,
)
SAME_METHODS = ("relu", "tanh")
ADDS = (operator.add, operator.iadd, torch.add)


@dataclass(frozen=True)
class Removable:
    """A layer whose output units structured pruning may remove, and what a removed unit takes with it."""

    layer: str
    norms: tuple[str, ...]  # BatchNorm layers applied to its units, channel for channel
    readers: tuple[tuple[str, bool], ...]  # (a layer that reads its units, through a flatten?)


@dataclass
class _Node:
    kind: str  # input, output, layer, norm, same, flatten, add
    name: str  # the module's name for layer and norm
    inputs: list[int]


class _Tracer(fx.Tracer):
    """Stops at the layers the method looks at (Conv/Linear, BatchNorm, channel-wise modules)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(
            m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *NORMS, *SAME_MODULES, nn.Flatten)
        ) or super().is_leaf_module(m, qualname)


def _flattens(start_dim=0, end_dim=-1) -> bool:
    """torch.flatten's arguments that flatten everything after the batch dimension."""
    return start_dim == 1 and end_dim == -1


class Wiring:
    """The graph of one architecture, by module name (so it serves every copy of the net): for each prunable
    layer, whether structured pruning may remove its units (`removable`) or why not (`kept`)."""

    def __init__(self, model: nn.Module):
        self.layers = list(pruning.prunable_layers(model))
        try:
            self.nodes, self.unread = _read_graph(model, set(self.layers)), None
        except ValueError as e:  # any model can be pruned by magnitude; only what needs the graph is refused
            self.nodes, self.unread = [], str(e)
        self.users: list[list[int]] = [[] for _ in self.nodes]
        for j, node in enumerate(self.nodes):
            for i in node.inputs:
                self.users[i].append(j)
        modules = dict(model.named_modules())
        self.removable: dict[str, Removable] = {}
        self.kept: dict[str, str] = {}
        for i, node in enumerate(self.nodes):
            if node.kind == "layer":
                found = self._follow(i, modules)
                if isinstance(found, str):
                    self.kept[node.name] = found
                else:
                    self.removable[node.name] = found
        for name in self.layers:
            if name not in self.removable and name not in self.kept:
                self.kept[name] = self.unread or "the forward pass does not use it"

    def restrict(self, pruned: list[str]) -> None:
        """Only the layers in `pruned` are pruned: a layer outside them, or one whose units a layer outside
        them reads, keeps its units."""
        for name, r in list(self.removable.items()):
            outside = [n for n in (name, *(reader for reader, _ in r.readers)) if n not in pruned]
            if outside:
                self.kept[name] = f"{outside[0]} is not among the pruned parameters"
                del self.removable[name]

    def _follow(self, start: int, modules: dict) -> Removable | str:
        """Where the units of layer node `start` go: a Removable when every path ends in layers that read
        them (through channel-wise ops, BatchNorm and flattens), else why they cannot be removed."""
        name = self.nodes[start].name
        units = modules[name].weight.shape[0]
        norms, readers, stack = [], [], [(start, False)]
        while stack:
            i, flat = stack.pop()
            for j in self.users[i]:
                node = self.nodes[j]
                if node.kind == "add":
                    return "its output enters a residual addition"
                if node.kind == "output":
                    return "its output is the network's output"
                if node.kind == "layer":
                    m = modules[node.name]
                    fan_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
                    fits = (fan_in % units == 0) if flat else (fan_in == units)
                    if not fits or getattr(m, "groups", 1) != 1:
                        return f"{node.name} does not read its units one channel each"
                    readers.append((node.name, flat))
                    continue
                if node.kind == "norm":
                    if flat or modules[node.name].num_features != units:
                        return f"the BatchNorm {node.name} does not act on its units one channel each"
                    norms.append(node.name)
                stack.append((j, flat or node.kind == "flatten"))
        if not readers:
            return "nothing reads its output"
        return Removable(name, tuple(norms), tuple(readers))

    # -- structured pruning ---------------------------------------------------------------------------------
    def prune_masks(self, weights, masks, bases, scope="layer", method="magnitude", output=None) -> dict:
        """pruning.prune_masks; under method="structured" only the removable layers lose units, and every
        weight that reads a removed unit is masked as well (`close`)."""
        if method != "structured":
            return pruning.prune_masks(weights, masks, bases, scope, method, output=output)
        new = pruning.prune_masks(weights, masks, bases, scope, method, output=output, whole=tuple(self.kept))
        return self.close(new)

    def removed(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per removable layer, its removed units: those with no alive incoming weight (bool, one per unit)."""
        return {n: ~masks[n].bool().flatten(1).any(1) for n in self.removable if n in masks}

    def close(self, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The masks with every weight that reads a removed unit masked too: a conv reader's input channel, a
        linear reader's input column, and behind a flatten every column of the unit's channel."""
        out = dict(masks)
        for name, removable in self.removable.items():  # in forward order: a reader's own units come later
            if name not in out:
                continue
            gone = ~out[name].bool().flatten(1).any(1)
            if not bool(gone.any()):
                continue
            for reader, flat in removable.readers:
                m = out[reader].clone()
                cols = gone.repeat_interleave(m.shape[1] // gone.numel()) if flat else gone
                m[:, cols] = 0
                out[reader] = m
        return out

    @torch.no_grad()
    def silence(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Zero the bias, BatchNorm weight (gamma) and BatchNorm bias (beta) of every removed unit: its output
        is then exactly 0, in training and in evaluation. Returns the removed units per layer."""
        layers = pruning.prunable_layers(model)
        gone = self.removed({n: pruning.mask_of(layers[n]).mask for n in self.removable})
        for name, g in gone.items():
            if not bool(g.any()):
                continue
            if layers[name].bias is not None:
                layers[name].bias[g] = 0
            for norm in self.removable[name].norms:
                bn = model.get_submodule(norm)
                for p in (bn.weight, bn.bias):
                    if p is not None:
                        p[g] = 0
        return gone

    # -- effective sparsity ---------------------------------------------------------------------------------
    @torch.no_grad()
    def effective(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Per prunable layer, which weights can change the output (bool, the weight's shape): those that are
        in the forward pass (alive, or frozen at a non-zero fill) and lie on a path from the input to the
        output through such weights. A unit's output counts as possibly non-zero when some incoming weight
        carries a possibly non-zero input, or its bias is non-zero; a BatchNorm channel's when its beta is
        non-zero, or its gamma is non-zero and its input (or running mean) is. A path back from the output
        passes a BatchNorm channel only where its gamma is non-zero."""
        if self.unread:
            raise ValueError(self.unread)
        modules = dict(model.named_modules())
        present = {}
        for n in self.layers:  # a layer left unpruned (no mask) is whole
            w = modules[n].weight
            mf = pruning.mask_of(modules[n]) if pruning.has_mask(modules[n]) else None
            present[n] = torch.ones_like(w, dtype=torch.bool) if mf is None else mf.mask.bool() | (mf.fill != 0)
        live, fan = self._forward_live(modules, present)
        at_out = self._reaching_output(modules, present, live)
        eff = {}
        for n in self.layers:
            if n not in fan:  # not used by the forward pass
                eff[n] = torch.zeros_like(present[n])
                continue
            p, tail = present[n], (1,) * (present[n].dim() - 2)
            eff[n] = p & fan[n].view(1, -1, *tail) & at_out[n].view(-1, 1, *tail)
        return eff

    def _forward_live(self, modules: dict, present: dict) -> tuple[list, dict]:
        """Forward through the graph: per node, which output channels may be non-zero (None: all) and whether
        its features are flattened; per layer, which of its inputs may be non-zero."""
        live: list = [None] * len(self.nodes)  # per node: (bool per output channel or None = all, flat)
        fan: dict[str, torch.Tensor] = {}  # per layer: which of its inputs may be non-zero
        for j, node in enumerate(self.nodes):
            ins = [live[i] for i in node.inputs]
            if node.kind in ("input", "output"):
                live[j] = (None, False)
            elif node.kind == "layer":
                m, p = modules[node.name], present[node.name]
                fan[node.name] = x = _expand(ins[0], p.shape[1], p.device)
                out = (p.flatten(2).any(2) if p.dim() > 2 else p)[:, x].any(1)
                if m.bias is not None:
                    out = out | (m.bias.detach() != 0)
                live[j] = (out, False)
            elif node.kind == "norm":
                bn = modules[node.name]
                gamma, beta = _affine(bn)
                x = _expand(ins[0], bn.num_features, gamma.device)
                if bn.running_mean is not None:
                    x = x | (bn.running_mean != 0)
                live[j] = ((beta != 0) | ((gamma != 0) & x), False)
            elif node.kind == "add":
                vecs = [v for v, _ in ins]
                if any(flat for _, flat in ins):
                    raise ValueError("an addition of flattened features is not supported")
                live[j] = (None if any(v is None for v in vecs) else torch.stack(vecs).any(0), False)
            else:  # same, flatten
                vec, flat = ins[0]
                live[j] = (vec, flat or (node.kind == "flatten" and vec is not None))
        return live, fan

    def _reaching_output(self, modules: dict, present: dict, live: list) -> dict[str, torch.Tensor]:
        """Backward through the graph: per layer, which of its units lie on a path to the output."""
        reach: list = [None if v is None else torch.zeros_like(v) for v, _ in live]
        at_out: dict[str, torch.Tensor] = {}  # per layer: which of its units reach the output
        for j in range(len(self.nodes) - 1, -1, -1):
            node = self.nodes[j]
            if node.kind == "output":
                for i in node.inputs:
                    if reach[i] is not None:
                        reach[i] = torch.ones_like(reach[i])
                continue
            r = reach[j]
            if node.kind == "layer":
                at_out[node.name] = r
                p = present[node.name]
                back = [(p.flatten(2).any(2) if p.dim() > 2 else p)[r].any(0)]
            elif node.kind == "norm":
                back = [r & (_affine(modules[node.name])[0] != 0)]
            else:  # same, flatten, add: every input as the output
                back = [r] * len(node.inputs)
            for i, b in zip(node.inputs, back):
                if reach[i] is not None:
                    reach[i] |= b.view(reach[i].numel(), -1).any(1)  # a flattened view: per channel
        return at_out


def effective_sparsity(model: nn.Module, wiring: Wiring, names=None) -> tuple[float, dict[str, float]]:
    """Share of prunable weights (`names`: of those layers) that can no longer change the output
    (Wiring.effective): overall and per layer. At least the pruned share, except where frozen weights
    (strategy.pruned_fill=trained) still act."""
    per, dead, total = {}, 0, 0
    for name, e in wiring.effective(model).items():
        if names is not None and name not in names:
            continue
        d = int(e.numel() - e.sum())
        per[name] = d / e.numel()
        dead, total = dead + d, total + e.numel()
    return dead / max(total, 1), per


def _affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.weight is None:
        ones = torch.ones(bn.num_features, device=bn.running_mean.device if bn.running_mean is not None else None)
        return ones, torch.zeros_like(ones)
    return bn.weight.detach(), bn.bias.detach()


def _expand(feat, n: int, device) -> torch.Tensor:
    """A node's output channels as the n inputs of the layer that reads them (behind a flatten, each channel
    becomes n / channels columns)."""
    vec, flat = feat
    if vec is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if flat and vec.numel() != n:
        if n % vec.numel():
            raise ValueError(f"{n} inputs cannot read {vec.numel()} flattened channels")
        return vec.repeat_interleave(n // vec.numel())
    if vec.numel() != n:
        raise ValueError(f"a layer of {n} inputs reads {vec.numel()} channels")
    return vec


def _read_graph(model: nn.Module, layers: set[str]) -> list[_Node]:
    """The net's forward as a list of nodes in execution order; anything the method cannot follow is refused."""
    try:
        graph = _Tracer().trace(model)
    except Exception as e:
        raise ValueError(
            f"{type(model).__name__}: its forward cannot be traced with torch.fx to find how its "
            f"units are wired ({type(e).__name__}: {e})"
        ) from None
    modules = dict(model.named_modules())
    index, nodes, seen = {}, [], set()
    for node in graph.nodes:
        ins = [index[a] for a in node.all_input_nodes]
        kind, name = _kind(node, modules, layers), ""
        if kind is None:
            raise ValueError(
                f"{type(model).__name__}: cannot follow units through {node.format_node()}; "
                "phicenter.method.units knows Conv/Linear, BatchNorm, channel-wise activations "
                "and pooling, flatten and addition"
            )
        if kind in ("layer", "norm"):
            name = str(node.target)
            if name in seen:
                raise ValueError(f"{type(model).__name__}: {name} is applied twice; units cannot be followed")
            seen.add(name)
        if kind not in ("input", "output", "add") and len(ins) != 1:
            raise ValueError(f"{type(model).__name__}: {node.format_node()} takes {len(ins)} tensors, not 1")
        index[node] = len(nodes)
        nodes.append(_Node(kind, name, ins))
    return nodes


def _kind(node: fx.Node, modules: dict, layers: set[str]) -> str | None:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        m = modules[node.target]
        if node.target in layers:
            return "layer" if getattr(m, "groups", 1) == 1 else None
        if isinstance(m, NORMS):
            return "norm"
        if isinstance(m, SAME_MODULES):
            return "same"
        if isinstance(m, nn.Flatten) and _flattens(m.start_dim, m.end_dim):
            return "flatten"
        return None
    if node.op == "call_function":
        if node.target in SAME_FUNCTIONS:
            return "same"
        if node.target is torch.flatten and _flattens(*node.args[1:3], **node.kwargs):
            return "flatten"
        if node.target in ADDS and all(isinstance(a, fx.Node) for a in node.args) and not node.kwargs:
            return "add"
        return None
    if node.op == "call_method":
        if node.target in SAME_METHODS:
            return "same"
        if node.target == "flatten" and _flattens(*node.args[1:3], **node.kwargs):
            return "flatten"
        return None
    return None
