"""The GPU forward of a stacked cohort: one kernel per layer for all K variants (nn.Sequential nets of common
layers), and torch.func.vmap for other architectures. Same maths as K nets alone, not bit-identical
(BLAS and cuDNN pick kernels by shape); the CPU default is StackedNet's per-variant loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torch's CPU bmm computes products with contraction * rows * cols below this in its own loop, not with the
# BLAS gemm that nn.Linear's mm uses; such tiny products are done one variant at a time, with mm.
_BMM_SMALL = 400


class _BatchedLinear(torch.autograd.Function):
    """y[k] = x[k] @ w[k].T + b[k] for all k at once; x is [K, B, in], or [B, in] shared by all variants.

    The backward issues the products nn.Linear's own backward issues (grad_w = g.T @ x, grad_x = g @ w),
    batched over K, so each variant's gradients are bit-for-bit those of the layer alone on CPU."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        k, n_out, n_in = w.shape
        if x.dim() == 2:  # shared input: one product against the variants' weights side by side
            flat = w.reshape(k * n_out, n_in).t()
            y = torch.addmm(b.reshape(-1), x, flat) if b is not None else x.mm(flat)
            return y.view(x.shape[0], k, n_out).transpose(0, 1)
        if x.shape[1] * n_in * n_out < _BMM_SMALL:
            return torch.stack(
                [torch.addmm(b[i], x[i], w[i].t()) if b is not None else x[i].mm(w[i].t()) for i in range(k)]
            )
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)) if b is not None else x.bmm(w.transpose(1, 2))

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        gx = gw = gb = None
        k = w.shape[0]
        small = x.dim() == 3 and x.shape[1] * w.shape[1] * w.shape[2] < _BMM_SMALL
        if ctx.needs_input_grad[0]:
            gx = torch.stack([g[i].mm(w[i]) for i in range(k)]) if small else g.bmm(w)
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
            gb = g.contiguous().sum(1)  # the reduction order of a contiguous [B, out].sum(0)
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
        ok = (
            isinstance(m, (*_ELEMENTWISE, *_POOLS))
            or isinstance(m, nn.Linear)
            or (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros")
            or isinstance(m, nn.BatchNorm2d)
            or (isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1)
        )
        if not ok:
            return None
    return plan


def batched_forward(net, h: torch.Tensor, training: bool) -> torch.Tensor:
    # h is shared by all variants ([B, ...]) until the first layer with weights; after it, a feature
    # map is [B, K*C, H, W] (variant k owns channels k*C..k*C+C-1) and a vector is [K, B, F].
    k, shared = net.k, True
    params = net.params  # once a step: the stack's dict is rebuilt on each read
    for name, m in net.plan:
        if isinstance(m, nn.Linear):
            if not shared and h.dim() != 3:
                raise ValueError(f"{name}: Linear on a feature map needs a Flatten before it")
            h = _BatchedLinear.apply(h, params[f"{name}.weight"], params.get(f"{name}.bias"))
            shared = False
        elif isinstance(m, nn.Conv2d):
            w = params[f"{name}.weight"]
            b = params.get(f"{name}.bias")
            h = F.conv2d(
                h,
                w.reshape(-1, *w.shape[2:]),
                None if b is None else b.reshape(-1),
                m.stride,
                m.padding,
                m.dilation,
                1 if shared else k,
            )
            shared = False
        elif isinstance(m, nn.BatchNorm2d):
            if shared:
                h, shared = h.repeat(1, k, 1, 1), False
            h = net.batch_norm(name, m, [h], training)[0]
        elif isinstance(m, nn.Flatten):
            h = h.flatten(1) if shared else h.reshape(h.shape[0], k, -1).transpose(0, 1)
        else:  # elementwise activations and pooling act per channel in either layout
            h = m(h)
    if shared:
        raise ValueError("the network has no layer with weights")
    return h


def vmap_forward(net, x: torch.Tensor, training: bool) -> torch.Tensor:
    from torch.func import functional_call, vmap

    # BatchNorm's step counters are equal in every variant and read with .item() (momentum=None), which
    # vmap cannot batch: pass variant 0's, unbatched, and copy it to the others afterwards
    bufs = net.bufs
    counters = [n for n in bufs if n.endswith("num_batches_tracked")]
    buffers = {n: (t[0] if n in counters else t) for n, t in bufs.items()}
    dims = {n: (None if n in counters else 0) for n in bufs}
    was = net.template.training
    net.template.train(training)
    try:

        def one(p, b, xb):
            return functional_call(net.template, {**p, **b}, (xb,))

        out = vmap(one, in_dims=(0, dims, None), randomness="different")(net.params, buffers, x)
    finally:
        net.template.train(was)
    with torch.no_grad():
        for n in counters:
            bufs[n][1:] = bufs[n][0]
    return out
