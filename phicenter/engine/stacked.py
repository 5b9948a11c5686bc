"""A cohort of K > 1 variants as one module: every parameter and buffer of the K nets stacked along dim 0.

The variants share an architecture, theta0 and the data order; they differ in masks, fills and signs. Each
stacked weight holds the variants' effective weights (dead entries at their fill), its masks and fills stacked
beside it as `<layer>__weight_mask` and `<layer>__weight_fill`, so pruning.zero_dead_grads and
pruning.reapply_masks hold every variant's dead entries on the stacked tensors themselves. The round boundary
never runs on the stack: the Callback scatters it into the K ordinary nets, runs the unchanged method
(IMP.advance) on each, and gathers them back.

Forward implementations (`impl`):
  "loop"    each layer with weights once per variant, the very call a variant's module alone makes on the
            same shapes: bit for bit the arithmetic of K separate runs, for any architecture. The CPU default:
            on a CPU the matrix work is the same either way.
  "batched" batched matmuls and grouped convolutions (engine.batched; nn.Sequential nets of common layers).
  "vmap"    torch.func.vmap over functional_call (any net).
  "auto"    loop on CPU; on CUDA batched where supported, else vmap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from phicenter.engine.batched import batched_forward, batched_plan, vmap_forward
from phicenter.method import pruning

IMPLS = ("auto", "loop", "batched", "vmap")


def keeps_bits(impl: str, device_type: str) -> bool:
    """Whether every variant of a cohort trains to the bits of that variant trained alone: only the per-variant
    kernels on a CPU ("loop", the CPU's "auto"; tests/test_cohort.py). Elsewhere it is the same maths with
    other roundings (batched kernels; on CUDA a net alone also runs in channels_last)."""
    return device_type == "cpu" and impl in ("auto", "loop")


def _safe(name: str) -> str:
    return name.replace(".", "__")


class StackedNet(nn.Module):
    """The K variants' tensors stacked along dim 0, registered as this module's parameters and buffers (so
    Lightning moves, checkpoints and distributes them); forward returns [K, B, classes]."""

    def __init__(self, nets: list[nn.Module], impl: str = "auto", device=None):
        super().__init__()
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        object.__setattr__(self, "template", nets[0])  # not a submodule: its tensors are not the stack's
        self.k = len(nets)
        device = torch.device(device) if device is not None else next(nets[0].parameters()).device
        if impl == "auto":
            impl = "loop" if device.type == "cpu" else ("batched" if batched_plan(nets[0]) else "vmap")
        self.plan = batched_plan(nets[0]) if impl in ("batched", "loop") else None
        if impl == "batched" and self.plan is None:
            raise ValueError("this architecture has no batched implementation; use impl='loop' or 'vmap'")
        self.impl = impl
        own_p = [dict(net.named_parameters()) for net in nets]
        own_b = [dict(net.named_buffers()) for net in nets]
        self.param_names = [n for n, _ in nets[0].named_parameters()]
        self.buffer_names = [n for n, _ in nets[0].named_buffers()]
        with torch.no_grad():
            for n in self.param_names:
                self.register_parameter(_safe(n), nn.Parameter(torch.stack([p[n].detach() for p in own_p])))
            for n in self.buffer_names:
                self.register_buffer(_safe(n), torch.stack([b[n] for b in own_b]))
        self.to(device)
        self._views = []
        self.transform = None  # params -> the tensors one forward uses (AWS: engine.transfer.AWSTraining)

    @property
    def params(self) -> dict[str, nn.Parameter]:
        p = {n: self._parameters[_safe(n)] for n in self.param_names}
        return p if self.transform is None else self.transform(p)

    @property
    def bufs(self) -> dict[str, torch.Tensor]:
        return {n: self._buffers[_safe(n)] for n in self.buffer_names}

    def per_variant(self, name: str, params: dict | None = None) -> list:
        """Parameter `name` of each variant as the forward differentiates it: unbind, never indexing, so the
        backward gathers the K gradients in one op."""
        t = (params if params is not None else self.params).get(name)
        return [None] * self.k if t is None else list(t.unbind(0))

    def grad(self, name: str, k: int) -> torch.Tensor | None:
        g = self.params[name].grad
        return None if g is None else g[k]

    # -- the optimizer ----------------------------------------------------------------------------------
    @property
    def steps_views(self) -> bool:
        """The optimizer steps per-variant views on CPU (each variant's tensors while they are in cache:
        2-3x faster than elementwise ops over the whole stack, and literally the update of a variant alone), the
        stacked tensors on CUDA (few large tensors for the fused kernels). Same update element for element."""
        return self.params[self.param_names[0]].device.type == "cpu"

    def optimizer_parameters(self) -> list[torch.Tensor]:
        """What the cohort's optimizer steps; call share_grads() after each backward."""
        stacked = list(self.params.values())
        if not self.steps_views:
            self._views = []
            return stacked
        self._views = [(t, k, t.detach()[k]) for k in range(self.k) for t in stacked]
        return [v for _, _, v in self._views]

    def share_grads(self) -> None:
        for t, k, v in self._views:
            v.grad = None if t.grad is None else t.grad[k]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients to None, as optimizer.zero_grad() does for a run alone."""
        for t in self.params.values():
            t.grad = None
        for _, _, v in self._views:
            v.grad = None

    # -- to and from the variants' own nets --------------------------------------------------------------
    def _pairs(self, nets: list[nn.Module]):
        """(slice k of a stacked tensor, variant k's own tensor) for every parameter and buffer."""
        for store, get in ((self.params, nn.Module.named_parameters), (self.bufs, nn.Module.named_buffers)):
            for k, net in enumerate(nets):
                own = dict(get(net))
                for n, t in store.items():
                    yield t[k], own[n]

    @torch.no_grad()
    def gather(self, nets: list[nn.Module]) -> None:
        """Variant nets -> stack (after the round boundary changed them)."""
        for stacked, own in self._pairs(nets):
            stacked.copy_(own)

    @torch.no_grad()
    def scatter(self, nets: list[nn.Module]) -> None:
        """Stack -> variant nets (before the round boundary and before saving)."""
        for stacked, own in self._pairs(nets):
            own.copy_(stacked)

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, training: bool | None = None) -> torch.Tensor:
        training = self.training if training is None else training
        if self.impl == "loop":
            if not torch.is_grad_enabled():  # evaluation: one variant at a time, 1x the activation memory
                return self._loop_any(x, training)
            return self._loop(x, training)
        return batched_forward(self, x, training) if self.impl == "batched" else vmap_forward(self, x, training)

    def _loop(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Layers with weights once per variant (F.linear, Conv2d._conv_forward, F.batch_norm: the calls
        of a variant alone, on its shapes); parameter-free layers (ReLU, pooling, Flatten) once on all variants."""
        if self.plan is None:
            return self._loop_any(x, training)
        k, params = self.k, self.params
        shared, stacked, parts = x, None, None  # exactly one is set: shared input, [K, B, ...], K tensors
        for name, m in self.plan:
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm2d)):
                if parts is None:
                    parts = stacked.unbind(0) if stacked is not None else [shared] * k
                    shared = stacked = None
                if isinstance(m, nn.BatchNorm2d):
                    parts = self.batch_norm(name, m, list(parts), training)
                    continue
                ws, bs = self.per_variant(f"{name}.weight", params), self.per_variant(f"{name}.bias", params)
                if isinstance(m, nn.Linear):
                    parts = [F.linear(h, w, bb) for h, w, bb in zip(parts, ws, bs)]
                else:
                    parts = [m._conv_forward(h, w, bb) for h, w, bb in zip(parts, ws, bs)]
            elif shared is not None:
                shared = m(shared)
            else:
                if stacked is None:
                    stacked, parts = torch.stack(parts), None
                out = m(stacked.flatten(0, 1))  # per sample and channel: K*B samples of one net
                stacked = out.view(k, -1, *out.shape[1:])
        if shared is not None:
            raise ValueError("the network has no layer with weights")
        return stacked if stacked is not None else torch.stack(parts)

    def _loop_any(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Any architecture: the template module once per variant, with that variant's slices swapped in."""
        from torch.func import functional_call

        params = {n: self.per_variant(n) for n in self.param_names}
        bufs = {n: t.unbind(0) for n, t in self.bufs.items()}
        was = self.template.training
        self.template.train(training)
        try:
            return torch.stack(
                [
                    functional_call(
                        self.template,
                        {**{n: v[i] for n, v in params.items()}, **{n: v[i] for n, v in bufs.items()}},
                        (x,),
                    )
                    for i in range(self.k)
                ]
            )
        finally:
            self.template.train(was)

    def batch_norm(self, name, m: nn.BatchNorm2d, hs: list[torch.Tensor], training) -> list[torch.Tensor]:
        """nn.BatchNorm2d.forward on all variants at once (one tensor in `hs`, the (B, K*C, H, W) layout) or
        once per variant (K tensors in `hs`), with each variant's own affine parameters and statistics."""
        per = len(hs) > 1 or self.k == 1
        params, bufs = self.params, self.bufs

        def parts(t):
            if t is None:
                return [None] * len(hs)
            return t.unbind(0) if per else [t.reshape(-1)]

        def affine(pname):
            return self.per_variant(pname, params) if per else parts(params.get(pname))

        nbt = bufs.get(f"{name}.num_batches_tracked")
        factor = 0.0 if m.momentum is None else m.momentum
        if training and m.track_running_stats and nbt is not None:
            nbt.add_(1)
            factor = 1.0 / float(nbt[0]) if m.momentum is None else m.momentum
        rm, rv = bufs.get(f"{name}.running_mean"), bufs.get(f"{name}.running_var")
        use_batch = training or (rm is None and rv is None)
        return [
            F.batch_norm(h, mean, var, w, b, use_batch, factor, m.eps)
            for h, mean, var, w, b in zip(hs, parts(rm), parts(rv), affine(f"{name}.weight"), affine(f"{name}.bias"))
        ]


def stacked_losses(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per variant mean cross-entropy of [K, B, classes] logits: (losses to backpropagate, their values).

    The first is one batched op whose gradient is bit for bit that of F.cross_entropy(logits[k], y) for each
    k; its values can differ from F.cross_entropy's in the last bit (another summation order), so the values
    reported come from nll_loss per variant on the same log-probabilities (K reductions of B numbers)."""
    k, b, c = logits.shape
    logp = F.log_softmax(logits, -1)
    losses = F.nll_loss(logp.reshape(k * b, c), y.repeat(k), reduction="none").view(k, b).mean(1)
    with torch.no_grad():
        values = torch.stack([F.nll_loss(logp[i], y) for i in range(k)])
    return losses, values


def stacked_step(net: StackedNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    """One optimizer step of every variant on the batch (x, y), without a framework (the bench's lean
    step, masks held as CohortModule.training_step holds them); returns the logits and per-variant loss
    values."""
    logits = net(x, training=True)
    losses, values = stacked_losses(logits, y)
    net.zero_grad()
    losses.sum().backward()
    pruning.zero_dead_grads(net)
    net.share_grads()
    opt.step()
    pruning.reapply_masks(net)
    return logits, values
