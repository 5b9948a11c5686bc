"""Packed sweeps: the K variants of one (dataset, architecture, seed) -- same theta0, same data order, only
phi and the strategy differ -- trained together in one process on one data stream.

    python -m phicenter.train pack=true 'phi=[-1e-3,0,5e-5]' 'strategy=[mask0,mask1]'

trains the six variants as one batched model and writes one run folder per variant under the job's folder,
named like a multirun job (`phi=0.0,strategy=mask0/`), each with the results.json, TensorBoard events, theta0
and round checkpoints an unpacked run writes. `pack_chunk=N` trains at most N variants at a time (memory);
a CUDA out-of-memory halves the chunk and carries on from the last completed epoch.

How (docs in the module, so the code can be checked against them):
- Every variant keeps an ordinary nn.Module with its own phicenter.method.imp.IMP: the round boundary (prune,
  re-sign, reinit, diagnostics) is the unchanged method code, run per variant on CPU copies.
- Training reads the variants' tensors stacked along a leading dim K: raw weights, masks, fills, biases,
  BatchNorm affine and running statistics. The effective weight is where(mask, raw, fill) on the stack,
  so the mask is enforced in the forward pass exactly as pruning.MaskFill does it.
- The forward comes in three implementations (PackedNet, `impl`). "loop", the CPU default: each variant's
  own forward on its slices of the stack -- the unpacked kernels on the unpacked shapes, so the arithmetic
  of K separate runs bit for bit, for any architecture (tests/test_packed.py checks it against
  phicenter.engine.run.run). On a CPU that costs nothing: the matrix work is the same either way, and batched
  kernels measured no faster here (grouped convolutions slower). "batched", the CUDA default for nn.Sequential
  nets of common layers: linear layers as batched matmuls (one addmm for the first layer, whose input all
  variants share, with a backward that issues nn.Linear's own products), convolutions as one convolution
  over the concatenated output channels (first layer) and grouped convolutions after it, pooling, ReLU and
  BatchNorm per channel on the (batch, K*channels, H, W) layout -- one kernel per layer for all K, which is
  where packing pays on a GPU. "vmap": torch.func.vmap over functional_call, the CUDA fallback for other
  architectures. batched and vmap are the same maths but not bit-identical to the unpacked kernels.
- The loss is the sum of the variants' mean cross-entropies, so each variant's gradient is its own. The
  optimizer steps per-variant views of the stacked tensors (variant after variant, which keeps each one's
  state in cache): the same update, element for element, as K unpacked optimizers.
- Per round and variant: a fresh optimizer and schedule (as PhiModule), validation after every epoch, test
  after the round, the same results.json entry as run.py. "seconds" is the packed round's wall time divided
  by the variants trained in it; "seconds_packed" is the whole.
- Resume: after every `checkpoint.every_n_epochs` epochs each variant's folder gets a mid-round checkpoint
  (weights, masks, fills, its optimizer state, the schedule, the round's diagnostics and epoch history);
  a relaunch continues from the latest epoch all variants of the chunk have, as an unpacked run does.
"""
from __future__ import annotations

import copy
import gc
import logging
import math
import os
import shutil
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from phicenter import data
from phicenter.engine import results
from phicenter.config import ConfigError, check_same_run, recorded_config, validate
from phicenter.engine.module import make_optimizer

log = logging.getLogger("phicenter")

PACK_SUMMARY = "pack.json"            # in the job folder: {"variants": {name: status}, ...}
PACK_KEYS = ("pack", "pack_chunk")      # execution options: never part of a variant's config
VARIED = ("phi", "strategy")            # what may differ between the variants of one pack


# ---------------------------------------------------------------------------------------------------------
# Variants

@dataclass
class Variant:
    """One run of a pack: its folder name under the job folder and the config of the same run unpacked."""
    name: str
    cfg: DictConfig


def variant_name(phi, strategy: str) -> str:
    """The folder a multirun job over phi and strategy would get (keys sorted, as Hydra's override_dirname)."""
    return f"phi={float(phi)!r},strategy={strategy}"


def make_variants(cfg: DictConfig, phis=None, strategies=None) -> list[Variant]:
    """Variants from one base config without Hydra: phi from `phis`, strategy nodes from `strategies`
    (each a strategy config node, e.g. {'name': 'mask1', 'rewind_other': True}, or None to keep cfg's)."""
    phis = list(phis) if phis is not None else [cfg.phi]
    strategies = list(strategies) if strategies is not None else [None]
    out = []
    for s in strategies:
        for p in phis:
            c = copy.deepcopy(cfg)
            with open_dict(c):
                if s is not None:
                    c.strategy = OmegaConf.create(OmegaConf.to_container(s) if OmegaConf.is_config(s) else s)
                c.phi = p
                c.pack, c.pack_chunk = False, None
            out.append(Variant(variant_name(_phi_number(p), str(c.strategy.name)), c))
    return out


def _phi_number(p) -> float:
    try:
        return float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"phi must be a number, got {p!r}") from None


def variants_from_hydra(cfg: DictConfig) -> list[Variant]:
    """The variants of a `pack=true` job: list-valued `phi=[...]` and `strategy=[...]` overrides (or a phi
    list in the config) span the grid; every other override applies to all of them. Each variant's config
    is composed exactly as the unpacked job `strategy=S phi=P` would be. An override `strategy.KEY=V`
    applies to the variants whose strategy has KEY (or to all, with +/++)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    hc = HydraConfig.get()
    task = list(hc.overrides.task)
    parsed = OverridesParser.create().parse_overrides(task)
    keep, options, strategies = [], [], [None]
    for line, o in zip(task, parsed):
        key = o.key_or_group
        if key in PACK_KEYS or key == "phi":
            continue
        if key == "strategy":
            val = o.value()
            strategies = [str(s) for s in val] if isinstance(val, list) else [str(val)]
        elif key.startswith("strategy."):
            options.append(o)
        else:
            keep.append(line)
    phis = list(cfg.phi) if OmegaConf.is_list(cfg.phi) else [cfg.phi]
    if not phis or not strategies:
        raise ConfigError("pack=true needs at least one phi and one strategy")
    variants = []
    for s in strategies:
        base = compose(config_name=hc.job.config_name,
                       overrides=keep + ([f"strategy={s}"] if s is not None else []))
        with open_dict(base):
            for o in options:
                sub = o.key_or_group[len("strategy."):]
                if sub in base.strategy or o.is_add() or o.is_force_add():
                    OmegaConf.update(base, o.key_or_group, o.value(), force_add=True)
                else:
                    log.info("%s does not apply to strategy %s; ignored for its variants",
                             o.key_or_group, base.strategy.name)
        variants += make_variants(base, phis, [base.strategy])
    return variants


def check_variants(variants: list[Variant]) -> list[dict]:
    """One clear error when the variants cannot share a pack; returns their validated key values."""
    if not variants:
        raise ConfigError("pack: no variants")
    names = [v.name for v in variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"pack: variants given twice: {', '.join(dup)}")
    vals = [validate(v.cfg) for v in variants]

    def shared(c):
        d = OmegaConf.to_container(c, resolve=True)
        for k in (*VARIED, *PACK_KEYS):
            d.pop(k, None)
        return d

    ref = shared(variants[0].cfg)
    for v in variants[1:]:
        if shared(v.cfg) != ref:
            diff = sorted(k for k in set(ref) | set(shared(v.cfg)) if ref.get(k) != shared(v.cfg).get(k))
            raise ConfigError(f"pack: variant {v.name} differs from {variants[0].name} in {', '.join(diff)}; "
                              "only phi and strategy may vary within a pack")
    precision = str(variants[0].cfg.trainer.get("precision", "32-true"))
    if precision not in ("32-true", "32"):
        raise ConfigError(f"pack=true trains in float32 only (trainer.precision=32-true), got {precision}")
    return vals


# ---------------------------------------------------------------------------------------------------------
# The packed model

# torch's CPU bmm computes products with contraction * rows * cols below this in its own loop, not with the
# BLAS gemm that nn.Linear's mm uses; such tiny products are done one variant at a time, with mm.
_BMM_SMALL = 400


class _PackedLinear(torch.autograd.Function):
    """y[k] = x[k] @ w[k].T + b[k] for all k at once; x is [K, B, in], or [B, in] shared by all variants.

    The backward issues the products nn.Linear's own backward issues (grad_w = g.T @ x, grad_x = g @ w),
    batched over K, so each variant's gradients are bit-for-bit those of an unpacked layer on CPU."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        k, n_out, n_in = w.shape
        if x.dim() == 2:   # shared input: one product against the variants' weights side by side
            flat = w.reshape(k * n_out, n_in).t()
            y = torch.addmm(b.reshape(-1), x, flat) if b is not None else x.mm(flat)
            return y.view(x.shape[0], k, n_out).transpose(0, 1)
        if x.shape[1] * n_in * n_out < _BMM_SMALL:
            return torch.stack([torch.addmm(b[i], x[i], w[i].t()) if b is not None else x[i].mm(w[i].t())
                                for i in range(k)])
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if b is not None else x.bmm(w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        k = w.shape[0]
        small = x.dim() == 3 and x.shape[1] * w.shape[1] * w.shape[2] < _BMM_SMALL
        if ctx.needs_input_grad[0]:
            gx = (torch.stack([g[i].mm(w[i]) for i in range(k)]) if small else g.bmm(w))
            if x.dim() == 2:
                gx = gx.sum(0)
        if ctx.needs_input_grad[1]:
            if x.dim() == 2:
                gw = torch.matmul(g.transpose(1, 2), x)
            elif small:
                gw = torch.stack([g[i].t().mm(x[i]) for i in range(k)])
            else:
                gw = g.transpose(1, 2).bmm(x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.contiguous().sum(1)   # the reduction order of a contiguous [B, out].sum(0)
        return gx, gw, gb


_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Identity)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]] | None:
    """The modules a plain nn.Sequential applies in order (nested Sequentials flattened); None otherwise."""
    if not isinstance(module, nn.Sequential):
        return None
    out = []
    for name, m in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(m, nn.Sequential):
            inner = _leaves(m, full + ".")
            if inner is None:
                return None
            out += inner
        else:
            out.append((full, m))
    return out


def batched_plan(net: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The layer list when every layer has a batched implementation here, else None."""
    plan = _leaves(net)
    if plan is None:
        return None
    for _, m in plan:
        ok = (isinstance(m, (*_ELEMENTWISE, *_POOLS))
              or isinstance(m, nn.Linear)
              or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros")
              or isinstance(m, nn.BatchNorm2d)
              or (isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1))
        if not ok:
            return None
    return plan


IMPLS = ("auto", "loop", "batched", "vmap")


class PackedNet:
    """The K variants' parameters and buffers stacked along dim 0, and a forward that returns [K, B, classes].

    `impl`:
      "loop"    each variant's forward in turn on its slices of the stack (any net): the unpacked arithmetic,
                bit for bit, by construction. The CPU default: on CPU the work is the same either way.
      "batched" batched matmuls and grouped convolutions (nn.Sequential nets of common layers): one kernel
                per layer for all K, which is where packing pays on a GPU. Same maths; on CPU it matched the
                unpacked runs bit for bit at the paper's layer sizes, but BLAS picks kernels by shape, so
                tiny layers (a handful of units) can differ in the last bit.
      "vmap"    torch.func.vmap over functional_call (any net): same maths, not bit-identical.
      "auto"    loop on CPU; on CUDA batched where supported, else vmap."""

    def __init__(self, nets: list[nn.Module], device=None, impl: str = "auto"):
        self.template = nets[0]
        self.k = len(nets)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        device = torch.device(device) if device is not None else next(self.template.parameters()).device
        if impl == "auto":
            impl = "loop" if device.type == "cpu" else ("batched" if batched_plan(self.template) else "vmap")
        self.plan = batched_plan(self.template) if impl in ("batched", "loop") else None
        if impl == "batched" and self.plan is None:
            raise ValueError("this architecture has no batched packed implementation; use impl='loop' or 'vmap'")
        self.impl, self.device = impl, device
        own_p = [dict(net.named_parameters()) for net in nets]
        own_b = [dict(net.named_buffers()) for net in nets]
        with torch.no_grad():
            self.params = {n: torch.stack([p[n].detach() for p in own_p]).to(device).requires_grad_(True)
                           for n, _ in self.template.named_parameters()}
            self.buffers = {n: torch.stack([b[n] for b in own_b]).to(device)
                            for n, _ in self.template.named_buffers()}

    def per_variant(self, name: str) -> list[torch.Tensor] | list[None]:
        """Parameter `name` of each variant, as the forward differentiates it: unbind, never indexing, so
        the backward gathers the K gradients in one op."""
        if name not in self.params:
            return [None] * self.k
        return list(self.params[name].unbind(0))

    def grad(self, name: str, k: int) -> torch.Tensor | None:
        """Variant k's gradient of parameter `name` after a backward."""
        g = self.params[name].grad
        return None if g is None else g[k]

    def parameters(self) -> list[torch.Tensor]:
        """The stacked leaves autograd writes gradients into."""
        return list(self.params.values())

    def variant_parameters(self) -> list[torch.Tensor]:
        """Per-variant views of the stacked parameters, variant after variant, for the optimizer; call
        `share_grads()` after each backward. Stepping each variant's tensors while they are in cache is 2-3x
        faster on CPU than elementwise ops over the whole stack, and it is literally the unpacked update."""
        self._views = [(t, k, t.detach()[k]) for k in range(self.k) for t in self.params.values()]
        return [v for _, _, v in self._views]

    @property
    def steps_views(self) -> bool:
        """Whether the optimizer steps per-variant views (CPU: cache) or the stacked tensors (CUDA: few
        large tensors for the fused kernels). Elementwise optimizers update each element the same way."""
        return self.device.type == "cpu"

    def optimizer_parameters(self) -> list[torch.Tensor]:
        return self.variant_parameters() if self.steps_views else self.parameters()

    def optimizer_state(self, opt: torch.optim.Optimizer, k: int) -> list[dict]:
        """Variant k's optimizer state, one dict per stacked parameter (in self.params order), on CPU."""
        def take(val, stacked):
            if not torch.is_tensor(val):
                return val
            return (val[k] if stacked and val.dim() > 0 else val).detach().to("cpu", copy=True)

        if self.steps_views:
            own = {id(t): v for t, kk, v in self._views if kk == k}
            return [{key: take(val, False) for key, val in opt.state.get(own[id(t)], {}).items()}
                    for t in self.params.values()]
        return [{key: take(val, True) for key, val in opt.state.get(t, {}).items()} for t in self.params.values()]

    def load_optimizer_state(self, opt: torch.optim.Optimizer, states: list[list[dict]]) -> None:
        """The inverse of optimizer_state for all K variants (states[k][j]); tensors go where a fresh
        optimizer of this kind keeps them (its step counter on the CPU unless fused or capturable)."""
        group = opt.param_groups[0]
        on_device = bool(group.get("fused") or group.get("capturable"))

        def place(key, val, like):
            if not torch.is_tensor(val):
                return val
            if key == "step":
                return val.to(like.device if on_device else "cpu")
            return val.to(like.device, like.dtype)

        for j, t in enumerate(self.params.values()):
            if not states[0][j]:
                continue
            if self.steps_views:
                for tt, k, v in self._views:
                    if tt is t:
                        opt.state[v] = {key: place(key, val, v) for key, val in states[k][j].items()}
                continue
            merged = {}
            for key, val in states[0][j].items():
                if torch.is_tensor(val) and val.dim() > 0:
                    merged[key] = place(key, torch.stack([states[k][j][key] for k in range(self.k)]), t)
                else:
                    merged[key] = place(key, val, t)
            opt.state[t] = merged

    def share_grads(self) -> None:
        for t, k, v in getattr(self, "_views", ()):
            v.grad = None if t.grad is None else t.grad[k]

    def zero_grad(self) -> None:
        """Gradients to None, as optimizer.zero_grad() does for an unpacked run."""
        for t in self.parameters():
            t.grad = None
        for _, _, v in getattr(self, "_views", ()):
            v.grad = None

    def _pairs(self, nets: list[nn.Module]):
        """(slice k of a stacked tensor, variant k's own tensor) for every parameter and buffer."""
        for store, get in ((self.params, nn.Module.named_parameters), (self.buffers, nn.Module.named_buffers)):
            for k, net in enumerate(nets):
                own = dict(get(net))
                for n, t in store.items():
                    yield t[k], own[n]

    @torch.no_grad()
    def gather(self, nets: list[nn.Module]) -> None:
        """Variant models -> stack (after the round boundary changed them)."""
        for stacked, own in self._pairs(nets):
            stacked.copy_(own)

    @torch.no_grad()
    def scatter(self, nets: list[nn.Module]) -> None:
        """Stack -> variant models (before the round boundary and before saving)."""
        for stacked, own in self._pairs(nets):
            own.copy_(stacked)

    def _weight(self, name: str) -> torch.Tensor:
        raw = self.params.get(f"{name}.parametrizations.weight.original")
        if raw is None:
            return self.params[f"{name}.weight"]
        mask = self.buffers[f"{name}.parametrizations.weight.0.mask"]
        fill = self.buffers[f"{name}.parametrizations.weight.0.fill"]
        return torch.where(mask, raw, fill.to(raw.dtype))

    def _weights(self, name: str) -> list[torch.Tensor]:
        """Each variant's effective weight, computed variant by variant (the unpacked op, on cache-sized
        tensors; one where over the whole stack is memory-bound on CPU)."""
        key = f"{name}.parametrizations.weight.original"
        if key not in self.params:
            return self.per_variant(f"{name}.weight")
        mask = self.buffers[f"{name}.parametrizations.weight.0.mask"]
        fill = self.buffers[f"{name}.parametrizations.weight.0.fill"]
        return [torch.where(m, r, f.to(r.dtype)) for m, r, f in zip(mask, self.per_variant(key), fill)]

    def __call__(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        if self.impl == "loop":
            if not torch.is_grad_enabled():   # evaluation: one variant at a time, 1x the activation memory
                return self._loop_any(x, training)
            return self._loop(x, training)
        return self._batched(x, training) if self.impl == "batched" else self._vmap(x, training)

    def _loop(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Every layer with weights runs once per variant, the very call the unpacked module makes on the same
        shapes (F.linear, Conv2d._conv_forward, F.batch_norm), so the arithmetic is the unpacked arithmetic
        bit for bit; parameter-free layers (ReLU, pooling, Flatten) run once on all variants stacked. unbind,
        never indexing, so the backward gathers the K gradients in one op."""
        if self.plan is None:
            return self._loop_any(x, training)
        k = self.k
        shared, stacked, parts = x, None, None   # exactly one is set: shared input, [K, B, ...], K tensors
        for name, m in self.plan:
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d)):
                if parts is None:
                    parts = stacked.unbind(0) if stacked is not None else [shared] * k
                    shared = stacked = None
                if isinstance(m, nn.BatchNorm2d):
                    parts = self._batch_norm(name, m, list(parts), training)
                    continue
                ws = self._weights(name)
                bs = self.per_variant(f"{name}.bias")
                if isinstance(m, nn.Linear):
                    parts = [F.linear(h, w, bb) for h, w, bb in zip(parts, ws, bs)]
                else:
                    parts = [m._conv_forward(h, w, bb) for h, w, bb in zip(parts, ws, bs)]
            elif shared is not None:
                shared = m(shared)
            else:
                if stacked is None:
                    stacked, parts = torch.stack(parts), None
                out = m(stacked.flatten(0, 1))   # per sample and channel: K*B samples of one net
                stacked = out.view(k, -1, *out.shape[1:])
        if shared is not None:
            raise ValueError("the network has no layer with weights")
        return stacked if stacked is not None else torch.stack(parts)

    def _loop_any(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Any architecture: the template module once per variant, with that variant's slices swapped in."""
        from torch.func import functional_call

        params = {n: self.per_variant(n) for n in self.params}
        buffers = {n: t.unbind(0) for n, t in self.buffers.items()}
        was = self.template.training
        self.template.train(training)
        try:
            return torch.stack([functional_call(self.template, {**{n: v[i] for n, v in params.items()},
                                                                **{n: v[i] for n, v in buffers.items()}}, (x,))
                                for i in range(self.k)])
        finally:
            self.template.train(was)

    def _batched(self, h: torch.Tensor, training: bool) -> torch.Tensor:
        # h is shared by all variants ([B, ...]) until the first layer with weights; after it, a feature
        # map is [B, K*C, H, W] (variant k owns channels k*C..k*C+C-1) and a vector is [K, B, F].
        k, shared = self.k, True
        for name, m in self.plan:
            if isinstance(m, nn.Linear):
                if not shared and h.dim() != 3:
                    raise ValueError(f"{name}: Linear on a feature map needs a Flatten before it")
                h = _PackedLinear.apply(h, self._weight(name), self.params.get(f"{name}.bias"))
                shared = False
            elif isinstance(m, nn.Conv2d):
                w = self._weight(name)
                b = self.params.get(f"{name}.bias")
                h = F.conv2d(h, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                             m.stride, m.padding, m.dilation, 1 if shared else k)
                shared = False
            elif isinstance(m, nn.BatchNorm2d):
                if shared:
                    h, shared = h.repeat(1, k, 1, 1), False
                h = self._batch_norm(name, m, [h], training)[0]
            elif isinstance(m, nn.Flatten):
                h = h.flatten(1) if shared else h.reshape(h.shape[0], k, -1).transpose(0, 1)
            else:  # elementwise activations and pooling act per channel in either layout
                h = m(h)
        if shared:
            raise ValueError("the network has no layer with weights")
        return h

    def _batch_norm(self, name, m: nn.BatchNorm2d, hs: list[torch.Tensor], training) -> list[torch.Tensor]:
        """nn.BatchNorm2d.forward, on all variants at once (one tensor in `hs`, the (B, K*C, H, W) layout) or
        once per variant (K tensors in `hs`), with each variant's own affine parameters and statistics."""
        per = len(hs) > 1 or self.k == 1

        def parts(t):
            if t is None:
                return [None] * len(hs)
            return t.unbind(0) if per else [t.reshape(-1)]

        def affine(pname):
            return self.per_variant(pname) if per else parts(self.params.get(pname))

        nbt = self.buffers.get(f"{name}.num_batches_tracked")
        factor = 0.0 if m.momentum is None else m.momentum
        if training and m.track_running_stats and nbt is not None:
            nbt.add_(1)
            factor = 1.0 / float(nbt[0]) if m.momentum is None else m.momentum
        rm, rv = self.buffers.get(f"{name}.running_mean"), self.buffers.get(f"{name}.running_var")
        use_batch = training or (rm is None and rv is None)
        return [F.batch_norm(h, mean, var, w, b, use_batch, factor, m.eps) for h, mean, var, w, b in
                zip(hs, parts(rm), parts(rv), affine(f"{name}.weight"), affine(f"{name}.bias"))]

    def _vmap(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        from torch.func import functional_call, vmap

        # BatchNorm's step counters are equal in every variant and read with .item() (momentum=None), which
        # vmap cannot batch: pass variant 0's, unbatched, and copy it to the others afterwards
        counters = [n for n in self.buffers if n.endswith("num_batches_tracked")]
        buffers = {n: (t[0] if n in counters else t) for n, t in self.buffers.items()}
        dims = {n: (None if n in counters else 0) for n in self.buffers}
        was = self.template.training
        self.template.train(training)
        try:
            def one(p, b, xb):
                return functional_call(self.template, {**p, **b}, (xb,))
            out = vmap(one, in_dims=(0, dims, None), randomness="different")(self.params, buffers, x)
        finally:
            self.template.train(was)
        with torch.no_grad():
            for n in counters:
                self.buffers[n][1:] = self.buffers[n][0]
        return out


def packed_losses(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per variant mean cross-entropy of [K, B, classes] logits: (losses to backpropagate, their values).

    The first is one batched op whose gradient is bit-for-bit that of F.cross_entropy(logits[k], y) for
    each k; its values can differ from F.cross_entropy's in the last bit (that sums the batch in another
    order), so the reported values come from nll_loss per variant on the same log-probabilities (cheap:
    K reductions of B numbers)."""
    k, b, c = logits.shape
    logp = F.log_softmax(logits, -1)
    losses = F.nll_loss(logp.reshape(k * b, c), y.repeat(k), reduction="none").view(k, b).mean(1)
    with torch.no_grad():
        values = torch.stack([F.nll_loss(logp[i], y) for i in range(k)])
    return losses, values


def packed_step(net: "PackedNet", opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    """One optimizer step of every variant on the batch (x, y); returns the logits and per-variant losses."""
    logits = net(x, training=True)
    losses, values = packed_losses(logits, y)
    net.zero_grad()
    losses.sum().backward()
    net.share_grads()
    opt.step()
    return logits, values


def _sums(into: torch.Tensor, values: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Per variant: loss * batch size, correct, batch size, in float64 (PhiModule._acc, K rows at once)."""
    n = torch.full((logits.shape[0],), float(len(y)), device=logits.device, dtype=torch.float64)
    into += torch.stack([values.double() * len(y), (logits.argmax(-1) == y).sum(1).double(), n], 1)


def _take(s: torch.Tensor) -> list[tuple[float, float]]:
    """(mean loss, accuracy) per variant; NaN where no batch ran (as PhiModule._take)."""
    return [(loss / n, correct / n) if n else (math.nan, math.nan) for loss, correct, n in s.tolist()]


def _evaluate(net: PackedNet, batches, device) -> list[tuple[float, float]]:
    """Loss and accuracy per variant over an evaluation split. The loop implementation evaluates one variant
    at a time (exact, 1x memory); the batched ones split each batch in K so the activations of all variants
    together take what one unpacked batch does (same accuracies; losses summed in another order)."""
    s = torch.zeros(net.k, 3, dtype=torch.float64, device=device)
    with torch.inference_mode():
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            step = len(y) if net.impl == "loop" else max(1, -(-len(y) // net.k))
            for i in range(0, len(y), step):
                logits = net(x[i:i + step], training=False)
                _sums(s, packed_losses(logits, y[i:i + step])[1], logits, y[i:i + step])
    return _take(s)


# ---------------------------------------------------------------------------------------------------------
# The round loop

@dataclass
class _Slot:
    """One variant's state: what run.run keeps for one run."""
    variant: Variant
    v: dict
    dir: Path
    net: nn.Module
    imp: object
    resolved: dict
    rounds: list
    start: int
    out: dict = field(default_factory=dict)
    logger: object = None
    alive: bool = True


def _device(cfg) -> torch.device:
    acc = str(cfg.trainer.get("accelerator", "auto"))
    if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", 0)
    if acc in ("gpu", "cuda"):
        raise ConfigError(f"trainer.accelerator={acc} but no CUDA device is available")
    return torch.device("cpu")


def _prepare(variant: Variant, v: dict, run_dir: Path, splits):
    """Like the start of run.run: a finished run is returned as its results dict; else a _Slot, resumed
    from the variant's last round checkpoint when there is one."""
    from phicenter.engine.run import build_imp, build_model

    cfg = variant.cfg
    d = run_dir / variant.name
    prev = results.read_json(d / results.RESULTS)
    resolved = recorded_config(cfg, v["phi"])
    if prev and prev.get("status") == "complete" and cfg.get("resume", True):
        log.info("run in %s is already complete; nothing to do", d)
        return prev
    net = build_model(cfg, splits)
    imp = build_imp(cfg, net, v)
    rounds, start = [], 0
    ckpt = results.latest_round(d, log=log.warning) if cfg.get("resume", True) else None
    if ckpt is not None:
        imp.theta0 = torch.load(d / results.THETA0, map_location="cpu", weights_only=True)
        net.load_state_dict(ckpt["model"])
        rounds, start = ckpt["rounds"], ckpt["round"] + 1
        log.info("resuming %s after round %d", d, ckpt["round"])
        for stale in sorted((d / results.CKPT_DIR).glob("round_*_epochs")):
            if int(stale.name.split("_")[1]) < start:
                shutil.rmtree(stale, ignore_errors=True)
    else:
        if not cfg.get("resume", True):   # starting over: no checkpoint of the run before may be resumed later
            shutil.rmtree(d / results.CKPT_DIR, ignore_errors=True)
        results.save_torch(d / results.THETA0, imp.theta0)
        results.write_json(d / results.RESULTS, {"config": resolved, "rounds": [], "final": None,
                                                 "status": "running"})
    return _Slot(variant, v, d, net, imp, resolved, rounds, start)


# Mid-round checkpoints of a packed variant, beside its round checkpoints: the last two completed epochs.
EPOCH_FILES = ("packed_last.pt", "packed_prev.pt")


def _epoch_dir(slot: _Slot, r: int) -> Path:
    return slot.dir / results.CKPT_DIR / f"round_{r:03d}_epochs"


def _save_epoch(slot: _Slot, r: int, state: dict) -> None:
    """Atomically, keeping the one before as the fallback for a kill during the write."""
    d = _epoch_dir(slot, r)
    last, prev = (d / f for f in EPOCH_FILES)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".packed_last.pt.tmp"
    torch.save(state, tmp)
    if last.exists():
        os.replace(last, prev)
    os.replace(tmp, last)


def _load_epochs(slots: list[_Slot], r: int) -> list[dict] | None:
    """Each slot's state after the latest epoch of round r that every slot has a readable checkpoint of
    (variants packed together save one after another, so a kill can leave them one epoch apart); None
    when there is no common epoch."""
    found: list[dict[int, dict]] = []
    for s in slots:
        have = {}
        for f in EPOCH_FILES:
            path = _epoch_dir(s, r) / f
            if not path.exists():
                continue
            try:
                st = torch.load(path, map_location="cpu", weights_only=False)
                if st.get("round") == r:
                    have.setdefault(int(st["epoch"]), st)
            except Exception as e:
                log.warning("checkpoint %s is unreadable (%s); falling back to the one before it", path,
                            type(e).__name__)
        found.append(have)
    common = set.intersection(*(set(h) for h in found)) if found else set()
    if not common:
        return None
    e = max(common)
    return [h[e] for h in found]


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in str(e) or "can't allocate memory" in str(e)))


def train_packed(variants: list[Variant], run_dir: str | Path, chunk: int | None = None,
                 impl: str = "auto") -> dict[str, dict]:
    """Train the variants packed, `chunk` at a time (None: all), each into run_dir/<variant.name>, and write
    run_dir/pack.json (each variant's status). Returns {name: results dict} (each results.json's content).
    Variants already complete there are skipped; the others resume from their last completed epoch (the
    latest epoch every variant of the chunk has a checkpoint of), else from their last round checkpoint."""
    run_dir, t_start = Path(run_dir), time.perf_counter()
    vals = check_variants(variants)
    cfg0 = variants[0].cfg
    if chunk is not None and (isinstance(chunk, bool) or int(chunk) < 1):
        raise ConfigError(f"pack_chunk must be a positive integer or null, got {chunk!r}")
    if cfg0.get("threads"):
        torch.set_num_threads(int(cfg0.threads))
    from phicenter.engine.run import _deterministic, load_data

    device = _device(cfg0)
    splits = load_data(cfg0)
    deterministic = _deterministic(cfg0)
    torch.use_deterministic_algorithms(deterministic)   # what Lightning sets for the unpacked run
    if deterministic:
        torch.backends.cudnn.benchmark = False
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"

    done: dict[str, dict] = {}
    size = int(chunk) if chunk else len(variants)
    pending = []
    for i, var in enumerate(variants):
        prev = results.read_json(run_dir / var.name / results.RESULTS)
        if var.cfg.get("resume", True):   # before any work: every variant folder must hold its own config
            check_same_run(prev, recorded_config(var.cfg, vals[i]["phi"]), run_dir / var.name)
        if prev and prev.get("status") == "complete" and var.cfg.get("resume", True):
            done[var.name] = prev
        else:
            pending.append(i)
    queue = [pending[i:i + size] for i in range(0, len(pending), size)]
    failed: list[str] = []
    while queue:
        group = queue.pop(0)
        slots = {i: _prepare(variants[i], vals[i], run_dir, splits) for i in group}
        for i, s in list(slots.items()):
            if isinstance(s, dict):
                done[variants[i].name] = slots.pop(i)
        if not slots:
            continue
        # variants resumed from different rounds cannot share a pack: the earliest go now, the rest later
        start = min(s.start for s in slots.values())
        now = [i for i, s in slots.items() if s.start == start]
        later = [i for i in slots if i not in now]
        if later:
            queue.insert(0, later)
        ss = [slots[i] for i in now]
        del slots
        try:
            _train_chunk(ss, start, splits, device, impl)
        except Exception as e:
            if _is_oom(e) and len(ss) > 1:
                half = (len(now) + 1) // 2
                log.warning("out of memory with %d variants packed; retrying in chunks of %d from the "
                            "last completed epoch", len(ss), half)
                _close(ss)
                ss = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                queue[:0] = [now[:half], now[half:]]
                continue
            for s in ss:
                if s.alive:
                    _record_failure(s, "failed", f"{type(e).__name__}: {e}", traceback.format_exc())
                    failed.append(s.variant.name)
            log.error("packed chunk failed: %s", e)
        _close(ss)
        for s in ss:
            done[s.variant.name] = s.out
    results.write_json(run_dir / PACK_SUMMARY, {
        "variants": {v.name: (done.get(v.name) or {}).get("status", "missing") for v in variants},
        "chunk": chunk, "seconds": time.perf_counter() - t_start})
    if failed:
        raise PackFailed(f"{len(failed)} of {len(variants)} packed variants failed: {', '.join(failed)} "
                         "(see their results.json)")
    return {v.name: done.get(v.name) for v in variants}


def _close(slots: list[_Slot]) -> None:
    for s in slots:
        if s.logger is not None:
            s.logger.finalize("success" if s.out.get("status") == "complete" else "failed")
            s.logger = None


class PackFailed(RuntimeError):
    """Some variants of a pack failed (each one's results.json says why); the others completed."""


def _record_failure(slot: _Slot, status: str, error: str, tb: str | None) -> None:
    path = slot.dir / results.RESULTS
    prev = results.read_json(path) or {"config": slot.resolved, "rounds": slot.rounds}
    prev.update(status=status, error=error, traceback=tb)
    results.write_json(path, prev)
    slot.out, slot.alive = prev, False
    log.error("variant %s %s: %s", slot.variant.name, status, error)


def _train_chunk(slots: list[_Slot], start: int, splits, device: torch.device, impl: str) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger

    from phicenter.engine.run import _fault_point, _flat
    from phicenter.method.pruning import sparsity

    cfg, v = slots[0].variant.cfg, slots[0].v
    epochs, n_rounds = v["epochs"], v["iterations"]
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    train_b, val_b, test_b = data.loaders(cfg, splits, v["batch_size"], v["seed"])
    for b in (train_b, val_b, test_b):
        b.to(device)
    nets = [s.net for s in slots]
    packed = PackedNet(nets, device=device, impl=impl)
    names = [s.variant.name for s in slots]
    log.info("packed %d variants (%s, %s): %s", len(slots), packed.impl, device, ", ".join(names))
    for s in slots:
        s.logger = TensorBoardLogger(str(s.dir), name="tb", version="", default_hp_metric=False)
        s.out = {"config": s.resolved, "rounds": s.rounds, "final": s.rounds[-1] if s.rounds else None,
                 "status": "running", "device": str(device),
                 "precision": str(cfg.trainer.get("precision", "32-true")), "init": cfg.model.init,
                 "data": {"train": len(splits.y_train), "val": len(splits.y_val), "test": len(splits.y_test),
                          "input_shape": list(splits.input_shape), "num_classes": splits.num_classes},
                 "packed": {"variants": names, "impl": packed.impl}}

    every = int(cfg.checkpoint.get("every_n_epochs", 1) or 0)
    for r in range(start, n_rounds + 1):
        alive = [i for i, s in enumerate(slots) if s.alive]
        if not alive:
            break
        t0 = time.perf_counter()
        diags: dict[int, dict] = {}
        history: dict[int, list] = {i: [] for i in alive}
        _fault_point(cfg, r)
        saved = _load_epochs([slots[i] for i in alive], r) if r == start and cfg.get("resume", True) else None
        if saved is not None:   # mid-round: the round boundary is already in the weights, masks and fills
            for i, st in zip(alive, saved):
                slots[i].net.load_state_dict(st["model"])
                history[i] = st["history"]
                if st["diagnostics"] is not None:
                    diags[i] = st["diagnostics"]
            packed.gather(nets)
            log.info("resuming round %d at epoch %d (%d variants)", r, saved[0]["epoch"] + 1, len(alive))
        elif r > 0:   # the round boundary, per variant, by the unchanged method code
            packed.scatter(nets)
            for i in alive:
                diags[i] = slots[i].imp.advance(r)
            packed.gather(nets)
        opt, sched = make_optimizer(packed.optimizer_parameters(), optim, schedule, epochs)
        first = 0
        if saved is not None:
            by_slot = dict(zip(alive, saved))
            packed.load_optimizer_state(opt, [by_slot[i]["optimizer"] if i in by_slot else by_slot[alive[0]]
                                              ["optimizer"] for i in range(packed.k)])
            for g, lr in zip(opt.param_groups, saved[0]["lrs"]):
                g["lr"] = lr
            if sched is not None and saved[0]["scheduler"] is not None:
                sched.load_state_dict(saved[0]["scheduler"])
            torch.set_rng_state(saved[0]["rng"])
            first = saved[0]["epoch"] + 1
        for e in range(first, epochs):
            train_b.set_epoch(r, e)
            sums = torch.zeros(packed.k, 3, dtype=torch.float64, device=device)
            for x, y in train_b:
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits, values = packed_step(packed, opt, x, y)
                _sums(sums, values, logits, y)
            train = _take(sums)
            val = _evaluate(packed, val_b, device)
            for i in list(history):
                loss, acc = train[i]
                if not math.isfinite(loss):
                    _record_failure(slots[i], "diverged",
                                    f"Diverged: training loss became {loss} in round {r}, epoch {e}", None)
                    del history[i]
                    continue
                row = {"round": r, "epoch": e, "train_loss": loss, "train_acc": acc}
                if math.isfinite(val[i][1]):
                    row.update(val_loss=val[i][0], val_acc=val[i][1])
                history[i].append(row)
                slots[i].logger.log_metrics({f"epoch/{k}": val_ for k, val_ in row.items()
                                             if k not in ("round", "epoch")} | {"epoch/round": r},
                                            step=r * epochs + e)
            if not history:   # every variant of the chunk diverged
                break
            if sched is not None:
                sched.step()
            if every and (e + 1) % every == 0 and e + 1 < epochs:
                packed.scatter(nets)
                common = {"round": r, "epoch": e, "lrs": [g["lr"] for g in opt.param_groups],
                          "scheduler": sched.state_dict() if sched is not None else None,
                          "rng": torch.get_rng_state()}
                for i in history:
                    _save_epoch(slots[i], r, dict(common, model=slots[i].net.state_dict(), history=history[i],
                                                  diagnostics=diags.get(i),
                                                  optimizer=packed.optimizer_state(opt, i)))
        test = _evaluate(packed, test_b, device)
        packed.scatter(nets)
        seconds = time.perf_counter() - t0
        for i, hist in history.items():
            slot = slots[i]
            last = hist[-1]
            total_sp, layer_sp = sparsity(slot.imp.layers)
            diag = diags.get(i) or {}
            entry = {
                "round": r, "sparsity": total_sp, "train_loss": last["train_loss"], "train_acc": last["train_acc"],
                "val_acc": last.get("val_acc", math.nan), "test_acc": test[i][1], "test_loss": test[i][0],
                "flipped_by_phi": diag.get("flipped_by_phi"), "flipped_vs_init": diag.get("flipped_vs_init"),
                "dead_zone": diag.get("dead_zone"), "dead_zone_count": diag.get("dead_zone_count"),
                "seconds": seconds / len(history), "seconds_packed": seconds,
                "layers": {n: {"sparsity": layer_sp[n], **diag.get("layers", {}).get(n, {})}
                           for n in slot.imp.layers},
                "epochs": hist,
            }
            slot.rounds.append(entry)
            slot.logger.log_metrics({f"round/{k}": entry[k] for k in
                                     ("val_acc", "test_acc", "sparsity", "flipped_by_phi", "flipped_vs_init",
                                      "dead_zone") if entry[k] is not None}, step=(r + 1) * epochs - 1)
            slot.out.update(rounds=slot.rounds, final=entry)
            results.save_round(slot.dir, r, {"round": r, "model": slot.net.state_dict(), "rounds": slot.rounds},
                               keep_all=bool(cfg.checkpoint.keep_all))
            results.write_json(slot.dir / results.RESULTS, slot.out)
            shutil.rmtree(_epoch_dir(slot, r), ignore_errors=True)
        log.info("round %d/%d packed x%d (%.1fs): %s", r, n_rounds, len(history), seconds,
                 "  ".join(f"{slots[i].variant.name} val {h[-1].get('val_acc', math.nan):.4f}"
                           for i, h in history.items()))

    for s in slots:
        if s.alive and s.out.get("final") is not None:
            s.out["status"] = "complete"
            results.write_json(s.dir / results.RESULTS, s.out)
            s.logger.log_hyperparams(_flat(s.resolved), metrics={"final/val_acc": s.out["final"]["val_acc"],
                                                                 "final/test_acc": s.out["final"]["test_acc"]})


# ---------------------------------------------------------------------------------------------------------
# Entry point for train.py

def run_hydra(cfg: DictConfig, run_dir: str | Path) -> dict:
    """`python -m phicenter.train pack=true ...`: train this job's variants packed under run_dir.
    Returns {"final": {"val_acc": best final val_acc over the variants}, "variants": {name: results}}."""
    variants = variants_from_hydra(cfg)
    outs = train_packed(variants, run_dir, chunk=cfg.get("pack_chunk"))
    accs = [o["final"]["val_acc"] for o in outs.values()
            if o and o.get("final") and o["final"].get("val_acc") is not None]
    return {"final": {"val_acc": max(accs) if accs else math.nan}, "variants": outs}


# ---------------------------------------------------------------------------------------------------------
# Bench: K packed vs K sequential runs (phicenter.bench calls this)

PAPER_PHIS = (0.0, 5e-5, -5e-5, 1e-4, -1e-4, 5e-4, -5e-4, 1e-3, -1e-3, 0.1, -0.1)
from phicenter import CONF_DIR


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():   # inside a Hydra app: its config tree
        return compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _rss_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def _mem_start(device: torch.device) -> dict:
    """Start a peak-memory window: CUDA allocator peak, or the process's resident-set high-water mark
    (reset through /proc/self/clear_refs, after returning freed heap to the OS)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return {"base": torch.cuda.memory_allocated(), "how": "torch.cuda.max_memory_allocated"}
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:
        pass
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        reset = False
    base = _rss_kib("VmRSS") * 1024
    how = "resident set high-water mark (VmHWM) above the RSS at the start"
    if not reset or _rss_kib("VmHWM") * 1024 > base * 1.05:
        how += " (could not reset VmHWM: includes earlier peaks)"
    return {"base": base, "how": how}


def _mem_peak(device: torch.device, start: dict) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - start["base"])
    return max(0, _rss_kib("VmHWM") * 1024 - start["base"])


def packed_speedup(k: int = 11, model: str = "fc_lot", dataset: str = "auto", epochs: int = 1,
                   iterations: int = 0, sequential: int | None = None, overrides=(),
                   workdir: str | Path | None = None, impl: str = "auto", isolate: bool = True) -> dict:
    """Throughput of K variants (the paper's phi grid, strategy mask0) trained packed vs the same K runs one
    after another through phicenter.engine.run.run (Lightning), and their peak memory.

    dataset "auto": MNIST when it is readable under data_dir (no download), else scikit-learn's digits.
    `sequential`: time only this many of the K sequential runs and scale (all are the same work); None: all.
    `overrides`: extra Hydra overrides for both (e.g. ["data_dir=../shared/data", "batch_size=60"]).
    `isolate`: each side in a fresh Python process (clean allocator, so peak memories compare); the data
    decode cache is warmed first and lazy imports are paid by an untimed tiny run on each side.
    Returns packed_speedup (sequential wall time / packed wall time), packed_speedup_cpu (the same in process
    CPU time, steadier on a shared machine), packed_peak_memory_ratio (packed peak / the peak of one run,
    each above the memory in use just before it: CUDA allocator peak, or resident set on CPU) and the raw
    figures, with the load average before and after."""
    import shutil
    import tempfile

    from phicenter.data import DataError
    from phicenter.engine.run import load_data

    if k < 1:
        raise ValueError("k must be >= 1")
    base = [f"model={model}", f"epochs={epochs}", f"prune.iterations={iterations}", *overrides]
    if dataset == "auto":
        dataset = "mnist"
        try:
            load_data(_compose(base + ["dataset=mnist", "dataset.download=false"]))
        except DataError:
            dataset = "digits"
    base.append(f"dataset={dataset}")
    load_data(_compose(base))   # decode cache warm for both sides
    n_seq = k if sequential is None else max(1, min(int(sequential), k))
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="phicenter-pack-bench-")) if own else Path(workdir)
    spec = {"k": k, "overrides": base, "model": model, "impl": impl, "threads": torch.get_num_threads(),
            "work": str(work)}
    try:
        load_before = _loadavg()
        seq = _phase(dict(spec, side="sequential", n=n_seq), isolate)
        pk = _phase(dict(spec, side="packed", n=k), isolate)
        scale = k / n_seq
        return {
            "packed_speedup": seq["wall"] * scale / pk["wall"],
            "packed_speedup_cpu": seq["cpu"] * scale / pk["cpu"] if pk["cpu"] > 0 else math.nan,
            "packed_peak_memory_ratio": pk["peak"] / seq["peak"] if seq["peak"] > 0 else math.nan,
            "k": k, "model": model, "dataset": dataset, "epochs": epochs, "rounds": iterations + 1,
            "device": pk["device"], "threads": spec["threads"], "impl": pk["impl"], "isolated": isolate,
            "packed_seconds": pk["wall"], "sequential_seconds": seq["wall"] * scale, "sequential_runs_timed": n_seq,
            "packed_cpu_seconds": pk["cpu"], "sequential_cpu_seconds": seq["cpu"] * scale,
            "packed_peak_bytes": pk["peak"], "single_run_peak_bytes": seq["peak"], "memory": pk["memory"],
            "loadavg_before": load_before, "loadavg_after": _loadavg(),
        }
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def packed_step_breakdown(k: int = 11, model: str = "fc_lot", input_shape=(1, 28, 28), num_classes: int = 10,
                          batch_size: int = 60, steps: int = 40, repeats: int = 5,
                          optim: dict | None = None) -> dict:
    """Where a training step's time goes, on CPU, for one lean unpacked run vs K variants packed.

    single_ms: one optimizer step of a plain loop (the masked net, the product's optimizer, no framework);
    packed_ms_per_variant: a packed step ("loop" implementation) divided by K; kernel_ms_per_variant: the part
    of it spent inside the variants' own aten kernels (torch.profiler self time) -- their matrix products,
    mask selects and optimizer arithmetic, which packing on this device does not remove. So
    single_ms / kernel_ms_per_variant bounds what any packing of these variants can gain here over a lean
    unpacked loop, and single_ms / packed_ms_per_variant is what packing gains now."""
    from torch.profiler import ProfilerActivity, profile

    from phicenter import models
    from phicenter.method import pruning

    optim = optim or {"name": "adam", "lr": 1.2e-3, "fused": True}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps + 5, batch_size, *input_shape, generator=g)
    y = torch.randint(0, num_classes, (steps + 5, batch_size), generator=g)
    nets = []
    for i in range(k):
        net = models.build(model, input_shape, num_classes, seed=i)
        pruning.attach_masks(net)
        nets.append(net)

    single = copy.deepcopy(nets[0])
    opt, _ = make_optimizer(single.parameters(), optim, None, 1)

    def single_step(i):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(single(x[i]), y[i]).backward()
        opt.step()

    pk = PackedNet(nets, impl="loop")
    popt, _ = make_optimizer(pk.optimizer_parameters(), optim, None, 1)

    def packed_one(i):
        packed_step(pk, popt, x[i], y[i])

    def timed(step) -> float:
        t = time.perf_counter()
        for i in range(steps):
            step(i)
        return (time.perf_counter() - t) / steps * 1e3

    for i in range(5):   # warm-up: allocator, lazy optimizer state
        single_step(steps + i)
        packed_one(steps + i)
    times = [(timed(single_step), timed(packed_one)) for _ in range(repeats)]   # interleaved: load drifts
    single_ms = statistics.median(t[0] for t in times)
    packed_ms = statistics.median(t[1] for t in times)
    n_prof = max(5, steps // 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for i in range(n_prof):
            packed_one(i)
        wall_us = (time.perf_counter() - t) * 1e6
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages() if e.key.startswith("aten::")}
    # the profiler slows every op a little: take the kernels' share of the profiled time, applied to the
    # unprofiled step
    share = min(1.0, sum(ops.values()) / wall_us)
    kernel_ms = share * packed_ms / k
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:6]
    return {"k": k, "model": model, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "optimizer": optim["name"], "single_ms": single_ms, "packed_ms_per_variant": packed_ms / k,
            "kernel_share": share, "kernel_ms_per_variant": kernel_ms,
            "top_kernels_ms_per_variant": {name: us / wall_us * packed_ms / k for name, us in top},
            "packing_gain": single_ms / (packed_ms / k),
            "packing_bound": single_ms / kernel_ms if kernel_ms > 0 else math.nan}


def _loadavg():
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def _phase(spec: dict, isolate: bool) -> dict:
    if not isolate:
        return _bench_phase(spec)
    import json
    import subprocess
    import sys

    root = str(CONF_DIR.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    code = ("import json, sys; from phicenter.engine.packed import _bench_phase; "
            "print('PHASE ' + json.dumps(_bench_phase(json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("PHASE "):
            return json.loads(line[len("PHASE "):])
    raise RuntimeError(f"bench phase {spec['side']} failed:\n{proc.stderr[-3000:]}")


def _bench_phase(spec: dict) -> dict:
    """One side of packed_speedup: {"wall", "cpu", "peak", ...} for K sequential runs or one packed run."""
    from phicenter.engine.run import load_data, run

    torch.set_num_threads(int(spec["threads"]))
    work = Path(spec["work"]) / spec["side"]
    cfg = _compose(list(spec["overrides"]))
    variants = make_variants(cfg, _bench_phis(spec["k"]))[:spec["n"]]
    device = _device(cfg)
    load_data(cfg)
    warm = make_variants(_compose([f"model={spec['model']}", "dataset=synthetic", "dataset.n_train=300",
                                   "epochs=1", "prune.iterations=0"]), [0.0])
    if spec["side"] == "sequential":   # lazy imports and first-call costs, untimed
        run(warm[0].cfg, work / "warmup")
    else:
        train_packed(warm, work / "warmup", impl=spec["impl"])
    wall = cpu = 0.0
    peak, impl = 0, None
    for batch in ([[v] for v in variants] if spec["side"] == "sequential" else [variants]):
        m = _mem_start(device)
        t, c = time.perf_counter(), time.process_time()
        if spec["side"] == "sequential":
            run(batch[0].cfg, work / batch[0].name)
        else:
            impl = next(iter(train_packed(batch, work / "runs", impl=spec["impl"]).values()))["packed"]["impl"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        peak = max(peak, _mem_peak(device, m))
    return {"wall": wall, "cpu": cpu, "peak": peak, "device": str(device), "impl": impl or "unpacked",
            "memory": m["how"]}


def _bench_phis(k: int) -> list[float]:
    return list(PAPER_PHIS[:k]) + [round(0.2 * (i + 1), 6) for i in range(max(0, k - len(PAPER_PHIS)))]
